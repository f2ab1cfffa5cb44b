"""Subnet pools for lab networks.

Parallel labs (pytest-xdist workers, two CLI runs) must never share a subnet. Rather than coordinate through
a file, every network is created with an explicit subnet and Docker's own IPAM refuses overlaps atomically;
the allocator simply offers the next free candidate. Candidates that overlap a route of the host are never
offered, so a lab bridge can never shadow the machine's real networks.
"""

from __future__ import annotations

import ipaddress
import json
import random
import subprocess
from collections.abc import Iterable, Iterator
from enum import StrEnum

IPv4Network = ipaddress.IPv4Network


class NetworkKind(StrEnum):
    transit = "transit"  # the lab's "internet": RFC 2544 benchmark range, looks public, collides with nothing
    lan = "lan"  # a home LAN behind a router
    carrier = "carrier"  # the inside of a carrier-grade NAT (RFC 6598 shared address space)


POOLS: dict[NetworkKind, IPv4Network] = {
    NetworkKind.transit: IPv4Network("198.18.0.0/15"),
    NetworkKind.lan: IPv4Network("192.168.0.0/16"),
    NetworkKind.carrier: IPv4Network("100.64.0.0/10"),
}
PREFIX = 24


def host_routes() -> list[IPv4Network]:
    """Destinations the host already routes (its uplink, docker0, ...)."""
    try:
        out = subprocess.run(
            ["ip", "-j", "-4", "route", "show", "table", "all"],
            capture_output=True,
            text=True,
            check=True,
            timeout=5,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    routes = []
    for entry in json.loads(out or "[]"):
        dst = entry.get("dst", "")
        if dst in ("", "default") or entry.get("type") in ("local", "broadcast"):
            continue
        try:
            routes.append(IPv4Network(dst if "/" in dst else f"{dst}/32", strict=False))
        except ValueError:
            continue
    return routes


def candidates(
    kind: NetworkKind, avoid: Iterable[IPv4Network] = (), rng: random.Random | None = None
) -> Iterator[IPv4Network]:
    """Every /24 of the kind's pool that overlaps nothing in `avoid`, in random order.

    Random order keeps two parallel allocators from racing for the same first subnet over and over.
    """
    avoid = list(avoid)
    subnets = [s for s in POOLS[kind].subnets(new_prefix=PREFIX) if not any(s.overlaps(a) for a in avoid)]
    (rng or random.Random()).shuffle(subnets)
    yield from subnets


def nth_host(subnet: IPv4Network, n: int) -> str:
    """The n-th usable address; .1 is Docker's bridge gateway, so lab hosts start at n=2."""
    return str(subnet.network_address + n)
