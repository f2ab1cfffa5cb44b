"""The SSH backend: runbook nodes as processes on machines named by an Ansible-format inventory.

    inventory (YAML) ─ load_inventory ─▶ Inventory ─ SshBackend.provision(topology) ─▶ one SSH connection a host
                                                      │ place nodes on hosts (by name, else by role); connect (strict
                                                      │ host keys); upload the peer binaries; learn addresses;
                                                      │ start conntrack recorders on routers the inventory names
                                                      ▼
    start: setsid + a wrapper that records the exit code · log_lines: the remote log read by byte offset (SFTP)
    stop: SIGTERM, then SIGKILL, then the process group · close: kill what we started, remove the run directory

Contract: harness.backends.base.Backend. This module only composes: the inventory model and its checks
(`inventory`), node placement (`placement`), the shell it runs (`scripts`), one connected host (`remote`) and
the binary upload (`upload`). It decides the order of things: every host is reached before any is touched (an
unreachable one fails the run with nothing started), the relay's address is learnt first (the others' are the
ones they use toward it), and a provision that fails half-way closes whatever it made.

Faults on a fleet: every request to a host is bounded (SFTP and shell alike). When one fails, the host that broke
is found (the first of its jump chain whose connection is gone, else the host itself), reconnected once: if that
fails it is *unreachable*; if its node processes are gone without an exit code it *lost its processes* (it
rebooted, or something killed them); else the request is retried. A fault is one HostFault line naming the host,
what happened, when (UTC, and seconds since provisioning began) and what the backend was doing. Every later
request to an unreachable host, or through it, fails with the same line at once (its logs end where they were
read); a host that lost its processes but answers again is used again (its logs and its router's table are
evidence). close() reconnects a host whose connection died, so a rebooted host is cleaned up too; an unreachable
one is skipped (and logged), the rest of the fleet is cleaned.

Nothing here prints an address, a password or a key: errors name inventory hosts by their alias, because error
texts reach the report before the sanitiser exists.
"""

from __future__ import annotations

import logging
import re
import shlex
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from harness import cleanup
from harness.backends.artefacts import conntrack_text, write_addresses
from harness.backends.base import ExecResult, NodeAddresses, SanitiseHints
from harness.backends.ssh import scripts
from harness.backends.ssh.faults import FleetFaults, HostFault
from harness.backends.ssh.inventory import HOST_ROLES, Inventory, is_ip, load_inventory
from harness.backends.ssh.placement import hosts_to_connect, place_nodes
from harness.backends.ssh.remote import CONNECT_TIMEOUT, RemoteHost
from harness.backends.ssh.upload import LocalBinary, local_binaries, upload_binaries
from harness.errors import BadInput, LabError, SetupError
from harness.models import Role, Topology
from harness.sut import get_sut

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class _NodeState:
    name: str
    host: str  # inventory alias
    router: str | None = None  # inventory alias of its router, if the inventory names one
    started: bool = False
    offset: int = 0  # bytes of the remote log read so far
    pending: bytes = b""  # a last line not yet ended
    lines: list[str] = field(default_factory=list)

    def feed(self, data: bytes) -> None:
        """More of the remote log: whole lines join `lines`, a partial one waits for its end."""
        self.offset += len(data)
        *complete, self.pending = (self.pending + data).split(b"\n")
        self.lines.extend(line.decode("utf-8", "replace") for line in complete)


