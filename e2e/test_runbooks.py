"""One test per runbook scenario, generated from `runbooks/*.yaml`.

`pytest e2e -k mixed_nat` selects phase 4's mixed-NAT scenario and its negative controls (they carry the
`mixed_nat` marker); `-m matrix` the NAT x NAT grid. A scenario passes when its verdict is the one its
runbook expects; the report of every run stays under reports/<run-id>/ for a human to read.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.runbook import discover_scenarios, run_scenario

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


def test_scenario(scenario_case, backend, run_dir: Path) -> None:
    path, runbook, scenario = scenario_case
    result = run_scenario(runbook, scenario.id, backend, run_dir)
    missing = result.first_missing_text
    assert result.as_expected, (
        f"{path.name}:{scenario.id}: verdict {result.verdict}, expected {result.expected}"
        f"{f'; first missing: {missing}' if missing else ''}; report: {run_dir}"
    )
