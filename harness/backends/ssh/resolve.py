"""From a raw inventory (groups, vars, hosts, as any reader found them) to the lab's model.

Ansible's rules: a host's variables merge `all`, then its groups by depth (parents before children) and
priority, then the host itself; a host in a group named after a role has that role unless `dcutr_role` says
otherwise; ssh options become a jump chain. Then what no single host can be checked for: one host a role, NAT
profiles, router targets, jump chains without loops, private keys others cannot read.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from harness.backends.ssh.inventory import (
    HOST_ALIAS,
    HOST_ROLES,
    SETTABLE_KEYS,
    SSH_ARGS,
    UNSUPPORTED_ANSIBLE,
    Inventory,
    InventoryHost,
    Origin,
)
from harness.backends.ssh.sources import RawInventory, Value, Where
from harness.backends.ssh.sshargs import Hop, SshArgsError, SshOptions, parse_ssh_args
from harness.errors import BadInput
from harness.models import nat_profile_names


@dataclass
class _Group:
    name: str
    depth: int
    priority: int


def _group_order(raw: RawInventory) -> dict[str, _Group]:
    """Each group's depth (longest path from `all`, as Ansible counts it) and priority; loops refused."""
    depth: dict[str, int] = {}

    def visit(name: str, level: int, path: tuple[str, ...]) -> None:
        if name in path:
            group = raw.groups[path[-1]]
            raise group.where.error(f"groups form a loop: {' -> '.join([*path[path.index(name) :], name])}")
        if depth.get(name, -1) >= level and name != "all":
            return
        depth[name] = max(depth.get(name, 0), level)
        for child in raw.groups[name].children:
            visit(child, level + 1, (*path, name))

    visit("all", 0, ())
    for name in raw.groups:
        if name not in depth:  # not reachable from all (JSON without all.children): a child of all
            visit(name, 1, ("all",))
    order = {}
    for name, group in raw.groups.items():
        priority = group.vars.get("ansible_group_priority")
        try:
            value = int(priority.value) if priority is not None else 1
        except (TypeError, ValueError):
            raise priority.where.error("ansible_group_priority must be a number") from None
        order[name] = _Group(name, depth[name], value)
    return order


def _host_groups(raw: RawInventory, host: str) -> list[str]:
    """Every group a host is in, its own and their parents (Ansible's `group_names` plus `all`)."""
    parents: dict[str, set[str]] = {}
    for group in raw.groups.values():
        for child in group.children:
            parents.setdefault(child, set()).add(group.name)
    found: set[str] = set()
    todo = [g.name for g in raw.groups.values() if host in g.hosts]
    while todo:
        name = todo.pop()
        if name not in found:
            found.add(name)
            todo.extend(parents.get(name, ()))
    found.add("all")
    if found == {"all"} and "ungrouped" in raw.groups:
        found.add("ungrouped")
    return sorted(found)


def _merged(raw: RawInventory, host: str, order: Mapping[str, _Group]) -> dict[str, tuple[Value, Origin]]:
    """A host's variables by Ansible's precedence, each with where it came from."""
    merged: dict[str, tuple[Value, Origin]] = {}
    groups = sorted(_host_groups(raw, host), key=lambda g: (order[g].depth, order[g].priority, g))
    for name in groups:
        label = "all" if name == "all" else f"group {name}"
        for key, value in raw.groups[name].vars.items():
            merged[key] = (value, Origin(label, value.where))
    label = "host" if raw.format != "json" else "host (ansible-inventory --list)"
    for key, value in raw.hosts[host].vars.items():
        merged[key] = (value, Origin(label, value.where))
    return merged


