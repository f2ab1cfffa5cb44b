"""The runbook engine's adapter for the Docker lab: `DockerBackend` implements harness.backends.base.Backend.

It owns no Docker knowledge of its own beyond following process containers: provisioning asks
harness.nat.topology for each node's router chain (so the backend, the probe and the punch build nodes the
same way) and the lab (harness.backends.docker.wiring) for the containers.

Contract and reasons:
- every node's SUT image (`sut-<name>`) is resolved before any container exists, so a SUT with no image
  fails the run whole; a node's process containers run that image;
- a node is a host container plus, once started, a process container in its namespace; `start()` after
  `stop()` replaces the process container and keeps the old one's log lines, so line numbers stay stable;
- the outermost router's WAN link gets the run's WAN delay (`default_wan_delay_ms`), the hops behind it none;
- every router logs `conntrack -E` from the moment it exists, before its node's host is on its LAN: the event
  log is the ground truth a run's verdict checks, and does not depend on when the run collects;
- `collect()` writes each node's log, each router's conntrack events and table (harness.backends.artefacts)
  and its live ruleset; `close()` closes the lab, which removes everything by handle and label.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker.errors
from testcontainers.core.container import DockerContainer

from harness.backends.artefacts import write_addresses, write_conntrack
from harness.backends.base import ExecResult, NodeAddresses, SanitiseHints
from harness.backends.docker.lab import ImageResolver
from harness.backends.docker.wiring import DockerLab, Host, Router, default_wan_delay_ms
from harness.errors import BadInput
from harness.models import Role, Topology
from harness.nat.profiles import get_profile
from harness.nat.topology import node_host, router_chain

CONNTRACK_EVENTS = "/var/log/dcutr-lab-conntrack.events"
SOCKET_SAMPLES = "/var/log/dcutr-lab-sockets"


@dataclass
class NodeRuntime:
    """What the backend tracks per node: its host, its routers and its (current) process container."""

    name: str
    role: Role
    host: Host | None = None
    routers: list[Router] = field(default_factory=list)  # innermost first
    process: DockerContainer | None = None
    past_logs: list[str] = field(default_factory=list)  # lines of earlier process containers (restarts)
    starts: int = 0


class DockerBackend:
    """The runbook engine's view of a DockerLab (see harness.backends.base.Backend)."""

    name = "docker"

    def __init__(
        self,
        run_id: str,
        *,
        lab: DockerLab | None = None,
        images: ImageResolver | None = None,
        wan_delay_ms: float | None = None,
    ) -> None:
        self.run_id = run_id
        self.wan_delay_ms = default_wan_delay_ms() if wan_delay_ms is None else wan_delay_ms
        self.lab = lab or DockerLab(run_id, images=images)
        self._nodes: dict[str, NodeRuntime] = {}
        self._addresses: dict[str, NodeAddresses] = {}
        self._images: dict[str, str] = {}  # node -> the image of its SUT

    # -- provisioning ----------------------------------------------------------------------------------

    def provision(self, topology: Topology) -> None:
        by_sut: dict[str, str] = {}
        for name, node in topology.nodes.items():
            get_profile(node.nat_profile)  # unknown names fail here, before any container exists
            if node.sut not in by_sut:  # likewise a SUT with no image
                by_sut[node.sut] = self.lab.image(f"sut-{node.sut}")
            self._images[name] = by_sut[node.sut]
        try:
            for name, node in topology.nodes.items():
                self._provision_node(name, node.role, node.nat_profile)
        except BaseException:
            self.close()
            raise

    def _provision_node(self, name: str, role: Role, nat_profile: str) -> None:
        runtime = NodeRuntime(name=name, role=role)
        self._nodes[name] = runtime
        runtime.routers = router_chain(self.lab, name, nat_profile, wan_delay_ms=self.wan_delay_ms)
        for router in runtime.routers:
            self._record_conntrack_events(router.name)
        runtime.host = node_host(self.lab, name, runtime.routers)
        if not runtime.routers:
            self._addresses[name] = NodeAddresses(node=name, lan_ip=None, public_ip=runtime.host.ip)
            if role != Role.relay:
                self._sample_sockets(name)
            return
        self._addresses[name] = NodeAddresses(
            node=name,
            lan_ip=runtime.host.ip,
            public_ip=runtime.routers[-1].wan_ip,
            router_wan_ips=tuple(r.wan_ip for r in runtime.routers),
            extra={f"{r.name}.lan_ip": r.lan_ip for r in runtime.routers},
        )

    def _record_conntrack_events(self, router: str) -> None:
        """Log every conntrack state change of the router from now on.

        The direct flow's ESTABLISHED entry only lives as long as the peers keep the connection: by the time a
        run collects, the client may have closed it (TIME_WAIT). The event log keeps the transition itself,
        written by the router's kernel as it happened, so the ground truth does not depend on timing.
        """
        wrapped = self.lab.container(router).get_wrapped_container()
        wrapped.exec_run(
            ["sh", "-c", f"exec stdbuf -oL conntrack -E -p tcp -o timestamp > {CONNTRACK_EVENTS} 2>&1"],
            detach=True,
        )

    def _sample_sockets(self, host: str) -> None:
        """A node without NAT has no router to witness its direct flow: sample its own established TCP sockets
        (`[<epoch>] <ss -tnH columns>`) for the whole run, so the ground truth sees the connection even after it
        closed."""
        loop = (
            "while :; do t=$(date +%s.%N); ss -tnH state established | while read -r line; "
            f'do echo "[$t] $line"; done; sleep 0.2; done > {SOCKET_SAMPLES} 2>&1'
        )
        self.lab.container(host).get_wrapped_container().exec_run(["sh", "-c", loop], detach=True)

    def addresses(self) -> Mapping[str, NodeAddresses]:
        return dict(self._addresses)

    def sanitise_hints(self) -> SanitiseHints:
        return SanitiseHints()  # the lab names its own containers; only addresses are real

    def describe(self) -> dict[str, Any]:
        return {"backend": "docker", "wan_delay_ms": self.wan_delay_ms}

    def routers(self) -> Sequence[str]:
        return [router.name for node in self._nodes.values() for router in node.routers]

    # -- node processes --------------------------------------------------------------------------------

    def _node(self, node: str) -> NodeRuntime:
        try:
            return self._nodes[node]
        except KeyError:
            raise BadInput(f"unknown node {node!r} (known: {', '.join(self._nodes)})") from None

    def _process_name(self, runtime: NodeRuntime) -> str:
        return f"{runtime.name}-proc{runtime.starts}"

    def start(self, node: str, command: Sequence[str], env: Mapping[str, str]) -> None:
        runtime = self._node(node)
        if runtime.process is not None:
            self._retire_process(runtime)
        assert runtime.host is not None
        runtime.starts += 1
        runtime.process = self.lab.process(
            self._process_name(runtime), runtime.host, command, env, image=self._images[node]
        )

    def _retire_process(self, runtime: NodeRuntime) -> None:
        """Keep the old process's log lines (so line numbers stay stable), then remove its container."""
        runtime.past_logs.extend(self._current_lines(runtime))
        self.lab.remove(self._process_name(runtime))
        runtime.process = None

    def stop(self, node: str, timeout: float = 5.0) -> None:
        runtime = self._node(node)
        if runtime.process is None:
            return
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            runtime.process.get_wrapped_container().stop(timeout=max(1, int(timeout)))

    def exit_code(self, node: str) -> int | None:
        runtime = self._node(node)
        if runtime.process is None:
            return None
        wrapped = runtime.process.get_wrapped_container()
        try:
            wrapped.reload()
        except docker.errors.NotFound:
            return None
        state = wrapped.attrs["State"]
        if state.get("Running") or state.get("Status") in ("created", "restarting"):
            return None
        return int(state.get("ExitCode", -1))

    def _current_lines(self, runtime: NodeRuntime) -> list[str]:
        if runtime.process is None:
            return []
        try:
            raw = runtime.process.get_wrapped_container().logs(stdout=True, stderr=True)
        except docker.errors.NotFound:
            return []
        text = raw.decode("utf-8", "replace")
        lines = text.split("\n")
        # A line still being written has no newline yet: hand it out only once it is complete.
        return lines[:-1]

    def log_lines(self, node: str, start: int = 0) -> list[str]:
        runtime = self._node(node)
        return (runtime.past_logs + self._current_lines(runtime))[start:]

    def exec(self, target: str, command: Sequence[str], timeout: float = 30.0) -> ExecResult:
        return self.lab.exec(target, command, timeout=timeout)

    # -- artefacts and cleanup -------------------------------------------------------------------------

    def collect(self, dest: Path) -> list[Path]:
        dest.mkdir(parents=True, exist_ok=True)
        written: list[Path] = []
        for name, runtime in self._nodes.items():
            path = dest / f"{name}.log"
            lines = runtime.past_logs + self._current_lines(runtime)
            path.write_text("".join(line + "\n" for line in lines))
            written.append(path)
        for router in self.routers():
            events = self.lab.exec(router, ["cat", CONNTRACK_EVENTS], timeout=10)
            table = self.lab.exec(router, ["conntrack", "-L", "-p", "tcp"], timeout=10)
            written.append(write_conntrack(dest, router, events.output if events.exit_code == 0 else "", table.output))
            ruleset = dest / f"{router}.nft"
            ruleset.write_text(self.lab.exec(router, ["nft", "list", "ruleset"], timeout=10).output)
            written.append(ruleset)
        for name, runtime in self._nodes.items():
            if not runtime.routers and runtime.role != Role.relay:
                samples = self.lab.exec(name, ["cat", SOCKET_SAMPLES], timeout=10)
                path = dest / f"{name}.sockets"
                path.write_text(samples.output if samples.exit_code == 0 else "")
                written.append(path)
        write_addresses(dest, self._addresses)
        return written

    def close(self) -> None:
        self.lab.close()
