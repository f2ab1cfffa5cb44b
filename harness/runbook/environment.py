"""What a scenario ran on: harness, Python, runbook, SUTs, and whatever the backend says of itself."""

from __future__ import annotations

from typing import Any

from harness.backends.base import Backend
from harness.runbook.model import Runbook, Scenario


def environment(backend: Backend, runbook: Runbook, scenario: Scenario) -> dict[str, Any]:
    import platform

    import harness

    info: dict[str, Any] = {
        "harness": harness.__version__,
        "python": platform.python_version(),
        "runbook": runbook.name,
        "scenario": scenario.id,
        "suts": sorted({node.sut for node in runbook.nodes.values()}),
    }
    try:
        info.update(backend.describe())  # versions, image ids: whatever the backend knows
    except Exception as error:
        info["backend_error"] = str(error)
    return info
