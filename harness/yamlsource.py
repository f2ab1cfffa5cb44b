"""Load YAML and remember where each value came from, so an error can name `file:line: field.path`.

Every file a user hands the lab (runbook, inventory, SUT definition) goes through `load_yaml`, which answers a
malformed one with one `BadInput` line before anything starts: not UTF-8 text (binary, NUL, Latin-1), larger
than `MAX_BYTES`, nested deeper than `MAX_DEPTH`, expanding to more than `MAX_NODES` through aliases (a
"billion laughs" file is refused in milliseconds, nothing is expanded), a duplicate key (both lines named), a
`.nan`/`.inf` number, or PyYAML's own syntax errors reduced to one `file:line: message`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness.errors import BadInput

MAX_BYTES = 1 << 20  # a runbook, an inventory or a SUT file is a few KB
MAX_DEPTH = 64
MAX_NODES = 100_000  # scalars and collections after expanding aliases

PathKey = tuple[str | int, ...]


@dataclass
class YamlSource:
    path: Path
    data: Any
    lines: dict[PathKey, int] = field(default_factory=dict)

    def line_of(self, loc: Sequence[str | int]) -> int | None:
        """The line of the deepest part of `loc` present in the file (pydantic adds union tags: skip them)."""
        best: int | None = self.lines.get(())
        prefix: list[str | int] = []
        for part in loc:
            candidate = (*prefix, part)
            if candidate in self.lines:
                prefix.append(part)
                best = self.lines[candidate]
            # else: a union tag or a field the file does not have; keep looking deeper from the same prefix
        return best

    def error(self, loc: Sequence[str | int], message: str) -> BadInput:
        """One line: `runbooks/x.yaml:23: steps[3].wait: unknown checkpoint 'server.foo'`."""
        line = self.line_of(loc)
        where = f"{display_path(self.path)}:{line}" if line else display_path(self.path)
        dotted = format_loc(loc)
        return BadInput(f"{where}: {dotted}: {message}" if dotted else f"{where}: {message}")


def pydantic_message(error: Mapping[str, Any]) -> str:
    """One pydantic error as a short sentence: no "Value error," prefix, no URL."""
    kind = error.get("type", "")
    loc = error.get("loc", ())
    if kind == "extra_forbidden":
        return f"unknown key {loc[-1]!r}" if loc else "unknown key"
    if kind == "union_tag_invalid":  # a step's `action`
        ctx = error.get("ctx", {})
        return f"unknown action {ctx.get('tag')!r} (known: {ctx.get('expected_tags')})"
    if kind == "missing":
        return "required field missing"
    message = str(error.get("msg", "invalid")).removeprefix("Value error, ").removeprefix("Assertion failed, ")
    return " ".join(message.split())


def format_loc(loc: Sequence[str | int]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def display_path(path: Path) -> str:
    """Relative to the working directory when inside it: shorter, and the form users typed."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def read_text_file(path: Path, what: str = "") -> str:
    """The file as text, or one BadInput line: cannot read, too large, not UTF-8 text."""
    label = f"{display_path(path)}: " + (f"{what}: " if what else "")
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_BYTES + 1)
    except OSError as error:
        raise BadInput(f"{label}cannot read: {error.strerror or error}") from None
    if len(raw) > MAX_BYTES:
        raise BadInput(f"{label}larger than {MAX_BYTES >> 20} MiB: not a lab file")
    nul = raw.find(b"\0")
    if nul >= 0:
        raise BadInput(f"{label}not UTF-8 text (a NUL byte at offset {nul}: binary data?)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise BadInput(
            f"{display_path(path)}:{line}: {what + ': ' if what else ''}not UTF-8 text "
            f"(byte 0x{raw[error.start]:02x} at offset {error.start}; save the file as UTF-8)"
        ) from None
    return text.removeprefix("\ufeff")


class _Loader(yaml.SafeLoader):
    """SafeLoader that stops early: no document larger than MAX_NODES once its aliases are expanded."""


def load_yaml(path: Path, what: str = "") -> YamlSource:
    """Parse one YAML file with its line index; every problem is one BadInput line (see the module doc)."""
    text = read_text_file(path, what)
    where = display_path(path)
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
        if root is not None:
            _check_shape(root, where, loader)
        data = loader.construct_document(root) if root is not None else None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
        at = f"{where}:{mark.line + 1}" if mark else where
        problem = getattr(error, "problem", None) or getattr(error, "context", None) or str(error)
        problem = " ".join(str(problem).split())
        raise BadInput(f"{at}: not valid YAML: {problem}") from None
    except RecursionError:
        raise BadInput(f"{where}: nested deeper than {MAX_DEPTH} levels: not a lab file") from None
    finally:
        loader.dispose()
    source = YamlSource(path=path, data=data)
    if root is not None:
        _index(root, (), source.lines)
    return source


def _check_shape(root: yaml.Node, where: str, loader: yaml.SafeLoader) -> None:
    """Depth, expanded size, duplicate keys and non-finite numbers, in one walk over the unique nodes."""
    sizes: dict[int, int] = {}
    total = 0

    def size(node: yaml.Node, depth: int, path: PathKey) -> int:
        nonlocal total
        if depth > MAX_DEPTH:
            raise BadInput(f"{where}:{node.start_mark.line + 1}: nested deeper than {MAX_DEPTH} levels")
        known = sizes.get(id(node))
        if known is not None:  # an alias: counted again, walked once
            total += known
            if total > MAX_NODES:
                raise _too_big(where, node)
            return known
        count = 1
        total += 1
        if isinstance(node, yaml.MappingNode):
            seen: dict[object, int] = {}
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode):
                    line = key.start_mark.line + 1
                    if key.value in seen and key.tag != "tag:yaml.org,2002:merge":
                        dotted = format_loc((*path, key.value))
                        raise BadInput(
                            f"{where}:{line}: {dotted}: duplicate key {key.value!r} (first at line {seen[key.value]})"
                        )
                    seen[key.value] = line
                child = (*path, key.value) if isinstance(key, yaml.ScalarNode) else path
                count += size(key, depth + 1, path) + size(value, depth + 1, child)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                count += size(item, depth + 1, (*path, index))
        elif node.tag == "tag:yaml.org,2002:float" and not math.isfinite(loader.construct_yaml_float(node)):
            dotted = format_loc(path)
            raise BadInput(
                f"{where}:{node.start_mark.line + 1}: {dotted + ': ' if dotted else ''}{node.value!r} is not a "
                "finite number"
            )
        if total > MAX_NODES:
            raise _too_big(where, node)
        sizes[id(node)] = count
        return count

    size(root, 0, ())


def _too_big(where: str, node: yaml.Node) -> BadInput:
    return BadInput(
        f"{where}:{node.start_mark.line + 1}: expands to more than {MAX_NODES:,} values through aliases: not a lab file"
    )


def _index(node: yaml.Node, path: PathKey, lines: dict[PathKey, int]) -> None:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):
                child = (*path, key.value)
                lines[child] = key.start_mark.line + 1
                _index(value, child, lines)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            child = (*path, index)
            lines[child] = item.start_mark.line + 1
            _index(item, child, lines)
