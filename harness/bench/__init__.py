"""Benchmarks that print figures: `python -m harness.bench mixed_nat | matrix | kaspad | sanitise [--json]`.

- `mixed_nat [--runs 5] [--skip-cold]`: a cold image build (base rootfs + router + peer; skipped with
  --skip-cold) and a cached rebuild (nothing changed: must do no work); the floor (harness.bench.floor: a bare
  TCP punch between two namespaces through two nft routers); the mixed_nat scenario on a fresh topology
  (provision, run, close) and as an attempt on a reused one (reset, run), each over N runs (min / median /
  max) and split into setup (provision or reset) / punch (reservation -> DCUtR direct) / handshake /
  session (waiting for the client's exit) / teardown, with the ratio of each to the floor.
- `matrix --attempts N [--workers 1,2] [--sample K]`: the NAT matrix (runbooks/matrix.yaml), N attempts per
  cell on one reused topology per cell, at each worker count: the wall time and the per-attempt median (a
  sample of K cells drawn from the grid gives an estimate for the whole of it, said as such).
- `kaspad`: the kaspad scenario's steps beside the manual runbook's fixed waits.

`--json` prints one JSON object instead of tables. Figures only: a benchmark never fails a build because a
number is high.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from rich.table import Table

from harness.console import console
from harness.errors import LabError
from harness.results import ScenarioResult

REPO = Path(__file__).resolve().parent.parent.parent
PHASE4 = REPO / "runbooks" / "phase4-mixed-nat.yaml"
MATRIX = REPO / "runbooks" / "matrix.yaml"
PHASES = ("setup", "punch", "handshake", "session", "teardown", "total")
FLOOR_PHASES = ("build", "punch", "teardown", "total")


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
        _say(f"fresh {index}/{runs}: {result.verdict} in {total:.2f}s ({reports / run_id})")
        if not result.as_expected:
            _say(f"fresh {index} verdict {result.verdict}: {result.first_missing_text}")
    return done


def _sample(result: ScenarioResult, total: float, closing: float = 0.0) -> dict[str, float | None]:
    """A run's phases: setup (provision or reset), the SUT's phases, the wait for the client's exit, teardown
    (collecting, deciding, reporting, and closing the lab when the run closes it) and the wall total."""
    sample = dict(result.timings)
    sample["session"] = sum(
        s.duration or 0.0 for s in result.steps if s.summary.startswith("wait for") and "exit" in s.summary
    )
    sample["teardown"] = (sample.get("teardown") or 0.0) + closing
    sample["total"] = total
    sample["verdict"] = result.verdict.value  # type: ignore[assignment]
    return sample


def bench_scenario(
    runbook_path: Path, scenario_id: str, runs: int, reports: Path
) -> tuple[list[dict[str, float | None]], list[str]]:
    """Each fresh run's phases (setup, the SUT's phases, teardown including closing the lab) and total, and
    its verdict."""
    done = _runs(runbook_path, scenario_id, runs, reports)
    return [_sample(result, total, closing) for result, total, closing in done], [r.verdict.value for r, _, _ in done]


def bench_reused(
    runbook_path: Path, scenario_id: str, runs: int, reports: Path
) -> tuple[list[dict[str, float | None]], list[str], str]:
    """`runs` attempts on one reused topology (after one attempt that provisions it, not counted): each
    attempt's phases (setup is the reset) and total. Returns the samples, their verdicts and the warm-up's."""
    from harness.backends.docker import DockerBackend
    from harness.labels import new_run_id
    from harness.runbook import load_runbook, run_scenario

    runbook = load_runbook(runbook_path)
    run_id = new_run_id()
    backend = DockerBackend(run_id)
    samples: list[dict[str, float | None]] = []
    verdicts: list[str] = []
    try:
        warmup = run_scenario(runbook, scenario_id, backend, reports / run_id / "attempt-0")
        for index in range(1, runs + 1):
            began = time.perf_counter()
            result = run_scenario(runbook, scenario_id, backend, reports / run_id / f"attempt-{index}", reuse=True)
            total = time.perf_counter() - began
            samples.append(_sample(result, total))
            verdicts.append(result.verdict.value)
            _say(f"reused {index}/{runs}: {result.verdict} in {total:.2f}s")
            if not result.as_expected:
                _say(f"reused {index} verdict {result.verdict}: {result.first_missing_text}")
    finally:
        backend.close()
    return samples, verdicts, warmup.verdict.value


def bench_floor(runs: int) -> list[dict[str, float]]:
    from harness.bench.floor import leftovers, run_floor

    samples = [run_floor(index) for index in range(runs)]
    left = leftovers()
    if left:
        raise LabError(f"the floor left network namespaces behind: {', '.join(left)}")
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


QUIET = False  # --json: progress goes nowhere, the object alone goes to stdout


def _say(message: str) -> None:
    if not QUIET:
        console.print(f"[muted]{message}[/]")


def _summary(values: Sequence[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"min": round(min(values), 3), "median": round(statistics.median(values), 3), "max": round(max(values), 3)}


def _phases(samples: Sequence[dict[str, float | None]], phases: Sequence[str]) -> dict[str, dict[str, float] | None]:
    return {phase: _summary([float(v) for s in samples if (v := s.get(phase)) is not None]) for phase in phases}


def _load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def _stats(values: list[float]) -> tuple[str, str, str]:
    if not values:
        return ("-", "-", "-")
    return (f"{min(values):.2f}", f"{statistics.median(values):.2f}", f"{max(values):.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.bench", description=__doc__.splitlines()[0])
    parser.add_argument("target", choices=["mixed_nat", "matrix", "kaspad", "sanitise"], help="what to measure")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--skip-cold", action="store_true", help="do not force a cold image build")
    parser.add_argument("--reports", type=Path, default=REPO / "reports" / "bench")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    parser.add_argument("--attempts", type=int, default=10, help="matrix: attempts per cell")
    parser.add_argument("--workers", default="1,2", help="matrix: worker counts to measure, e.g. 1,2")
    parser.add_argument("--sample", type=int, default=0, help="matrix: only K cells spread over the grid")
    parser.add_argument("--lines", type=int, default=1_000_000, help="sanitise: lines of the generated log")
    parser.add_argument("--addresses", type=int, default=65_536, help="sanitise: distinct addresses in it")
    args = parser.parse_args(argv)
    if args.target == "sanitise":
        from harness.bench.sanitise import bench_sanitise, print_sanitise

        return print_sanitise(bench_sanitise(args.lines, args.addresses), args.addresses)

    global QUIET
    QUIET = args.json
    from harness.signals import install_cleanup_handlers

    install_cleanup_handlers()
    if args.target == "kaspad":
        return _kaspad(args.runs if args.runs != 5 else 3, args.reports)
    if args.target == "matrix":
        from harness.bench.matrix import bench_matrix

        workers = [int(w) for w in args.workers.split(",") if w.strip()]
        return bench_matrix(MATRIX, args.attempts, workers, args.sample, args.reports, as_json=args.json)
    load_before = _load()
    try:
        from harness.runbook import load_runbook

        suts = sorted({node.sut for node in load_runbook(PHASE4).nodes.values()})
        images = bench_images(cold=not args.skip_cold, suts=suts)
        floor = bench_floor(args.runs)
        fresh, fresh_verdicts = bench_scenario(PHASE4, "mixed_nat", args.runs, args.reports)
        reused, reused_verdicts, warmup = bench_reused(PHASE4, "mixed_nat", args.runs, args.reports)
    except LabError as error:
        console.print(f"[error]error:[/] {error}")
        return error.exit_code
    floor_median = statistics.median(s["total"] for s in floor)
    figures = {
        "target": "mixed_nat",
        "runs": args.runs,
        "load": {"before": load_before, "after": _load()},
        "images": {name: round(seconds, 3) for name, seconds in images.items()},
        "floor_s": _summary([s["total"] for s in floor]),
        "fresh_s": _summary([float(s["total"] or 0) for s in fresh]),
        "reused_s": _summary([float(s["total"] or 0) for s in reused]),
        "ready_s": _summary([float(s["setup"] or 0) for s in fresh]),
        "ratio_to_floor": {
            "fresh": round(statistics.median(float(s["total"] or 0) for s in fresh) / floor_median, 1),
            "reused": round(statistics.median(float(s["total"] or 0) for s in reused) / floor_median, 1),
        },
        "phases": {
            "floor": _phases(floor, FLOOR_PHASES),
            "fresh": _phases(fresh, PHASES),
            "reused": _phases(reused, PHASES),
        },
        "verdicts": {"fresh": fresh_verdicts, "reused": reused_verdicts, "reused_warmup": warmup},
    }
    if args.json:
        print(json.dumps(figures))
        return 0
    table = Table(title="images")
    table.add_column("measure")
    table.add_column("seconds", justify="right")
    for name, seconds in images.items():
        table.add_row(name, f"{seconds:.2f}")
    console.print(table)
    for title, samples, phases in (
        ("floor: two namespaces, two nft routers, one TCP punch", floor, FLOOR_PHASES),
        ("mixed_nat on a fresh topology", fresh, PHASES),
        ("mixed_nat attempt on a reused topology", reused, PHASES),
    ):
        table = Table(title=f"{title}, {len(samples)} runs (seconds)")
        for column in ("phase", "min", "median", "max"):
            table.add_column(column, justify="right" if column != "phase" else "left")
        for phase in phases:
            table.add_row(phase, *_stats([float(v) for s in samples if (v := s.get(phase)) is not None]))
        console.print(table)
    ratio = figures["ratio_to_floor"]
    console.print(
        f"ratio to the floor (median): fresh {ratio['fresh']}x, reused {ratio['reused']}x · "
        f"verdicts fresh {', '.join(fresh_verdicts)} · reused {', '.join(reused_verdicts)} (warm-up {warmup}) · "
        f"load {figures['load']['before']} -> {figures['load']['after']}"
    )
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
