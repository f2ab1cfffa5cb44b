"""Runbooks as data: load and check them before anything starts, then run one scenario on a backend.

    runbook YAML ─ load_runbook ─▶ Runbook (pydantic) ─ validate ─▶ run_scenario(backend)
                                                                       │ provision, steps, always finalize:
                                                                       │ collect, sanitise, match, verdict, report

The engine drives only the `Backend` protocol (harness.backends.base), so the same runbook runs on Docker now
and over SSH later. It never sleeps for its own sake: every wait is for a checkpoint or a node's exit, with a
deadline. Logs are sanitised as they arrive and appended to `<report_dir>/logs/<node>.log`, so a line number in
the evidence is the line number in that file. The verdict is computed after the fact over those files and the
routers' conntrack tables, the same way `dcutr-lab verify` computes it over a user's own logs.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from harness.backends.base import Backend
from harness.checkpoints import (
    ADDRESS_FACTS,
    ChainResult,
    Evidence,
    Hit,
    Miss,
    NodeLog,
    Skip,
    bind,
    evaluate_chain,
    find,
    norm,
    split_ref,
)
from harness.conntrack import ConntrackGroundTruth, outermost_routers
from harness.errors import BadInput, LabError, SetupError
from harness.models import (
    CollectStep,
    ExpectStep,
    RestartStep,
    Runbook,
    RunbookNode,
    RunStep,
    Scenario,
    ScenarioExpect,
    StartStep,
    StopStep,
    Topology,
    Verdict,
    WaitExitStep,
    WaitStep,
    nat_profile_names,
)
from harness.sanitise import Sanitiser
from harness.sut import CONNTRACK, CONNTRACK_CHECKPOINTS, checkpoint_defined_anywhere, find_checkpoint, get_sut
from harness.templating import TemplateError, is_template, referenced_paths, render
from harness.verdict import Outcome, as_expected, decide
from harness.yamlsource import YamlSource, load_yaml

Progress = Callable[[str], None]

# ---------------------------------------------------------------------------------------------------------
# loading and validation
# ---------------------------------------------------------------------------------------------------------


def load_runbook(path: Path) -> Runbook:
    """Parse and check a runbook; any problem is one BadInput line naming the file, line and field."""
    source = load_yaml(Path(path))
    if not isinstance(source.data, dict):
        raise source.error((), "a runbook is a mapping (name, nodes, steps, scenarios)")
    try:
        runbook = Runbook.model_validate(source.data)
    except ValidationError as error:
        first = error.errors()[0]
        raise source.error(tuple(first["loc"]), _pydantic_message(first)) from None
    validate_runbook(runbook, source)
    return runbook


def _pydantic_message(error: Mapping[str, Any]) -> str:
    kind = error.get("type", "")
    loc = error.get("loc", ())
    if kind == "extra_forbidden":
        return f"unknown key {loc[-1]!r}" if loc else "unknown key"
    if kind == "union_tag_invalid":
        ctx = error.get("ctx", {})
        return f"unknown action {ctx.get('tag')!r} (known: {ctx.get('expected_tags')})"
    if kind == "missing":
        return "required field missing"
    message = str(error.get("msg", "invalid"))
    return message.removeprefix("Value error, ")


def validate_runbook(runbook: Runbook, source: YamlSource | None = None) -> None:
    """Cross-file checks: NAT profiles, SUTs, nodes, checkpoints, template variables. Raises BadInput."""

    def fail(loc: tuple[str | int, ...], message: str) -> BadInput:
        if source is not None:
            return source.error(loc, message)
        from harness.yamlsource import format_loc

        return BadInput(f"{runbook.name}: {format_loc(loc)}: {message}")

    profiles = nat_profile_names()
    nodes = runbook.nodes
    for name, node in nodes.items():
        if node.nat_profile not in profiles:
            raise fail(("nodes", name, "nat_profile"), _unknown("NAT profile", node.nat_profile, profiles))
        _check_sut(node.sut, ("nodes", name, "sut"), fail)
        if node.role not in get_sut(node.sut).roles:
            raise fail(("nodes", name, "sut"), f"SUT {node.sut!r} does not say how to start a {node.role.value}")
        if name == CONNTRACK:
            raise fail(("nodes", name), f"{CONNTRACK!r} is reserved for the conntrack ground truth")

    for index, scenario in enumerate(runbook.scenarios):
        for node_name, override in scenario.nodes.items():
            if node_name not in nodes:
                raise fail(("scenarios", index, "nodes", node_name), _unknown("node", node_name, nodes))
            if override.nat_profile is not None and override.nat_profile not in profiles:
                raise fail(
                    ("scenarios", index, "nodes", node_name, "nat_profile"),
                    _unknown("NAT profile", override.nat_profile, profiles),
                )
    if runbook.matrix is not None:
        for key in ("server_node", "client_node"):
            value = getattr(runbook.matrix, key)
            if value not in nodes:
                raise fail(("matrix", key), _unknown("node", value, nodes))
        for server_profile, row in runbook.matrix.cells.items():
            for profile in (server_profile, *row):
                if profile not in profiles:
                    raise fail(("matrix", "cells", server_profile), _unknown("NAT profile", profile, profiles))

    provided = _address_facts(nodes)
    started: set[str] = set()
    expects = [i for i, s in enumerate(runbook.steps) if isinstance(s, ExpectStep)]
    if len(expects) > 1 or (expects and expects[0] != len(runbook.steps) - 1):
        raise fail(("steps", expects[-1] if expects else 0), "one 'expect' step, and it must be the last step")

    for index, step in enumerate(runbook.steps):
        loc: tuple[str | int, ...] = ("steps", index)
        if isinstance(step, StartStep | StopStep | RestartStep | WaitExitStep) and step.node not in nodes:
            raise fail((*loc, "node"), _unknown("node", step.node, nodes))
        if isinstance(step, StartStep):
            _check_templates(_start_templates(runbook, step.node, step), provided, nodes, (*loc, "start"), fail)
            started.add(step.node)
        elif isinstance(step, StopStep | RestartStep | WaitExitStep) and step.node not in started:
            raise fail((*loc, "node"), f"node {step.node!r} is not started by an earlier step")
        elif isinstance(step, RestartStep):
            _check_templates(_start_templates(runbook, step.node, step), provided, nodes, (*loc, "restart"), fail)
        elif isinstance(step, WaitStep):
            definition = _check_ref(step.checkpoint, nodes, (*loc, "checkpoint"), fail, optional=False)
            node_name, checkpoint = split_ref(step.checkpoint)
            if node_name not in started:
                raise fail((*loc, "checkpoint"), f"node {node_name!r} is not started by an earlier step")
            _check_templates(list(step.where.values()), provided, nodes, (*loc, "wait"), fail)
            assert definition is not None
            facts = definition.provided_facts()
            provided.setdefault(node_name, set()).update(facts)
            provided[node_name] |= {f"{checkpoint}.{fact}" for fact in facts}
        elif isinstance(step, RunStep):
            if step.on not in nodes and not any(step.on.startswith(f"{n}-") for n in nodes):
                raise fail((*loc, "on"), f"{step.on!r} is neither a node nor a router of one (<node>-router)")
            _check_templates(step.command, provided, nodes, (*loc, "run"), fail)
        elif isinstance(step, ExpectStep):
            ambient = {name: set(provided.get(name, set())) for name in nodes}
            for name, node in nodes.items():
                ambient[name] |= set(get_sut(node.sut).facts)
            for chain_name in ("checkpoints", "relayed"):
                chain_provided = {k: set(v) for k, v in ambient.items()}
                for item_index, item in enumerate(getattr(step, chain_name)):
                    item_loc = (*loc, chain_name, item_index)
                    for alternative in item.alternatives():
                        definition = _check_ref(
                            alternative.checkpoint or "", nodes, item_loc, fail, optional=alternative.optional
                        )
                        values = [v for v in alternative.where.values() if isinstance(v, str)]
                        _check_templates(
                            [*values, *alternative.endpoints], chain_provided, nodes, (*item_loc, "expect"), fail
                        )
                        if definition is not None:
                            node_name, checkpoint = split_ref(alternative.checkpoint or "")
                            facts = definition.provided_facts()
                            chain_provided.setdefault(node_name, set()).update(facts)
                            chain_provided[node_name] |= {f"{checkpoint}.{fact}" for fact in facts}
    # Scenario env overrides are rendered at the node's first start: check them against what it had then.
    for index, scenario in enumerate(runbook.scenarios):
        for node_name, override in scenario.nodes.items():
            for key, value in override.env.items():
                if is_template(value):
                    _check_templates(
                        [value],
                        _provided_before_start(runbook, node_name),
                        nodes,
                        ("scenarios", index, "nodes", node_name, "env", key),
                        fail,
                    )


def _unknown(what: str, value: str, known: Sequence[str] | Mapping[str, Any]) -> str:
    return f"unknown {what} {value!r} (known: {', '.join(known)})"


def _check_sut(name: str, loc: tuple[str | int, ...], fail: Callable[..., BadInput]) -> None:
    try:
        get_sut(name)
    except BadInput as error:
        raise fail(loc, str(error)) from None


def _address_facts(nodes: Mapping[str, RunbookNode]) -> dict[str, set[str]]:
    return {name: set(ADDRESS_FACTS) for name in nodes}


def _start_templates(runbook: Runbook, node: str, step: StartStep | RestartStep) -> list[str]:
    spec = runbook.nodes[node]
    values = [*runbook.env.values(), *spec.env.values(), *spec.args, *step.env.values()]
    if isinstance(step, StartStep):
        values += step.args
    return values


def _provided_before_start(runbook: Runbook, node: str) -> dict[str, set[str]]:
    provided = _address_facts(runbook.nodes)
    for step in runbook.steps:
        if isinstance(step, StartStep) and step.node == node:
            break
        if isinstance(step, WaitStep):
            node_name, checkpoint = split_ref(step.checkpoint)
            spec = runbook.nodes.get(node_name)
            definition = find_checkpoint(get_sut(spec.sut), checkpoint, spec.role) if spec else None
            if definition is not None:
                facts = definition.provided_facts()
                provided.setdefault(node_name, set()).update(facts | {f"{checkpoint}.{f}" for f in facts})
    return provided


def _check_ref(
    ref: str,
    nodes: Mapping[str, RunbookNode],
    loc: tuple[str | int, ...],
    fail: Callable[..., BadInput],
    *,
    optional: bool,
) -> Any:
    node_name, checkpoint = split_ref(ref)
    if not checkpoint:
        raise fail(loc, f"checkpoint {ref!r} must be written node.checkpoint")
    if node_name == CONNTRACK:
        if checkpoint not in CONNTRACK_CHECKPOINTS:
            raise fail(loc, f"unknown checkpoint {ref!r} (conntrack has: {', '.join(CONNTRACK_CHECKPOINTS)})")
        return None
    if node_name not in nodes:
        raise fail(loc, f"unknown checkpoint {ref!r}: no node {node_name!r} (known: {', '.join(nodes)})")
    spec = nodes[node_name]
    definition = find_checkpoint(get_sut(spec.sut), checkpoint, spec.role)
    if definition is None:
        if optional and checkpoint_defined_anywhere(checkpoint):
            return None
        raise fail(loc, f"unknown checkpoint {ref!r}: SUT {spec.sut!r} defines none for a {spec.role.value}")
    return definition


def _check_templates(
    values: Sequence[object],
    provided: Mapping[str, set[str]],
    nodes: Mapping[str, RunbookNode],
    loc: tuple[str | int, ...],
    fail: Callable[..., BadInput],
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


# ---------------------------------------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------------------------------------


@dataclass
class CheckpointRecord:
    """One line of the report's timeline: a checkpoint met, missed, skipped or not reached."""

    name: str
    status: str  # met | missed | skipped | not reached
    t: float | None = None
    facts: dict[str, Any] = field(default_factory=dict)
    evidence: list[Evidence] = field(default_factory=list)
    reason: str = ""

    @property
    def node(self) -> str:
        return self.name.split(".", 1)[0]


