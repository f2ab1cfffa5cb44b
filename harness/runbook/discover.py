"""Every scenario of every runbook in a folder: what the e2e suite turns into pytest ids."""

from __future__ import annotations

from pathlib import Path

from harness.runbook.load import load_runbook
from harness.runbook.model import Runbook, Scenario


def discover_scenarios(directory: Path) -> list[tuple[Path, Runbook, Scenario]]:
    """Every (runbook file, runbook, scenario) under `directory`, in file then scenario order: one pytest id
    per scenario (`pytest.param(..., id=scenario.id, marks=scenario.markers)`). A bad runbook raises BadInput
    here, at collection time."""
    found = []
    for path in sorted(Path(directory).glob("*.yaml")):
        runbook = load_runbook(path)
        found += [(path, runbook, scenario) for scenario in runbook.scenarios]
    return found
