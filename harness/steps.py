"""The steps of a runbook: one tagged type (`action`), each variant carrying its own behaviour.

A step knows three things about itself: `check(ctx)`, what it needs from the runbook before anything starts
(its node exists and is started, its templates name facts an earlier step provides, its checkpoint is defined);
`run(ctx)`, what it does on a running scenario; and `summary()`, its line in the report. Adding a step is one
class here plus its name in `Step`. The loader (`harness.runbook.load`) and the engine
(`harness.runbook.engine`) implement the two contexts; neither knows any step by name.

No step sleeps for its own sake: a wait polls for a checkpoint or an exit until its deadline.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Annotated, Literal, Protocol

from pydantic import Field

from harness.chains import bind, split_ref
from harness.checkpoints import Hit, NodeLog, find, norm
from harness.durations import PositiveSeconds, Seconds
from harness.models import Chain, CheckpointDef, FactValue, Phase, Strict

if TYPE_CHECKING:
    from harness.backends.base import Backend
    from harness.errors import BadInput
    from harness.runbook.model import RunbookNode

Loc = tuple[str | int, ...]


class StepFailed(Exception):
    """A step could not be completed (a wait missed its deadline, a command failed): stop the steps."""


class CheckContext(Protocol):
    """What a step may ask of the runbook loader (harness.runbook.load.Checker)."""

    nodes: Mapping[str, RunbookNode]
    started: set[str]

    def fail(self, loc: Loc, message: str) -> BadInput: ...

    def node(self, name: str, loc: Loc) -> None:
        """The step's node must be one of the runbook's."""

    def templates(self, values: Sequence[object], loc: Loc) -> None:
        """Every template among `values` names facts an earlier step provides."""

    def start_templates(self, node: str, extra: Sequence[str]) -> list[str]:
        """The templates a start of `node` renders: runbook env, node env and args, plus `extra`."""

    def checkpoint(self, ref: str, loc: Loc, *, optional: bool = False) -> CheckpointDef | None:
        """The definition of `node.checkpoint` in that node's SUT; None for conntrack or an optional miss."""

    def provide(self, ref: str, definition: CheckpointDef) -> None:
        """From here on, the facts of `definition` are known as `node.fact` and `node.checkpoint.fact`."""

    def check_chain(self, chain: Chain, loc: Loc) -> None:
        """An `expect` chain: each item's checkpoint defined and its templates provided by earlier items."""


