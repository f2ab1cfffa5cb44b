"""The records of a scenario run: what the engine and `verify` produce, and what reports are written from.

Plain typed data, no behaviour beyond deriving one record from another: `records()` turns an evaluated chain
into the report's timeline, `phase_timings()` measures the phases a runbook or SUT names.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from harness.checkpoints import ChainResult, Evidence, Hit, Miss, Skip
from harness.models import FactValue, Phase, ScenarioExpect, Topology, Verdict

CheckpointStatus = Literal["met", "missed", "skipped", "not reached"]
StepStatus = Literal["ok", "missed", "failed", "skipped", "pending"]


@dataclass
class CheckpointRecord:
    """One line of the report's timeline: a checkpoint met, missed, skipped or not reached."""

    name: str
    status: CheckpointStatus
    t: float | None = None
    facts: dict[str, FactValue] = field(default_factory=dict)
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
    status: StepStatus = "pending"
    t: float | None = None
    duration: float | None = None
    detail: str = ""


@dataclass(frozen=True)
class RouterTable:
    """A router's conntrack table as the verdict used it: its report file, and whether the verdict needed it."""

    router: str
    file: str | None
    required: bool


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
    conntrack: list[RouterTable] = field(default_factory=list)
    placeholders: list[str] = field(default_factory=list)
    attempt: int = 1
    notes: list[str] = field(default_factory=list)  # findings and caveats the summary must show

    @property
    def first_missing_text(self) -> str | None:
        if self.first_missing is None:
            return None
        return f"{self.first_missing.name}: {self.first_missing.reason}"

    def note_error(self, message: str) -> None:
        self.error = f"{self.error}; {message}" if self.error else message


@dataclass
class RepeatResult:
    """Every attempt of one scenario, and the label the retry policy gives them."""

    scenario_id: str
    label: str
    attempts: list[ScenarioResult]

    @property
    def final(self) -> ScenarioResult:
        return self.attempts[-1]


def records(chain: ChainResult, wall_start: float) -> list[CheckpointRecord]:
    """The timeline of an evaluated chain, times relative to `wall_start` (epoch seconds)."""
    found: list[CheckpointRecord] = []
    for item in chain.items:
        if isinstance(item, Hit):
            t = None if item.time is None else item.time - wall_start
            found.append(CheckpointRecord(item.name, "met", t=t, facts=dict(item.facts), evidence=list(item.evidence)))
        elif isinstance(item, Miss):
            found.append(CheckpointRecord(item.name, "missed", evidence=list(item.evidence), reason=item.reason))
        elif isinstance(item, Skip):
            found.append(CheckpointRecord(item.name, "skipped", reason=item.reason))
    found += [CheckpointRecord(name, "not reached") for name in chain.not_reached]
    return found


def _is(hit: Hit, ref: str) -> bool:
    node, _, checkpoint = ref.rpartition(".")
    return hit.checkpoint == checkpoint and (not node or hit.node == node)


def phase_timings(chain: ChainResult, phases: Sequence[Phase]) -> dict[str, float | None]:
    """Each phase's seconds, from the earliest hit of its start to the latest hit of its end; None if unmet."""
    timings: dict[str, float | None] = {}
    for phase in phases:
        starts = [h.time for h in chain.hits if h.time is not None and _is(h, phase.start)]
        ends = [h.time for h in chain.hits if h.time is not None and _is(h, phase.end)]
        timings[phase.name] = max(ends) - min(starts) if starts and ends else None
    return timings
