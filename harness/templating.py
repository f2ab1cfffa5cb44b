"""jinja2 templating of runbook values over the facts learnt so far (`{{ server.peer_id }}`).

StrictUndefined everywhere: a fact no earlier step provided is an error, never an empty string in a node's
environment. `referenced_paths()` reads the dotted names a template uses without rendering it, so a runbook is
checked before anything starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jinja2
from jinja2 import nodes

_ENV = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True)


class TemplateError(ValueError):
    """A template that does not parse, or names a fact nobody provided."""


def is_template(value: object) -> bool:
    return isinstance(value, str) and ("{{" in value or "{%" in value)


def referenced_paths(template: str) -> set[tuple[str, ...]]:
    """Dotted names a template reads: `"{{ relay.peer_id }}/x"` -> {("relay", "peer_id")}."""
    try:
        tree = _ENV.parse(template)
    except jinja2.TemplateSyntaxError as error:
        raise TemplateError(f"template {template!r}: {error.message}") from None
    paths: set[tuple[str, ...]] = set()
    # Only the outermost attribute chain counts: `a.b.c` yields ("a","b","c"), not also ("a","b").
    inner: set[int] = set()
    for node in tree.find_all((nodes.Getattr, nodes.Getitem, nodes.Name)):
        if id(node) in inner:
            continue
        path: list[str] = []
        current: nodes.Node = node
        while True:
            if isinstance(current, nodes.Getattr):
                path.append(current.attr)
                inner.add(id(current.node))
                current = current.node
            elif isinstance(current, nodes.Getitem) and isinstance(current.arg, nodes.Const):
                path.append(str(current.arg.value))
                inner.add(id(current.node))
                current = current.node
            elif isinstance(current, nodes.Name):
                if current.ctx == "load":
                    path.append(current.name)
                    paths.add(tuple(reversed(path)))
                break
            else:
                break
    return paths


def render(template: str, namespace: Mapping[str, Any]) -> str:
    """Render over `namespace` (node name -> facts, nested dicts). Undefined names raise TemplateError."""
    if not is_template(template):
        return template
    try:
        return _ENV.from_string(template).render(dict(namespace))
    except jinja2.UndefinedError as error:
        raise TemplateError(f"template {template!r}: {error.message}") from None
    except jinja2.TemplateError as error:
        raise TemplateError(f"template {template!r}: {error}") from None
