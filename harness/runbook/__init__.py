"""Runbooks as data: the file's models, loading and checks, the engine that runs one scenario, repeats.

    runbook YAML ─ load ─▶ Runbook ─ engine.run_scenario(backend) ─▶ ScenarioResult (harness.results)
                                     repeat.run_repeated ─▶ RepeatResult

| module | job |
| --- | --- |
| `model` | the runbook file's pydantic models (steps are `harness.steps`) |
| `load` | parse, then check against SUT files, NAT profiles and earlier steps |
| `engine` | one scenario on a backend: provision, steps, collect, sanitise, verdict, report |
| `repeat` | the retry policy and N-attempt runs |
| `discover` | every scenario of a folder of runbooks |
"""

from harness.runbook.discover import discover_scenarios
from harness.runbook.engine import Clock, run_scenario
from harness.runbook.load import load_runbook, validate_runbook
from harness.runbook.model import Runbook, Scenario
from harness.runbook.repeat import run_repeated

__all__ = [
    "Clock",
    "Runbook",
    "Scenario",
    "discover_scenarios",
    "load_runbook",
    "run_repeated",
    "run_scenario",
    "validate_runbook",
]