@dataclass
class StepRecord:
    index: int
    action: str
    summary: str
    status: str = "pending"  # ok | failed | skipped | pending
    t: float | None = None
    duration: float | None = None
    detail: str = ""


@dataclass
class ScenarioResult:
    runbook: str
    scenario_id: str
    run_id: str
    backend: str
    report_dir: Path
    expected: ScenarioExpect
    verdict: Verdict = Verdict.fail
    as_expected: bool = False
    first_missing: Miss | None = None
    checkpoints: list[CheckpointRecord] = field(default_factory=list)
    relayed_checkpoints: list[CheckpointRecord] = field(default_factory=list)
    timings: dict[str, float | None] = field(default_factory=dict)
    steps: list[StepRecord] = field(default_factory=list)
    started_at: float = 0.0
    duration: float = 0.0
    error: str | None = None
    description: str = ""
    markers: list[str] = field(default_factory=list)
    topology: Topology | None = None
    environment: dict[str, Any] = field(default_factory=dict)
    conntrack: list[dict[str, Any]] = field(default_factory=list)
    placeholders: list[str] = field(default_factory=list)
    attempt: int = 1

    @property
    def first_missing_text(self) -> str | None:
        if self.first_missing is None:
            return None
        return f"{self.first_missing.name}: {self.first_missing.reason}"


