"""The Docker backend: a lab of routers, hosts and node processes on one machine.

Wiring, and why it is not "one Docker network per LAN":
- `transit` (the lab's internet) is an `internal=True` Docker bridge network. Only the relay and the routers'
  WAN sides sit on it, so every packet on it is addressed inside its own subnet and Docker's isolation rules
  let it through.
- A private node's LAN is a veth pair between the node's host container and its router, created in the two
  containers' network namespaces directly. A Docker bridge cannot carry routed LAN traffic here: with
  `br_netfilter` loaded, the host's FORWARD chain sees bridged frames and Docker's isolation rule for an
  internal network (`-i br-x ! -d <subnet> -j DROP`) drops every packet a peer sends to the internet through
  its router. A veth pair never touches the host's bridges or firewall, and no host state is changed.
- A private node is two containers sharing one network namespace: a *host* (holds the veth, the default route
  via the router, lives for the whole run) and the *process* container running the SUT binary, created at
  `start()`. So the network is ready before the SUT's first packet, a restart keeps addresses, and the
  process's logs and exit code are plain Docker ones.
- A router's WAN link has latency (the kernel has no netem): by default its WAN is a veth `wan0` to a
  `<router>-wire` container on transit that forwards frames after DEFAULT_WAN_DELAY_MS each way
  (images/router/dcutr-wire; $DCUTR_LAB_WAN_DELAY_MS, 0 puts the router's `eth0` on transit as before).
- Everything carries the labels of `harness.labels`; `close()` removes by handle and then sweeps by the run
  label, so even objects created by a half-finished call are found.
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import logging
import os
import subprocess
import tarfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Ryuk (testcontainers' reaper) needs an image pulled from a registry, which this lab never has.
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")

import docker
import docker.errors
from docker.types import EndpointConfig
from testcontainers.core.container import DockerContainer

from harness import cleanup
from harness import labels as lab_labels
from harness.backends.artefacts import write_addresses, write_conntrack
from harness.backends.base import ExecResult, NodeAddresses, SanitiseHints
from harness.backends.subnets import NetworkKind, candidates, host_routes, nth_host
from harness.errors import BadInput, LabError, SetupError
from harness.models import Role, Topology

log = logging.getLogger(__name__)

ImageResolver = Callable[[str], str]

# Interface names inside router and host containers; fixed so rulesets and logs read the same in every run.
TRANSIT_IF = "eth0"
LAN_IF = "lan0"
UPLINK_IF = "wan0"  # a router's WAN when it is a veth: behind a carrier NAT, or to its wire
HOST_IF = "eth0"
CONNTRACK_EVENTS = "/var/log/dcutr-lab-conntrack.events"

WIRE_IF = "w0"  # a wire container's port towards its router (its other port, eth0, is on transit)

# One-way delay each router's WAN link adds (ms), unless DCUTR_LAB_WAN_DELAY_MS says otherwise (0: no wire, the
# router's eth0 sits on transit itself). Real links have tens of ms; see DockerLab.router.
DEFAULT_WAN_DELAY_MS = 20.0
WAN_DELAY_ENV = "DCUTR_LAB_WAN_DELAY_MS"


def default_wan_delay_ms() -> float:
    """The WAN delay of a run's routers: $DCUTR_LAB_WAN_DELAY_MS if set, else DEFAULT_WAN_DELAY_MS."""
    raw = os.environ.get(WAN_DELAY_ENV, "").strip()
    if not raw:
        return DEFAULT_WAN_DELAY_MS
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 10_000:
        raise BadInput(f"{WAN_DELAY_ENV}={raw!r}: want a one-way delay in ms, 0 to 10000")
    return value


def docker_client() -> docker.DockerClient:
    from harness.dockerd import connect

    return connect(timeout=120)


def _default_images(kind: str) -> str:
    """`base`, `router`, or `sut-<name>`: the image of that SUT (built in place, or the one built last)."""
    from harness.images import ensure_image, sut_image
    from harness.sut import get_sut

    if kind.startswith("sut-"):
        return sut_image(get_sut(kind.removeprefix("sut-"))).tag
    return ensure_image(kind)


