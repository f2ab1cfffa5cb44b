"""The runbook engine's adapter for the Docker lab: `DockerBackend` implements harness.backends.base.Backend.

It owns no Docker knowledge of its own: provisioning asks
harness.nat.topology for each node's router chain (so the backend, the probe and the punch build nodes the
same way) and the lab (harness.backends.docker.wiring) for the containers.

Contract and reasons:
- every node's SUT image (`sut-<name>`) is resolved before any container exists, so a SUT with no image
  fails the run whole; a node's host container runs that image;
- the nodes are provisioned at once, each in its own thread, and a node's host container starts while its
  routers are built: nothing in one node's chain waits for another node;
- a node is a host container and, once started, its process inside it (`HostProcess`: no container to create
  per process, the output read from a pipe as it comes, the process's own exit code); `start()` after `stop()`
  starts a new process and keeps the old one's log lines, so line numbers stay stable;
- the outermost router's WAN link gets the run's WAN delay (`default_wan_delay_ms`), the hops behind it none;
- every router logs `conntrack -E` from the moment it exists, before its node's host is on its LAN: the event
  log is the ground truth a run's verdict checks, and does not depend on when the run collects. A mark (an
  entry only the lab makes, on TEST-NET-1 addresses, inserted and deleted) proves the recorder listens and
  says where an attempt's events begin;
- `reset()` makes a provisioned topology ready for another attempt of the same topology: the node processes
  are killed, leftover sockets killed, neighbour caches, rulesets (and the mappings a cone
  profile learnt in them) and conntrack tables reset, then a new mark taken. Each attempt's artefacts start at
  its own marks and sample offsets, and its logs are only its own processes', so no fact of one attempt can
  be evidence in the next;
- `collect()` writes each node's log, each router's conntrack events (from the attempt's mark) and table
  (harness.backends.artefacts) and its live ruleset; `close()` closes the lab, which removes everything by
  handle and label.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker.errors

from harness.backends.artefacts import write_addresses, write_conntrack
from harness.backends.base import ExecResult, NodeAddresses, SanitiseHints
from harness.backends.docker.hostproc import HostProcess
from harness.backends.docker.lab import ImageResolver
from harness.backends.docker.wiring import HOST_IF, DockerLab, Host, Router, default_wan_delay_ms
from harness.errors import BadInput, SetupError
from harness.models import Node, Role, Topology
from harness.nat.profiles import get_profile
from harness.nat.topology import node_host, router_chain, router_hops

CONNTRACK_EVENTS = "/var/log/dcutr-lab-conntrack.events"
SOCKET_SAMPLES = "/var/log/dcutr-lab-sockets"
# The lab's conntrack marks: TEST-NET-1 (RFC 5737) addresses no lab node ever has, one source port per mark.
MARK_SRC, MARK_DST, MARK_DPORT = "192.0.2.1", "192.0.2.2", 9
MARK_WITHIN = 10.0  # seconds a recorder may take to show a mark


@dataclass
class NodeRuntime:
    """What the backend tracks per node: its host, its routers and its (current) process."""

    name: str
    role: Role
    nat_profile: str = "none"
    host: Host | None = None
    routers: list[Router] = field(default_factory=list)  # innermost first
    process: HostProcess | None = None
    past_logs: list[str] = field(default_factory=list)  # lines of earlier processes (restarts)
    starts: int = 0
    sockets_from: int = 0  # byte offset of this attempt's socket samples
    sockets_since: float = 0.0  # and the wall time the attempt began: no older sample counts


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
        self._env_of: dict[str, dict[str, str]] = {}  # image -> the environment it sets
        self._events_from: dict[str, int] = {}  # router -> byte offset of this attempt's conntrack events
        self._marks = 0
        self._marks_lock = threading.Lock()
        self._topology: dict[str, tuple[Role, str, str]] = {}
        self.attempts = 0  # attempts this topology has served (provision: 1, each reset: one more)

    # -- provisioning ----------------------------------------------------------------------------------

    def provision(self, topology: Topology) -> None:
        by_sut: dict[str, str] = {}
        for name, node in topology.nodes.items():
            get_profile(node.nat_profile)  # unknown names fail here, before any container exists
            if node.sut not in by_sut:  # likewise a SUT with no image
                by_sut[node.sut] = self.lab.image(f"sut-{node.sut}")
            self._images[name] = by_sut[node.sut]
        try:
            self.lab.transit()
            self.lab.parallel(
                [lambda name=name, node=node: self._provision_node(name, node) for name, node in topology.nodes.items()]
            )
        except BaseException:
            self.close()
            raise
        self._topology.update({name: (n.role, n.sut, n.nat_profile, n.link) for name, n in topology.nodes.items()})
        self.attempts = 1

    def _provision_node(self, name: str, node: Node) -> None:
        role, nat_profile, link = node.role, node.nat_profile, node.link
        runtime = NodeRuntime(name=name, role=role, nat_profile=nat_profile)
        self._nodes[name] = runtime
        # The host runs the node's image: its process is started inside it (HostProcess).
        self.lab.prestart_host(name, public=not router_hops(nat_profile), image=self._images[name])
        runtime.routers = router_chain(
            self.lab,
            name,
            nat_profile,
            wan_delay_ms=self.wan_delay_ms if link.delay_ms is None else link.delay_ms,
            wan_jitter_ms=link.jitter_ms,
            wan_loss=link.loss,
        )
        self.lab.parallel(
            [lambda router=router: self._record_conntrack_events(router.name) for router in runtime.routers]
        )
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
        """Log every conntrack state change of the router from now on, and wait until the recorder listens.

        The direct flow's ESTABLISHED entry only lives as long as the peers keep the connection: by the time a
        run collects, the client may have closed it (TIME_WAIT). The event log keeps the transition itself,
        written by the router's kernel as it happened, so the ground truth does not depend on timing.
        """
        wrapped = self.lab.container(router).wrapped
        wrapped.exec_run(
            ["sh", "-c", f"exec stdbuf -oL conntrack -E -p tcp -o timestamp > {CONNTRACK_EVENTS} 2>&1"],
            detach=True,
        )
        self._events_from[router] = self._mark(router)

    def _mark(self, router: str) -> int:
        """Put a mark in the router's event log and return the byte offset right after it.

        The mark is a conntrack entry the lab inserts and deletes (TEST-NET-1 addresses, a source port of its
        own); netlink delivers the router's events in order, so every event after the mark's DESTROY line
        happened after the mark. Until the recorder listens, a mark is missed: try again with a new one.
        """
        deadline = time.monotonic() + MARK_WITHIN
        while True:
            with self._marks_lock:
                self._marks += 1
                sport = 1000 + self._marks % 60000
            flow = ["-p", "tcp", "-s", MARK_SRC, "-d", MARK_DST, "--sport", str(sport), "--dport", str(MARK_DPORT)]
            insert = ["conntrack", "-I", *flow, "--state", "SYN_SENT", "-t", "30"]
            self.lab.ns_must(router, insert, "conntrack mark")
            self.lab.ns_run(router, ["conntrack", "-D", *flow])
            wanted = f"src={MARK_SRC} dst={MARK_DST} sport={sport} dport={MARK_DPORT} ".encode()
            retry_at = time.monotonic() + 0.1
            while time.monotonic() < retry_at:
                found = _after_mark(self.lab.read_from(router, CONNTRACK_EVENTS), wanted)
                if found is not None:
                    return found
                time.sleep(0.01)
            if time.monotonic() >= deadline:
                raise SetupError(f"the conntrack recorder of {router} logged no mark within {MARK_WITHIN:g}s")

    def _sample_sockets(self, host: str) -> None:
        """A node without NAT has no router to witness its direct flow: sample its own established TCP sockets
        (`[<epoch>] <ss -tnH columns>`) for the whole run, so the ground truth sees the connection even after it
        closed. Every ~50 ms: a session between two public peers has no wire delay and may last ~0.25 s."""
        loop = (
            "while :; do t=$(date +%s.%N); ss -tnH state established | while read -r line; "
            f'do echo "[$t] $line"; done; sleep 0.05; done > {SOCKET_SAMPLES} 2>&1'
        )
        self.lab.container(host).wrapped.exec_run(["sh", "-c", loop], detach=True)
        runtime = self._nodes[host]
        runtime.sockets_from, runtime.sockets_since = 0, time.time()

    def addresses(self) -> Mapping[str, NodeAddresses]:
        return dict(self._addresses)

    def sanitise_hints(self) -> SanitiseHints:
        return SanitiseHints()  # the lab names its own containers; only addresses are real

    def describe(self) -> dict[str, Any]:
        return {"backend": "docker", "wan_delay_ms": self.wan_delay_ms}

    def routers(self) -> Sequence[str]:
        return [router.name for node in self._nodes.values() for router in node.routers]

    # -- another attempt on the same topology ----------------------------------------------------------

    def reset(self, topology: Topology) -> None:
        """Make the provisioned topology ready for another attempt, as if it were new (see the module doc).

        Only the same topology can be reset to: anything else is a different lab."""
        # Link conditions are the wires' own settings: a topology with other ones is another lab.
        wanted = {name: (n.role, n.sut, n.nat_profile, n.link) for name, n in topology.nodes.items()}
        if wanted != self._topology:
            raise BadInput(f"lab {self.run_id} was provisioned for another topology; reset needs the same one")
        nodes = list(self._nodes.values())
        self.lab.parallel([lambda runtime=runtime: self._clear_node(runtime) for runtime in nodes])
        routers = [router for runtime in nodes for router in runtime.routers]
        self.lab.parallel([lambda router=router: self._reset_router(router) for router in routers])
        self.attempts += 1

    def _clear_node(self, runtime: NodeRuntime) -> None:
        """Stop and remove the node's process, forget its lines, kill the sockets it left (TIME_WAIT, FIN_WAIT:
        a new process binds the same ports) and the neighbour cache; this attempt's socket samples start now."""
        if runtime.process is not None:
            runtime.process.kill()  # nothing it does now is evidence
        runtime.process, runtime.past_logs = None, []
        self.lab.ns_run(runtime.name, ["ss", "-K", "-t", "state", "all"])
        self.lab.ns_run(runtime.name, ["ip", "neigh", "flush", "all"])
        if not runtime.routers and runtime.role != Role.relay:
            runtime.sockets_since = time.time()
            runtime.sockets_from = self.lab.file_size(runtime.name, SOCKET_SAMPLES)

    def _reset_router(self, router: Router) -> None:
        """The router as new: its ruleset reloaded (a cone profile's learnt mappings go with the old one), its
        conntrack table and neighbour cache flushed, then a mark: the attempt's events begin after it."""
        self.lab.load_ruleset(router.name, router.nat_profile)
        self.lab.ns_run(router.name, ["conntrack", "-F"])
        self.lab.ns_run(router.name, ["ip", "neigh", "flush", "all"])
        self._events_from[router.name] = self._mark(router.name)

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
        environment = {**self._image_env(self._images[node]), **env}
        runtime.process = HostProcess(self._process_name(runtime), runtime.host.container.pid, command, environment)

    def _image_env(self, image: str) -> dict[str, str]:
        """The environment the image sets (PATH, LD_LIBRARY_PATH, ...), as a container of it would start with."""
        if image not in self._env_of:
            try:
                pairs = self.lab.client.images.get(image).attrs["Config"].get("Env") or []
            except docker.errors.ImageNotFound:
                raise SetupError(f"image {image} is missing: run `dcutr-lab images build`") from None
            self._env_of[image] = dict(pair.split("=", 1) for pair in pairs if "=" in pair)
        return self._env_of[image]

    def _retire_process(self, runtime: NodeRuntime) -> None:
        """Keep the old process's log lines (so line numbers stay stable), then make sure it is gone."""
        assert runtime.process is not None
        runtime.process.kill()
        runtime.past_logs.extend(runtime.process.final())
        runtime.process = None

    def stop(self, node: str, timeout: float = 5.0) -> None:
        runtime = self._node(node)
        if runtime.process is not None:
            runtime.process.stop(timeout=max(1.0, timeout))

    def exit_code(self, node: str) -> int | None:
        runtime = self._node(node)
        return None if runtime.process is None else runtime.process.exit_code()

    def _current_lines(self, runtime: NodeRuntime, *, final: bool = False) -> list[str]:
        if runtime.process is None:
            return []
        return runtime.process.final() if final else runtime.process.lines()

    def log_lines(self, node: str, start: int = 0) -> list[str]:
        runtime = self._node(node)
        return (runtime.past_logs + self._current_lines(runtime))[start:]

    def set_link(self, node: str, up: bool) -> None:
        """The node's WAN link down or up: its outermost router's WAN interface, or a public node's own."""
        runtime = self._node(node)
        target, ifname = (runtime.routers[-1].name, runtime.routers[-1].wan_if) if runtime.routers else (node, HOST_IF)
        self.lab.must(target, ["ip", "link", "set", ifname, "up" if up else "down"], f"link {'up' if up else 'down'}")

    def exec(self, target: str, command: Sequence[str], timeout: float = 30.0) -> ExecResult:
        return self.lab.exec(target, command, timeout=timeout)

    # -- artefacts and cleanup -------------------------------------------------------------------------

    def collect(self, dest: Path) -> list[Path]:
        dest.mkdir(parents=True, exist_ok=True)
        written: list[Path] = []
        for name, runtime in self._nodes.items():
            path = dest / f"{name}.log"
            lines = runtime.past_logs + self._current_lines(runtime, final=True)
            path.write_text("".join(line + "\n" for line in lines))
            written.append(path)
        for router in self.routers():
            events = self.lab.read_from(router, CONNTRACK_EVENTS, self._events_from.get(router, 0))
            table = self.lab.ns_run(router, ["conntrack", "-L", "-p", "tcp"], timeout=10)
            written.append(write_conntrack(dest, router, events.decode("utf-8", "replace"), table.output))
            ruleset = dest / f"{router}.nft"
            ruleset.write_text(self.lab.ns_run(router, ["nft", "list", "ruleset"], timeout=10).output)
            written.append(ruleset)
        for name, runtime in self._nodes.items():
            if not runtime.routers and runtime.role != Role.relay:
                samples = self.lab.read_from(name, SOCKET_SAMPLES, runtime.sockets_from).decode("utf-8", "replace")
                path = dest / f"{name}.sockets"
                path.write_text(_samples_since(samples, runtime.sockets_since))
                written.append(path)
        write_addresses(dest, self._addresses)
        return written

    def close(self) -> None:
        for runtime in self._nodes.values():
            if runtime.process is not None:
                runtime.process.kill()
        self.lab.close()


def _after_mark(data: bytes, flow: bytes) -> int | None:
    """The offset right after the `[DESTROY]` line of the mark `flow` in an event log, if it is there yet."""
    offset, found = 0, None
    for line in data.split(b"\n")[:-1]:  # complete lines only
        offset += len(line) + 1
        if b"[DESTROY]" in line and flow in line:
            found = offset
    return found


def _samples_since(text: str, since: float) -> str:
    """The socket samples taken at or after `since` (a sample begun before an attempt is not its evidence)."""
    kept = []
    for line in text.splitlines(keepends=True):
        stamp = line[1 : line.find("]")] if line.startswith("[") else ""
        try:
            if float(stamp) >= since:
                kept.append(line)
        except ValueError:
            continue
    return "".join(kept)
