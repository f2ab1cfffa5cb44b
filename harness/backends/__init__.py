"""Where nodes run: `docker` (local, default) or `ssh` (VMs from an Ansible-format inventory)."""

from __future__ import annotations

from pathlib import Path

from harness.backends.base import Backend
from harness.errors import BadInput

BACKENDS = ("docker", "ssh")


def create_backend(name: str, *, run_id: str, report_dir: Path, inventory: Path | None = None) -> Backend:
    """Build the named backend for one run. Imports lazily: the Docker SDK is not needed to verify logs."""
    if name == "docker":
        from harness.backends.docker import DockerBackend

        return DockerBackend(run_id)
    if name == "ssh":
        raise BadInput("backend 'ssh' is not available yet in this version: use --backend docker")
    raise BadInput(f"unknown backend {name!r} (known: {', '.join(BACKENDS)})")
