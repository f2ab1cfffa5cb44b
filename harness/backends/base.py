"""The one small interface every backend offers the runbook engine.

The engine never knows whether a node is a container or a process on a VM: it provisions a topology,
starts nodes with a command and an environment, follows their logs line by line, runs commands on nodes
or routers, collects artefacts and closes. Everything a backend creates is removed by `close()`, which is
idempotent and safe to call from signal handlers and `finally:` blocks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from harness.models import Topology


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    output: str


@dataclass(frozen=True)
class NodeAddresses:
    """Addresses of one node, real (unsanitised). The sanitiser turns them into placeholders.

    `public_ip` is what the transit network ("the internet") sees: the node's own address for a public
    node, its outermost router's WAN address for a private one.
    """

    node: str
    lan_ip: str | None
    public_ip: str
    router_wan_ips: tuple[str, ...] = ()
    extra: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SanitiseHints:
    """What a backend knows that must not reach a report besides addresses: host names and login users."""

    hostnames: tuple[str, ...] = ()
    users: tuple[str, ...] = ()


class Backend(Protocol):
    name: str  # "docker", "ssh": how reports name where a run ran
    run_id: str

    def describe(self) -> dict[str, Any]:
        """For the report's environment: versions, image tags, settings. No address, host name or user."""

    def sanitise_hints(self) -> SanitiseHints:
        """Host names and users the sanitiser must replace; known after provision()."""

    def provision(self, topology: Topology) -> None:
        """Create networks, routers and node hosts (not the node processes). Fails whole or not at all."""

    def addresses(self) -> Mapping[str, NodeAddresses]:
        """Addresses of every node by node name; available after provision()."""

    def start(self, node: str, command: Sequence[str], env: Mapping[str, str]) -> None:
        """Start the node's process. A node may be started again after stop() (restart)."""

    def stop(self, node: str, timeout: float = 5.0) -> None:
        """Stop the node's process (SIGTERM, then SIGKILL after `timeout`)."""

    def exit_code(self, node: str) -> int | None:
        """None while the node's process runs (or never started), its exit code once it ended."""

    def log_lines(self, node: str, start: int = 0) -> list[str]:
        """The node's log (stdout and stderr, in order) from line index `start`; raw, unsanitised."""

    def set_link(self, node: str, up: bool) -> None:
        """Take the node's WAN link down or bring it up (a `link` step); LabError where the backend cannot."""

    def exec(self, target: str, command: Sequence[str], timeout: float = 30.0) -> ExecResult:
        """Run a command on a node or on a router (`<node>-router`, `<node>-carrier`)."""

    def routers(self) -> Sequence[str]:
        """Names of the routers provision() created, innermost first per node."""

    def collect(self, dest: Path) -> list[Path]:
        """Write raw artefacts into `dest`: `<node>.log` per node, `<router>.conntrack` per router."""

    def close(self) -> None:
        """Remove everything this backend created. Idempotent."""


class Reusable(Protocol):
    """A backend that can serve several attempts of one scenario on one provisioned topology."""

    def reset(self, topology: Topology) -> None:
        """Make the topology provision() built ready for another attempt, as if new: no process, log line,
        conntrack event or socket sample of an earlier attempt is part of the next one's. Only the topology it
        was provisioned with; raises when it cannot (the caller then provisions a fresh backend)."""


def reusable(backend: object) -> bool:
    """Whether `backend` can be reset between attempts (harness.backends.base.Reusable)."""
    return callable(getattr(backend, "reset", None))
