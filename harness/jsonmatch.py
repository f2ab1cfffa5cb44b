"""Facts read from a JSON answer with a small path language, so a runbook can require `"path":"direct"` for B.

    ok                                   the top-level key
    peers[peer_id=12D3KooW...].path      `path` of every element of `peers` whose `peer_id` is that value
    peers[*].path                        `path` of every element

A condition holds when any selected value equals the wanted one (compared as text, like checkpoint facts).
"""

from __future__ import annotations

import re
from typing import Any

_STEP = re.compile(r"(?P<key>[A-Za-z0-9_\-]+)(?:\[(?P<selector>\*|[A-Za-z0-9_\-]+=[^\]]*)\])?")


class PathError(ValueError):
    """A path that the language cannot read."""


def parse(path: str) -> list[tuple[str, str | None]]:
    """`a[b=c].d` -> [("a", "b=c"), ("d", None)]; a PathError names what it cannot read."""
    steps: list[tuple[str, str | None]] = []
    rest = path
    while rest:
        found = _STEP.match(rest)
        if not found:
            raise PathError(f"cannot read JSON path {path!r} at {rest!r} (want key, key[*] or key[field=value])")
        steps.append((found["key"], found["selector"]))
        rest = rest[found.end() :]
        if rest.startswith("."):
            rest = rest[1:]
            if not rest:
                raise PathError(f"JSON path {path!r} ends with '.'")
        elif rest:
            raise PathError(f"cannot read JSON path {path!r} at {rest!r}")
    if not steps:
        raise PathError("an empty JSON path")
    return steps


def text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return str(value)


def select(document: Any, path: str) -> list[Any]:
    """Every value `path` reaches in `document` (an empty list when it reaches none)."""
    current = [document]
    for key, selector in parse(path):
        reached = [item[key] for item in current if isinstance(item, dict) and key in item]
        if selector is None:
            current = reached
            continue
        elements = [e for value in reached if isinstance(value, list) for e in value]
        if selector == "*":
            current = elements
        else:
            field, _, wanted = selector.partition("=")
            current = [e for e in elements if isinstance(e, dict) and text(e.get(field)) == wanted]
    return current


def holds(document: Any, path: str, wanted: Any) -> bool:
    return any(text(value) == text(wanted) for value in select(document, path))