class StepFailed(Exception):
    """A step could not be completed (a wait missed its deadline, a command failed): stop the steps."""


# ---------------------------------------------------------------------------------------------------------
# the engine
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Clock:
    """Time sources, injectable so unit tests replay logs on a fake clock."""

    monotonic: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep


class _Run:
    """The state of one scenario run. `run_scenario` is its only user."""

    def __init__(
        self,
        runbook: Runbook,
        scenario: Scenario,
        backend: Backend,
        report_dir: Path,
        clock: Clock,
        progress: Progress | None,
        poll_interval: float,
        keep_raw: bool,
    ) -> None:
        self.runbook = runbook
        self.scenario = scenario
        self.backend = backend
        self.report_dir = report_dir
        self.clock = clock
        self.progress = progress or (lambda _message: None)
        self.poll_interval = poll_interval
        self.keep_raw = keep_raw
        self.topology = runbook.topology(scenario)
        self.sanitiser = Sanitiser(hash_peer_ids=runbook.sanitise.hash_peer_ids)
        self.logs: dict[str, NodeLog] = {}
        self.namespace: dict[str, dict[str, Any]] = {}
        self.last_start: dict[str, tuple[list[str], dict[str, str]]] = {}
        self.collected = False
        self.mono_start = clock.monotonic()
        self.wall_start = clock.wall()
        self.result = ScenarioResult(
            runbook=runbook.name,
            scenario_id=scenario.id,
            run_id=backend.run_id,
            backend=backend.name,
            report_dir=report_dir,
            expected=scenario.expect,
            started_at=self.wall_start,
            description=scenario.description or runbook.description,
            markers=list(scenario.markers),
            topology=self.topology,
        )

    # -- time ------------------------------------------------------------------------------------------

    def now(self) -> float:
        """Seconds since the scenario started."""
        return self.clock.monotonic() - self.mono_start

    def seen_epoch(self) -> float:
        return self.wall_start + self.now()

    # -- setup -----------------------------------------------------------------------------------------

    def provision(self) -> None:
        self.progress(f"provisioning {', '.join(f'{n} ({v.nat_profile})' for n, v in self.topology.nodes.items())}")
        began = self.now()
        self.backend.provision(self.topology)
        self.result.timings["setup"] = self.now() - began
        addresses = dict(self.backend.addresses())
        hints = self.backend.sanitise_hints()
        self.sanitiser = Sanitiser.from_addresses(
            addresses,
            aliases=self.runbook.sanitise.aliases,
            hostnames=hints.hostnames,
            users=hints.users,
            hash_peer_ids=self.runbook.sanitise.hash_peer_ids,
        )
        for name in self.topology.nodes:
            addr = addresses.get(name)
            self.namespace[name] = {
                "public_ip": self.sanitiser.placeholder_for(addr.public_ip) if addr else "",
                "lan_ip": self.sanitiser.placeholder_for(addr.lan_ip) if addr and addr.lan_ip else "",
            }
        (self.report_dir / "logs").mkdir(parents=True, exist_ok=True)
        for name, node in self.topology.nodes.items():
            self.logs[name] = NodeLog(name, f"logs/{name}.log", get_sut(node.sut), node.role)
            (self.report_dir / "logs" / f"{name}.log").write_text("")
        self.result.placeholders = self.sanitiser.placeholders()

    # -- logs ------------------------------------------------------------------------------------------

    def pull(self, nodes: Sequence[str] | None = None) -> None:
        """Read what the nodes logged since the last pull; sanitise it; append it to the logs/ files."""
        seen = self.seen_epoch()
        for name in nodes or list(self.logs):
            log = self.logs[name]
            raw = self.backend.log_lines(name, len(log.lines))
            if not raw:
                continue
            clean = self.sanitiser.lines(raw, stream=name)
            log.append(clean, seen=seen)
            with (self.report_dir / log.file).open("a") as handle:
                handle.writelines(line + "\n" for line in clean)

    # -- steps -----------------------------------------------------------------------------------------

    def run_steps(self) -> None:
        steps = self.runbook.steps
        for index, step in enumerate(steps):
            record = StepRecord(index, step.action, _summary(step))
            self.result.steps.append(record)
        for index, step in enumerate(steps):
            record = self.result.steps[index]
            record.t = self.now()
            self.progress(f"step {index + 1}/{len(steps)}: {record.summary}")
            try:
                detail = self.step(step)
            except StepFailed as failure:
                record.status = "failed"
                record.detail = str(failure)
                record.duration = self.now() - record.t
                for later in self.result.steps[index + 1 :]:
                    later.status = "skipped"
                raise
            record.status = "ok"
            record.detail = detail or ""
            record.duration = self.now() - record.t

    def step(self, step: Any) -> str | None:
        if isinstance(step, StartStep):
            return self.start(step.node, step.env, step.args)
        if isinstance(step, RestartStep):
            self.pull()
            self.backend.stop(step.node, step.timeout)
            self.pull()
            command, env = self.last_start[step.node]
            env = {**env, **self.render_env(step.env)}
            return self.launch(step.node, command, env)
        if isinstance(step, StopStep):
            self.backend.stop(step.node, step.timeout)
            self.pull()
            return None
        if isinstance(step, WaitStep):
            return self.wait(step)
        if isinstance(step, WaitExitStep):
            return self.wait_exit(step)
        if isinstance(step, RunStep):
            return self.run_command(step)
        if isinstance(step, CollectStep):
            self.collect()
            return None
        if isinstance(step, ExpectStep):
            return "evaluated after collecting"
        raise AssertionError(f"unhandled step {step!r}")

    def render(self, value: str) -> str:
        """Render over the (sanitised) facts, then put real addresses back for the node."""
        try:
            return self.sanitiser.restore(render(value, self.namespace))
        except TemplateError as error:
            raise StepFailed(str(error)) from None

    def render_env(self, env: Mapping[str, str]) -> dict[str, str]:
        return {key: self.render(value) for key, value in env.items()}

    def start(self, node: str, step_env: Mapping[str, str], step_args: Sequence[str]) -> str:
        spec = self.runbook.nodes[node]
        sut_role = get_sut(spec.sut).roles[spec.role]
        override = self.scenario.nodes.get(node)
        env = {
            **sut_role.env,
            **self.runbook.env,
            **spec.env,
            **step_env,
            **(override.env if override else {}),
        }
        command = [*sut_role.command, *spec.args, *step_args]
        return self.launch(node, [self.render(part) for part in command], self.render_env(env))

    def launch(self, node: str, command: list[str], env: dict[str, str]) -> str:
        self.pull([node])
        self.logs[node].mark_restart()
        self.backend.start(node, command, env)
        self.last_start[node] = (command, env)
        shown = " ".join(f"{k}={v}" for k, v in sorted(env.items()))
        return self.sanitiser.line(f"{' '.join(command)}  {shown}".strip())

    def wait(self, step: WaitStep) -> str:
        node, checkpoint = split_ref(step.checkpoint)
        log = self.logs[node]
        expected = {
            key: norm(self.render(value) if isinstance(value, str) else value) for key, value in step.where.items()
        }
        # Compare sanitised to sanitised: a rendered address was restored for the node, not for matching.
        expected = {key: self.sanitiser.line(value) for key, value in expected.items()}
        deadline = self.now() + step.within
        while True:
            self.pull()
            outcome = find(log, checkpoint, expected=expected, after_line=log.session_start)
            if isinstance(outcome, Hit):
                bind(self.namespace, outcome)
                return f"{outcome.evidence[0].ref} after {self.now():.1f}s"
            code = self.backend.exit_code(node)
            if code is not None:
                self.pull([node])
                outcome = find(log, checkpoint, expected=expected, after_line=log.session_start)
                if isinstance(outcome, Hit):
                    bind(self.namespace, outcome)
                    return f"{outcome.evidence[0].ref} after {self.now():.1f}s"
                raise StepFailed(f"{node} exited with code {code} before {step.checkpoint}: {outcome.reason}")
            if self.now() >= deadline:
                tail = "; last lines: " + " | ".join(line.text[-160:] for line in log.lines[-3:]) if log.lines else ""
                raise StepFailed(f"{step.checkpoint} not met within {step.within:g}s: {outcome.reason}{tail}")
            self.clock.sleep(self.poll_interval)

    def wait_exit(self, step: WaitExitStep) -> str:
        deadline = self.now() + step.within
        while True:
            self.pull()
            code = self.backend.exit_code(step.node)
            if code is not None:
                self.pull()
                if step.code is not None and code != step.code:
                    raise StepFailed(f"{step.node} exited with code {code}, expected {step.code}")
                return f"{step.node} exited with code {code} after {self.now():.1f}s"
            if self.now() >= deadline:
                raise StepFailed(f"{step.node} still running after {step.within:g}s")
            self.clock.sleep(self.poll_interval)

    def run_command(self, step: RunStep) -> str:
        command = [self.render(part) for part in step.command]
        outcome = self.backend.exec(step.on, command, timeout=step.timeout)
        output = self.sanitiser.text(outcome.output.rstrip("\n"), stream=f"run:{step.on}")
        shown = self.sanitiser.line(" ".join(command))
        detail = f"$ {shown} (on {step.on}) -> exit {outcome.exit_code}\n{output}".rstrip()
        if step.code is not None and outcome.exit_code != step.code:
            raise StepFailed(
                f"`{shown}` on {step.on} exited {outcome.exit_code}, expected {step.code}: {output[-300:]}"
            )
        return detail

    # -- finalize --------------------------------------------------------------------------------------

    def collect(self) -> None:
        if self.collected:
            return
        self.collected = True
        raw_dir = self.report_dir / "raw"
        try:
            self.pull()
        except Exception as error:  # a broken backend still gets its artefacts collected below
            self._note_error(f"reading logs: {error}")
        try:
            self.backend.collect(raw_dir)
        except Exception as error:
            self._note_error(f"collecting artefacts: {error}")
        self._catch_up_from_raw(raw_dir)
        self._sanitise_artefacts(raw_dir)

    def _catch_up_from_raw(self, raw_dir: Path) -> None:
        """If the backend stopped answering log_lines, the collected files still hold the rest."""
        for name, log in self.logs.items():
            path = raw_dir / f"{name}.log"
            if not path.is_file():
                continue
            lines = path.read_text(errors="replace").splitlines()
            if len(lines) > len(log.lines):
                clean = self.sanitiser.lines(lines[len(log.lines) :], stream=name)
                log.append(clean, seen=self.seen_epoch())
                with (self.report_dir / log.file).open("a") as handle:
                    handle.writelines(line + "\n" for line in clean)

    def _sanitise_artefacts(self, raw_dir: Path) -> None:
        if not raw_dir.is_dir():
            return
        for path in sorted(raw_dir.iterdir()):
            if path.suffix in (".conntrack", ".nft"):
                target = self.report_dir / ("conntrack" if path.suffix == ".conntrack" else "routers") / path.name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(self.sanitiser.text(path.read_text(errors="replace"), stream=path.name))
        if not self.keep_raw:
            # Raw artefacts hold real addresses (and addresses.json the whole map): never leave them in a report.
            shutil.rmtree(raw_dir, ignore_errors=True)

    def _note_error(self, message: str) -> None:
        self.result.error = f"{self.result.error}; {message}" if self.result.error else message

    def conntrack_check(self) -> ConntrackGroundTruth:
        tables: dict[str, tuple[str, str]] = {}
        directory = self.report_dir / "conntrack"
        if directory.is_dir():
            for path in sorted(directory.glob("*.conntrack")):
                tables[path.stem] = (f"conntrack/{path.name}", path.read_text())
        try:
            router_names = list(self.backend.routers())
        except Exception:
            router_names = sorted(tables)
        private = [n for n, node in self.topology.nodes.items() if node.nat_profile != "none" and n in self.logs]
        required = outermost_routers(router_names, private)
        self.result.conntrack = [
            {"router": r, "file": tables[r][0] if r in tables else None, "required": r in required}
            for r in router_names
        ]
        return ConntrackGroundTruth(tables=tables, required=required)

    def evaluate(self) -> Outcome:
        expect = self.runbook.expect_step()
        if expect is None:
            raise BadInput(f"runbook {self.runbook.name}: no 'expect' step to decide a verdict")
        base = {name: {k: v for k, v in facts.items() if k in ADDRESS_FACTS} for name, facts in self.namespace.items()}
        ground_truth = self.conntrack_check()
        direct = evaluate_chain(
            expect.checkpoints, self.logs, base=base, conntrack=ground_truth, clock_skew=expect.clock_skew
        )
        relayed = (
            evaluate_chain(expect.relayed, self.logs, base=base, conntrack=ground_truth, clock_skew=expect.clock_skew)
            if expect.relayed
            else None
        )
        return decide(direct, relayed)