@dataclass
class LabNetwork:
    name: str
    subnet: ipaddress.IPv4Network
    docker_id: str
    _next: int = 10

    def next_ip(self) -> str:
        ip = nth_host(self.subnet, self._next)
        self._next += 1
        return ip


@dataclass
class Router:
    """A NAT router container. `wan_ip` is its address towards the internet (transit or carrier)."""

    name: str
    container: DockerContainer
    nat_profile: str
    wan_if: str
    wan_ip: str
    lan_if: str
    lan_ip: str
    lan_subnet: ipaddress.IPv4Network
    ruleset: str = ""
    wire: str | None = None  # the `<name>-wire` container shaping its WAN link, if any


@dataclass
class Host:
    """A container that owns a network namespace (a node's machine). Processes join it by `container:`."""

    name: str
    container: DockerContainer
    ip: str
    gateway: str | None


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


def _container_pid(container: DockerContainer) -> int:
    wrapped = container.get_wrapped_container()
    wrapped.reload()
    pid = int(wrapped.attrs["State"]["Pid"])
    if pid <= 0:
        raise SetupError(f"container {wrapped.name} is not running (state {wrapped.attrs['State']['Status']})")
    return pid


def _run_host(command: Sequence[str], what: str) -> None:
    """A command on the lab machine itself (only `ip link` to create veth pairs between namespaces)."""
    result = subprocess.run(list(command), capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise SetupError(f"{what} failed: `{' '.join(command)}`: {result.stderr.strip()}")


class DockerLab:
    """One run's Docker objects: the transit network, routers, hosts and process containers.

    Fluent enough for the probe and the fixtures, complete enough for the runbook backend. A context manager;
    `close()` is idempotent and removes everything carrying this run's label.
    """

    def __init__(
        self,
        run_id: str | None = None,
        *,
        client: docker.DockerClient | None = None,
        images: ImageResolver | None = None,
    ) -> None:
        if os.geteuid() != 0:
            raise SetupError("the Docker lab creates veth pairs between containers: run it as root")
        self.run_id = run_id or lab_labels.new_run_id()
        self.client = client or docker_client()
        self._images = images or _default_images
        self._containers: dict[str, DockerContainer] = {}
        self._networks: list[LabNetwork] = []
        self._transit: LabNetwork | None = None
        self._lan_index = 0
        self._closed = False
        cleanup.register(self)

    # -- lifecycle -------------------------------------------------------------------------------------

    def __enter__(self) -> DockerLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for name in reversed(list(self._containers)):
            self._remove_container(name)
        for network in reversed(self._networks):
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                self.client.networks.get(network.docker_id).remove()
        sweep(self.client, run_id=self.run_id)
        cleanup.unregister(self)

    def _remove_container(self, name: str) -> None:
        container = self._containers.pop(name, None)
        if container is None:
            return
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            container.get_wrapped_container().remove(force=True, v=True)

    # -- naming and images -----------------------------------------------------------------------------

    def object_name(self, what: str) -> str:
        return lab_labels.object_name(self.run_id, what)

    def labels(self, role: str) -> dict[str, str]:
        return lab_labels.run_labels(self.run_id, role=role)

    def image(self, kind: str) -> str:
        return self._images(kind)

    def container(self, name: str) -> DockerContainer:
        try:
            return self._containers[name]
        except KeyError:
            raise BadInput(
                f"no container named {name!r} in lab {self.run_id} ({', '.join(self._containers)})"
            ) from None

    # -- networks --------------------------------------------------------------------------------------

    def transit(self) -> LabNetwork:
        """The lab's internet; created on first use with a subnet no other lab or host route uses."""
        if self._transit is None:
            self._transit = self._create_network("transit", NetworkKind.transit)
        return self._transit

    def _create_network(self, what: str, kind: NetworkKind) -> LabNetwork:
        name = self.object_name(what)
        avoid = host_routes()
        last_error: Exception | None = None
        for attempt, subnet in enumerate(candidates(kind, avoid)):
            if attempt >= 64:
                break
            ipam = docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=str(subnet))])
            try:
                network = self.client.networks.create(
                    name, driver="bridge", internal=True, ipam=ipam, labels=self.labels(kind.value)
                )
            except docker.errors.APIError as error:
                # Docker refuses a subnet another network holds: that is how parallel labs stay apart.
                if "overlap" in str(error).lower():
                    last_error = error
                    continue
                raise SetupError(f"creating network {name} failed: {error.explanation or error}") from error
            lab_network = LabNetwork(name=name, subnet=subnet, docker_id=network.id)
            self._networks.append(lab_network)
            return lab_network
        raise SetupError(f"no free {kind.value} subnet for network {name}: {last_error}")

    def lan_subnet(self, pool: str | None = None) -> ipaddress.IPv4Network:
        """LANs live only inside veth pairs, so they need no allocation across labs; a distinct /24 per router
        keeps logs readable. A carrier NAT's inside comes from its own pool (RFC 6598 100.64.0.0/10)."""
        self._lan_index += 1
        network = ipaddress.IPv4Network(pool or "192.168.0.0/16")
        return list(network.subnets(new_prefix=24))[self._lan_index]

    # -- containers ------------------------------------------------------------------------------------

    def _start_container(
        self,
        name: str,
        *,
        image: str,
        role: str,
        command: Sequence[str],
        network: LabNetwork | None = None,
        ip: str | None = None,
        network_mode: str | None = None,
        env: Mapping[str, str] | None = None,
        cap_add: Sequence[str] = (),
        sysctls: Mapping[str, str] | None = None,
        entrypoint: Sequence[str] | None = None,
    ) -> DockerContainer:
        if name in self._containers:
            raise LabError(f"container {name!r} already exists in lab {self.run_id}")
        # with_kwargs replaces rather than merges, so every create option goes in this one call.
        kwargs: dict[str, object] = {
            "labels": self.labels(role),
            "hostname": name[:63],
            "init": True,
            "cap_add": list(cap_add),
            "sysctls": dict(sysctls or {}),
            "detach": True,
        }
        if entrypoint is not None:
            kwargs["entrypoint"] = list(entrypoint)
        if network is not None:
            kwargs["network"] = network.name
            kwargs["networking_config"] = {network.name: EndpointConfig("1.41", ipv4_address=ip)}
        else:
            kwargs["network_mode"] = network_mode or "none"
            kwargs.pop("hostname")  # a container sharing another's namespace cannot set its own hostname
        try:
            # Never let Docker reach for a registry: a missing local image is a setup error, not a pull.
            self.client.images.get(image)
        except docker.errors.ImageNotFound:
            raise SetupError(f"image {image} is missing: run `dcutr-lab images build`") from None
        container = (
            DockerContainer(image)
            .with_name(self.object_name(name))
            .with_command(list(command))
            .with_envs(**dict(env or {}))
            .with_kwargs(**kwargs)
        )
        try:
            container.start()
        except docker.errors.ImageNotFound as error:
            raise SetupError(f"image {image} is missing: run `dcutr-lab images build`") from error
        except docker.errors.APIError as error:
            with contextlib.suppress(Exception):
                self.client.containers.get(self.object_name(name)).remove(force=True)
            raise SetupError(f"starting container {name} failed: {error.explanation or error}") from error
        self._containers[name] = container
        return container

    def exec(self, target: str, command: Sequence[str], timeout: float = 30.0) -> ExecResult:
        """Run a command in a lab container, bounded by `timeout` (coreutils `timeout` inside)."""
        wrapped = self.container(target).get_wrapped_container()
        bounded = ["timeout", "--kill-after=2", f"{timeout:g}", *command]
        try:
            code, output = wrapped.exec_run(bounded, demux=False)
        except docker.errors.APIError as error:
            raise LabError(f"exec on {target} failed: {error.explanation or error}") from error
        return ExecResult(exit_code=int(code), output=(output or b"").decode("utf-8", "replace"))

    def must(self, target: str, command: Sequence[str], what: str, timeout: float = 30.0) -> str:
        result = self.exec(target, command, timeout=timeout)
        if result.exit_code != 0:
            raise SetupError(f"{what} on {target} failed (exit {result.exit_code}): {result.output.strip()}")
        return result.output

    def put_file(self, target: str, path: str, content: str) -> None:
        data = content.encode()
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            info = tarfile.TarInfo(name=os.path.basename(path))
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
        self.must(target, ["mkdir", "-p", os.path.dirname(path)], "mkdir")
        self.container(target).get_wrapped_container().put_archive(os.path.dirname(path), buffer.getvalue())

    def _veth(self, a: str, a_if: str, b: str, b_if: str) -> None:
        """A veth pair with one end in each container's namespace; it dies with them, nothing stays on the host."""
        pid_a, pid_b = _container_pid(self.container(a)), _container_pid(self.container(b))
        _run_host(
            ["ip", "link", "add", a_if, "netns", str(pid_a), "type", "veth", "peer", "name", b_if, "netns", str(pid_b)],
            f"veth {a}:{a_if} <-> {b}:{b_if}",
        )
        self._small_segments(a, a_if)
        self._small_segments(b, b_if)

    def _address(self, target: str, ifname: str, cidr: str) -> None:
        self.must(target, ["ip", "addr", "add", cidr, "dev", ifname], f"address {cidr} on {ifname}")
        self.must(target, ["ip", "link", "set", ifname, "up"], f"link up {ifname}")

    # -- building blocks -------------------------------------------------------------------------------

    def router(
        self,
        name: str,
        nat_profile: str,
        *,
        upstream: Router | None = None,
        wan_delay_ms: float = 0.0,
        wan_loss: float = 0.0,
        wan_jitter_ms: float = 0.0,
    ) -> Router:
        """A NAT router with a fresh LAN. Its WAN is on transit, or on `upstream`'s LAN (carrier-grade NAT).

        With all three link settings 0 the router's `eth0` is on transit. Otherwise its WAN is `wan0`, a veth
        to a `<name>-wire` container whose `eth0` is on transit; the wire (images/router/dcutr-wire) delays
        every frame `wan_delay_ms` each way (plus up to `wan_jitter_ms`, never reordering) and drops
        `wan_loss` percent of them. The router keeps its transit address either way, and `Router.wan_if` names
        the interface its ruleset matches. The kernel has no netem, and punching through a router that resets
        unsolicited SYNs depends on the SYNs crossing in flight, as they do on real links.
        """
        from harness.nat.profiles import ROUTER_SYSCTLS, get_profile
        from harness.nat.render import render_ruleset

        config = get_profile(nat_profile)
        if not (wan_delay_ms >= 0 and wan_jitter_ms >= 0 and 0 <= wan_loss < 100):  # NaN fails too
            raise BadInput(
                f"router {name}: WAN delay {wan_delay_ms:g} ms, jitter {wan_jitter_ms:g} ms, loss {wan_loss:g}%: "
                "want delay and jitter >= 0 and loss in [0, 100)"
            )
        wired = wan_delay_ms > 0 or wan_jitter_ms > 0 or wan_loss > 0
        if wired and upstream is not None:
            raise BadInput(
                f"router {name}: a WAN delay or loss belongs to the hop on transit, not behind {upstream.name}"
            )
        lan_subnet = self.lan_subnet(config.lan_pool)
        image = self.image("router")
        idle = ["sleep", "infinity"]
        if upstream is None and wired:
            transit = self.transit()
            wan_ip = transit.next_ip()
            container = self._start_container(
                name, image=image, role="router", command=idle, cap_add=["NET_ADMIN", "NET_RAW"], sysctls=ROUTER_SYSCTLS
            )
            self._wire(name, UPLINK_IF, transit, delay_ms=wan_delay_ms, jitter_ms=wan_jitter_ms, loss=wan_loss)
            self._address(name, UPLINK_IF, f"{wan_ip}/{transit.subnet.prefixlen}")
            wan_if = UPLINK_IF
        elif upstream is None:
            transit = self.transit()
            wan_ip = transit.next_ip()
            container = self._start_container(
                name,
                image=image,
                role="router",
                command=idle,
                network=transit,
                ip=wan_ip,
                cap_add=["NET_ADMIN", "NET_RAW"],
                sysctls=ROUTER_SYSCTLS,
            )
            wan_if = TRANSIT_IF
        else:
            container = self._start_container(
                name,
                image=image,
                role="router",
                command=idle,
                cap_add=["NET_ADMIN", "NET_RAW"],
                sysctls=ROUTER_SYSCTLS,
            )
            wan_ip = nth_host(upstream.lan_subnet, 2)
            self._veth(name, UPLINK_IF, upstream.name, LAN_IF)
            self._address(name, UPLINK_IF, f"{wan_ip}/{upstream.lan_subnet.prefixlen}")
            self._address(upstream.name, LAN_IF, f"{upstream.lan_ip}/{upstream.lan_subnet.prefixlen}")
            self.must(name, ["ip", "route", "replace", "default", "via", upstream.lan_ip], "default route")
            wan_if = UPLINK_IF
        lan_ip = nth_host(lan_subnet, 1)
        router = Router(
            name=name,
            container=container,
            nat_profile=nat_profile,
            wan_if=wan_if,
            wan_ip=wan_ip,
            lan_if=LAN_IF,
            lan_ip=lan_ip,
            lan_subnet=lan_subnet,
            wire=f"{name}-wire" if upstream is None and wired else None,
        )
        router.ruleset = render_ruleset(config, wan_if=wan_if, wan_ip=wan_ip, lan_if=LAN_IF, lan_subnet=str(lan_subnet))
        self.put_file(name, "/etc/dcutr-lab/nat.nft", router.ruleset)
        self.must(name, ["nft", "-f", "/etc/dcutr-lab/nat.nft"], f"nat profile {nat_profile}")
        return router

    def _wire(
        self, router: str, router_if: str, transit: LabNetwork, *, delay_ms: float, jitter_ms: float, loss: float
    ) -> None:
        """A shaping wire between `router`'s `router_if` and transit; returns once it forwards frames.

        The wire program is the container's main process (its log is the container's log, SIGTERM ends it).
        It waits for its router port, which only exists once the container runs and the veth is made.
        """
        name = f"{router}-wire"
        ready = "/run/dcutr-wire.ready"
        command = [
            "dcutr-wire",
            "--a",
            TRANSIT_IF,
            "--b",
            WIRE_IF,
            "--delay-ms",
            f"{delay_ms:g}",
            "--jitter-ms",
            f"{jitter_ms:g}",
            "--loss",
            f"{loss:g}",
            "--wait",
            "60",
            "--ready",
            ready,
        ]
        self._start_container(
            name,
            image=self.image("router"),
            role="wire",
            command=command,
            network=transit,
            ip=transit.next_ip(),
            cap_add=["NET_ADMIN", "NET_RAW"],
            sysctls={"net.ipv6.conf.all.disable_ipv6": "1", "net.ipv4.ip_forward": "0"},
        )
        # A cable has no address: without one the wire's own kernel answers nothing on transit (Docker needed
        # an address to attach the container; nobody else gets it, the lab hands out addresses in order).
        self.must(name, ["ip", "addr", "flush", "dev", TRANSIT_IF], "wire address flush")
        self._veth(name, WIRE_IF, router, router_if)
        self.must(name, ["ip", "link", "set", WIRE_IF, "up"], "wire port up")
        # The wire opens its two sockets in milliseconds; a bounded wait, not a sleep, makes that visible.
        try:
            started = self.exec(name, ["sh", "-c", f"until test -s {ready}; do sleep 0.02; done"], timeout=10)
            problem = "" if started.exit_code == 0 else f"no {ready} after 10s"
        except LabError as error:  # the wire exited, and its container with it
            problem = str(error)
        if problem:
            with contextlib.suppress(docker.errors.APIError):
                logs = self.container(name).get_wrapped_container().logs(tail=3).decode("utf-8", "replace")
                problem = " | ".join([problem, *(line for line in logs.splitlines() if line.strip())])
            raise SetupError(f"wire {name} did not start: {problem}")

    def _small_segments(self, target: str, ifname: str) -> None:
        """No GSO super-frames on this interface: a user-space wire can only pass frames that fit the MTU."""
        self.must(target, ["ip", "link", "set", "dev", ifname, "gso_max_size", "1500"], f"gso_max_size on {ifname}")

    def private_host(self, name: str, router: Router, *, image: str | None = None) -> Host:
        """A machine on `router`'s LAN: a namespace holder whose default route is the router."""
        container = self._start_container(
            name,
            image=image or self.image("router"),
            role="host",
            command=["sleep", "infinity"],
            entrypoint=[],
            cap_add=["NET_ADMIN"],
        )
        ip = nth_host(router.lan_subnet, 2)
        self._veth(router.name, LAN_IF, name, HOST_IF)
        self._address(router.name, LAN_IF, f"{router.lan_ip}/{router.lan_subnet.prefixlen}")
        self._address(name, HOST_IF, f"{ip}/{router.lan_subnet.prefixlen}")
        self.must(name, ["ip", "route", "replace", "default", "via", router.lan_ip], "default route")
        return Host(name=name, container=container, ip=ip, gateway=router.lan_ip)

    def public_host(self, name: str, *, image: str | None = None) -> Host:
        """A machine directly on transit (the relay, an observer): no NAT in front of it."""
        transit = self.transit()
        ip = transit.next_ip()
        container = self._start_container(
            name,
            image=image or self.image("router"),
            role="host",
            command=["sleep", "infinity"],
            entrypoint=[],
            network=transit,
            ip=ip,
            cap_add=["NET_ADMIN"],
        )
        self._small_segments(name, TRANSIT_IF)
        return Host(name=name, container=container, ip=ip, gateway=None)

    def process(
        self, name: str, host: Host, command: Sequence[str], env: Mapping[str, str], *, image: str
    ) -> DockerContainer:
        """Start a process container inside `host`'s network namespace."""
        host_id = host.container.get_wrapped_container().id
        return self._start_container(
            name,
            image=image,
            role="process",
            command=command,
            env=env,
            network_mode=f"container:{host_id}",
            entrypoint=[],
        )

    def remove(self, name: str) -> None:
        self._remove_container(name)