class SshBackend(FleetFaults):
    """Runbook nodes on inventory hosts over SSH (see harness.backends.base.Backend and the module doc)."""

    name = "ssh"

    def __init__(
        self,
        run_id: str,
        inventory: Path | Inventory,
        *,
        accept_new_host_keys: bool = False,
        connect_timeout: float = CONNECT_TIMEOUT,
        binaries: Sequence[Path] | None = None,
    ) -> None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}", run_id):
            raise BadInput(f"run id {run_id!r}: use letters, digits, '.', '_' and '-'")
        self.run_id = run_id
        self.inventory = inventory if isinstance(inventory, Inventory) else load_inventory(Path(inventory))
        self.accept_new_host_keys = accept_new_host_keys
        self.connect_timeout = connect_timeout
        self._binaries = list(binaries) if binaries is not None else None
        self._remotes: dict[str, RemoteHost] = {}  # inventory alias -> connection, jump hosts first
        self._nodes: dict[str, _NodeState] = {}
        self._routers: dict[str, str] = {}  # router name (<node>-router) -> inventory alias
        self._addresses: dict[str, NodeAddresses] = {}
        self._profiles: dict[str, str] = {}  # node -> NAT profile the runbook gave it
        self._relay_ip: str | None = None
        self._hostnames: set[str] = set()
        self._faults: dict[str, str] = {}  # inventory alias -> the fault line of a host that broke the run
        self._unreachable: set[str] = set()  # hosts that broke the run unreachable (and what rides on them)
        self._reported: set[str] = set()  # hosts whose fault was raised
        self._began: float | None = None  # monotonic time provisioning began
        self._closed = False
        cleanup.register(self)

    # -- what the engine reads besides the lifecycle ---------------------------------------------------

    def sanitise_hints(self) -> SanitiseHints:
        """Inventory host names and users, for the sanitiser. Names a log uses as words (node names, roles,
        `<node>-router`) are left out: replacing them would break the checkpoints."""
        reserved = {*HOST_ROLES, "localhost", *self._nodes, *self._routers}
        names = set(self._hostnames)
        for host in self.inventory.hosts.values():
            names.add(host.name)
            if not is_ip(host.ansible_host):
                names.add(host.ansible_host)
        hostnames = sorted(n for n in names if n and n.lower() not in reserved and not is_ip(n))
        users = sorted({h.ansible_user for h in self.inventory.hosts.values() if h.ansible_user})
        return SanitiseHints(hostnames=tuple(hostnames), users=tuple(users))

    def describe(self) -> dict[str, Any]:
        """For the report's environment: no address, host name or user (this is not sanitised)."""
        hosts = self.inventory.hosts.values()
        return {
            "backend": "ssh",
            "inventory": self.inventory.path.name,
            "inventory_hosts": len(self.inventory.hosts),
            "inventory_nat_profiles": {
                h.dcutr_role: h.dcutr_nat_profile or "undeclared" for h in hosts if h.is_node_host
            },
            "routers_with_ground_truth": sum(1 for h in hosts if h.dcutr_role == "router"),
            "host_keys": "accept-new (this run only)" if self.accept_new_host_keys else "strict (known_hosts)",
        }

    # -- provisioning ------------------------------------------------------------------------------------

    def provision(self, topology: Topology) -> None:
        if self._closed:
            raise LabError(f"SSH backend {self.run_id} is closed")
        again = sorted(set(topology.nodes) & set(self._nodes))
        if again:
            raise LabError(f"node {', '.join(again)} is already provisioned on this fleet")
        plan = place_nodes(self.inventory, topology, taken=[state.host for state in self._nodes.values()])
        if self._began is None:
            self._began = time.monotonic()
        binaries = local_binaries(sorted({node.sut for node in topology.nodes.values()}), self._binaries)
        try:
            # Reach every host before touching any: an unreachable one fails the run with nothing started.
            for alias in hosts_to_connect(self.inventory, plan):
                self._connect(alias)
            for node_name, alias in plan.items():
                self._place(node_name, alias, topology, binaries)
            # The relay first: the others' addresses are the ones they use toward it.
            for node_name in sorted(plan, key=lambda n: topology.nodes[n].role != Role.relay):
                self._learn_addresses(node_name, topology.nodes[node_name].role == Role.relay)
            for node_name in plan:
                router_name = f"{node_name}-router"
                if router_name in self._routers:
                    self._record_conntrack(router_name)
        except BaseException:
            self.close()
            raise

    def _connect(self, alias: str) -> RemoteHost:
        if alias not in self._remotes:
            jump = self.inventory.hosts[alias].dcutr_jump
            self._remotes[alias] = RemoteHost.connect(
                self.inventory,
                alias,
                gateway=self._connect(jump) if jump else None,
                accept_new=self.accept_new_host_keys,
                timeout=self.connect_timeout,
            )
        return self._remotes[alias]

    def _place(self, node_name: str, alias: str, topology: Topology, binaries: Sequence[LocalBinary]) -> None:
        """Prepare the node's host (and its router), upload what the node's SUT needs, note the node."""
        remote = self._remote(alias)
        remote.prepare(self.run_id)
        programs = set(get_sut(topology.nodes[node_name].sut).programs)
        mine = [binary for binary in binaries if binary.name in programs]
        if mine:
            upload_binaries(remote, mine, self.run_id)
        router = self.inventory.router_of(alias)
        self._nodes[node_name] = _NodeState(node_name, alias, router.name if router else None)
        self._profiles[node_name] = topology.nodes[node_name].nat_profile
        self._hostnames.add(remote.hostname)
        if router is not None:
            self._routers[f"{node_name}-router"] = router.name
            router_remote = self._remote(router.name)
            router_remote.prepare(self.run_id)
            self._hostnames.add(router_remote.hostname)

    def _remote(self, alias: str) -> RemoteHost:
        remote = self._remotes.get(alias)
        if remote is None:
            raise LabError(f"{self.inventory.display}: host {alias!r} is not connected")
        return remote

    def _run(self, alias: str, script: str, *, timeout: float = 60.0, sudo: bool = False) -> ExecResult:
        return self._call(alias, "running a command", lambda r: r.run(script, timeout=timeout, sudo=sudo))

    # -- addresses -----------------------------------------------------------------------------------------

    def _learn_addresses(self, name: str, is_relay: bool) -> None:
        state = self._nodes[name]
        public_ip = self._public_ip(name)
        if is_relay and self._relay_ip is None:
            self._relay_ip = public_ip
        local_ip = self._local_ip(state.host, toward=self._relay_ip)
        profile = self._profiles[name]
        behind_nat = profile != "none"
        if behind_nat and local_ip == public_ip:
            raise BadInput(
                f"{self.inventory.display}: host {state.host!r} owns its public address, but the runbook puts "
                f"node {name!r} behind NAT {profile!r}"
            )
        extra: dict[str, str] = {}
        if not behind_nat and local_ip and local_ip != public_ip:
            extra[f"{name}.host_ip"] = local_ip  # a cloud VM's private address behind its 1:1 public one
        wans: tuple[str, ...] = ()
        if state.router is not None:
            router_name = f"{name}-router"
            lan = self._local_ip(state.router, toward=local_ip)
            wan = self._local_ip(state.router, toward=self._relay_ip, fallback=False) if self._relay_ip else None
            if lan:
                extra[f"{router_name}.lan_ip"] = lan
            if wan and wan != lan:
                wans = (wan,)
        self._addresses[name] = NodeAddresses(
            node=name,
            lan_ip=local_ip if behind_nat else None,
            public_ip=public_ip,
            router_wan_ips=wans,
            extra=extra,
        )

    def _public_ip(self, node: str) -> str:
        host = self.inventory.hosts[self._nodes[node].host]
        if host.dcutr_public_ip:
            return host.dcutr_public_ip
        if host.dcutr_jump:
            raise BadInput(
                f"{self.inventory.display}: host {host.name!r} is reached through a jump host: "
                "give its dcutr_public_ip (the address the internet sees)"
            )
        try:
            infos = socket.getaddrinfo(host.ansible_host, None, socket.AF_INET, socket.SOCK_STREAM)
        except OSError:
            raise SetupError(f"{self.inventory.display}: host {host.name!r}: cannot resolve its ansible_host") from None
        return str(infos[0][4][0])

    def _local_ip(self, alias: str, toward: str | None, *, fallback: bool = True) -> str | None:
        """The address a host uses toward `toward` (the relay), else the one its SSH session arrived on."""
        if toward:
            result = self._run(alias, scripts.route_source_script(toward), timeout=15)
            found = re.search(r"\bsrc (\S+)", result.output)
            if result.exit_code == 0 and found:
                return found.group(1)
        if not fallback:
            return None
        value = self._run(alias, scripts.SESSION_ADDRESS, timeout=15).output.strip()
        return value if is_ip(value) else None

    def addresses(self) -> Mapping[str, NodeAddresses]:
        return dict(self._addresses)

    def routers(self) -> Sequence[str]:
        return list(self._routers)

    # -- node processes --------------------------------------------------------------------------------------

    def _node(self, node: str) -> _NodeState:
        state = self._nodes.get(node)
        if state is None:
            raise BadInput(f"unknown node {node!r} (known: {', '.join(self._nodes)})")
        return state

    def _read(self, state: _NodeState, suffix: str, offset: int = 0) -> bytes | None:
        """The node's `<node><suffix>` file in the run directory, None while it does not exist."""
        return self._call(
            state.host,
            f"reading node {state.name}'s {suffix.lstrip('.')} file",
            lambda remote: remote.read(f"{remote.run_dir}/{state.name}{suffix}", offset),
        )

    def start(self, node: str, command: Sequence[str], env: Mapping[str, str]) -> None:
        state = self._node(node)
        if not command:
            raise BadInput(f"node {node}: empty command")
        if state.started and self.exit_code(node) is None:
            self.stop(node)

        def start(remote: RemoteHost) -> None:
            remote.put(f"{remote.run_dir}/{node}.env", scripts.env_file(env).encode(), mode=0o600)
            remote.must(scripts.start_script(remote.run_dir, node, command), f"starting node {node}", timeout=30)

        self._call(state.host, f"starting node {node}", start)
        state.started = True

    def stop(self, node: str, timeout: float = 5.0) -> None:
        state = self._node(node)
        if state.started:
            self._call(
                state.host,
                f"stopping node {node}",
                lambda remote: remote.run(scripts.stop_script(remote.run_dir, node, timeout), timeout=timeout + 15),
            )

    def exit_code(self, node: str) -> int | None:
        state = self._node(node)
        data = self._read(state, ".exit") if state.started else None
        if data is None:
            return None
        try:
            return int(data.strip() or b"-1")
        except ValueError:
            return -1

    def log_lines(self, node: str, start: int = 0) -> list[str]:
        state = self._node(node)
        if state.host in self._unreachable and state.host in self._reported:
            return state.lines[start:]  # the fault was raised once; what was read before it is all there is
        if state.started:
            data = self._read(state, ".log", state.offset)
            if data:
                state.feed(data)
        return state.lines[start:]

    def set_link(self, node: str, up: bool) -> None:
        # A real machine's uplink is not ours to take down: cutting it would cut our own SSH session too.
        raise LabError(f"the SSH backend cannot take {node}'s link {'up' if up else 'down'}: a link step needs Docker")

    def exec(self, target: str, command: Sequence[str], timeout: float = 30.0) -> ExecResult:
        if target in self._nodes:
            alias, sudo = self._nodes[target].host, False
            script = f"timeout -k 2 {timeout:g} {shlex.join(command)}"
        elif target in self._routers:
            alias, sudo = self._routers[target], True
            script = shlex.join(command)  # routers may have a busybox without GNU timeout: the channel bounds it
        else:
            known = [*self._nodes, *self._routers]
            raise BadInput(f"no node or router named {target!r} on this fleet (known: {', '.join(known)})")
        return self._run(alias, script, timeout=timeout + 5, sudo=sudo)

    # -- routers: the ground truth ----------------------------------------------------------------------------

    def _record_conntrack(self, router: str) -> None:
        """Log the router's conntrack events from now on (like the Docker backend), when it has `conntrack`."""
        remote = self._remote(self._routers[router])
        script = scripts.conntrack_recorder_script(remote.run_dir, router)
        remote.must(script, f"starting the conntrack recorder of {router}", sudo=True, timeout=30)

    def _collect_router(self, router: str, dest: Path) -> list[Path]:
        """`<router>.conntrack` (events, then the table) and, where nft answers, `<router>.nft`."""
        alias = self._routers[router]
        remote = self._remote(alias)
        events = self._run(alias, scripts.conntrack_events_script(remote.run_dir, router), sudo=True, timeout=30)
        table = self._run(alias, scripts.CONNTRACK_TABLE, sudo=True, timeout=30)
        path = dest / f"{router}.conntrack"
        path.write_text(conntrack_text(events.output if events.exit_code == 0 else "", table.output))
        written = [path]
        ruleset = self._run(alias, scripts.NFT_RULESET, sudo=True, timeout=30)
        if ruleset.exit_code == 0:
            (dest / f"{router}.nft").write_text(ruleset.output)
            written.append(dest / f"{router}.nft")
        return written

    # -- artefacts and cleanup -------------------------------------------------------------------------------

    def collect(self, dest: Path) -> list[Path]:
        dest.mkdir(parents=True, exist_ok=True)
        written: list[Path] = []
        problems: list[str] = []
        for name, state in self._nodes.items():
            path = dest / f"{name}.log"
            try:
                data = self._read(state, ".log") if state.started else b""
                path.write_bytes(data or b"")
                written.append(path)
            except HostFault:
                problems.append(f"{name}.log (skipped: host {state.host!r} is past a fault)")
            except Exception as error:
                problems.append(f"{name}.log: {type(error).__name__}")
        for router in self._routers:
            try:
                written.extend(self._collect_router(router, dest))
            except HostFault:
                problems.append(f"{router}.conntrack (skipped: host {self._routers[router]!r} is past a fault)")
            except Exception as error:
                problems.append(f"{router}.conntrack: {type(error).__name__}")
        write_addresses(dest, self._addresses)
        if problems:
            raise LabError(f"could not collect {', '.join(problems)}")
        return written

    def close(self) -> None:
        """Kill what this run started on every host, remove its run directories, close the connections."""
        if self._closed:
            return
        self._closed = True
        # A connection that died (a host that rebooted) is made again, jump hosts first, so it is cleaned up too;
        # a host that stays unreachable is skipped, and so is what rides on it.
        for alias in list(self._remotes):
            if alias in self._unreachable:
                log.warning("cleanup: host %r is unreachable, its run directory stays", alias)
            elif not self._remotes[alias].alive and self._reconnect(alias) is None:
                log.warning("cleanup: host %r cannot be reached again, its run directory stays", alias)
        # Hosts behind a jump host first: their connections ride on the jump host's.
        remotes = list(reversed(self._remotes.values()))
        for remote in remotes:
            if not remote.run_dir or not remote.alive or remote.alias in self._unreachable:
                continue
            try:
                result = remote.run(scripts.cleanup_script(remote.run_dir), sudo=remote.is_router, timeout=30)
                if result.exit_code != 0:
                    log.warning("cleanup on host %r exited %s", remote.alias, result.exit_code)
            except Exception as error:
                log.warning("cleanup on host %r failed: %s", remote.alias, type(error).__name__)
        for remote in remotes:
            remote.close()
        self._remotes.clear()
        cleanup.unregister(self)

    def __enter__(self) -> SshBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