def resolve_inventory(raw: RawInventory) -> Inventory:
    if not raw.hosts:
        all_group = raw.groups["all"]
        raise Where(all_group.where.file, all_group.where.line, "all.hosts").error(
            "no hosts: add at least a relay, a server and a client"
        )
    order = _group_order(raw)
    hosts: dict[str, InventoryHost] = {}
    origins: dict[str, dict[str, Origin]] = {}
    jumps: dict[str, tuple[list[Hop], Origin]] = {}
    ignored: dict[str, Where] = {}
    for name, entry in raw.hosts.items():
        if not HOST_ALIAS.match(name):
            raise entry.where.error(f"host name {name!r}: use letters, digits, '.', '_' and '-'")
        groups = _host_groups(raw, name)
        merged = _merged(raw, name, order)
        role_groups = [g for g in groups if g in HOST_ROLES]
        for key, (_value, origin) in merged.items():
            if key.startswith("dcutr_") and key not in SETTABLE_KEYS:
                known = ", ".join(sorted(f for f in SETTABLE_KEYS if f.startswith("dcutr_")))
                raise _fail(name, origin, key, f"unknown key {key!r} (known: {known})")
        if "dcutr_role" not in merged:
            if len(role_groups) > 1:
                raise entry.where.error(
                    f"host {name!r} is in groups {' and '.join(role_groups)}: say which it is with dcutr_role"
                )
            if not role_groups:
                ignored[name] = entry.where
                continue
            group = raw.groups[role_groups[0]]
            merged["dcutr_role"] = (Value(role_groups[0], group.where), Origin(f"group {group.name}", group.where))
        host, origin, chain = _load_host(name, merged, groups, entry.where)
        hosts[name], origins[name] = host, origin
        if chain is not None:
            jumps[name] = chain
    if not hosts:
        first = next(iter(raw.hosts.values()))
        raise first.where.error(
            "no host has a role: put hosts in groups relay, server, client (router, jump) or give dcutr_role"
        )
    _resolve_jumps(hosts, origins, jumps)
    inventory = Inventory(path=raw.path, hosts=hosts, origins=origins, ignored=ignored, format=raw.format)
    _check_references(inventory)
    return inventory


def _fail(host: str, origin: Origin, key: str | None, message: str) -> BadInput:
    """An error at the line a host's key came from; a key from a group says which host it was wrong for."""
    if origin.where is None:
        return BadInput(f"host {host!r}: {message}")
    prefix = "" if origin.source.startswith("host") else f"host {host!r}: "
    return origin.where.error(prefix + message)


def _load_host(
    name: str, merged: Mapping[str, tuple[Value, Origin]], groups: list[str], declared: Where
) -> tuple[InventoryHost, dict[str, Origin], tuple[list[Hop], Origin] | None]:
    """The host's model, where each value came from, and the jump chain its ssh options name (if any)."""
    origins = {key: origin for key, (_value, origin) in merged.items()}
    here = Origin("host", declared)

    def fail(key: str | None, message: str) -> BadInput:
        return _fail(name, origins.get(key, here) if key else here, key, message)

    chosen: dict[str, Any] = {"name": name, "groups": tuple(g for g in groups if g not in ("all", "ungrouped"))}
    options = SshOptions()
    options_origin: Origin | None = None
    values = {key: value.value for key, (value, _origin) in merged.items()}
    for key, value in values.items():
        if (key in SETTABLE_KEYS or key in SSH_ARGS) and isinstance(value, str) and ("{{" in value or "{%" in value):
            raise fail(key, "is a template: render the inventory first (Ansible variables are not expanded here)")
        if key in UNSUPPORTED_ANSIBLE:
            raise fail(key, f"{key} is not read by dcutr-lab: {UNSUPPORTED_ANSIBLE[key]}")
        if key == "ansible_become_method" and value != "sudo":
            raise fail(key, "only 'sudo' (passwordless, sudo -n) is supported")
        if key == "ansible_become_user" and value != "root":
            raise fail(key, "only 'root' is supported")
        if key in SETTABLE_KEYS:
            chosen[key] = str(value) if key == "ansible_password" and value is not None else value
    if "ansible_ssh_pass" in values:
        if "ansible_password" in values:
            raise fail("ansible_ssh_pass", "give ansible_password or ansible_ssh_pass, not both")
        chosen["ansible_password"] = str(values["ansible_ssh_pass"])
        origins["ansible_password"] = origins["ansible_ssh_pass"]
    for key in SSH_ARGS:
        if key not in values or values[key] in (None, ""):
            continue
        try:
            parsed = parse_ssh_args(str(values[key]))
        except SshArgsError as error:
            raise fail(key, str(error)) from None
        if parsed.jump is not None and options.jump is None:
            options_origin = Origin(f"{key} ({origins[key].source})", origins[key].where)
        options = options.merge(parsed)
    if options.known_hosts is not None:
        if "dcutr_known_hosts" in values and str(values["dcutr_known_hosts"]) != options.known_hosts:
            raise fail("dcutr_known_hosts", "differs from UserKnownHostsFile in the ssh options: give one")
        if "dcutr_known_hosts" not in values:
            chosen["dcutr_known_hosts"] = options.known_hosts
            source = next(k for k in SSH_ARGS if k in values and "UserKnownHostsFile" in str(values[k]))
            origins["dcutr_known_hosts"] = Origin(f"{source} ({origins[source].source})", origins[source].where)
    chosen["connect_timeout"] = options.connect_timeout
    chosen["keepalive"] = options.keepalive
    chosen["ssh_no_effect"] = tuple(options.no_effect)
    try:
        host = InventoryHost.model_validate(chosen)
    except ValidationError as error:
        first = error.errors()[0]
        key = str(first["loc"][0]) if first["loc"] else None
        if first["type"] == "missing":
            raise fail(None, f"required key {key} missing") from None
        message = str(first.get("msg", "invalid")).removeprefix("Value error, ")
        if first["type"] == "literal_error":
            message = f"{message} (got {first.get('input')!r})"
        raise fail(key, message) from None
    chain = (options.jump, options_origin) if options.jump is not None and options_origin is not None else None
    return host, origins, chain


