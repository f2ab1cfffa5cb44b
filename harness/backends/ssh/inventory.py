"""The inventory: which machines a fleet has, how to reach each, and what each is for.

The format (see inventories/README.md) is Ansible's YAML: one group, `all`, with `hosts` and optional shared
`vars` (a host's own values win). Ansible's keys say how to connect (`ansible_host`, `ansible_port`,
`ansible_user`, `ansible_ssh_private_key_file`, `ansible_password`, `ansible_become`); ours, all prefixed
`dcutr_`, say what a host is for: `dcutr_role` (relay | server | client | router | jump), `dcutr_nat_profile`
(the NAT in front of it, checked against the runbook), `dcutr_public_ip`, `dcutr_jump` (reach it through
another inventory host), `dcutr_router_of` (a router's LAN host: its conntrack table is the ground truth) and
`dcutr_known_hosts`. Unknown `dcutr_` keys are errors; other `ansible_*` keys are Ansible's business and
ignored, except the few that would change how we connect (refused, so nothing is silently not done).

Contract: `load_inventory` returns a checked `Inventory` or raises one BadInput line naming the file, the
line, the host and the key; references between hosts (routers, jump chains) are checked whole. Loading never
touches the network or the key files: an inventory is valid before its keys exist (fleet.example.yml).
Messages name hosts by their alias, never their address: they reach the report before the sanitiser exists.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from harness.errors import BadInput
from harness.models import nat_profile_names
from harness.yamlsource import YamlSource, display_path, load_yaml

HOST_ROLES = ("relay", "server", "client", "router", "jump")
_ALIAS = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_IPV4 = re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}\b")

# Ansible keys that would change how a host is reached: refused rather than silently ignored.
_UNSUPPORTED_ANSIBLE = {
    "ansible_become_password": "only passwordless sudo (sudo -n) is used",
    "ansible_become_pass": "only passwordless sudo (sudo -n) is used",
}
# ssh options are Ansible's (provision.yml); dcutr-lab reads none. A jump host in them must be said in ours too.
_SSH_ARGS = ("ansible_ssh_common_args", "ansible_ssh_extra_args", "ansible_ssh_args")
_PROXY_OPTION = re.compile(r"(?i)proxy(jump|command)|(?<![\w-])-J\b")

Loc = tuple[str | int, ...]


class InventoryHost(BaseModel):
    """One host of the inventory, after `all.vars` were merged under its own values."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    ansible_host: str = Field(min_length=1)
    ansible_port: int = Field(default=22, ge=1, le=65535)
    ansible_user: str | None = None
    ansible_ssh_private_key_file: str | None = None
    ansible_password: SecretStr | None = None
    ansible_become: bool = False
    ansible_connection: Literal["ssh", "paramiko", "smart"] = "ssh"
    dcutr_role: Literal["relay", "server", "client", "router", "jump"]
    dcutr_nat_profile: str | None = None
    dcutr_public_ip: str | None = None
    dcutr_jump: str | None = None
    dcutr_router_of: str | None = None
    dcutr_known_hosts: str | None = None

    @field_validator("ansible_host")
    @classmethod
    def _host(cls, value: str) -> str:
        if "{{" in value or "{%" in value:
            raise ValueError("is a template: render the inventory first (Ansible variables are not expanded here)")
        if any(c.isspace() for c in value) or "@" in value or "/" in value:
            raise ValueError("must be a host name or an IP address (the user goes in ansible_user)")
        return value

    @field_validator("ansible_user")
    @classmethod
    def _user(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.\-]*\$?", value):
            raise ValueError("is not a valid user name")
        return value

    @field_validator("dcutr_public_ip")
    @classmethod
    def _public_ip(cls, value: str | None) -> str | None:
        if value is not None and not is_ip(value):
            raise ValueError("must be an IP address")
        return value

    @property
    def via(self) -> str:
        """How to name this host in a message: its alias, never its address."""
        return f"host {self.name!r}"

    @property
    def is_node_host(self) -> bool:
        """Whether a runbook node may run here (routers and jump hosts only carry ground truth or traffic)."""
        return self.dcutr_role not in ("router", "jump")


@dataclass(frozen=True)
class Inventory:
    path: Path
    hosts: Mapping[str, InventoryHost]

    @property
    def display(self) -> str:
        return shown(self.path)

    def key_file(self, host: InventoryHost) -> Path | None:
        return _resolve(self.path, host.ansible_ssh_private_key_file)

    def known_hosts(self, host: InventoryHost) -> Path:
        return _resolve(self.path, host.dcutr_known_hosts) or Path("~/.ssh/known_hosts").expanduser()

    def router_of(self, host_name: str) -> InventoryHost | None:
        return next((h for h in self.hosts.values() if h.dcutr_router_of == host_name), None)

    def scrub(self, text: str) -> str:
        """Inventory addresses out of a message meant for a human (it reaches the report unsanitised)."""
        for host in sorted(self.hosts.values(), key=lambda h: -len(h.ansible_host)):
            text = text.replace(host.ansible_host, host.name)
        return _IPV4.sub("<address>", text)


def is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def shown(path: Path) -> str:
    """A local path for a message: `~/...` rather than the home directory (which names the user)."""
    home = str(Path.home())
    text = display_path(path)
    return "~" + text[len(home) :] if text.startswith(home + os.sep) else text


