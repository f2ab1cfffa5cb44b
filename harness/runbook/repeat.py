"""A scenario run several times: the fork's bounded retry policy, or N attempts for a success rate."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

from harness.backends.base import Backend, reusable
from harness.errors import SetupError
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
    poll_interval: float | None = None,
    reuse: bool | None = None,
) -> RepeatResult:
    """Run a scenario with the bounded retry policy, or exactly `attempts` times for a success rate.

    Without `attempts`: up to 3 attempts, stopping at the first one as expected (PASS, PASS-FLAKY, FAIL); a
    negative control (a scenario that expects anything but `direct`) is never retried: its first attempt is its
    verdict, or a control that fails once could be retried until luck makes it pass.
    With `attempts=N`: N attempts whatever happens, every one recorded; the label counts only the first 3.
    Each attempt gets its own `report_dir/attempt-<n>/` and its own evidence. Where the attempts run:
    - `reuse` (the default with `attempts=N`, when the backend can reset): one backend from `make_backend(1)`
      serves every attempt, provisioned once and reset before each later attempt (harness.backends.base
      .Reusable); a reset that fails gives that attempt a fresh backend from `make_backend(n)`;
    - otherwise (the default for the retry policy: a retry on a new lab): a fresh backend per attempt from
      `make_backend(attempt)`.
    Every backend is closed here.
    """
    results: list[ScenarioResult] = []
    scenario = runbook.scenarios_by_id.get(scenario_id)
    control = scenario is not None and scenario.is_control
    total = attempts if attempts is not None else (1 if control else MAX_ATTEMPTS)
    share = attempts is not None if reuse is None else reuse
    backend: Backend | None = None

    def attempt(number: int, target: Backend, again: bool) -> ScenarioResult:
        return run_scenario(
            runbook,
            scenario_id,
            target,
            Path(report_dir) / f"attempt-{number}",
            progress=progress,
            clock=clock,
            poll_interval=poll_interval,
            attempt=number,
            reuse=again,
        )

    try:
        for number in range(1, total + 1):
            again = backend is not None
            if backend is None:
                backend = make_backend(number)
            try:
                result = attempt(number, backend, again)
            except SetupError:
                if not again:
                    raise
                # The reset failed: this attempt runs on a new lab (its report is written again).
                with contextlib.suppress(Exception):
                    backend.close()
                backend = make_backend(number)
                result = attempt(number, backend, False)
            finally:
                if backend is not None and not (share and reusable(backend)):
                    backend, closing = None, backend
                    closing.close()
            results.append(result)
            if attempts is None and result.as_expected:
                break
    finally:
        if backend is not None:
            backend.close()
    return RepeatResult(scenario_id, label([r.as_expected for r in results]).value, results)
