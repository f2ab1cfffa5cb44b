"""The one way the lab connects to the Docker daemon, with the one-line error a missing daemon gets."""

from __future__ import annotations

from typing import Any

from harness.errors import SetupError


def connect(timeout: int = 120) -> Any:
    """A pinged docker.DockerClient; SetupError (exit 3) naming what to start when there is no daemon."""
    import docker
    import docker.errors

    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
    except docker.errors.DockerException as error:
        raise SetupError(
            f"cannot reach the Docker daemon ({error.__class__.__name__}): install Docker Engine and start it "
            "(systemctl start docker), or set DOCKER_HOST"
        ) from error
    return client
