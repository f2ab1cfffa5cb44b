"""Steps on a node's process and its link: start, stop, restart, link."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

from pydantic import Field

from harness.durations import Seconds
from harness.models import Strict
from harness.steps.context import CheckContext, Loc, RunContext


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