def run_scenario(
    runbook: Runbook,
    scenario_id: str,
    backend: Backend,
    report_dir: Path,
    *,
    progress: Progress | None = None,
    clock: Clock | None = None,
    poll_interval: float = 0.25,
    keep_raw: bool = False,
    attempt: int = 1,
) -> ScenarioResult:
    """Provision the scenario's topology, run the steps, and ALWAYS collect, sanitise, decide and report.

    Never closes the backend: the caller owns its lifetime. Raises BadInput / SetupError (after writing the
    report) when the lab itself could not run; any other failure becomes a `fail` verdict with its reason.
    """
    from harness.report import write_scenario_report

    scenario = runbook.scenarios_by_id.get(scenario_id)
    if scenario is None:
        raise BadInput(
            f"runbook {runbook.name}: no scenario {scenario_id!r} (known: {', '.join(runbook.scenarios_by_id)})"
        )
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    run = _Run(runbook, scenario, backend, report_dir, clock or Clock(), progress, poll_interval, keep_raw)
    run.result.attempt = attempt
    run.result.environment = _environment(backend, runbook, scenario)
    fatal: BaseException | None = None
    try:
        run.provision()
        run.run_steps()
    except StepFailed as failure:
        run._note_error(str(failure))
    except (BadInput, SetupError) as error:
        run._note_error(str(error))
        fatal = error
    except LabError as error:
        run._note_error(str(error))
    except Exception as error:  # a backend bug must not lose the report; the traceback goes to --debug
        run._note_error(f"{type(error).__name__}: {error}")
    except BaseException as interrupt:  # Ctrl-C: still collect and report, then let it through
        run._note_error("interrupted")
        fatal = interrupt
    finally:
        teardown_began = run.now()
        try:
            run.collect()  # even when provisioning broke half-way: whatever exists is evidence
            outcome = run.evaluate() if run.logs else None
        except Exception as error:
            run._note_error(f"evaluating: {error}")
            outcome = None
        _fill_result(run, outcome)
        run.result.timings["teardown"] = run.now() - teardown_began
        run.result.duration = run.now()
        run.progress(
            f"verdict: {run.result.verdict.value} ({'as expected' if run.result.as_expected else 'NOT as expected'})"
        )
        write_scenario_report(run.result, run.logs)
    if fatal is not None:
        raise fatal
    return run.result


