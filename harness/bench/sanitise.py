"""`python -m harness.bench sanitise`: lines/s and peak memory sanitising a generated log.

A log of the lab's real formats (kaspad, rust-libp2p, JSON, conntrack, sshd and shell lines) with the given
number of distinct IPv4/IPv6 addresses streams through one `Sanitiser`. Target: >= 50,000 lines/s with memory
bounded by the number of distinct values, not by the number of lines. Figures only.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator

from rich.table import Table

from harness.console import console


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


def print_sanitise(figures: dict[str, float], addresses: int) -> int:
    table = Table(title=f"sanitise: {int(figures['lines']):,} generated lines, {addresses:,} distinct addresses")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for name, value in figures.items():
        table.add_row(name, f"{value:,.0f}" if value >= 100 else f"{value:,.2f}")
    console.print(table)
    return 0