def _resolve(inventory: Path, value: str | None) -> Path | None:
    """`~` expands; a relative path is relative to the inventory file's directory."""
    if not value:
        return None
    path = Path(value).expanduser()
    return path if path.is_absolute() else (inventory.resolve().parent / path)


def load_inventory(path: Path) -> Inventory:
    """Parse and check an inventory; any problem is one BadInput line naming the file, line, host and field."""
    path = Path(path)
    source = load_yaml(path)
    data = source.data
    if not isinstance(data, dict):
        raise source.error((), "an inventory is a mapping with one key, 'all' (Ansible YAML format)")
    for key in data:
        if key != "all":
            raise source.error((key,), f"unknown key {key!r}: list every host under all.hosts (groups are not read)")
    group = data.get("all")
    if not isinstance(group, dict):
        raise source.error(("all",), "must be a mapping with 'hosts' (and optional 'vars')")
    for key in group:
        if key == "children":
            raise source.error(("all", key), "groups are not read: list every host under all.hosts with dcutr_role")
        if key not in ("hosts", "vars"):
            raise source.error(("all", key), f"unknown key {key!r} (known: hosts, vars)")
    shared = group.get("vars") or {}
    if not isinstance(shared, dict):
        raise source.error(("all", "vars"), "must be a mapping of variables")
    raw_hosts = group.get("hosts")
    if not isinstance(raw_hosts, dict) or not raw_hosts:
        raise source.error(("all", "hosts"), "no hosts: add at least a relay, a server and a client")
    hosts: dict[str, InventoryHost] = {}
    origins: dict[str, dict[str, Loc]] = {}
    for name, values in raw_hosts.items():
        hosts[str(name)], origins[str(name)] = _load_host(source, str(name), values, shared)
    inventory = Inventory(path=path, hosts=hosts)
    _check_references(inventory, source, origins)
    return inventory


def _host_error(source: YamlSource, name: str, origin: Mapping[str, Loc], key: str | None, message: str) -> BadInput:
    """An error at the line a host's key came from; a key from all.vars says which host it was wrong for."""
    host_loc: Loc = ("all", "hosts", name)
    loc = origin.get(key, host_loc) if key else host_loc
    prefix = f"host {name!r}: " if loc[:2] == ("all", "vars") else ""
    return source.error(loc, prefix + message)


def _load_host(
    source: YamlSource, name: str, values: Any, shared: Mapping[str, Any]
) -> tuple[InventoryHost, dict[str, Loc]]:
    """The host's model, and where each of its keys came from (its own entry or all.vars)."""
    host_loc: Loc = ("all", "hosts", name)
    if not _ALIAS.match(name):
        raise source.error(host_loc, f"host name {name!r}: use letters, digits, '.', '_' and '-'")
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise source.error(host_loc, f"host {name!r} must be a mapping of variables")
    merged = {**shared, **values}
    origin = {key: ("all", "vars", key) for key in shared} | {key: (*host_loc, key) for key in values}

    def fail(key: str | None, message: str) -> BadInput:
        return _host_error(source, name, origin, key, message)

    fields = set(InventoryHost.model_fields) - {"name"}
    chosen: dict[str, Any] = {"name": name}
    for key, value in merged.items():
        key = str(key)
        if key in _UNSUPPORTED_ANSIBLE:
            raise fail(key, f"{key} is not read by dcutr-lab: {_UNSUPPORTED_ANSIBLE[key]}")
        if key == "ansible_ssh_pass":
            if "ansible_password" in merged:
                raise fail(key, "give ansible_password or ansible_ssh_pass, not both")
            key = "ansible_password"
        if key == "ansible_become_method" and value != "sudo":
            raise fail(key, "only 'sudo' (passwordless, sudo -n) is supported")
        if key == "ansible_become_user" and value != "root":
            raise fail(key, "only 'root' is supported")
        if key in _SSH_ARGS and _PROXY_OPTION.search(str(value)) and not merged.get("dcutr_jump"):
            raise fail(key, "dcutr-lab does not read ssh options: say the jump host in dcutr_jump too")
        if key.startswith("dcutr_") and key not in fields:
            known = ", ".join(sorted(f for f in fields if f.startswith("dcutr_")))
            raise fail(key, f"unknown key {key!r} (known: {known})")
        if key in fields:
            chosen[key] = str(value) if key == "ansible_password" and value is not None else value
    if "ansible_ssh_pass" in merged:
        origin["ansible_password"] = origin["ansible_ssh_pass"]
    try:
        return InventoryHost.model_validate(chosen), origin
    except ValidationError as error:
        first = error.errors()[0]
        key = str(first["loc"][0]) if first["loc"] else None
        if first["type"] == "missing":
            raise fail(None, f"required key {key} missing") from None
        message = str(first.get("msg", "invalid")).removeprefix("Value error, ")
        if first["type"] == "literal_error":
            message = f"{message} (got {first.get('input')!r})"
        raise fail(key, message) from None


def _check_references(inventory: Inventory, source: YamlSource, origins: Mapping[str, Mapping[str, Loc]]) -> None:
    """What no single host can be checked for: NAT profiles by role, router targets, jump chains without loops."""
    hosts = inventory.hosts
    profiles = nat_profile_names()

    def fail(host: InventoryHost, key: str, message: str) -> BadInput:
        return _host_error(source, host.name, origins[host.name], key, message)

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
