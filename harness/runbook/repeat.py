"""A scenario run several times: the fork's bounded retry policy, or N attempts for a success rate."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from harness.backends.base import Backend
from harness.results import RepeatResult, ScenarioResult
from harness.runbook.engine import Clock, Progress, run_scenario
from harness.runbook.model import Runbook
from harness.verdict import MAX_ATTEMPTS, label


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

    Without `attempts`: up to 3 attempts, stopping at the first one as expected (PASS, PASS-FLAKY, FAIL); a
    negative control (a scenario that expects anything but `direct`) is never retried: its first attempt is its
    verdict, or a control that fails once could be retried until luck makes it pass.
    With `attempts=N`: N attempts whatever happens, every one recorded; the label counts only the first 3.
    Each attempt gets a fresh backend from `make_backend(attempt)` (closed here) and its own
    `report_dir/attempt-<n>/`.
    """
    results: list[ScenarioResult] = []
    scenario = runbook.scenarios_by_id.get(scenario_id)
    control = scenario is not None and scenario.is_control
    total = attempts if attempts is not None else (1 if control else MAX_ATTEMPTS)
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