def sweep(client: docker.DockerClient | None = None, *, run_id: str | None = None) -> tuple[int, int]:
    """Remove containers, then networks, labelled by the lab (one run, or every run). Returns the counts."""
    client = client or docker_client()
    label = f"{lab_labels.LABEL_RUN}={run_id}" if run_id else lab_labels.LABEL_RUN
    removed_containers = 0
    for container in client.containers.list(all=True, filters={"label": label}):
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            container.remove(force=True, v=True)
            removed_containers += 1
    removed_networks = 0
    for network in client.networks.list(filters={"label": label}):
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            network.remove()
            removed_networks += 1
    return removed_containers, removed_networks


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
        from harness.nat.profiles import get_profile

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
        hops = router_hops(nat_profile)
        if not hops:
            runtime.host = self.lab.public_host(name)
            self._addresses[name] = NodeAddresses(node=name, lan_ip=None, public_ip=runtime.host.ip)
            return
        # Outermost first when building: the carrier's LAN must exist before the home router plugs into it.
        upstream: Router | None = None
        built: list[Router] = []
        for suffix, hop_profile in reversed(hops):
            delay = self.wan_delay_ms if upstream is None else 0.0
            upstream = self.lab.router(f"{name}-{suffix}", hop_profile, upstream=upstream, wan_delay_ms=delay)
            built.append(upstream)
        assert upstream is not None
        runtime.routers = list(reversed(built))
        for router in runtime.routers:
            self._record_conntrack_events(router.name)
        runtime.host = self.lab.private_host(name, upstream)
        outermost = built[0]
        self._addresses[name] = NodeAddresses(
            node=name,
            lan_ip=runtime.host.ip,
            public_ip=outermost.wan_ip,
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
        write_addresses(dest, self._addresses)
        return written

    def close(self) -> None:
        self.lab.close()


def router_hops(nat_profile: str) -> list[tuple[str, str]]:
    """The routers in front of a node, innermost first, as (name suffix, profile). Empty for a public node."""
    from harness.nat.profiles import get_profile

    config = get_profile(nat_profile)
    if not config.is_nat:
        return []
    if config.chain:
        # cgnat: a home NAT behind a carrier NAT; each hop is an ordinary profile.
        suffixes = ["router", "carrier", *(f"hop{i}" for i in range(2, len(config.chain)))]
        return list(zip(suffixes, config.chain, strict=False))
    return [("router", nat_profile)]
