"""Benchmarks that print figures: `python -m harness.bench mixed_nat [--runs 5] [--skip-cold]`.

Measures what the lab's targets are about: a cold image build (base rootfs + router + peer), a cached
rebuild (nothing changed: must do no work), and the wall time of the mixed_nat scenario split into
setup / punch (reservation -> DCUtR direct) / handshake / teardown, over N runs (min / median / max).
Figures only: a benchmark never fails a build because a number is high.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from rich.table import Table

from harness.console import console
from harness.errors import LabError
from harness.results import ScenarioResult

REPO = Path(__file__).resolve().parent.parent
PHASES = ("setup", "punch", "handshake", "teardown", "total")


def _timed(action: Callable[[], object]) -> float:
    began = time.perf_counter()
    action()
    return time.perf_counter() - began


def bench_images(*, cold: bool, suts: list[str]) -> dict[str, float]:
    """Base and router images (forced when `cold`), then the images of `suts` (cargo decides what is stale)."""
    from harness.images import ensure_image, sut_image
    from harness.sut import get_sut

    def build_all(force: bool) -> None:
        for kind in ("base", "router"):
            ensure_image(kind, force=force)
        for name in suts:
            sut_image(get_sut(name))

    figures: dict[str, float] = {}
    if cold:
        figures["cold build"] = _timed(lambda: build_all(True))
    figures["cached rebuild"] = _timed(lambda: build_all(False))
    return figures


def _runs(runbook_path: Path, scenario_id: str, runs: int, reports: Path) -> list[tuple[ScenarioResult, float, float]]:
    """`runs` fresh runs of one scenario: (result, wall seconds, seconds closing the backend) each."""
    from harness.backends.docker import DockerBackend
    from harness.labels import new_run_id
    from harness.runbook import load_runbook, run_scenario

    runbook = load_runbook(runbook_path)
    done = []
    for index in range(1, runs + 1):
        run_id = new_run_id()
        began = time.perf_counter()
        backend = DockerBackend(run_id)
        try:
            result = run_scenario(runbook, scenario_id, backend, reports / run_id)
        finally:
            close_began = time.perf_counter()
            backend.close()
            closing = time.perf_counter() - close_began
        total = time.perf_counter() - began
        done.append((result, total, closing))
        console.print(f"[muted]run {index}/{runs}: {result.verdict} in {total:.2f}s ({reports / run_id})[/]")
        if not result.as_expected:
            console.print(f"[warn]run {index} verdict {result.verdict}: {result.first_missing_text}[/]")
    return done


def bench_scenario(runbook_path: Path, scenario_id: str, runs: int, reports: Path) -> list[dict[str, float | None]]:
    """Each run's phases (setup, the SUT's phases, teardown including closing the lab) and total."""
    samples: list[dict[str, float | None]] = []
    for result, total, closing in _runs(runbook_path, scenario_id, runs, reports):
        sample = dict(result.timings)
        sample["teardown"] = (sample.get("teardown") or 0.0) + closing
        sample["total"] = total
        samples.append(sample)
    return samples


# What the fork's manual runbook (DCUTR-LAB-RUNBOOK.md steps 1-5) waits, in seconds, where the lab waits for a
# checkpoint: `sleep 12` after each of the three starts, `sleep 60` to settle, `sleep 120` after the dial.
MANUAL_WAITS = {"start relay": 12.0, "start node A": 12.0, "start node B": 12.0, "settle": 60.0, "after dial": 120.0}


def bench_steps(
    runbook_path: Path, scenario_id: str, runs: int, reports: Path
) -> tuple[list[dict[str, float]], list[str]]:
    """Each run's time per step (plus setup, teardown and total), for runbooks whose waits are the story."""
    samples: list[dict[str, float]] = []
    verdicts: list[str] = []
    for result, total, closing in _runs(runbook_path, scenario_id, runs, reports):
        sample = {"setup": result.timings.get("setup") or 0.0}
        for step in result.steps:
            if step.duration is not None:
                sample[f"{step.index + 1}. {step.summary}"] = step.duration
        sample["teardown"] = (result.timings.get("teardown") or 0.0) + closing
        sample["total"] = total
        samples.append(sample)
        verdicts.append(result.verdict.value)
    return samples, verdicts


def _stats(values: list[float]) -> tuple[str, str, str]:
    if not values:
        return ("-", "-", "-")
    return (f"{min(values):.2f}", f"{statistics.median(values):.2f}", f"{max(values):.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.bench", description=__doc__.splitlines()[0])
    parser.add_argument("target", choices=["mixed_nat", "kaspad"], help="what to measure")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--skip-cold", action="store_true", help="do not force a cold image build")
    parser.add_argument("--reports", type=Path, default=REPO / "reports" / "bench")
    args = parser.parse_args(argv)

    from harness.signals import install_cleanup_handlers

    install_cleanup_handlers()
    if args.target == "kaspad":
        return _kaspad(args.runs if args.runs != 5 else 3, args.reports)
    try:
        from harness.runbook import load_runbook

        runbook_path = REPO / "runbooks" / "phase4-mixed-nat.yaml"
        suts = sorted({node.sut for node in load_runbook(runbook_path).nodes.values()})
        images = bench_images(cold=not args.skip_cold, suts=suts)
        samples = bench_scenario(runbook_path, "mixed_nat", args.runs, args.reports)
    except LabError as error:
        console.print(f"[error]error:[/] {error}")
        return error.exit_code

    table = Table(title="images")
    table.add_column("measure")
    table.add_column("seconds", justify="right")
    for name, seconds in images.items():
        table.add_row(name, f"{seconds:.2f}")
    console.print(table)

    table = Table(title=f"mixed_nat scenario, {len(samples)} runs (seconds)")
    for column in ("phase", "min", "median", "max"):
        table.add_column(column, justify="right" if column != "phase" else "left")
    for phase in PHASES:
        values = [float(s[phase]) for s in samples if s.get(phase) is not None]
        table.add_row(phase, *_stats(values))
    console.print(table)
    return 0


def _kaspad(runs: int, reports: Path) -> int:
    """The kaspad scenario's wall time per step over `runs` runs, beside the manual runbook's fixed waits."""
    try:
        samples, verdicts = bench_steps(REPO / "runbooks" / "kaspad-mixed-nat.yaml", "kaspad_mixed_nat", runs, reports)
    except LabError as error:
        console.print(f"[error]error:[/] {error}")
        return error.exit_code
    table = Table(title=f"kaspad_mixed_nat, {len(samples)} runs (seconds); verdicts: {', '.join(verdicts)}")
    for column in ("phase", "min", "median", "max"):
        table.add_column(column, justify="right" if column != "phase" else "left")
    phases = list(dict.fromkeys(key for sample in samples for key in sample))
    for phase in phases:
        table.add_row(phase, *_stats([s[phase] for s in samples if phase in s]))
    console.print(table)
    manual = Table(title="the manual runbook (DCUTR-LAB-RUNBOOK.md steps 1-5): fixed waits per attempt")
    manual.add_column("wait")
    manual.add_column("seconds", justify="right")
    for name, seconds in MANUAL_WAITS.items():
        manual.add_row(name, f"{seconds:g}")
    manual.add_row("total", f"{sum(MANUAL_WAITS.values()):g}")
    console.print(manual)
    return 0


if __name__ == "__main__":
    sys.exit(main())
