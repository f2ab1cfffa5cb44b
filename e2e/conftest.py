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

import pytest

# Ryuk needs a pulled image; this lab has no registry. Must be set before testcontainers is imported.
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")

REPO = Path(__file__).resolve().parent.parent
REPORTS = Path(os.environ.get("DCUTR_LAB_REPORTS", REPO / "reports"))


def pytest_configure(config: pytest.Config) -> None:
    from harness.signals import install_cleanup_handlers

    install_cleanup_handlers()


@pytest.fixture(scope="session")
def images() -> dict[str, str]:
    """Image tags by kind, built on demand from content hashes (a no-op when nothing changed)."""
    from harness.images import ensure_image

    return {kind: ensure_image(kind) for kind in ("base", "router", "peer")}


@pytest.fixture
def lab(images: dict[str, str]) -> Iterator[object]:
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
