"""One test per runbook scenario, generated from `runbooks/*.yaml`.

`pytest e2e -k mixed_nat` selects phase 4's mixed-NAT scenario and its negative controls (they carry the
`mixed_nat` marker); `-m kaspad` the fork's kaspad scenario and its control; `-m matrix` the NAT x NAT grid. A
scenario runs under the retry policy of the fork's lab runbook (up to 3 attempts: PASS or PASS-FLAKY passes),
a negative control once (its first attempt is its verdict); the report of every attempt stays under
reports/<run-id>/ for a human to read.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.runbook import discover_scenarios, run_repeated

RUNBOOKS = Path(__file__).resolve().parent.parent / "runbooks"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "scenario_case" not in metafunc.fixturenames:
        return
    params = [
        pytest.param(
            (path, runbook, scenario),
            id=f"{path.stem}:{scenario.id}",
            marks=[pytest.mark.docker, *(getattr(pytest.mark, marker) for marker in scenario.markers)],
        )
        for path, runbook, scenario in discover_scenarios(RUNBOOKS)
    ]
    metafunc.parametrize("scenario_case", params)


def test_scenario(scenario_case, images, run_dir: Path) -> None:
    from harness.backends.docker import DockerBackend, sweep

    path, runbook, scenario = scenario_case
    made: list[str] = []

    def make_backend(attempt: int) -> DockerBackend:
        made.append(f"{run_dir.name}a{attempt}")
        return DockerBackend(made[-1])

    repeat = run_repeated(runbook, scenario.id, make_backend, run_dir)
    for run_id in made:  # every attempt's lab is gone, whatever its verdict
        assert sweep(run_id=run_id) == (0, 0), f"attempt lab {run_id} leaked"
    final = repeat.final
    missing = final.first_missing_text
    if scenario.expect.direct_rate is not None:  # a matrix cell's band, judged on the Wilson interval
        from harness.matrix import cell_ok, direct_rate

        verdicts = [a.verdict.value for a in repeat.attempts]
        assert cell_ok(scenario.expect, verdicts), (
            f"{path.name}:{scenario.id}: direct rate {direct_rate(verdicts)} outside {scenario.expect.direct_rate}"
            f" (verdicts {verdicts}); report: {run_dir}"
        )
        return
    assert repeat.label != "FAIL", (
        f"{path.name}:{scenario.id}: {repeat.label} after {len(repeat.attempts)} attempt(s): verdict "
        f"{final.verdict}, expected {final.expected}{f'; first missing: {missing}' if missing else ''}; "
        f"report: {run_dir}"
    )