def _resolve_jumps(
    hosts: dict[str, InventoryHost],
    origins: dict[str, dict[str, Origin]],
    jumps: Mapping[str, tuple[list[Hop], Origin]],
) -> None:
    """ProxyJump chains of ssh options as `dcutr_jump` links: a hop that is an inventory host (by alias, or by
    address, port and user) is that host; any other becomes a derived jump host. Conflicts are refused."""
    derived: dict[tuple, str] = {}

    def match(hop: Hop) -> str | None:
        if hop.host in hosts and hop.port is None and hop.user is None:
            return hop.host
        for candidate in hosts.values():
            if candidate.derived_from is not None:
                continue
            same_address = candidate.ansible_host == hop.host and candidate.ansible_port == (hop.port or 22)
            if same_address and hop.user in (None, candidate.ansible_user):
                return candidate.name
        return None

    # Shorter chains first: a chain through an inventory host checks that host's own chain, already resolved.
    for name, (chain, origin) in sorted(jumps.items(), key=lambda item: len(item[1][0])):
        host = hosts[name]

        def fail(message: str, name: str = name, origin: Origin = origin) -> BadInput:
            return _fail(name, origin, None, message)

        if not chain:  # ProxyJump=none
            if host.dcutr_jump is not None:
                raise fail(f"ProxyJump=none, but dcutr_jump is {host.dcutr_jump!r}: give one")
            continue
        previous: str | None = None
        for index, hop in enumerate(chain, start=1):
            found = match(hop)
            if found is None:
                key = (hop.user, hop.host, hop.port or 22, previous)
                if key not in derived:
                    # Named after what set the option: `nat-jump` for a group's ssh args, `<host>-jump` for a host's.
                    said_by = origin.source.partition("(")[2].rstrip(")").removeprefix("group ").split(" ")[0]
                    owner = name if said_by in ("host", "") else said_by
                    said = f"host {name}" if owner == name else ("all" if owner == "all" else f"group {owner}")
                    base = f"{owner}-jump" if len(chain) == 1 else f"{owner}-jump{index}"
                    alias, n = base, 1
                    while alias in hosts:
                        n += 1
                        alias = f"{base}-{n}"
                    hosts[alias] = InventoryHost(
                        name=alias,
                        ansible_host=hop.host,
                        ansible_port=hop.port or 22,
                        ansible_user=hop.user,
                        ansible_ssh_private_key_file=host.ansible_ssh_private_key_file,
                        dcutr_known_hosts=host.dcutr_known_hosts,
                        dcutr_role="jump",
                        dcutr_jump=previous,
                        connect_timeout=host.connect_timeout,
                        derived_from=f"the ssh options of {said}",
                    )
                    inherited = Origin(f"inherited from {name}", None)
                    origins[alias] = {
                        "ansible_host": origin,
                        "ansible_port": origin if hop.port else Origin("default"),
                        "ansible_user": origin if hop.user else Origin("default (your local user)"),
                        "dcutr_role": origin,
                        "ansible_ssh_private_key_file": inherited,
                        "dcutr_known_hosts": inherited,
                        "dcutr_jump": origin,
                    }
                    derived[key] = alias
                found = derived[key]
            elif found == name:
                raise fail(f"the ProxyJump chain names {name!r} itself")
            else:
                own = hosts[found].dcutr_jump
                if own != previous and not (index == 1 and own is None):
                    raise fail(
                        f"the ProxyJump chain reaches {found!r} through {previous or 'nothing'!r}, "
                        f"but {found!r} is reached through {own or 'nothing'!r}"
                    )
            previous = found
        if host.dcutr_jump is not None and host.dcutr_jump != previous:
            raise fail(f"ProxyJump ends at {previous!r}, but dcutr_jump is {host.dcutr_jump!r}: they must agree")
        if host.dcutr_jump is None:
            hosts[name] = host.model_copy(update={"dcutr_jump": previous})
            origins[name]["dcutr_jump"] = origin


