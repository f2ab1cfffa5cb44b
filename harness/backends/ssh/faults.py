"""What the SSH backend does when a host breaks mid-run: which host it was, how, and one line saying so.

A request that fails on its connection (not on its own terms: a missing file is no fault) makes the backend
find the first host of the jump chain whose connection died, reconnect once, and decide: unreachable (no new
connection), processes lost (connected, but its started nodes are gone: a reboot), or a blip (retry once).
The line names the host, what it was doing, the UTC time and the seconds since provisioning; unreachable hosts
and what rides on them fail later requests at once instead of hanging.
"""

from __future__ import annotations

import errno
import logging
import socket
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TypeVar

from harness.backends.ssh import scripts
from harness.backends.ssh.inventory import Inventory
from harness.backends.ssh.remote import ConnectionLost, RemoteHost
from harness.errors import LabError

log = logging.getLogger("harness.backends.ssh.backend")
T = TypeVar("T")


class HostFault(LabError):
    """A host of the fleet broke the run: unreachable, or its processes gone. One line naming the host, what
    happened and when; the run's report carries it as its error."""


class FleetFaults:
    """The fault handling SshBackend mixes in; it reads the backend's hosts, nodes and connections."""

    inventory: Inventory
    accept_new_host_keys: bool
    connect_timeout: float
    _remotes: dict[str, RemoteHost]
    _nodes: Mapping[str, object]
    _unreachable: set[str]
    _faults: dict[str, str]
    _reported: set[str]
    _began: float | None

    def _remote(self, alias: str) -> RemoteHost:
        raise NotImplementedError

    def _call(self, alias: str, what: str, action: Callable[[RemoteHost], T]) -> T:
        """`action` on a connected host; a connection that died or a request without answer becomes a HostFault
        (or, when the host is back with its processes, one retry)."""
        for host in [*self.inventory.jump_chain(alias), alias]:
            if host in self._unreachable:
                raise HostFault(self._faults[host])
        try:
            return action(self._remote(alias))
        except Exception as error:
            if not _connection_error(error):
                raise
            self._diagnose(alias, what, error)  # raises, unless the host is back as it was
        try:
            return action(self._remote(alias))
        except Exception as error:
            if not _connection_error(error):
                raise
            message = f"stopped answering while {what}, also after reconnecting ({_reason(error)})"
            raise self._fault(alias, message) from None

    def _diagnose(self, alias: str, what: str, error: BaseException) -> None:
        """Which host broke (the first of the chain whose connection died, else `alias`), and how: unreachable
        when it cannot be reached again, processes lost when it can but its nodes are gone. Returns when the host
        is back as it was (its connection, and those riding on it, made anew)."""
        chain = [*self.inventory.jump_chain(alias), alias]
        culprit = next((h for h in chain if h in self._remotes and not self._remotes[h].alive), alias)
        for host in chain[chain.index(culprit) :]:
            # A request that got no answer on a live connection makes that connection suspect too: a fresh one.
            if self._reconnect(host, force=True) is None:
                reason = self.inventory.scrub(_reason(error))
                raise self._fault(host, f"became unreachable while {what} ({reason})", unreachable=True)
        gone = self._lost_nodes(culprit)
        if gone:
            raise self._fault(
                culprit,
                f"lost its processes: node {', '.join(gone)} is gone without an exit code "
                f"(did it reboot?), noticed while {what}",
            )
        log.warning("host %r: the connection dropped while %s, reconnected", culprit, what)

    def _reconnect(self, alias: str, *, force: bool = False) -> RemoteHost | None:
        """A fresh connection to `alias` (through its jump host's current one), keeping what prepare learnt;
        None when it cannot be had. Without `force` a live connection is kept."""
        old = self._remotes.get(alias)
        if old is not None and old.alive and not force:
            return old
        jump = self.inventory.hosts[alias].dcutr_jump
        gateway = self._remotes.get(jump) if jump else None
        if jump and (gateway is None or not gateway.alive):
            return None
        try:
            fresh = RemoteHost.connect(
                self.inventory,
                alias,
                gateway=gateway,
                accept_new=self.accept_new_host_keys,
                timeout=self.connect_timeout,
            )
        except LabError:
            return None
        if old is not None:
            old.close()
            for name in ("home", "run_dir", "hostname", "machine", "prepared"):
                setattr(fresh, name, getattr(old, name))
        self._remotes[alias] = fresh
        return fresh

    def _lost_nodes(self, alias: str) -> list[str]:
        """Nodes on `alias` that were started and are neither running nor exited."""
        remote = self._remotes[alias]
        started = [s.name for s in self._nodes.values() if s.host == alias and s.started]
        if not started or not remote.run_dir:
            return []
        try:
            result = remote.run(scripts.liveness_script(remote.run_dir, started), timeout=30)
        except ConnectionLost:
            return started
        states = dict(line.split(" ", 1) for line in result.output.splitlines() if " " in line)
        return [name for name in started if states.get(name) == "gone"]

    def _fault(self, alias: str, what: str, *, unreachable: bool = False) -> HostFault:
        now = datetime.now(UTC).isoformat(timespec="seconds")
        since = f", {time.monotonic() - self._began:.1f}s after provisioning began" if self._began else ""
        message = f"{self.inventory.where(alias)}: {what}; at {now}{since}"
        self._faults[alias] = message
        if unreachable:  # what rides on it is unreachable with it; a host back after a reboot is usable again
            riders = [name for name in self.inventory.hosts if alias in self.inventory.jump_chain(name)]
            for name in [alias, *riders]:
                self._faults.setdefault(name, message)
                self._unreachable.add(name)
        log.error("%s", message)
        self._reported.add(alias)
        return HostFault(message)


_CONNECTION_ERRNOS = {errno.EPIPE, errno.ECONNRESET, errno.ECONNABORTED, errno.ETIMEDOUT, errno.EHOSTUNREACH}


def _connection_error(error: BaseException) -> bool:
    """Whether `error` says the connection failed (not the request: a missing file, a refused permission)."""
    import paramiko

    if isinstance(error, ConnectionLost | EOFError | TimeoutError | socket.timeout | paramiko.SSHException):
        return True
    if isinstance(error, OSError):
        return (error.errno is None and "socket" in str(error).lower()) or error.errno in _CONNECTION_ERRNOS
    return False


def _reason(error: BaseException) -> str:
    if isinstance(error, TimeoutError | socket.timeout):
        return "no answer"
    if isinstance(error, ConnectionLost):
        return "connection lost"
    text = str(error).strip()
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
