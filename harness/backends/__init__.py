"""Where nodes run: `docker` (local, default) or `ssh` (VMs from an Ansible-format inventory)."""

from __future__ import annotations

from pathlib import Path

from harness.backends.base import Backend
from harness.errors import BadInput

BACKENDS = ("docker", "ssh")


def create_backend(
    name: str,
    *,
    run_id: str,
    inventory: Path | None = None,
    accept_new_host_keys: bool = False,
) -> Backend:
    """Build the named backend for one run. Imports lazily: the Docker SDK is not needed to verify logs."""
    if name == "docker":
        if accept_new_host_keys:
            raise BadInput("--accept-new-host-keys applies to --backend ssh only")
        from harness.backends.docker import DockerBackend

        return DockerBackend(run_id)
    if name == "ssh":
        if inventory is None:
            raise BadInput("backend 'ssh' needs an inventory: --inventory FILE (see inventories/README.md)")
        from harness.backends.ssh import SshBackend

        return SshBackend(run_id, inventory, accept_new_host_keys=accept_new_host_keys)
    raise BadInput(f"unknown backend {name!r} (known: {', '.join(BACKENDS)})")