def _check_references(inventory: Inventory) -> None:
    """What no single host can be checked for: NAT profiles by role, router targets, jump chains without loops."""
    hosts = inventory.hosts
    profiles = nat_profile_names()

    def fail(host: InventoryHost, key: str, message: str) -> BadInput:
        origin = inventory.origins.get(host.name, {}).get(key) or inventory.origin(host.name, "ansible_host")
        return _fail(host.name, origin, key, message)

    # One host a node role: a second relay would be silently ignored by placement, and the user's fleet would
    # not be the one the run tested.
    first: dict[str, InventoryHost] = {}
    for host in hosts.values():
        if host.dcutr_role in ("relay", "server", "client"):
            if host.dcutr_role in first:
                other = first[host.dcutr_role].name
                raise fail(host, "dcutr_role", f"role {host.dcutr_role} is {other}'s already: one host a role")
            first[host.dcutr_role] = host
    for host in hosts.values():
        key = inventory.key_file(host)
        if key is not None and key.is_file() and key.stat().st_mode & 0o077:
            raise fail(
                host,
                "ansible_ssh_private_key_file",
                f"private key {key.name} is readable by others (mode {key.stat().st_mode & 0o777:o}): "
                "chmod 600 it, as OpenSSH requires",
            )

    routed: dict[str, str] = {}
    for host in hosts.values():
        if host.dcutr_nat_profile is not None:
            if host.dcutr_nat_profile not in profiles:
                raise fail(
                    host,
                    "dcutr_nat_profile",
                    f"unknown NAT profile {host.dcutr_nat_profile!r} (known: {', '.join(profiles)})",
                )
            if host.dcutr_role == "relay" and host.dcutr_nat_profile != "none":
                raise fail(host, "dcutr_nat_profile", "a relay must be public (nat profile 'none')")
            if not host.is_node_host:
                raise fail(host, "dcutr_nat_profile", "only relay, server and client hosts have a NAT profile")
        if host.dcutr_role == "router":
            target = host.dcutr_router_of
            if target is None:
                raise fail(host, "dcutr_role", "a router needs dcutr_router_of: the inventory host on its LAN")
            if target not in hosts or not hosts[target].is_node_host:
                raise fail(host, "dcutr_router_of", f"{target!r} is not a relay/server/client host of this inventory")
            if target in routed:
                raise fail(host, "dcutr_router_of", f"{target!r} already has router {routed[target]!r}")
            routed[target] = host.name
        elif host.dcutr_router_of is not None:
            raise fail(host, "dcutr_router_of", "only a host with dcutr_role: router has one")
        if host.dcutr_jump is not None:
            if host.dcutr_jump not in hosts or host.dcutr_jump == host.name:
                raise fail(host, "dcutr_jump", f"{host.dcutr_jump!r} is not another host of this inventory")
            seen = [host.name]
            current = host
            while current.dcutr_jump is not None:
                if current.dcutr_jump in seen:
                    raise fail(
                        host, "dcutr_jump", f"jump hosts form a loop: {' -> '.join([*seen, current.dcutr_jump])}"
                    )
                seen.append(current.dcutr_jump)
                current = hosts[current.dcutr_jump]
