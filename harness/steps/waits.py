"""Waits: for a checkpoint on a node's log, or for a node's process to end, each with a deadline; and a hold, the
window a claim is about (a session outlives the relay by this long)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from harness.chains import bind, split_ref
from harness.checkpoints import Hit, find, norm
from harness.durations import PositiveSeconds
from harness.models import FactValue, Strict
from harness.steps.context import CheckContext, Loc, RunContext, StepFailed, StepMissed
from harness.steps.nodes import _NodeStep


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
    soft: bool = Field(
        default=False,
        description="on the deadline, record the miss and go on: the wait paces a run whose outcome the chain "
        "decides (a control that must not punch still gets its relay stopped)",
    )

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
                said = f"{node} exited with code {code} before {self.checkpoint}"
                if self.soft:
                    raise StepMissed(f"{said} (soft: the steps go on)")
                raise StepFailed(f"{said}: {outcome}")
            if ctx.now() >= deadline:
                if self.soft:
                    raise StepMissed(f"{self.checkpoint} not met within {self.within:g}s (soft: the steps go on)")
                tail = "; last lines: " + " | ".join(line.text[-160:] for line in log.lines[-3:]) if log.lines else ""
                raise StepFailed(f"{self.checkpoint} not met within {self.within:g}s: {outcome}{tail}")
            ctx.sleep(ctx.poll_interval)

    def summary(self) -> str:
        return f"wait {self.checkpoint} within {self.within:g}s{' (soft)' if self.soft else ''}"


class WaitExitStep(_NodeStep):
    """Wait until a node's process ends; `code` (when given) is the exit code it must end with."""

    action: Literal["wait_exit"]
    within: PositiveSeconds
    code: int | None = None

    def run(self, ctx: RunContext) -> str | None:
        code = _exit_before(ctx, self.node, ctx.now() + self.within)
        if code is None:
            raise StepFailed(f"{self.node} still running after {self.within:g}s")
        if self.code is not None and code != self.code:
            raise StepFailed(f"{self.node} exited with code {code}, expected {self.code}")
        return f"{self.node} exited with code {code} after {ctx.now():.1f}s"

    def summary(self) -> str:
        return f"wait for {self.node} to exit within {self.within:g}s"


class HoldStep(_NodeStep):
    """Watch a node for `for` seconds: its process must stay up. Not a sleep for its own sake: the window is the
    claim (a Kaspa session outlives the relay by this long), its end is a line of the lab's own log (`lab.held`,
    target the node), and the chain judges what the node logged inside it (`absent: true` items: the session
    did not end). A SUT whose session pings slower than any window (kaspad: every 120 s) can only be watched."""

    action: Literal["hold"]
    seconds: PositiveSeconds = Field(alias="for")

    def run(self, ctx: RunContext) -> str | None:
        began = ctx.now()
        code = _exit_before(ctx, self.node, began + self.seconds)
        if code is not None:
            raise StepFailed(f"{self.node} exited with code {code} {ctx.now() - began:.1f}s into the hold")
        ctx.note("held", self.node)
        return f"{self.node} up for {self.seconds:g}s"

    def summary(self) -> str:
        return f"hold {self.node} for {self.seconds:g}s (its process stays up)"


def _exit_before(ctx: RunContext, node: str, deadline: float) -> int | None:
    """The node's exit code if its process ends before `deadline` (its last words pulled), else None at it."""
    while True:
        ctx.pull()
        code = ctx.backend.exit_code(node)
        if code is not None:
            ctx.pull()
            return code
        left = deadline - ctx.now()
        if left <= 0:
            return None
        ctx.sleep(min(ctx.poll_interval, left))
