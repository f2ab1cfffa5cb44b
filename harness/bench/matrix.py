"""`python -m harness.bench matrix --attempts N`: the NAT matrix's wall time at each worker count.

Every cell runs its N attempts on one reused topology (harness.runbook.run_repeated with `attempts=N`), a cell
per worker process at a time, as `pytest -n W` spreads tests; cells that expect `relayed` wait out the client's
direct deadline, so they go first (longest first keeps the workers evenly busy). `--sample K` runs K cells
drawn from the grid (a fixed seed) and scales the wall time to the whole grid: an estimate, and said to be one.
"""

from __future__ import annotations

import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from rich.table import Table

from harness.console import console


def _cell(job: tuple[str, str, int, str]) -> dict[str, Any]:
    """One cell's N attempts on one topology (in a worker process)."""
    from harness.backends.docker import DockerBackend
    from harness.labels import new_run_id
    from harness.runbook import load_runbook, run_repeated
    from harness.signals import install_cleanup_handlers

    install_cleanup_handlers()
    runbook_path, scenario_id, attempts, reports = job
    runbook = load_runbook(Path(runbook_path))
    began = time.perf_counter()
    repeat = run_repeated(
        runbook, scenario_id, lambda _n: DockerBackend(new_run_id()), Path(reports) / scenario_id, attempts=attempts
    )
    return {
        "id": scenario_id,
        "expected": runbook.scenarios_by_id[scenario_id].expect.verdict.value,
        "verdicts": [a.verdict.value for a in repeat.attempts],
        "as_expected": sum(a.as_expected for a in repeat.attempts),
        "attempt_s": [round(a.duration, 3) for a in repeat.attempts],
        "wall_s": round(time.perf_counter() - began, 3),
    }


def _chosen(scenarios: list[Any], sample: int) -> list[Any]:
    """K cells drawn with a fixed seed, so two runs of the benchmark measure the same cells."""
    import random

    if sample <= 0 or sample >= len(scenarios):
        return scenarios
    picked = set(random.Random(4787).sample(range(len(scenarios)), sample))
    return [s for i, s in enumerate(scenarios) if i in picked]


def bench_matrix(
    runbook_path: Path, attempts: int, workers: list[int], sample: int, reports: Path, *, as_json: bool
) -> int:
    from harness.bench import _load, _summary
    from harness.runbook import load_runbook

    runbook = load_runbook(runbook_path)
    every = [s for s in runbook.scenarios if "matrix" in s.markers]
    cells = sorted(_chosen(every, sample), key=lambda s: s.expect.verdict.value != "relayed")
    context = multiprocessing.get_context("spawn")  # no fork of a process holding Docker clients and threads
    figures: dict[str, Any] = {
        "target": "matrix",
        "attempts_per_cell": attempts,
        "cells": len(cells),
        "cells_in_grid": len(every),
        "estimate": len(cells) < len(every),
        "runs": [],
    }
    for count in workers:
        load_before = _load()
        began = time.perf_counter()
        jobs = [(str(runbook_path), s.id, attempts, str(reports / f"matrix-n{count}")) for s in cells]
        with ProcessPoolExecutor(max_workers=count, mp_context=context) as pool:
            results = list(pool.map(_cell, jobs))
        wall = time.perf_counter() - began
        durations = [d for r in results for d in r["attempt_s"]]
        figures["runs"].append(
            {
                "workers": count,
                "wall_s": round(wall, 1),
                "grid_wall_s": round(wall * len(every) / len(cells), 1),
                "attempt_s": _summary(durations),
                "attempts": len(durations),
                "as_expected": sum(r["as_expected"] for r in results),
                "load": {"before": load_before, "after": _load()},
                "cells": sorted(results, key=lambda r: r["id"]),
            }
        )
        if not as_json:
            console.print(f"[muted]-n {count}: {len(cells)} cells x {attempts} attempts in {wall:.1f}s[/]")
    if as_json:
        print(json.dumps(figures))
        return 0
    table = Table(title=f"matrix: {len(cells)} of {len(every)} cells x {attempts} attempts, one topology per cell")
    for column in ("workers", "wall s", "whole grid s", "attempt median s", "attempts", "as expected", "load"):
        table.add_column(column, justify="right")
    for run in figures["runs"]:
        median = run["attempt_s"]["median"] if run["attempt_s"] else 0.0
        grid = f"{run['grid_wall_s']:.0f}{' (est.)' if figures['estimate'] else ''}"
        table.add_row(
            str(run["workers"]), f"{run['wall_s']:.0f}", grid, f"{median:.2f}", str(run["attempts"]),
            str(run["as_expected"]), f"{run['load']['before']} -> {run['load']['after']}",
        )  # fmt: skip
    console.print(table)
    verdicts = Table(title="verdicts per cell (last worker count)")
    for column in ("cell", "expected", "verdicts"):
        verdicts.add_column(column)
    for cell in figures["runs"][-1]["cells"]:
        counts = {v: cell["verdicts"].count(v) for v in dict.fromkeys(cell["verdicts"])}
        verdicts.add_row(cell["id"], cell["expected"], ", ".join(f"{v} {n}" for v, n in counts.items()))
    console.print(verdicts)
    return 0
