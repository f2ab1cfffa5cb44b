"""Steps that act through commands and APIs, and the ones that end a run: run, ask, collect, expect."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from harness.checkpoints import norm
from harness.durations import Seconds
from harness.models import Chain, FactValue, Phase, Strict
from harness.steps.context import CheckContext, Loc, RunContext, StepFailed
from harness.steps.nodes import _NodeStep


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
