"""Which inventory host runs which runbook node, decided before anything connects.

Contract: `place_nodes` maps every node of a topology to a host, the host named like the node, else the only
free host of the node's role, and refuses (one BadInput line naming the inventory) a fleet that does not fit:
no host or several for a role, a host named like a node of another role, a declared NAT profile other than the
runbook's (a fleet cannot change its NAT), a relay behind NAT. `hosts_to_connect` lists what must be reached
for such a plan, jump hosts before the hosts behind them, so an unreachable machine fails the run before any is
touched. Both are pure: no network, testable with an inventory alone.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from harness.backends.ssh.inventory import Inventory
from harness.errors import BadInput
from harness.models import Role, Topology


def place_nodes(inventory: Inventory, topology: Topology, taken: Collection[str] = ()) -> dict[str, str]:
    """Runbook node -> inventory host. `taken`: hosts already running nodes of this backend."""
    where = inventory.display
    hosts = inventory.hosts
    plan: dict[str, str] = {}
    for name, node in topology.nodes.items():
        role = node.role.value
        if name in hosts and hosts[name].is_node_host:
            if hosts[name].dcutr_role != role:
                raise BadInput(
                    f"{where}: host {name!r} has dcutr_role {hosts[name].dcutr_role}, "
                    f"but runbook node {name!r} is a {role}"
                )
            plan[name] = name
    for name, node in topology.nodes.items():
        if name in plan:
            continue
        role = node.role.value
        busy = {*plan.values(), *topology.nodes, *taken}
        free = [h for h, v in hosts.items() if v.dcutr_role == role and h not in busy]
        if not free:
            raise BadInput(f"{where}: no host for runbook node {name!r}: add one with dcutr_role: {role}")
        if len(free) > 1:
            raise BadInput(
                f"{where}: {len(free)} hosts have dcutr_role {role} ({', '.join(free)}): "
                f"name one of them {name!r} to run node {name!r}"
            )
        plan[name] = free[0]
    for name, alias in plan.items():
        declared = hosts[alias].dcutr_nat_profile
        wanted = topology.nodes[name].nat_profile
        if declared is not None and declared != wanted:
            raise BadInput(
                f"{where}: host {alias!r} sits behind NAT profile {declared!r}, but the runbook puts node "
                f"{name!r} behind {wanted!r}: a fleet cannot change its NAT (fix dcutr_nat_profile or the runbook)"
            )
        if topology.nodes[name].role == Role.relay and wanted != "none":
            raise BadInput(f"runbook node {name!r}: the SSH backend runs a relay on a public host only")
    return plan


def hosts_to_connect(inventory: Inventory, plan: Mapping[str, str]) -> list[str]:
    """The planned hosts, their routers and every jump host on the way, jump hosts first."""
    ordered: list[str] = []

    def add(alias: str) -> None:
        host = inventory.hosts[alias]
        if host.dcutr_jump:
            add(host.dcutr_jump)
        if alias not in ordered:
            ordered.append(alias)

    for alias in plan.values():
        add(alias)
        router = inventory.router_of(alias)
        if router is not None:
            add(router.name)
    return ordered
