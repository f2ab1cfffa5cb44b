"""The steps of a runbook: one tagged type (`action`), each variant carrying its own behaviour.

A step knows three things about itself: `check(ctx)`, what it needs from the runbook before anything starts
(its node exists and is started, its templates name facts an earlier step provides, its checkpoint is defined);
`run(ctx)`, what it does on a running scenario; and `summary()`, its line in the report. Adding a step is one
class in its module here plus its name in `Step`. The loader (`harness.runbook.load`) and the engine
(`harness.runbook.engine`) implement the two contexts; neither knows any step by name.

No step sleeps for its own sake: a wait polls for a checkpoint or an exit until its deadline, and a hold watches a
node for the window a claim is about (its end is a line of the lab's own log).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from harness.steps.commands import AskStep, CollectStep, ExpectStep, RunStep
from harness.steps.context import CheckContext, Loc, RunContext, StepFailed, StepMissed
from harness.steps.nodes import LinkStep, RestartStep, StartStep, StopStep
from harness.steps.waits import HoldStep, WaitExitStep, WaitStep

Step = Annotated[
    StartStep
    | WaitStep
    | WaitExitStep
    | HoldStep
    | RunStep
    | AskStep
    | StopStep
    | RestartStep
    | LinkStep
    | CollectStep
    | ExpectStep,
    Field(discriminator="action"),
]

__all__ = [
    "AskStep",
    "CheckContext",
    "CollectStep",
    "ExpectStep",
    "HoldStep",
    "LinkStep",
    "Loc",
    "RestartStep",
    "RunContext",
    "RunStep",
    "StartStep",
    "Step",
    "StepFailed",
    "StepMissed",
    "StopStep",
    "WaitExitStep",
    "WaitStep",
]