def _fill_result(run: _Run, outcome: Outcome | None) -> None:
    result = run.result
    if outcome is None:
        result.verdict = Verdict.fail
        result.first_missing = Miss("setup", result.error or "the lab did not start")
        result.as_expected = False
        return
    result.verdict = outcome.verdict
    result.first_missing = outcome.first_missing
    # The verdict comes from the logs and the routers, whatever step failed: a negative control is expected to
    # break a wait. A lab that never started has no verdict to be as expected (outcome None, above).
    result.as_expected = as_expected(outcome.verdict, outcome.first_missing, result.expected)
    result.checkpoints = _records(outcome.direct, run.wall_start)
    result.relayed_checkpoints = _records(outcome.relayed, run.wall_start) if outcome.relayed else []
    result.timings.update(_timings(outcome.direct, run.wall_start))


def _records(chain: ChainResult, wall_start: float) -> list[CheckpointRecord]:
    records: list[CheckpointRecord] = []
    for item in chain.items:
        if isinstance(item, Hit):
            records.append(
                CheckpointRecord(
                    item.name,
                    "met",
                    t=None if item.time is None else item.time - wall_start,
                    facts=dict(item.facts),
                    evidence=list(item.evidence),
                )
            )
        elif isinstance(item, Miss):
            records.append(CheckpointRecord(item.name, "missed", evidence=list(item.evidence), reason=item.reason))
        elif isinstance(item, Skip):
            records.append(CheckpointRecord(item.name, "skipped", reason=item.reason))
    records += [CheckpointRecord(name, "not reached") for name in chain.not_reached]
    return records


