"""What stands in front of a node: its chain of NAT routers, and the lab interface that builds them.

A profile (harness.nat.profiles) says how a node is reached; this module turns that into routers and a host.
It is topology logic, not Docker: `router_hops` is pure, and `router_chain` / `node_host` drive any lab that
has the shape of `NatLab`. `harness.backends.docker.DockerLab` is one; the runbook backend, the conformance
probe (harness.nat.probe) and the punch experiment (harness.nat.punch) all build their nodes through here, so
the three cannot drift apart. Nothing under harness/nat imports a backend: the dependency points the other way.

The rules, in one place:
- routers are named `<node>-<suffix>`: `router` for the hop next to the node, `carrier` for a carrier NAT
  behind it (cgnat), `hop2`... for longer chains;
- they are built outermost first, since a hop plugs its WAN into the LAN of the hop outside it;
- WAN shaping (delay, loss) belongs to the outermost hop only, the one whose WAN is on transit: inner hops
  are cables inside one operator's network, and a lab refuses shaping behind an upstream router.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, TypeVar

from harness.nat.profiles import get_profile


class LabRouter(Protocol):
    """A router a lab built: its container name is what `exec` targets."""

    @property
    def name(self) -> str: ...


class LabHost(Protocol):
    """A node's machine: `ip` is its own address (on its router's LAN, or on transit when public)."""

    @property
    def name(self) -> str: ...

    @property
    def ip(self) -> str: ...


class LabExec(Protocol):
    """The outcome of a command run in a lab container."""

    @property
    def exit_code(self) -> int: ...

    @property
    def output(self) -> str: ...


RouterT = TypeVar("RouterT", bound=LabRouter)
HostT = TypeVar("HostT", bound=LabHost)


class NatLab(Protocol[RouterT, HostT]):
    """What the NAT experiments need from a lab: routers, hosts behind them or on transit, processes, exec."""

    def image(self, kind: str) -> str:
        """The image tag of a kind (`router`, `peer`, `base`)."""

    def router(
        self,
        name: str,
        nat_profile: str,
        *,
        upstream: RouterT | None = None,
        wan_delay_ms: float = 0.0,
        wan_loss: float = 0.0,
        wan_jitter_ms: float = 0.0,
    ) -> RouterT:
        """One NAT router with a fresh LAN; its WAN on transit, or on `upstream`'s LAN."""

    def private_host(self, name: str, router: RouterT, *, image: str | None = None) -> HostT:
        """A machine on `router`'s LAN whose default route is the router."""

    def public_host(self, name: str, *, image: str | None = None) -> HostT:
        """A machine directly on transit."""

    def process(self, name: str, host: HostT, command: Sequence[str], env: Mapping[str, str], *, image: str) -> object:
        """A long-running process in `host`'s network namespace."""

    def exec(self, target: str, command: Sequence[str], timeout: float = 30.0) -> LabExec:
        """Run a command in a lab container, bounded by `timeout`."""


def router_hops(nat_profile: str) -> list[tuple[str, str]]:
    """The routers in front of a node, innermost first, as (name suffix, profile). Empty for a public node."""
    config = get_profile(nat_profile)
    if not config.is_nat:
        return []
    if config.chain:
        # cgnat: a home NAT behind a carrier NAT; each hop is an ordinary profile.
        suffixes = ["router", "carrier", *(f"hop{i}" for i in range(2, len(config.chain)))]
        return list(zip(suffixes, config.chain, strict=False))
    return [("router", nat_profile)]


def router_chain(
    lab: NatLab[RouterT, HostT],
    node: str,
    nat_profile: str,
    *,
    wan_delay_ms: float = 0.0,
    wan_loss: float = 0.0,
    wan_jitter_ms: float = 0.0,
) -> list[RouterT]:
    """Build the routers in front of `node`, outermost first; return them innermost first (empty: public).

    `wan_delay_ms`, `wan_jitter_ms` and `wan_loss` shape the outermost hop's WAN link only; the hops behind it
    get none.
    """
    upstream: RouterT | None = None
    built: list[RouterT] = []
    for suffix, hop_profile in reversed(router_hops(nat_profile)):
        outermost = upstream is None
        upstream = lab.router(
            f"{node}-{suffix}",
            hop_profile,
            upstream=upstream,
            wan_delay_ms=wan_delay_ms if outermost else 0.0,
            wan_loss=wan_loss if outermost else 0.0,
            wan_jitter_ms=wan_jitter_ms if outermost else 0.0,
        )
        built.append(upstream)
    return built[::-1]


def node_host(lab: NatLab[RouterT, HostT], node: str, routers: Sequence[RouterT], *, image: str | None = None) -> HostT:
    """The node's machine: on the innermost router's LAN, or on transit when no router stands in front of it."""
    if routers:
        return lab.private_host(node, routers[0], image=image)
    return lab.public_host(node, image=image)
