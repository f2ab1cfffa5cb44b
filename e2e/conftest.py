"""Fixtures of the Docker lab, composed like pytest's own: each does one thing and tears it down with `yield`.

    images ─┬─ lab ─┬─ transit
            │       ├─ router(profile)            factory: a NAT router with a fresh LAN
            │       └─ backend ─┬─ relay           the public relay, listening
            │                   ├─ private_server(profile)
            │                   ├─ private_client(profile)
            │                   └─ node_logs       sanitised-free raw logs of every node, saved on teardown
            └─ (session) built once per worker; a file lock makes parallel workers build once in all

Tests generated from runbooks (`test_runbooks.py`) use `backend` and the runbook engine; the smaller fixtures
serve tests that exercise one piece of the lab.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from harness.backends.docker import DockerLab

# Ryuk needs a pulled image; this lab has no registry. Must be set before testcontainers is imported.
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")

REPO = Path(__file__).resolve().parent.parent
REPORTS = Path(os.environ.get("DCUTR_LAB_REPORTS", REPO / "reports"))


def pytest_configure(config: pytest.Config) -> None:
    from harness.signals import install_cleanup_handlers

    install_cleanup_handlers()


@pytest.fixture(scope="session")
def images() -> dict[str, str]:
    """Image tags by kind (`base`, `router`, `sut-reference`), built on demand from content hashes (a no-op when
    nothing changed)."""
    from harness.images import ensure_image, sut_image
    from harness.sut import get_sut

    tags = {kind: ensure_image(kind) for kind in ("base", "router")}
    tags["sut-reference"] = sut_image(get_sut("reference")).tag
    return tags


@pytest.fixture
def lab(images: dict[str, str]) -> Iterator[DockerLab]:
    """One isolated lab: its own run id, labels and transit subnet; everything removed on teardown."""
    from harness.backends.docker import DockerLab, sweep

    with DockerLab(images=images.__getitem__) as docker_lab:
        yield docker_lab
    # Teardown must leave nothing: a leak here is a test failure, not a warning.
    leftovers = sweep(docker_lab.client, run_id=docker_lab.run_id)
    assert leftovers == (0, 0), f"lab {docker_lab.run_id} leaked {leftovers[0]} containers, {leftovers[1]} networks"


@pytest.fixture
def transit(lab):
    return lab.transit()


@pytest.fixture
def router(lab):
    """Factory: `router("symmetric")` makes a NAT router on transit with a fresh LAN."""
    counter = itertools.count(1)

    def make(nat_profile: str, name: str | None = None):
        return lab.router(name or f"router{next(counter)}", nat_profile)

    return make


@pytest.fixture
def run_dir(request: pytest.FixtureRequest, lab) -> Path:
    """Where this test's report, raw and sanitised logs go: reports/<run-id>/."""
    path = REPORTS / lab.run_id
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def backend(lab):
    """The runbook engine's view of `lab`; closing it closes the lab."""
    from harness.backends.docker import DockerBackend

    docker_backend = DockerBackend(lab.run_id, lab=lab)
    yield docker_backend
    docker_backend.close()


# -- nodes: the reference peers started one by one, for tests of one piece of the lab -----------------------


class RunningNode:
    """A started node: follows its log through the same checkpoint definitions the runbook engine uses."""

    def __init__(self, backend, name: str, role: str) -> None:
        from harness.checkpoints import NodeLog
        from harness.models import Role
        from harness.sut import get_sut

        self.backend = backend
        self.name = name
        self.log = NodeLog(node=name, file=f"{name}.log", sut=get_sut("reference"), role=Role(role))
        self.facts: dict[str, object] = {}
        self.multiaddr = ""  # set for the relay: what peers dial

    def _pull(self) -> None:
        self.log.append(self.backend.log_lines(self.name, start=len(self.log.lines)))

    def wait(self, checkpoint: str, within: float = 30.0, **expected: str):
        """Wait for a checkpoint with the given facts; fail with the miss's reason and the log's tail."""
        import time

        from harness.checkpoints import Hit, find

        deadline = time.monotonic() + within
        while True:
            self._pull()
            result = find(self.log, checkpoint, expected=expected)
            if isinstance(result, Hit):
                self.facts.update(result.facts)
                return result
            exited = self.backend.exit_code(self.name)
            if time.monotonic() > deadline or exited is not None:
                tail = "\n".join(line.text for line in self.log.lines[-15:])
                pytest.fail(f"{self.name}: no {checkpoint} ({result.reason}); exit code {exited}; log tail:\n{tail}")
            time.sleep(0.2)  # polling a container's log: there is no push channel to wait on

    def exit_code(self, within: float = 60.0) -> int:
        import time

        deadline = time.monotonic() + within
        while (code := self.backend.exit_code(self.name)) is None:
            if time.monotonic() > deadline:
                pytest.fail(f"{self.name} still runs after {within}s")
            time.sleep(0.2)
        self._pull()
        return code


def _start(backend, name: str, role: str, nat_profile: str, env: dict[str, str]) -> RunningNode:
    from harness.models import Node, Topology
    from harness.sut import get_sut

    backend.provision(Topology(nodes={name: Node(role=role, nat_profile=nat_profile)}))
    command = get_sut("reference").roles[role].command
    backend.start(name, command, {"LIBP2P_IDENTITY_SEED": name, "KASPA_NETWORK": "devnet", **env})
    return RunningNode(backend, name, role)


@pytest.fixture
def relay(backend) -> RunningNode:
    """The public relay, listening; `relay.multiaddr` is what peers dial."""
    node = _start(backend, "relay", "relay", "none", {"LIBP2P_LISTEN_MULTIADDRS": "/ip4/0.0.0.0/tcp/4011"})
    node.wait("listening")
    ip = backend.addresses()["relay"].public_ip
    node.multiaddr = f"/ip4/{ip}/tcp/4011/p2p/{node.facts['peer_id']}"
    return node


@pytest.fixture
def private_server(backend, relay):
    """Factory: `private_server("full-cone")` starts a server behind that NAT holding a relay reservation."""

    def make(nat_profile: str, **env: str) -> RunningNode:
        node = _start(
            backend,
            "server",
            "server",
            nat_profile,
            {"LIBP2P_LISTEN_MULTIADDRS": "/ip4/0.0.0.0/tcp/4012", "LIBP2P_RELAY_MULTIADDRS": relay.multiaddr, **env},
        )
        node.wait("reservation_accepted", relay_peer_id=str(relay.facts["peer_id"]))
        return node

    return make


@pytest.fixture
def private_client(backend, relay):
    """Factory: `private_client("port-restricted", server)` starts a client dialling `server` via the relay."""

    def make(nat_profile: str, server: RunningNode, **env: str) -> RunningNode:
        server_id = str(server.facts["peer_id"])
        return _start(
            backend,
            "client",
            "client",
            nat_profile,
            {
                "LIBP2P_LISTEN_MULTIADDRS": "/ip4/0.0.0.0/tcp/4013",
                "LIBP2P_REMOTE_PEER_ID": server_id,
                "LIBP2P_REMOTE_MULTIADDRS": f"{relay.multiaddr}/p2p-circuit/p2p/{server_id}",
                **env,
            },
        )

    return make


@pytest.fixture
def node_logs(backend, run_dir: Path):
    """Saves every node's raw log and the routers' conntrack tables under reports/<run-id>/raw on teardown."""
    yield run_dir / "raw"
    backend.collect(run_dir / "raw")