def _timings(chain: ChainResult, wall_start: float) -> dict[str, float | None]:
    def first(checkpoint: str) -> Hit | None:
        return next((h for h in chain.hits if h.checkpoint == checkpoint and h.time is not None), None)

    def last(checkpoint: str) -> Hit | None:
        found = [h for h in chain.hits if h.checkpoint == checkpoint and h.time is not None]
        return max(found, key=lambda h: h.time or 0.0) if found else None

    reservation, dcutr, handshake = first("reservation_accepted"), first("dcutr_direct"), last("handshake_direct")
    punch = dcutr.time - reservation.time if dcutr and reservation and dcutr.time and reservation.time else None
    shake = handshake.time - dcutr.time if handshake and dcutr and handshake.time and dcutr.time else None
    return {"punch": punch, "handshake": shake}


def _summary(step: Any) -> str:
    if isinstance(step, StartStep):
        return f"start {step.node}"
    if isinstance(step, WaitStep):
        return f"wait {step.checkpoint} within {step.within:g}s"
    if isinstance(step, WaitExitStep):
        return f"wait for {step.node} to exit within {step.within:g}s"
    if isinstance(step, RunStep):
        return step.name or f"run `{' '.join(step.command)}` on {step.on}"
    if isinstance(step, StopStep):
        return f"stop {step.node}"
    if isinstance(step, RestartStep):
        return f"restart {step.node}"
    if isinstance(step, CollectStep):
        return "collect logs and conntrack tables"
    if isinstance(step, ExpectStep):
        return f"expect {len(step.checkpoints)} checkpoints in order"
    return str(step)


