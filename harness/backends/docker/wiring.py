"""The NAT wiring of the Docker lab: routers, the wires shaping their WAN links, and the hosts behind them.

`DockerLab` is `ContainerLab` (harness.backends.docker.lab, the primitives) plus the building blocks below;
it satisfies `harness.nat.topology.NatLab`, so the runbook backend, the conformance probe and the punch
experiment build a node's router chain the same way (`harness.nat.topology.router_chain`).

Wiring, and why it is not "one Docker network per LAN":
- A private node's LAN is a veth pair between the node's host container and its router, created in the two
  containers' network namespaces directly. A Docker bridge cannot carry routed LAN traffic here: with
  `br_netfilter` loaded, the host's FORWARD chain sees bridged frames and Docker's isolation rule for an
  internal network (`-i br-x ! -d <subnet> -j DROP`) drops every packet a peer sends to the internet through
  its router. A veth pair never touches the host's bridges or firewall, and no host state is changed.
- A router's WAN is on transit, or (a carrier-grade NAT) a veth `wan0` into the LAN of the router outside it.
- A private node is two containers sharing one network namespace: a *host* (holds the veth, the default route
  via the router, lives for the whole run) and the *process* container running the SUT binary (`process`).
  So the network is ready before the SUT's first packet, a restart keeps addresses, and the process's logs
  and exit code are plain Docker ones.
- A router's WAN link has latency (the kernel has no netem): by default its WAN is a veth `wan0` to a
  `<router>-wire` container on transit that forwards frames after DEFAULT_WAN_DELAY_MS each way
  (images/router/dcutr-wire; $DCUTR_LAB_WAN_DELAY_MS, 0 puts the router's `eth0` on transit as before).
  Punching through a router that resets unsolicited SYNs depends on the SYNs crossing in flight, as they do
  on real links.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import docker.errors

from harness.backends.docker.lab import ContainerLab, LabContainer, LabNetwork
from harness.backends.subnets import nth_host
from harness.errors import BadInput, SetupError

# Interface names inside router and host containers; fixed so rulesets and logs read the same in every run.
TRANSIT_IF = "eth0"
LAN_IF = "lan0"
UPLINK_IF = "wan0"  # a router's WAN when it is a veth: behind a carrier NAT, or to its wire
HOST_IF = "eth0"
WIRE_IF = "w0"  # a wire container's port towards its router (its other port, eth0, is on transit)
RULESET_PATH = "/etc/dcutr-lab/nat.nft"
WIRE_READY = "/run/dcutr-wire.ready"

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


@dataclass
class Router:
    """A NAT router container. `wan_ip` is its address towards the internet (transit or carrier)."""

    name: str
    container: LabContainer
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
    container: LabContainer
    ip: str
    gateway: str | None


class DockerLab(ContainerLab):
    """One run's lab: routers, wires, hosts and process containers on top of the Docker primitives.

    Fluent enough for the probe and the fixtures, complete enough for the runbook backend. A context manager;
    `close()` is idempotent and removes everything carrying this run's label.
    """

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
        the interface its ruleset matches. The router and its wire start at once.
        """
        from harness.nat.profiles import get_profile
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
        if upstream is None and wired:
            transit = self.transit()
            wan_ip = transit.next_ip()
            wire_ip = transit.next_ip()
            self.parallel(
                [
                    lambda: self._router_container(name, image),
                    lambda: self._wire_container(
                        name, transit, wire_ip, delay_ms=wan_delay_ms, jitter_ms=wan_jitter_ms, loss=wan_loss
                    ),
                ]
            )
            self._connect_wire(name, UPLINK_IF)
            self._address(name, UPLINK_IF, f"{wan_ip}/{transit.subnet.prefixlen}")
            wan_if = UPLINK_IF
        elif upstream is None:
            transit = self.transit()
            wan_ip = transit.next_ip()
            self._router_container(name, image, network=transit, ip=wan_ip)
            wan_if = TRANSIT_IF
        else:
            self._router_container(name, image)
            wan_ip = nth_host(upstream.lan_subnet, 2)
            self._veth(name, UPLINK_IF, upstream.name, LAN_IF)
            self._address(upstream.name, LAN_IF, f"{upstream.lan_ip}/{upstream.lan_subnet.prefixlen}")
            self.ip_batch(
                name,
                [
                    f"addr add {wan_ip}/{upstream.lan_subnet.prefixlen} dev {UPLINK_IF}",
                    f"link set {UPLINK_IF} up",
                    f"route replace default via {upstream.lan_ip}",
                ],
                "uplink and default route",
            )
            wan_if = UPLINK_IF
        lan_ip = nth_host(lan_subnet, 1)
        router = Router(
            name=name,
            container=self.container(name),
            nat_profile=nat_profile,
            wan_if=wan_if,
            wan_ip=wan_ip,
            lan_if=LAN_IF,
            lan_ip=lan_ip,
            lan_subnet=lan_subnet,
            wire=f"{name}-wire" if upstream is None and wired else None,
        )
        router.ruleset = render_ruleset(config, wan_if=wan_if, wan_ip=wan_ip, lan_if=LAN_IF, lan_subnet=str(lan_subnet))
        self.put_file(name, RULESET_PATH, router.ruleset)
        self.load_ruleset(name, nat_profile)
        return router

    def load_ruleset(self, router: str, nat_profile: str = "") -> None:
        """(Re)load the router's ruleset file: it begins with `flush ruleset`, so this also empties the dynamic
        maps a cone profile learns its mappings in."""
        self.ns_must(router, ["nft", "-f", RULESET_PATH], f"nat profile {nat_profile}".strip())

    def _router_container(
        self, name: str, image: str, *, network: LabNetwork | None = None, ip: str | None = None
    ) -> LabContainer:
        """An idle router container with the router sysctls; on `network` at `ip`, or with no network yet."""
        from harness.nat.profiles import ROUTER_SYSCTLS

        return self._start_container(
            name,
            image=image,
            role="router",
            command=["sleep", "infinity"],
            network=network,
            ip=ip,
            cap_add=["NET_ADMIN", "NET_RAW"],
            sysctls=ROUTER_SYSCTLS,
        )

    def _wire_container(
        self, router: str, transit: LabNetwork, ip: str, *, delay_ms: float, jitter_ms: float, loss: float
    ) -> LabContainer:
        """A shaping wire on transit; the wire program is the container's main process (its log is the
        container's log, SIGTERM ends it). It waits for its router port, which only exists once `_connect_wire`
        made the veth."""
        command = ["dcutr-wire", "--a", TRANSIT_IF, "--b", WIRE_IF]
        command += ["--delay-ms", f"{delay_ms:g}", "--jitter-ms", f"{jitter_ms:g}", "--loss", f"{loss:g}"]
        command += ["--wait", "60", "--ready", WIRE_READY]
        return self._start_container(
            f"{router}-wire",
            image=self.image("router"),
            role="wire",
            command=command,
            network=transit,
            ip=ip,
            cap_add=["NET_ADMIN", "NET_RAW"],
            sysctls={"net.ipv6.conf.all.disable_ipv6": "1", "net.ipv4.ip_forward": "0"},
        )

    def _connect_wire(self, router: str, router_if: str) -> None:
        """Plug the wire between `router`'s `router_if` and transit; returns once it forwards frames."""
        name = f"{router}-wire"
        # A cable has no address: without one the wire's own kernel answers nothing on transit (Docker needed
        # an address to attach the container; nobody else gets it, the lab hands out addresses in order).
        self.ns_must(name, ["ip", "addr", "flush", "dev", TRANSIT_IF], "wire address flush")
        self._veth(name, WIRE_IF, router, router_if)
        self.ns_must(name, ["ip", "link", "set", WIRE_IF, "up"], "wire port up")
        # The wire opens its two sockets in milliseconds; a bounded wait, not a sleep, makes that visible.
        if not self.wait_for_file(name, WIRE_READY, within=10):
            problem = f"no {WIRE_READY} after 10s"
            with contextlib.suppress(docker.errors.APIError):
                wrapped = self.container(name).wrapped
                wrapped.reload()
                logs = wrapped.logs(tail=3).decode("utf-8", "replace")
                problem = " | ".join(
                    [problem, f"state {wrapped.status}", *(line for line in logs.splitlines() if line.strip())]
                )
            raise SetupError(f"wire {name} did not start: {problem}")

    def _host_container(
        self, name: str, image: str | None, *, network: LabNetwork | None = None, ip: str | None = None
    ) -> LabContainer:
        """A namespace holder: it only sleeps, so processes can join its network namespace."""
        return self._start_container(
            name,
            image=image or self.image("router"),
            role="host",
            command=["sleep", "infinity"],
            entrypoint=[],
            network=network,
            ip=ip,
            cap_add=["NET_ADMIN"],
        )

    def prestart_host(self, name: str, *, public: bool, image: str | None = None) -> None:
        """Start a node's host container in the background, while its routers are built: `private_host` or
        `public_host` with the same name then takes it. A public host gets its transit address now."""
        if public:
            transit = self.transit()
            ip = transit.next_ip()
            self.starting(name, lambda: self._host_container(name, image, network=transit, ip=ip))
        else:
            self.starting(name, lambda: self._host_container(name, image))

    def _host(self, name: str, image: str | None, *, network: LabNetwork | None = None) -> tuple[LabContainer, str]:
        """The host container `prestart_host` began, or a new one; with its transit address when public."""
        with self._lock:
            known = name in self._containers or self.is_pending(name)
        if known:
            container = self.container(name)
            ip = ""
            if network is not None:
                container.wrapped.reload()
                ip = container.wrapped.attrs["NetworkSettings"]["Networks"][network.name]["IPAddress"]
            return container, ip
        ip = network.next_ip() if network is not None else ""
        return self._host_container(name, image, network=network, ip=ip or None), ip

    def private_host(self, name: str, router: Router, *, image: str | None = None) -> Host:
        """A machine on `router`'s LAN: a namespace holder whose default route is the router."""
        container, _ = self._host(name, image)
        ip = nth_host(router.lan_subnet, 2)
        self._veth(router.name, LAN_IF, name, HOST_IF)
        self._address(router.name, LAN_IF, f"{router.lan_ip}/{router.lan_subnet.prefixlen}")
        self.ip_batch(
            name,
            [
                f"addr add {ip}/{router.lan_subnet.prefixlen} dev {HOST_IF}",
                f"link set {HOST_IF} up",
                f"route replace default via {router.lan_ip}",
            ],
            "address and default route",
        )
        return Host(name=name, container=container, ip=ip, gateway=router.lan_ip)

    def public_host(self, name: str, *, image: str | None = None) -> Host:
        """A machine directly on transit (the relay, an observer): no NAT in front of it."""
        container, ip = self._host(name, image, network=self.transit())
        self._small_segments(name, TRANSIT_IF)
        return Host(name=name, container=container, ip=ip, gateway=None)

    def process(
        self, name: str, host: Host, command: Sequence[str], env: Mapping[str, str], *, image: str
    ) -> LabContainer:
        """Start a process container inside `host`'s network namespace."""
        return self._start_container(
            name,
            image=image,
            role="process",
            command=command,
            env=env,
            network_mode=f"container:{host.container.wrapped.id}",
            entrypoint=[],
        )
