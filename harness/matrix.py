"""The NAT matrix and repeated attempts: success rates with 95% Wilson score intervals, and the grid.

A matrix runbook (`runbooks/matrix.yaml`) expands into one scenario per (server profile, client profile) cell;
this module turns the results of those scenarios back into a grid for the report, with the expected outcome of
each cell beside the measured one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from harness.models import ScenarioExpect
from harness.runbook.model import Runbook, matrix_scenario_id


@dataclass(frozen=True)
class Rate:
    successes: int
    trials: int
    low: float
    high: float

    @property
    def value(self) -> float:
        return self.successes / self.trials if self.trials else 0.0

    def __str__(self) -> str:
        if not self.trials:
            return "n/a"
        return f"{self.successes}/{self.trials} ({self.value:.0%}, 95% CI {self.low:.0%}-{self.high:.0%})"


def wilson(successes: int, trials: int, z: float = 1.959964) -> Rate:
    """Wilson score interval: sound for small n and for rates of 0 or 1, unlike the normal approximation."""
    if trials <= 0:
        return Rate(0, 0, 0.0, 1.0)
    if not 0 <= successes <= trials:
        raise ValueError(f"successes {successes} outside 0..{trials}")
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    margin = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    low = 0.0 if successes == 0 else max(0.0, centre - margin)
    high = 1.0 if successes == trials else min(1.0, centre + margin)  # exact at the ends, no 0.9999999
    return Rate(successes, trials, low, high)


@dataclass(frozen=True)
class Cell:
    server: str
    client: str
    scenario_id: str
    expected: str
    why: str
    measured: str | None = None  # direct / relayed / fail, or a mix like "direct 4/5"
    rate: Rate | None = None
    as_expected: bool | None = None


def grid(runbook: Runbook, results: Mapping[str, Sequence[str]] | None = None) -> list[list[Cell]]:
    """Rows by server profile, columns by client profile. `results` maps scenario id -> verdicts of its
    attempts; a cell counts an attempt as success when its verdict is `direct`."""
    if runbook.matrix is None:
        return []
    results = results or {}
    rows: list[list[Cell]] = []
    for server, row in runbook.matrix.cells.items():
        cells = []
        for client, cell in row.items():
            scenario_id = matrix_scenario_id(server, client)
            verdicts = list(results.get(scenario_id, ()))
            rate = direct_rate(verdicts) if verdicts else None
            measured = None
            ok = None
            if verdicts:
                kinds = sorted(set(verdicts))
                measured = kinds[0] if len(kinds) == 1 else "mixed"
                ok = cell_ok(cell.expectation, verdicts)
            expected = cell.expect.value if cell.expect else f"direct rate {cell.direct_rate}"
            cells.append(Cell(server, client, scenario_id, expected, cell.why, measured, rate, ok))
        rows.append(cells)
    return rows


def direct_rate(verdicts: Sequence[str]) -> Rate:
    """The one definition of a success rate everywhere (run report, matrix, JSON): direct attempts / all."""
    return wilson(sum(v == "direct" for v in verdicts), len(verdicts))


def cell_ok(expect: ScenarioExpect, verdicts: Sequence[str]) -> bool:
    """Every attempt gave the expected verdict; for a band, the Wilson interval of the direct rate meets it
    (and every attempt ran to a verdict: a lab that broke is no measurement)."""
    if expect.direct_rate is not None:
        rate = direct_rate(verdicts)
        ran = all(v in ("direct", "relayed") for v in verdicts)
        return ran and expect.direct_rate.admits(rate.low, rate.high)
    return all(v == expect.verdict.value for v in verdicts)


def profiles(runbook: Runbook) -> tuple[list[str], list[str]]:
    """(server profiles, client profiles) in the order the matrix file lists them."""
    if runbook.matrix is None:
        return [], []
    servers = list(runbook.matrix.cells)
    clients: list[str] = []
    for row in runbook.matrix.cells.values():
        clients += [c for c in row if c not in clients]
    return servers, clients