class RunContext(Protocol):
    """What a step may do on a running scenario (harness.runbook.engine.ScenarioRun)."""

    backend: Backend
    logs: Mapping[str, NodeLog]
    namespace: dict[str, dict[str, object]]
    last_start: dict[str, tuple[list[str], dict[str, str]]]
    waited: dict[str, int]  # node -> the line its latest wait matched
    poll_interval: float

    def now(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...

    def pull(self, nodes: Sequence[str] | None = None) -> None:
        """Read, sanitise and append what the nodes logged since the last pull."""

    def render(self, value: str) -> str:
        """A template rendered over the facts, with real addresses put back for the node."""

    def sanitise(self, text: str, stream: str = "") -> str: ...

    def start(self, node: str, env: Mapping[str, str], args: Sequence[str]) -> str:
        """Start a node with its SUT role's command and the merged env; returns the sanitised command line."""

    def launch(self, node: str, command: list[str], env: dict[str, str]) -> str:
        """Start a node with exactly this command and env."""

    def collect(self) -> None: ...

    def note(self, event: str, target: str) -> None:
        """Record in the lab's own log (logs/lab.log) that the lab did `event` to `target`."""

    def sut_of(self, node: str) -> str:
        """The SUT a node runs."""

    def record(self, file: str, entry: Mapping[str, object]) -> str:
        """Append a sanitised JSON line to a report file; returns its `file:line` reference."""


# ---------------------------------------------------------------------------------------------------------
# node processes
# ---------------------------------------------------------------------------------------------------------


class _NodeStep(Strict):
    node: str

    def check(self, ctx: CheckContext, loc: Loc) -> None:
        ctx.node(self.node, (*loc, "node"))
        if self.node not in ctx.started:
            raise ctx.fail((*loc, "node"), f"node {self.node!r} is not started by an earlier step")


def _check_own_templates(ctx: CheckContext, env: Mapping[str, str], args: Sequence[str], loc: Loc) -> None:
    """A step's own env values and args, each checked at its own key, so an error names the line using it."""
    for key, value in env.items():
        ctx.templates([value], (*loc, "env", key))
    for index, arg in enumerate(args):
        ctx.templates([arg], (*loc, "args", index))


class StartStep(Strict):
    action: Literal["start"]
    node: str
    env: dict[str, str] = Field(default_factory=dict)
    args: list[str] = Field(default_factory=list)

    def check(self, ctx: CheckContext, loc: Loc) -> None:
        ctx.node(self.node, (*loc, "node"))
        _check_own_templates(ctx, self.env, self.args, loc)
        ctx.templates(ctx.start_templates(self.node, []), (*loc, "start"))
        ctx.started.add(self.node)

    def run(self, ctx: RunContext) -> str | None:
        return ctx.start(self.node, self.env, self.args)

    def summary(self) -> str:
        return f"start {self.node}"


class StopStep(_NodeStep):
    action: Literal["stop"]
    timeout: Seconds = 5.0

    def run(self, ctx: RunContext) -> str | None:
        # Both ends of the stop: a line after `stopped` is from a world without the process; a reaction to its
        # death (a relayed session lost) comes after `stopping`, maybe before the stop call returned.
        ctx.note("stopping", self.node)
        ctx.backend.stop(self.node, self.timeout)
        ctx.note("stopped", self.node)
        ctx.pull()
        return None

    def summary(self) -> str:
        return f"stop {self.node}"


class RestartStep(_NodeStep):
    """Stop a node and start it again with the command and env of its last start (plus `env` here)."""

    action: Literal["restart"]
    env: dict[str, str] = Field(default_factory=dict)
    timeout: Seconds = 5.0

    def check(self, ctx: CheckContext, loc: Loc) -> None:
        super().check(ctx, loc)
        _check_own_templates(ctx, self.env, [], loc)
        ctx.templates(ctx.start_templates(self.node, []), (*loc, "restart"))

    def run(self, ctx: RunContext) -> str | None:
        ctx.pull()
        ctx.backend.stop(self.node, self.timeout)
        ctx.pull()
        command, env = ctx.last_start[self.node]
        return ctx.launch(self.node, command, {**env, **{k: ctx.render(v) for k, v in self.env.items()}})

    def summary(self) -> str:
        return f"restart {self.node}"


# ---------------------------------------------------------------------------------------------------------
# waits
# ---------------------------------------------------------------------------------------------------------


class WaitStep(Strict):
    """Wait until a checkpoint is met on its node, or fail at the deadline.

    Waits on one node are ordered: a wait only accepts a line after the one the node's previous wait matched
    (and after the node's latest start), as the verdict's chain will. Otherwise an earlier look-alike (the
    relay's `P2P Connected`) satisfies a wait for the direct one, the run collects before the real line is
    written, and the verdict misses what the wait claimed.
    """

    action: Literal["wait"]
    checkpoint: str
    within: PositiveSeconds
    where: dict[str, FactValue] = Field(default_factory=dict)

    def check(self, ctx: CheckContext, loc: Loc) -> None:
        definition = ctx.checkpoint(self.checkpoint, (*loc, "checkpoint"))
        node, _ = split_ref(self.checkpoint)
        if node not in ctx.started:
            raise ctx.fail((*loc, "checkpoint"), f"node {node!r} is not started by an earlier step")
        ctx.templates(list(self.where.values()), (*loc, "wait"))
        assert definition is not None  # a wait names a log checkpoint, never conntrack (checked above)
        ctx.provide(self.checkpoint, definition)

    def run(self, ctx: RunContext) -> str | None:
        node, checkpoint = split_ref(self.checkpoint)
        log = ctx.logs[node]
        # Compare sanitised to sanitised: a rendered address was restored for the node, not for matching.
        expected = {
            key: ctx.sanitise(norm(ctx.render(value) if isinstance(value, str) else value))
            for key, value in self.where.items()
        }
        deadline = ctx.now() + self.within

        after = max(log.session_start, ctx.waited.get(node, 0))

        def met() -> Hit | str:
            outcome = find(log, checkpoint, expected=expected, after_line=after)
            if isinstance(outcome, Hit):
                bind(ctx.namespace, outcome)
                ctx.waited[node] = outcome.line
                return outcome
            return outcome.reason

        while True:
            ctx.pull()
            outcome = met()
            if isinstance(outcome, Hit):
                return f"{outcome.evidence[0].ref} after {ctx.now():.1f}s"
            code = ctx.backend.exit_code(node)
            if code is not None:
                ctx.pull([node])  # what it printed on its way out
                outcome = met()
                if isinstance(outcome, Hit):
                    return f"{outcome.evidence[0].ref} after {ctx.now():.1f}s"
                raise StepFailed(f"{node} exited with code {code} before {self.checkpoint}: {outcome}")
            if ctx.now() >= deadline:
                tail = "; last lines: " + " | ".join(line.text[-160:] for line in log.lines[-3:]) if log.lines else ""
                raise StepFailed(f"{self.checkpoint} not met within {self.within:g}s: {outcome}{tail}")
            ctx.sleep(ctx.poll_interval)

    def summary(self) -> str:
        return f"wait {self.checkpoint} within {self.within:g}s"


class WaitExitStep(_NodeStep):
    """Wait until a node's process ends; `code` (when given) is the exit code it must end with."""

    action: Literal["wait_exit"]
    within: PositiveSeconds
    code: int | None = None

    def run(self, ctx: RunContext) -> str | None:
        deadline = ctx.now() + self.within
        while True:
            ctx.pull()
            code = ctx.backend.exit_code(self.node)
            if code is not None:
                ctx.pull()
                if self.code is not None and code != self.code:
                    raise StepFailed(f"{self.node} exited with code {code}, expected {self.code}")
                return f"{self.node} exited with code {code} after {ctx.now():.1f}s"
            if ctx.now() >= deadline:
                raise StepFailed(f"{self.node} still running after {self.within:g}s")
            ctx.sleep(ctx.poll_interval)

    def summary(self) -> str:
        return f"wait for {self.node} to exit within {self.within:g}s"


# ---------------------------------------------------------------------------------------------------------
# commands, artefacts, the verdict
# ---------------------------------------------------------------------------------------------------------


class RunStep(Strict):
    """Run a command on a node or a router (`<node>-router`); its sanitised output goes into the report."""

    action: Literal["run"]
    on: str
    command: list[str] = Field(min_length=1)
    timeout: Seconds = 30.0
    code: int | None = Field(default=0, description="required exit code (None: any)")
    name: str | None = None

    def check(self, ctx: CheckContext, loc: Loc) -> None:
        if self.on not in ctx.nodes and not any(self.on.startswith(f"{n}-") for n in ctx.nodes):
            raise ctx.fail((*loc, "on"), f"{self.on!r} is neither a node nor a router of one (<node>-router)")
        ctx.templates(self.command, (*loc, "run"))

    def run(self, ctx: RunContext) -> str | None:
        command = [ctx.render(part) for part in self.command]
        outcome = ctx.backend.exec(self.on, command, timeout=self.timeout)
        output = ctx.sanitise(outcome.output.rstrip("\n"), stream=f"run:{self.on}")
        shown = ctx.sanitise(" ".join(command))
        if self.code is not None and outcome.exit_code != self.code:
            raise StepFailed(
                f"`{shown}` on {self.on} exited {outcome.exit_code}, expected {self.code}: {output[-300:]}"
            )
        return f"$ {shown} (on {self.on}) -> exit {outcome.exit_code}\n{output}".rstrip()

    def summary(self) -> str:
        return self.name or f"run `{' '.join(self.command)}` on {self.on}"


# A JSON-line client for `ask`, run on the node (its loopback is the SUT's): one request, one answer line.
_ASK = """
import socket, sys
host, port, request, timeout = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
try:
    with socket.create_connection((host, port), timeout=timeout) as conn:
        conn.settimeout(timeout)
        conn.sendall(request.encode() + b"\\n")
        answer = b""
        while not answer.endswith(b"\\n"):
            chunk = conn.recv(65536)
            if not chunk:
                break
            answer += chunk
except OSError as error:
    print(f"cannot ask {host}:{port}: {error}", file=sys.stderr)
    sys.exit(3)
sys.stdout.write(answer.decode("utf-8", "replace").strip() + "\\n")
"""


class AskStep(_NodeStep):
    """Send one JSON request to a SUT's control API on a node (its SUT file's `api`), and check the answer.

    `expect` maps JSON paths (harness.jsonmatch: `ok`, `peers[peer_id={{ server.peer_id }}].path`) to the values
    they must hold; keys and values are templates. With `within`, the request is repeated every `every` until
    the answer holds, or the deadline; without it, one request decides. Every answer is evidence: a sanitised
    line of `api/<node>.jsonl`, linked from the step.
    """

    action: Literal["ask"]
    request: dict[str, FactValue] = Field(min_length=1)
    expect: dict[str, FactValue] = Field(default_factory=dict)
    within: Seconds = 0.0
    every: Seconds = 1.0
    timeout: Seconds = 15.0
    port: int | None = Field(default=None, ge=1, le=65535, description="default: the SUT file's api.port")
    name: str | None = None

    def check(self, ctx: CheckContext, loc: Loc) -> None:
        from harness import jsonmatch
        from harness.sut import get_sut

        super().check(ctx, loc)
        if self.port is None and get_sut(ctx.nodes[self.node].sut).api is None:
            raise ctx.fail((*loc, "port"), f"SUT {ctx.nodes[self.node].sut!r} declares no api: give the port")
        ctx.templates([*self.request.values(), *self.expect, *self.expect.values()], (*loc, "ask"))
        for key in self.expect:
            if "{{" not in key:
                try:
                    jsonmatch.parse(key)
                except jsonmatch.PathError as error:
                    raise ctx.fail((*loc, "expect", key), str(error)) from None

    def run(self, ctx: RunContext) -> str | None:
        import json

        from harness import jsonmatch
        from harness.sut import get_sut

        api = get_sut(ctx.sut_of(self.node)).api
        host = api.host if api is not None else "127.0.0.1"
        port = self.port or (api.port if api is not None else 0)
        request = json.dumps({k: ctx.render(v) if isinstance(v, str) else v for k, v in self.request.items()})
        wanted = {
            ctx.sanitise(ctx.render(key)): ctx.sanitise(norm(ctx.render(v) if isinstance(v, str) else v))
            for key, v in self.expect.items()
        }
        deadline = ctx.now() + self.within
        while True:
            command = ["python3", "-c", _ASK, host, str(port), request, f"{self.timeout:g}"]
            outcome = ctx.backend.exec(self.node, command, timeout=self.timeout + 5)
            answer_text = outcome.output.strip().splitlines()[-1] if outcome.output.strip() else ""
            ref = ctx.record(
                f"api/{self.node}.jsonl", {"t": round(ctx.now(), 3), "request": request, "answer": answer_text}
            )
            try:
                answer = json.loads(ctx.sanitise(answer_text)) if outcome.exit_code == 0 else None
            except ValueError:
                answer = None
            failing = [f"{k}={v!r}" for k, v in wanted.items() if answer is None or not jsonmatch.holds(answer, k, v)]
            if answer is not None and not failing:
                return f"{ref}: {ctx.sanitise(answer_text)[:300]}"
            if ctx.now() >= deadline:
                said = ctx.sanitise(answer_text)[:300]
                if outcome.exit_code != 0:
                    raise StepFailed(f"could not ask {self.node}'s api on port {port}: {said} ({ref})")
                want = f"; want {', '.join(failing)}" if answer is not None else " (not JSON)"
                raise StepFailed(f"{self.node}'s api on port {port} answered {said or 'nothing'} ({ref}){want}")
            ctx.sleep(self.every)

    def summary(self) -> str:
        return self.name or f"ask {self.node}: {self.request.get('action', next(iter(self.request.values())))}"


class LinkStep(_NodeStep):
    """Take a node's WAN link down or bring it back up (its outermost router's WAN; a public node's own), as a
    real uplink drops: the lab records when, so a chain can require what must (not) happen while it was down."""

    action: Literal["link"]
    state: Literal["down", "up"]

    def check(self, ctx: CheckContext, loc: Loc) -> None:
        ctx.node(self.node, (*loc, "node"))

    def run(self, ctx: RunContext) -> str | None:
        ctx.backend.set_link(self.node, self.state == "up")
        ctx.note(f"link_{self.state}", self.node)
        return None

    def summary(self) -> str:
        return f"link of {self.node} {self.state}"


class CollectStep(Strict):
    action: Literal["collect"]

    def check(self, ctx: CheckContext, loc: Loc) -> None:
        return None

    def run(self, ctx: RunContext) -> str | None:
        ctx.collect()
        return None

    def summary(self) -> str:
        return "collect logs and conntrack tables"


class ExpectStep(Strict):
    """The ordered checkpoints of a direct run (`checkpoints`) and of a relayed one (`relayed`).

    `phases` name the timings the report shows; without them, those of the nodes' SUT files.
    """

    action: Literal["expect"]
    checkpoints: Chain = Field(min_length=1)
    relayed: Chain = Field(default_factory=list)
    clock_skew: Seconds = Field(default=2.0, description="tolerance when ordering lines of different nodes")
    phases: list[Phase] | None = None

    def check(self, ctx: CheckContext, loc: Loc) -> None:
        ctx.check_chain(self.checkpoints, (*loc, "checkpoints"))
        ctx.check_chain(self.relayed, (*loc, "relayed"))

    def run(self, ctx: RunContext) -> str | None:
        return "evaluated after collecting"

    def summary(self) -> str:
        return f"expect {len(self.checkpoints)} checkpoints in order"


Step = Annotated[
    StartStep
    | WaitStep
    | WaitExitStep
    | RunStep
    | AskStep
    | StopStep
    | RestartStep
    | LinkStep
    | CollectStep
    | ExpectStep,
    Field(discriminator="action"),
]
