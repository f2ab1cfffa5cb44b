"""The Docker backend: a lab of routers, hosts and node processes on one machine.

Four modules, each with one reason to change:
- `lab`: the primitives (`ContainerLab`): the Docker client, networks (transit), containers started at once,
  exec, lab plumbing through nsenter (`ns_run`), files read by offset, veth pairs, addresses, and `sweep` by
  label. No NAT knowledge.
- `wiring`: the NAT wiring (`DockerLab`): routers, the wires shaping their WAN links, private and public
  hosts, process containers in a host's namespace (the NAT probe's agents); the WAN delay setting of a run.
- `hostproc`: a node's SUT as a process inside its host container (`HostProcess`).
- `backend`: `DockerBackend`, the runbook engine's adapter (harness.backends.base.Backend, and Reusable:
  `reset()` between attempts on one topology).

Which routers stand in front of a node is topology, not Docker: harness.nat.topology (`router_hops`,
`router_chain`), which drives any lab shaped like `harness.nat.topology.NatLab`, as `DockerLab` is.

Import from here: these names are the package's interface.
"""

from harness.backends.docker.backend import CONNTRACK_EVENTS, DockerBackend, NodeRuntime
from harness.backends.docker.lab import ContainerLab, ImageResolver, LabContainer, LabNetwork, docker_client, sweep
from harness.backends.docker.wiring import (
    DEFAULT_WAN_DELAY_MS,
    HOST_IF,
    LAN_IF,
    TRANSIT_IF,
    UPLINK_IF,
    WAN_DELAY_ENV,
    WIRE_IF,
    DockerLab,
    Host,
    Router,
    default_wan_delay_ms,
)

__all__ = [
    "CONNTRACK_EVENTS",
    "DEFAULT_WAN_DELAY_MS",
    "HOST_IF",
    "LAN_IF",
    "TRANSIT_IF",
    "UPLINK_IF",
    "WAN_DELAY_ENV",
    "WIRE_IF",
    "ContainerLab",
    "DockerBackend",
    "DockerLab",
    "Host",
    "ImageResolver",
    "LabContainer",
    "LabNetwork",
    "NodeRuntime",
    "Router",
    "default_wan_delay_ms",
    "docker_client",
    "sweep",
]
