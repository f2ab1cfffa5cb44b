"""Load a runbook and check it against the SUT files and NAT profiles before anything starts.

Every problem is one BadInput line naming the file, the line and the field. The runbook-wide checks (NAT
profiles, SUTs, scenario overrides, the matrix, one final `expect`) are here; each step checks its own fields
through `Checker`, the `harness.steps.CheckContext` it is given, which tracks the facts earlier steps provide.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from harness.chains import split_ref
from harness.checkpoints import ADDRESS_FACTS
from harness.errors import BadInput
from harness.models import Chain, CheckpointDef, nat_profile_names
from harness.runbook.model import Runbook, RunbookNode
from harness.steps import ExpectStep, Loc, StartStep, WaitStep
from harness.sut import (
    CONNTRACK,
    CONNTRACK_CHECKPOINTS,
    LAB,
    LAB_SUT,
    find_checkpoint,
    get_sut,
    pseudo_node,
)
from harness.templating import TemplateError, is_template, referenced_paths
from harness.yamlsource import YamlSource, format_loc, load_yaml, pydantic_message


def load_runbook(path: Path) -> Runbook:
    """Parse and check a runbook; any problem is one BadInput line naming the file, line and field."""
    source = load_yaml(Path(path))
    if not isinstance(source.data, dict):
        raise source.error((), "a runbook is a mapping (name, nodes, steps, scenarios)")
    try:
        runbook = Runbook.model_validate(source.data)
    except ValidationError as error:
        first = error.errors()[0]
        raise source.error(tuple(first["loc"]), pydantic_message(first)) from None
    validate_runbook(runbook, source)
    return runbook


def unknown(what: str, value: str, known: Sequence[str] | Mapping[str, Any]) -> str:
    return f"unknown {what} {value!r} (known: {', '.join(known)})"


class Checker:
    """The loader's side of `harness.steps.CheckContext`: the runbook, the nodes started and the facts known."""

    def __init__(self, runbook: Runbook, source: YamlSource | None) -> None:
        self.runbook = runbook
        self.source = source
        self.nodes: Mapping[str, RunbookNode] = runbook.nodes
        self.started: set[str] = set()
        self.provided: dict[str, set[str]] = address_facts(runbook.nodes)

    def fail(self, loc: Loc, message: str) -> BadInput:
        if self.source is not None:
            return self.source.error(loc, message)
        return BadInput(f"{self.runbook.name}: {format_loc(loc)}: {message}")

    def node(self, name: str, loc: Loc) -> None:
        if name not in self.nodes:
            raise self.fail(loc, unknown("node", name, self.nodes))

    def templates(self, values: Sequence[object], loc: Loc, provided: Mapping[str, set[str]] | None = None) -> None:
        check_templates(values, self.provided if provided is None else provided, self.nodes, loc, self.fail)

    def start_templates(self, node: str, extra: Sequence[str]) -> list[str]:
        spec = self.nodes[node]
        return [*self.runbook.env.values(), *spec.env.values(), *spec.args, *extra]

    def checkpoint(self, ref: str, loc: Loc, *, optional: bool = False) -> CheckpointDef | None:
        node_name, checkpoint = split_ref(ref)
        if not checkpoint:
            raise self.fail(loc, f"checkpoint {ref!r} must be written node.checkpoint")
        if node_name == CONNTRACK:
            if checkpoint not in CONNTRACK_CHECKPOINTS:
                known = ", ".join(CONNTRACK_CHECKPOINTS)
                raise self.fail(loc, f"unknown checkpoint {ref!r} (conntrack has: {known})")
            return None
        if node_name == LAB:
            definition = find_checkpoint(LAB_SUT, checkpoint)
            if definition is None:
                raise self.fail(loc, f"unknown checkpoint {ref!r} (lab has: {', '.join(LAB_SUT.checkpoints)})")
            return definition
        if node_name not in self.nodes:
            raise self.fail(loc, f"unknown checkpoint {ref!r}: no node {node_name!r} (known: {', '.join(self.nodes)})")
        spec = self.nodes[node_name]
        definition = find_checkpoint(get_sut(spec.sut), checkpoint, spec.role)
        if definition is None:
            if optional and any(find_checkpoint(get_sut(n.sut), checkpoint) for n in self.nodes.values()):
                return None  # another node's SUT of this runbook defines it: skipped where it does not apply
            raise self.fail(loc, f"unknown checkpoint {ref!r}: SUT {spec.sut!r} defines none for a {spec.role.value}")
        return definition

    def provide(self, ref: str, definition: CheckpointDef, into: dict[str, set[str]] | None = None) -> None:
        provide(self.provided if into is None else into, ref, definition)

    def check_chain(self, chain: Chain, loc: Loc) -> None:
        # A chain is evaluated after the run: every node's SUT facts are known, and each item adds its own.
        known = {name: set(self.provided.get(name, set())) for name in self.nodes}
        for name, node in self.nodes.items():
            known[name] |= set(get_sut(node.sut).facts)
        earlier: set[str] = set()
        for index, item in enumerate(chain):
            item_loc = (*loc, index)
            for alternative in item.alternatives():
                definition = self.checkpoint(alternative.checkpoint or "", item_loc, optional=alternative.optional)
                values = [v for v in alternative.where.values() if isinstance(v, str)]
                self.templates(values, (*item_loc, "expect"), known)
                for node in alternative.between:
                    self.node(node, (*item_loc, "between"))
                if alternative.since is not None and alternative.since not in earlier:
                    raise self.fail(
                        (*item_loc, "since"), f"{alternative.since!r} is no earlier checkpoint of this chain"
                    )
                if definition is not None and not alternative.absent:  # what did not happen provides no facts
                    self.provide(alternative.checkpoint or "", definition, known)
            earlier |= {alternative.checkpoint or "" for alternative in item.alternatives() if not alternative.absent}


