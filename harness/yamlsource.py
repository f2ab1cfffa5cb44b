"""Load YAML and remember where each value came from, so an error can name `file:line: field.path`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness.errors import BadInput

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


def load_yaml(path: Path) -> YamlSource:
    try:
        text = path.read_text()
    except OSError as error:
        raise BadInput(f"{display_path(path)}: cannot read: {error.strerror or error}") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{display_path(path)}:{mark.line + 1}" if mark else display_path(path)
        problem = getattr(error, "problem", None) or str(error)
        raise BadInput(f"{where}: not valid YAML: {problem}") from None
    source = YamlSource(path=path, data=data)
    if root is not None:
        _index(root, (), source.lines)
    return source


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
