"""Run one scenario of a runbook on a backend, and always collect, sanitise, decide and report.

    Runbook ─ run_scenario(backend) ─▶ provision, steps (harness.steps), then always:
                                       collect, sanitise, match checkpoints, verdict, report

The engine drives only the `Backend` protocol (harness.backends.base), so a runbook runs the same on Docker and
over SSH. It never sleeps for its own sake: every wait is for a checkpoint or a node's exit, with a deadline.
Logs are sanitised as they arrive and appended to `<report_dir>/logs/<node>.log`, so a line number in the
evidence is the line number in that file. The verdict is computed after the fact over those files and the
routers' conntrack tables, the same way `dcutr-lab verify` computes it over a user's own logs. Nothing here
names a SUT or its checkpoints: they come from the runbook and the SUT files.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.backends.base import Backend
from harness.chains import evaluate_chain
from harness.checkpoints import ADDRESS_FACTS, ChainResult, Miss, NodeLog
from harness.errors import BadInput, LabError, SetupError
from harness.ground_truth import GroundTruth, NatHop, Side, claims_against_the_lab
from harness.models import Chain, ExpectedVerdict, Phase, Role, Verdict
from harness.results import RouterTable, ScenarioResult, StepRecord, phase_timings, records
from harness.runbook.environment import environment
from harness.runbook.model import Runbook, Scenario
from harness.sanitise import Sanitiser
from harness.steps import StepFailed, StepMissed
from harness.sut import LAB, LAB_SUT, get_sut
from harness.templating import TemplateError, render
from harness.verdict import Outcome, as_expected, decide

Progress = Callable[[str], None]


@dataclass
class Clock:
    """Time sources, injectable so unit tests replay logs on a fake clock."""

    monotonic: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep


class ScenarioRun:
    """The state of one scenario run, and the `harness.steps.RunContext` its steps act through."""

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
        reuse: bool = False,
    ) -> None:
        self.runbook = runbook
        self.scenario = scenario
        self.backend = backend
        self.report_dir = report_dir
        self.clock = clock
        self.progress = progress or (lambda _message: None)
        self.poll_interval = poll_interval
        self.keep_raw = keep_raw
        self.reuse = reuse
        self.topology = runbook.topology(scenario)
        self.sanitiser = Sanitiser(hash_peer_ids=runbook.sanitise.hash_peer_ids)
        self.logs: dict[str, NodeLog] = {}
        self.namespace: dict[str, dict[str, Any]] = {}
        self.last_start: dict[str, tuple[list[str], dict[str, str]]] = {}
        self.waited: dict[str, int] = {}
        self._ground: GroundTruth | None = None
        self.collected = False
        self._recorded: dict[str, int] = {}  # report file -> lines written by `record`
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

    def sleep(self, seconds: float) -> None:
        self.clock.sleep(seconds)

    def seen_epoch(self) -> float:
        return self.wall_start + self.now()

    # -- setup -----------------------------------------------------------------------------------------

    def provision(self) -> None:
        nodes = ", ".join(f"{n} ({v.nat_profile})" for n, v in self.topology.nodes.items())
        began = self.now()
        if self.reuse:  # the topology of an earlier attempt, made as new (harness.backends.base.Reusable)
            self.progress(f"resetting {nodes}")
            self.backend.reset(self.topology)  # type: ignore[attr-defined]
        else:
            self.progress(f"provisioning {nodes}")
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
        self.logs[LAB] = NodeLog(LAB, f"logs/{LAB}.log", LAB_SUT)
        (self.report_dir / "logs" / f"{LAB}.log").write_text("")
        self.result.placeholders = self.sanitiser.placeholders()

    # -- logs ------------------------------------------------------------------------------------------

    def note(self, event: str, target: str) -> None:
        """The lab's own record (logs/lab.log): what it did to which node, and when (its own clock)."""
        from datetime import UTC, datetime

        stamp = datetime.fromtimestamp(self.seen_epoch(), tz=UTC).isoformat().replace("+00:00", "Z")
        line = json.dumps({"ts": stamp, "node": LAB, "event": event, "target": target})
        self._append(self.logs[LAB], [line])

    def pull(self, nodes: Sequence[str] | None = None) -> None:
        """Read what the nodes logged since the last pull; sanitise it; append it to the logs/ files."""
        for name in nodes or [n for n in self.logs if n != LAB]:
            log = self.logs[name]
            self._append(log, self.backend.log_lines(name, len(log.lines)))

    def _append(self, log: NodeLog, raw: Sequence[str]) -> None:
        if not raw:
            return
        clean = self.sanitiser.lines(raw, stream=log.node)
        log.append(clean, seen=self.seen_epoch())
        with (self.report_dir / log.file).open("a") as handle:
            handle.writelines(line + "\n" for line in clean)

    def sanitise(self, text: str, stream: str = "") -> str:
        return self.sanitiser.text(text, stream=stream) if stream else self.sanitiser.line(text)

    # -- what steps use ----------------------------------------------------------------------------------

    def run_steps(self) -> None:
        steps = self.runbook.steps
        self.result.steps = [StepRecord(index, step.action, step.summary()) for index, step in enumerate(steps)]
        for index, step in enumerate(steps):
            record = self.result.steps[index]
            record.t = self.now()
            self.progress(f"step {index + 1}/{len(steps)}: {record.summary}")
            try:
                detail = step.run(self)
            except StepMissed as miss:
                record.status = "missed"
                record.detail = str(miss)
                record.duration = self.now() - record.t
                continue
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

    def render(self, value: str) -> str:
        """Render over the (sanitised) facts, then put real addresses back for the node."""
        try:
            return self.sanitiser.restore(render(value, self.namespace))
        except TemplateError as error:
            raise StepFailed(str(error)) from None

    def start(self, node: str, env: Mapping[str, str], args: Sequence[str]) -> str:
        spec = self.runbook.nodes[node]
        sut_role = get_sut(spec.sut).roles[spec.role]
        override = self.scenario.nodes.get(node)
        merged = {**sut_role.env, **self.runbook.env, **spec.env, **env, **(override.env if override else {})}
        command = [*sut_role.command, *spec.args, *args]
        rendered = {key: self.render(value) for key, value in merged.items()}
        return self.launch(node, [self.render(part) for part in command], rendered)

    def launch(self, node: str, command: list[str], env: dict[str, str]) -> str:
        self.pull([node])
        self.logs[node].mark_restart()
        self.backend.start(node, command, env)
        self.note("started", node)
        self.last_start[node] = (command, env)
        shown = " ".join(f"{k}={v}" for k, v in sorted(env.items()))
        return self.sanitiser.line(f"{' '.join(command)}  {shown}".strip())

    def sut_of(self, node: str) -> str:
        return self.topology.nodes[node].sut

    def record(self, file: str, entry: Mapping[str, object]) -> str:
        path = self.report_dir / file
        path.parent.mkdir(parents=True, exist_ok=True)
        line = self.sanitiser.line(json.dumps(entry, sort_keys=False))
        with path.open("a") as handle:
            handle.write(line + "\n")
        self._recorded[file] = self._recorded.get(file, 0) + 1
        return f"{file}:{self._recorded[file]}"

    # -- finalize --------------------------------------------------------------------------------------

    def collect(self) -> None:
        if self.collected:
            return
        self.collected = True
        raw_dir = self.report_dir / "raw"
        try:
            self.pull()
        except Exception as error:  # a broken backend still gets its artefacts collected below
            self.result.note_error(f"reading logs: {error}")
        try:
            self.backend.collect(raw_dir)
        except Exception as error:
            self.result.note_error(f"collecting artefacts: {error}")
        self._catch_up_from_raw(raw_dir)
        self._sanitise_artefacts(raw_dir)

    def _catch_up_from_raw(self, raw_dir: Path) -> None:
        """If the backend stopped answering log_lines, the collected files still hold the rest."""
        for name, log in self.logs.items():
            path = raw_dir / f"{name}.log"
            if name == LAB:
                continue
            if path.is_file():
                self._append(log, path.read_text(errors="replace").splitlines()[len(log.lines) :])

    def _sanitise_artefacts(self, raw_dir: Path) -> None:
        if not raw_dir.is_dir():
            return
        for path in sorted(raw_dir.iterdir()):
            folder = {".conntrack": "conntrack", ".nft": "routers", ".sockets": "sockets"}.get(path.suffix)
            if folder is not None:
                target = self.report_dir / folder / path.name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(self.sanitiser.text(path.read_text(errors="replace"), stream=path.name))
        if not self.keep_raw:
            # Raw artefacts hold real addresses (and addresses.json the whole map): never leave them in a report.
            shutil.rmtree(raw_dir, ignore_errors=True)

    def ground_truth(self) -> GroundTruth:
        """The lab's own knowledge: each node's public address and NAT hops from the backend, the routers'
        conntrack files and the socket tables of nodes without NAT, all as the report shows them."""
        tables = _read_dir(self.report_dir, "conntrack", "*.conntrack")
        sockets = _read_dir(self.report_dir, "sockets", "*.sockets")
        try:
            router_names = list(self.backend.routers())
        except Exception:
            router_names = sorted(tables)
        addresses = self.backend.addresses()
        sides: dict[str, Side] = {}
        excluded: set[str] = set()
        for name, node in self.topology.nodes.items():
            address = addresses.get(name)
            if address is None:
                continue
            public = self.sanitiser.placeholder_for(address.public_ip)
            if node.role == Role.relay:
                excluded.add(public)
                continue
            routers = [r for r in router_names if r.startswith(f"{name}-")]  # innermost first
            wans = [self.sanitiser.placeholder_for(ip) for ip in address.router_wan_ips]
            hops = tuple(NatHop(router, wan) for router, wan in zip(routers, wans, strict=False))
            sides[name] = Side(name, public, hops)
        required = {hop.router for side in sides.values() for hop in side.hops}
        self.result.conntrack = [
            RouterTable(router=r, file=tables[r][0] if r in tables else None, required=r in required)
            for r in router_names
        ]
        expect = self.runbook.expect_step()
        skew = expect.clock_skew if expect is not None else 2.0
        return GroundTruth(sides, tables, sockets, frozenset(excluded), skew)

    def phases(self) -> list[Phase]:
        """The expect step's phases, else those of the nodes' SUT files (first definition of a name wins)."""
        expect = self.runbook.expect_step()
        if expect is not None and expect.phases is not None:
            return list(expect.phases)
        found: dict[str, Phase] = {}
        for node in self.topology.nodes.values():
            for phase in get_sut(node.sut).phases:
                found.setdefault(phase.name, phase)
        return list(found.values())

    def evaluate(self) -> Outcome:
        expect = self.runbook.expect_step()
        if expect is None:
            raise BadInput(f"runbook {self.runbook.name}: no 'expect' step to decide a verdict")
        base = {name: {k: v for k, v in facts.items() if k in ADDRESS_FACTS} for name, facts in self.namespace.items()}
        ground_truth = self.ground_truth()
        self._ground = ground_truth

        def chain(items: Chain) -> ChainResult:
            return evaluate_chain(items, self.logs, base=base, conntrack=ground_truth, clock_skew=expect.clock_skew)

        return decide(chain(expect.checkpoints), chain(expect.relayed) if expect.relayed else None)

    def fill_result(self, outcome: Outcome | None) -> None:
        result = self.result
        if outcome is None:
            result.verdict = Verdict.fail
            result.first_missing = Miss("setup", result.error or "the lab did not start")
            result.as_expected = False
            return
        result.verdict = outcome.verdict
        result.first_missing = outcome.first_missing
        # The verdict comes from the logs and the routers, whatever step failed: a negative control is expected
        # to break a wait. A lab that never started has no verdict to be as expected (outcome None, above).
        result.as_expected = as_expected(outcome.verdict, outcome.first_missing, result.expected)
        broken = next((step for step in result.steps if step.status == "failed"), None)
        if broken is not None and result.expected.verdict == ExpectedVerdict.direct:
            # A scenario that must punch also runs its checks to the end (a helper API that must say `direct`).
            result.as_expected = False
            result.notes.append(f"step {broken.index + 1} ({broken.summary}) failed: {broken.detail}")
        result.checkpoints = records(outcome.direct, self.wall_start)
        result.relayed_checkpoints = records(outcome.relayed, self.wall_start) if outcome.relayed else []
        result.timings.update(phase_timings(outcome.direct, self.phases()))
        result.notes += claims_against_the_lab(outcome.chain.hits, self._ground)