def address_facts(nodes: Mapping[str, RunbookNode]) -> dict[str, set[str]]:
    return {name: set(ADDRESS_FACTS) for name in nodes}


def provide(provided: dict[str, set[str]], ref: str, definition: CheckpointDef) -> None:
    node, checkpoint = split_ref(ref)
    facts = definition.provided_facts()
    provided.setdefault(node, set()).update(facts | {f"{checkpoint}.{fact}" for fact in facts})


def validate_runbook(runbook: Runbook, source: YamlSource | None = None) -> None:
    """Cross-file checks: NAT profiles, SUTs, nodes, checkpoints, template variables. Raises BadInput."""
    checker = Checker(runbook, source)
    fail = checker.fail
    profiles = nat_profile_names()
    nodes = runbook.nodes
    for name, node in nodes.items():
        if node.nat_profile not in profiles:
            raise fail(("nodes", name, "nat_profile"), unknown("NAT profile", node.nat_profile, profiles))
        try:
            sut = get_sut(node.sut)
        except BadInput as error:
            raise fail(("nodes", name, "sut"), str(error)) from None
        if node.role not in sut.roles:
            raise fail(("nodes", name, "sut"), f"SUT {node.sut!r} does not say how to start a {node.role.value}")
        if pseudo_node(name):
            raise fail(("nodes", name), f"{name!r} is reserved for the lab's own evidence")

    for index, scenario in enumerate(runbook.scenarios):
        for node_name, override in scenario.nodes.items():
            if node_name not in nodes:
                raise fail(("scenarios", index, "nodes", node_name), unknown("node", node_name, nodes))
            if override.nat_profile is not None and override.nat_profile not in profiles:
                raise fail(
                    ("scenarios", index, "nodes", node_name, "nat_profile"),
                    unknown("NAT profile", override.nat_profile, profiles),
                )
    if runbook.matrix is not None:
        for key in ("server_node", "client_node"):
            value = getattr(runbook.matrix, key)
            if value not in nodes:
                raise fail(("matrix", key), unknown("node", value, nodes))
        for server_profile, row in runbook.matrix.cells.items():
            for profile in (server_profile, *row):
                if profile not in profiles:
                    raise fail(("matrix", "cells", server_profile), unknown("NAT profile", profile, profiles))

    expects = [i for i, s in enumerate(runbook.steps) if isinstance(s, ExpectStep)]
    if len(expects) > 1 or (expects and expects[0] != len(runbook.steps) - 1):
        raise fail(("steps", expects[-1] if expects else 0), "one 'expect' step, and it must be the last step")
    for index, step in enumerate(runbook.steps):
        step.check(checker, ("steps", index))

    # Scenario env overrides are rendered at the node's first start: check them against what it had then.
    for index, scenario in enumerate(runbook.scenarios):
        for node_name, override in scenario.nodes.items():
            for key, value in override.env.items():
                if is_template(value):
                    check_templates(
                        [value],
                        provided_before_start(runbook, node_name),
                        nodes,
                        ("scenarios", index, "nodes", node_name, "env", key),
                        fail,
                    )


def provided_before_start(runbook: Runbook, node: str) -> dict[str, set[str]]:
    provided = address_facts(runbook.nodes)
    for step in runbook.steps:
        if isinstance(step, StartStep) and step.node == node:
            break
        if isinstance(step, WaitStep):
            node_name, checkpoint = split_ref(step.checkpoint)
            spec = runbook.nodes.get(node_name)
            definition = find_checkpoint(get_sut(spec.sut), checkpoint, spec.role) if spec else None
            if definition is not None:
                provide(provided, step.checkpoint, definition)
    return provided


def check_templates(
    values: Sequence[object],
    provided: Mapping[str, set[str]],
    nodes: Mapping[str, RunbookNode],
    loc: Loc,
    fail: Callable[[Loc, str], BadInput],
) -> None:
    for value in values:
        if not is_template(value):
            continue
        assert isinstance(value, str)
        try:
            paths = referenced_paths(value)
        except TemplateError as error:
            raise fail(loc, str(error)) from None
        for path in sorted(paths):
            root = path[0]
            if root not in nodes:
                raise fail(loc, f"template variable {root!r} is not a node (known: {', '.join(nodes)})")
            if len(path) == 1:
                raise fail(loc, f"template variable {root!r} names a node, not one of its facts")
            fact = ".".join(str(p) for p in path[1:3])
            if fact not in provided.get(root, set()) and path[1] not in provided.get(root, set()):
                have = sorted(f for f in provided.get(root, set()) if "." not in f)
                raise fail(
                    loc,
                    f"template variable '{'.'.join(map(str, path))}' is provided by no earlier step "
                    f"(known for {root}: {', '.join(have) or 'nothing yet'})",
                )
