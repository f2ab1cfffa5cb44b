"""A node's router chain (harness.nat.topology) on a recording lab: order, names, WAN shaping, the host (no Docker)."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import pytest

from harness.errors import BadInput
from harness.nat.topology import NatLab, node_host, router_chain, router_hops


@dataclass
class FakeRouter:
    name: str
    profile: str
    upstream: FakeRouter | None
    wan_delay_ms: float
    wan_loss: float


@dataclass
class FakeHost:
    name: str
    ip: str
    router: FakeRouter | None = None
    image: str | None = None


@dataclass
class RecordingLab:
    """Records what a NatLab is asked to build, in order."""

    calls: list[tuple[str, str]] = field(default_factory=list)

    def image(self, kind: str) -> str:
        return f"image-{kind}"

    def router(
        self, name, nat_profile, *, upstream=None, wan_delay_ms=0.0, wan_loss=0.0, wan_jitter_ms=0.0
    ) -> FakeRouter:
        self.calls.append(("router", name))
        return FakeRouter(name, nat_profile, upstream, wan_delay_ms, wan_loss)

    def private_host(self, name, router, *, image=None) -> FakeHost:
        self.calls.append(("private_host", name))
        return FakeHost(name, "192.168.1.2", router, image)

    def public_host(self, name, *, image=None) -> FakeHost:
        self.calls.append(("public_host", name))
        return FakeHost(name, "198.18.0.10", None, image)

    def process(self, name, host, command, env, *, image) -> object:
        raise AssertionError("building a node starts no process")

    def exec(self, target, command, timeout=30.0):
        raise AssertionError("building a node runs no command")


def test_hops_are_innermost_first_and_a_public_node_has_none() -> None:
    assert router_hops("cgnat") == [("router", "port-restricted"), ("carrier", "cgnat-carrier")]
    assert router_hops("none") == []
    assert router_hops("symmetric") == [("router", "symmetric")]
    with pytest.raises(BadInput, match="unknown NAT profile"):
        router_hops("fullest-cone")


def test_a_chain_is_built_outermost_first_and_returned_innermost_first() -> None:
    lab = RecordingLab()
    routers = router_chain(lab, "server", "cgnat", wan_delay_ms=20.0, wan_loss=1.5)
    assert lab.calls == [("router", "server-carrier"), ("router", "server-router")]
    home, carrier = routers
    assert (home.name, home.profile, carrier.name, carrier.profile) == (
        "server-router",
        "port-restricted",
        "server-carrier",
        "cgnat-carrier",
    )
    assert home.upstream is carrier and carrier.upstream is None
    # only the hop on transit has a shaped WAN link
    assert (carrier.wan_delay_ms, carrier.wan_loss) == (20.0, 1.5)
    assert (home.wan_delay_ms, home.wan_loss) == (0.0, 0.0)


def test_a_single_router_gets_the_shaping_and_no_upstream() -> None:
    lab = RecordingLab()
    (router,) = router_chain(lab, "a-openwrt-fw4", "openwrt-fw4", wan_delay_ms=25.0)
    assert router == FakeRouter("a-openwrt-fw4-router", "openwrt-fw4", None, 25.0, 0.0)


def test_the_host_sits_behind_the_innermost_router_or_on_transit() -> None:
    lab = RecordingLab()
    routers = router_chain(lab, "client", "cgnat")
    host = node_host(lab, "client", routers, image="image-router")
    assert host.router is routers[0] and host.router.name == "client-router"
    assert host.image == "image-router"
    assert lab.calls[-1] == ("private_host", "client")

    public = RecordingLab()
    assert router_chain(public, "relay", "none", wan_delay_ms=20.0) == []
    host = node_host(public, "relay", [])
    assert host.router is None and public.calls == [("public_host", "relay")]


def _parameters(function) -> list[tuple[str, object, object]]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()]


@pytest.mark.parametrize("method", ["image", "router", "private_host", "public_host", "process", "exec"])
def test_the_docker_lab_has_the_shape_the_nat_experiments_use(method: str) -> None:
    """Every NatLab parameter exists on DockerLab with the same kind and default (DockerLab may add optional
    ones): the probe and the punch call these by keyword. Imports the Docker SDK, talks to no daemon."""
    from harness.backends.docker import DockerLab

    wanted = _parameters(getattr(NatLab, method))
    offered = _parameters(getattr(DockerLab, method))
    assert offered[: len(wanted)] == wanted
    assert all(default is not inspect.Parameter.empty for _, _, default in offered[len(wanted) :])