def _environment(backend: Backend, runbook: Runbook, scenario: Scenario) -> dict[str, Any]:
    import platform

    import harness

    info: dict[str, Any] = {
        "harness": harness.__version__,
        "python": platform.python_version(),
        "runbook": runbook.name,
        "scenario": scenario.id,
        "suts": sorted({node.sut for node in runbook.nodes.values()}),
    }
    try:
        info.update(backend.describe())  # versions, image ids: whatever the backend knows
    except Exception as error:
        info["backend_error"] = str(error)
    return info


# ---------------------------------------------------------------------------------------------------------
# repeats
# ---------------------------------------------------------------------------------------------------------


@dataclass
class RepeatResult:
    scenario_id: str
    label: str
    attempts: list[ScenarioResult]

    @property
    def final(self) -> ScenarioResult:
        return self.attempts[-1]


def run_repeated(
    runbook: Runbook,
    scenario_id: str,
    make_backend: Callable[[int], Backend],
    report_dir: Path,
    *,
    attempts: int | None = None,
    progress: Progress | None = None,
    clock: Clock | None = None,
    poll_interval: float = 0.25,
) -> RepeatResult:
    """Run a scenario with the bounded retry policy, or exactly `attempts` times for a success rate.

    Without `attempts`: up to 3 attempts, stopping at the first one as expected (PASS, PASS-FLAKY, FAIL).
    With `attempts=N`: N attempts whatever happens; the label still counts only the first 3.
    Each attempt gets a fresh backend from `make_backend(attempt)` (closed here) and its own
    `report_dir/attempt-<n>/`.
    """
    from harness.verdict import MAX_ATTEMPTS, label

    results: list[ScenarioResult] = []
    total = attempts if attempts is not None else MAX_ATTEMPTS
    for number in range(1, total + 1):
        backend = make_backend(number)
        try:
            result = run_scenario(
                runbook,
                scenario_id,
                backend,
                Path(report_dir) / f"attempt-{number}",
                progress=progress,
                clock=clock,
                poll_interval=poll_interval,
                attempt=number,
            )
        finally:
            backend.close()
        results.append(result)
        if attempts is None and result.as_expected:
            break
    return RepeatResult(scenario_id, label([r.as_expected for r in results]).value, results)


def discover_scenarios(directory: Path) -> list[tuple[Path, Runbook, Scenario]]:
    """Every (runbook file, runbook, scenario) under `directory`, in file then scenario order: what the e2e
    suite turns into one pytest id per scenario (`pytest.param(..., id=scenario.id, marks=scenario.markers)`).
    A bad runbook raises BadInput here, at collection time."""
    found = []
    for path in sorted(Path(directory).glob("*.yaml")):
        runbook = load_runbook(path)
        found += [(path, runbook, scenario) for scenario in runbook.scenarios]
    return found
