"""Benchmarks that print figures: `python -m harness.bench mixed_nat [--runs 5] [--skip-cold]`, `kaspad`, and
`python -m harness.bench sanitise [--lines 1000000] [--addresses 65536]`.

Measures what the lab's targets are about: a cold image build (base rootfs + router + peer), a cached
rebuild (nothing changed: must do no work), and the wall time of the mixed_nat scenario split into
setup / punch (reservation -> DCUtR direct) / handshake / teardown, over N runs (min / median / max).
`sanitise` streams a generated log (kaspad, rust-libp2p, JSON, conntrack, sshd and shell lines, with the given
number of distinct IPv4/IPv6 addresses) through one `Sanitiser` and prints lines/s, MB/s and the peak memory
(process RSS and the growth of the placeholder map). Target: >= 50,000 lines/s with memory bounded by the
number of distinct values, not by the number of lines.

Figures only: a benchmark never fails a build because a number is high.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from collections.abc import Callable, Iterator
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


def sanitise_corpus(lines: int, addresses: int, seed: int = 13) -> Iterator[str]:
    """A log of `lines` lines in the lab's real formats, naming `addresses` distinct addresses (a fifth IPv6),
    every one of them at least once when there are enough lines. Generated lazily: it holds no list."""
    import random

    rng = random.Random(seed)
    base58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
    peers = ["12D3KooW" + "".join(rng.choice(base58) for _ in range(44)) for _ in range(64)]

    def address(index: int) -> str:
        if index % 5 == 4:
            return f"2001:db8:{index >> 16:x}:{index & 0xFFFF:x}::{index % 97 + 1:x}"
        return f"10.{(index >> 16) & 255}.{(index >> 8) & 255}.{index & 255}"

    templates = (
        "{ts} [INFO ] libp2p listening on {ma}/tcp/16112",
        "{ts} [INFO ] P2P Connected to outgoing peer {hp} (outbound: {n})",
        "{ts} [INFO ] P2P Connected to incoming peer [{a6}]:{port} (inbound: {n})",
        '{ts} [INFO ] libp2p dcutr event: Event {{ remote_peer_id: PeerId("{peer}"), result: Ok(ConnectionId({n})) }}'
        " (swarm has 1 external addrs: [{ma}/tcp/16112])",
        "{iso} DEBUG libp2p_swarm: Connection established peer={peer} endpoint=Dialer {{ address: {ma}/tcp/4011"
        "/p2p/{peer}, role_override: Dialer }} num_established=1",
        '{{"ts":"{iso}","node":"client","event":"connection_established","peer_id":"{peer}",'
        '"remote_addr":"{ma}/tcp/4013","relayed":false,"connection_id":{n}}}',
        "[NEW] tcp      6 120 SYN_SENT src={a} dst={b} sport={port} dport=4011 [UNREPLIED] src={b} dst={c}"
        " sport=4011 dport={port}",
        "Feb 22 10:15:02 relay sshd[{n}]: Accepted publickey for ubuntu from {a} port {port} ssh2: ED25519"
        " SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s",
        "+ curl -s http://{url}:8080/metrics -H 'Authorization: Bearer abcdefghijklmnop1234'",
        "{ts} [INFO ] Processed {n} blocks and 3 headers in the last 10.00s (21 transactions; 0 UTXO-validated"
        " blocks; 0.00 parents; 0.00 mergeset; 3.00 TPB)",
        "{ts} [DEBUG] kaspa_p2p_lib::core::hub: peer {peer} misbehaved: ping timeout after 30s",
        "{ts} [WARN ] libp2p reservation attempt to {ma}/tcp/4011/p2p/{peer} failed: Connection refused (os error 111)",
    )
    for number in range(lines):
        first = number * 3 % max(addresses, 1) if number * 3 < addresses else rng.randrange(max(addresses, 1))
        a = address(first)
        v6 = ":" in a
        seconds = number % 86400
        ts = f"2026-02-22 {seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}.{number % 1000:03d}+00:00"
        yield templates[number % len(templates)].format(
            ts=ts,
            iso=ts.replace(" ", "T", 1).replace("+00:00", "Z"),
            a=a,
            ma=f"/ip6/{a}" if v6 else f"/ip4/{a}",
            hp=f"[{a}]:{1024 + number % 60000}" if v6 else f"{a}:16111",
            url=f"[{a}]" if v6 else a,
            b=address((first + 1) % max(addresses, 1)),
            c=address((first + 2) % max(addresses, 1)),
            a6=address((first // 5) * 5 + 4),
            peer=peers[number % len(peers)],
            port=1024 + number % 60000,
            n=number % 1000,
        )


def bench_sanitise(lines: int, addresses: int, sanitiser: object | None = None) -> dict[str, float]:
    """Stream the generated log through one sanitiser; the figures of that pass."""
    import resource

    from harness.sanitise import Sanitiser

    clean = sanitiser if sanitiser is not None else Sanitiser()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    elapsed = cpu = 0.0
    count = size = 0
    source = sanitise_corpus(lines, addresses)
    while True:
        # Generated in chunks outside the clock: the figure is the sanitiser's, not the generator's.
        chunk = list(itertools.islice(source, 10_000))
        if not chunk:
            break
        began, began_cpu = time.perf_counter(), time.process_time()
        for raw in chunk:
            clean.line(raw, "bench")  # type: ignore[attr-defined]
        elapsed += time.perf_counter() - began
        cpu += time.process_time() - began_cpu
        count += len(chunk)
        size += sum(len(raw) + 1 for raw in chunk)
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    placeholders = len(getattr(clean, "known", {}))
    return {
        "lines": count,
        "seconds": elapsed,
        "lines/s": count / elapsed if elapsed else 0.0,
        # On a shared machine the wall clock counts other processes' time too; CPU time is this pass's own.
        "CPU seconds": cpu,
        "lines per CPU second": count / cpu if cpu else 0.0,
        "MB/s": size / elapsed / 1e6 if elapsed else 0.0,
        "peak RSS (MB)": rss_after / 1024,
        "RSS growth (MB)": (rss_after - rss_before) / 1024,
        "distinct values mapped": placeholders,
    }


def _stats(values: list[float]) -> tuple[str, str, str]:
    if not values:
        return ("-", "-", "-")
    return (f"{min(values):.2f}", f"{statistics.median(values):.2f}", f"{max(values):.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.bench", description=__doc__.splitlines()[0])
    parser.add_argument("target", choices=["mixed_nat", "kaspad", "sanitise"], help="what to measure")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--lines", type=int, default=1_000_000, help="sanitise: lines of the generated log")
    parser.add_argument("--addresses", type=int, default=65_536, help="sanitise: distinct addresses in it")
    parser.add_argument("--skip-cold", action="store_true", help="do not force a cold image build")
    parser.add_argument("--reports", type=Path, default=REPO / "reports" / "bench")
    args = parser.parse_args(argv)
    if args.target == "sanitise":
        return _print_sanitise(bench_sanitise(args.lines, args.addresses), args.addresses)

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


def _print_sanitise(figures: dict[str, float], addresses: int) -> int:
    table = Table(title=f"sanitise: {int(figures['lines']):,} generated lines, {addresses:,} distinct addresses")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for name, value in figures.items():
        table.add_row(name, f"{value:,.0f}" if value >= 100 else f"{value:,.2f}")
    console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