def run_scenario(
    runbook: Runbook,
    scenario_id: str,
    backend: Backend,
    report_dir: Path,
    *,
    progress: Progress | None = None,
    clock: Clock | None = None,
    poll_interval: float | None = None,
    keep_raw: bool = False,
    attempt: int = 1,
    reuse: bool = False,
) -> ScenarioResult:
    """Provision the scenario's topology, run the steps, and ALWAYS collect, sanitise, decide and report.

    `poll_interval` (seconds between a wait's looks) defaults to the runbook's `poll`. With `reuse`, the backend
    already holds this topology from an earlier attempt and is `reset()` instead of provisioned.
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
    poll = runbook.poll if poll_interval is None else poll_interval
    run = ScenarioRun(runbook, scenario, backend, report_dir, clock or Clock(), progress, poll, keep_raw, reuse)
    run.result.attempt = attempt
    run.result.environment = environment(backend, runbook, scenario)
    fatal: BaseException | None = None
    try:
        run.provision()
        run.run_steps()
    except StepFailed as failure:
        run.result.note_error(str(failure))
    except (BadInput, SetupError) as error:
        run.result.note_error(str(error))
        fatal = error
    except LabError as error:
        run.result.note_error(str(error))
    except Exception as error:  # a backend bug must not lose the report; the traceback goes to --debug
        run.result.note_error(f"{type(error).__name__}: {error}")
    except BaseException as interrupt:  # Ctrl-C: still collect and report, then let it through
        run.result.note_error("interrupted")
        fatal = interrupt
    finally:
        teardown_began = run.now()
        try:
            run.collect()  # even when provisioning broke half-way: whatever exists is evidence
            outcome = run.evaluate() if run.logs else None
        except Exception as error:
            run.result.note_error(f"evaluating: {error}")
            outcome = None
        run.fill_result(outcome)
        run.result.timings["teardown"] = run.now() - teardown_began
        run.result.duration = run.now()
        verdict = run.result.verdict.value
        run.progress(f"verdict: {verdict} ({'as expected' if run.result.as_expected else 'NOT as expected'})")
        write_scenario_report(run.result, run.logs)
    if fatal is not None:
        raise fatal
    return run.result


def _read_dir(report_dir: Path, folder: str, pattern: str) -> dict[str, tuple[str, str]]:
    """`{stem: (report-relative file, text)}` of the sanitised artefacts in one report folder."""
    directory = report_dir / folder
    if not directory.is_dir():
        return {}
    return {path.stem: (f"{folder}/{path.name}", path.read_text()) for path in sorted(directory.glob(pattern))}
