"""The SSH backend: runbook nodes as processes on machines named by an Ansible-format inventory.

    inventory (YAML) ─ load_inventory ─▶ Inventory ─ SshBackend.provision(topology) ─▶ one SSH connection a host
                                                      │ map nodes to hosts (by name, else by role); connect (strict
                                                      │ host keys); upload the peer binaries; learn addresses;
                                                      │ start conntrack recorders on routers the inventory names
                                                      ▼
    start: setsid + a wrapper that records the exit code · log_lines: the remote log read by byte offset (SFTP)
    stop: SIGTERM, then SIGKILL, then the process group · close: kill what we started, remove the run directory

The inventory format (see inventories/README.md): one group, `all`, with `hosts` and optional shared `vars`
(a host's own values win). Ansible's keys say how to connect (`ansible_host`, `ansible_port`, `ansible_user`,
`ansible_ssh_private_key_file`, `ansible_password`, `ansible_become`); ours, all prefixed `dcutr_`, say what a host
is for: `dcutr_role` (relay | server | client | router | jump), `dcutr_nat_profile` (the NAT in front of it, checked
against the runbook), `dcutr_public_ip`, `dcutr_jump` (reach it through another inventory host), `dcutr_router_of`
(a router's LAN host: its conntrack table is the ground truth) and `dcutr_known_hosts`. Unknown `dcutr_` keys are
errors; other `ansible_*` keys are Ansible's business and ignored, except the few that would change how we connect.

On each host everything lives under the login user's home:

    ~/.dcutr-lab/bin/<binary>-<sha256[:16]>   content-addressed peer binaries, kept across runs (skip if present)
    ~/.dcutr-lab/<run-id>/                     this run: bin/ (links), run.sh, <node>.log/.env/.pid/.pgid/.exit
                                               (removed by close())

Nothing here prints an address, a password or a key: errors name inventory hosts by their alias, because error
texts reach the report before the sanitiser exists.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import ipaddress
import logging
import os
import re
import shlex
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from harness import cleanup
from harness.backends.artefacts import conntrack_text, write_addresses
from harness.backends.base import ExecResult, NodeAddresses, SanitiseHints
from harness.errors import BadInput, LabError, SetupError
from harness.models import Role, Topology, nat_profile_names
from harness.yamlsource import YamlSource, display_path, load_yaml

log = logging.getLogger(__name__)

REMOTE_ROOT = ".dcutr-lab"  # under the remote user's home
HOST_ROLES = ("relay", "server", "client", "router", "jump")
CONNECT_TIMEOUT = 10.0
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ALIAS = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_IPV4 = re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}\b")
# ELF e_machine -> `uname -m` names that run it.
_ELF_MACHINES = {0x3E: ("x86_64", "amd64"), 0xB7: ("aarch64", "arm64"), 0x28: ("armv7l", "armv6l", "arm")}

# Ansible keys that would change how a host is reached: refused rather than silently ignored.
_UNSUPPORTED_ANSIBLE = {
    "ansible_become_password": "only passwordless sudo (sudo -n) is used",
    "ansible_become_pass": "only passwordless sudo (sudo -n) is used",
}
# ssh options are Ansible's (provision.yml); dcutr-lab reads none. A jump host in them must be said in ours too.
_SSH_ARGS = ("ansible_ssh_common_args", "ansible_ssh_extra_args", "ansible_ssh_args")
_PROXY_OPTION = re.compile(r"(?i)proxy(jump|command)|(?<![\w-])-J\b")

# ---------------------------------------------------------------------------------------------------------
# the inventory
# ---------------------------------------------------------------------------------------------------------


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
        if value is not None:
            try:
                ipaddress.ip_address(value)
            except ValueError:
                raise ValueError("must be an IP address") from None
        return value

    @property
    def via(self) -> str:
        """How to name this host in a message: its alias, never its address."""
        return f"host {self.name!r}"


@dataclass(frozen=True)
class Inventory:
    path: Path
    hosts: Mapping[str, InventoryHost]

    @property
    def display(self) -> str:
        return _shown(self.path)

    def key_file(self, host: InventoryHost) -> Path | None:
        return _resolve(self.path, host.ansible_ssh_private_key_file)

    def known_hosts(self, host: InventoryHost) -> Path:
        return _resolve(self.path, host.dcutr_known_hosts) or Path("~/.ssh/known_hosts").expanduser()

    def router_of(self, host_name: str) -> InventoryHost | None:
        return next((h for h in self.hosts.values() if h.dcutr_router_of == host_name), None)


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
    origins: dict[str, dict[str, tuple[str | int, ...]]] = {}
    for name, values in raw_hosts.items():
        hosts[str(name)], origins[str(name)] = _load_host(source, str(name), values, shared)
    inventory = Inventory(path=path, hosts=hosts)
    _check_references(inventory, source, origins)
    return inventory


def _load_host(
    source: YamlSource, name: str, values: Any, shared: Mapping[str, Any]
) -> tuple[InventoryHost, dict[str, tuple[str | int, ...]]]:
    """The host's model, and where each of its keys came from (its own entry or all.vars)."""
    host_loc: tuple[str | int, ...] = ("all", "hosts", name)
    if not _ALIAS.match(name):
        raise source.error(host_loc, f"host name {name!r}: use letters, digits, '.', '_' and '-'")
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise source.error(host_loc, f"host {name!r} must be a mapping of variables")
    merged = {**shared, **values}
    origin = {key: ("all", "vars", key) for key in shared} | {key: (*host_loc, key) for key in values}

    def fail(key: str | None, message: str) -> BadInput:
        loc = origin.get(key, host_loc) if key else host_loc
        prefix = f"host {name!r}: " if loc[:2] == ("all", "vars") else ""
        return source.error(loc, prefix + message)

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


def _check_references(
    inventory: Inventory, source: YamlSource, origins: Mapping[str, Mapping[str, tuple[str | int, ...]]]
) -> None:
    hosts = inventory.hosts
    profiles = nat_profile_names()

    def fail(host: InventoryHost, key: str, message: str) -> BadInput:
        where = origins[host.name].get(key, ("all", "hosts", host.name))
        return source.error(where, (f"host {host.name!r}: " if where[:2] == ("all", "vars") else "") + message)

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
            if host.dcutr_role in ("router", "jump"):
                raise fail(host, "dcutr_nat_profile", "only relay, server and client hosts have a NAT profile")
        if host.dcutr_role == "router":
            target = host.dcutr_router_of
            if target is None:
                raise fail(host, "dcutr_role", "a router needs dcutr_router_of: the inventory host on its LAN")
            if target not in hosts or hosts[target].dcutr_role in ("router", "jump"):
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


# ---------------------------------------------------------------------------------------------------------
# remote scripts (POSIX sh; kept here so tests can run them locally)
# ---------------------------------------------------------------------------------------------------------

# run.sh NODE DIR COMMAND...: the node's process in its own session. The command runs as a child so the wrapper
# outlives it and records its exit code; SIGTERM to the wrapper is passed on to the child.
WRAPPER = r"""#!/bin/sh
# dcutr-lab node wrapper (written by harness.backends.ssh): run.sh NODE DIR COMMAND...
node=$1; dir=$2; shift 2
cd "$dir" || exit 1
echo $$ > "$node.pgid"
if [ -f "$node.env" ]; then set -a; . "./$node.env"; set +a; fi
PATH="$dir/bin:$PATH"; export PATH
"$@" >> "$node.log" 2>&1 < /dev/null &
child=$!
echo "$child" > "$node.pid"
trap 'kill -TERM "$child" 2>/dev/null' TERM INT HUP
while :; do
  wait "$child"; code=$?
  kill -0 "$child" 2>/dev/null || break
done
echo "$code" > "$node.exit.tmp" && mv "$node.exit.tmp" "$node.exit"
"""


def start_script(run_dir: str, node: str, command: Sequence[str]) -> str:
    q = shlex.quote
    return (
        f"cd {q(run_dir)} && rm -f {q(node)}.exit {q(node)}.exit.tmp {q(node)}.pid {q(node)}.pgid && "
        f"setsid sh ./run.sh {q(node)} {q(run_dir)} {shlex.join(command)} < /dev/null > /dev/null 2>&1 &"
    )


def stop_script(run_dir: str, node: str, timeout: float) -> str:
    """SIGTERM the node's process; after `timeout`, SIGKILL its whole process group (wrapper included, so the
    group cannot have been recycled) and record 137. Leaves `<node>.exit` either way."""
    q = shlex.quote
    ticks = max(1, int(timeout * 10))
    return f"""cd {q(run_dir)} 2>/dev/null || exit 0
n={q(node)}
i=0; while [ ! -f "$n.pid" ] && [ ! -f "$n.exit" ] && [ $i -lt 30 ]; do sleep 0.1; i=$((i+1)); done
[ -f "$n.pid" ] || exit 0
[ -f "$n.exit" ] && exit 0
pid=$(cat "$n.pid"); pg=$(cat "$n.pgid" 2>/dev/null)
kill -TERM "$pid" 2>/dev/null
i=0; while [ ! -f "$n.exit" ] && [ $i -lt {ticks} ]; do sleep 0.1; i=$((i+1)); done
[ -f "$n.exit" ] && exit 0
if [ -n "$pg" ]; then kill -KILL "-$pg" 2>/dev/null; else kill -KILL "$pid" 2>/dev/null; fi
sleep 0.2
[ -f "$n.exit" ] || echo 137 > "$n.exit"
exit 0
"""


def cleanup_script(run_dir: str) -> str:
    """Kill every process still working in the run directory (what this run started: the wrapper cd's there and
    its children inherit that), and the process groups of wrappers still running; then remove the directory.
    Processes are found by that property, never by name; other users' processes are not even readable."""
    q = shlex.quote
    return f"""[ -d {q(run_dir)} ] || exit 0
d={q(run_dir)}
cd /
ours() {{
  for p in /proc/[0-9]*; do
    [ "$p/cwd" -ef "$d" ] && echo "${{p#/proc/}}"
  done
}}
groups=""
for f in "$d"/*.pgid; do
  [ -f "$f" ] || continue
  pg=$(cat "$f"); [ -n "$pg" ] && [ "/proc/$pg/cwd" -ef "$d" ] && groups="$groups -$pg"
done
pids=$(ours)
if [ -n "$pids$groups" ]; then
  kill -TERM $groups $pids 2>/dev/null
  i=0; while [ -n "$(ours)" ] && [ $i -lt 20 ]; do sleep 0.1; i=$((i+1)); done
  pids=$(ours)
  kill -KILL $groups $pids 2>/dev/null
fi
rm -rf "$d"
"""


def env_file(env: Mapping[str, str]) -> str:
    lines = []
    for key, value in env.items():
        if not _ENV_NAME.match(key):
            raise BadInput(f"environment variable name {key!r} is not valid in a shell")
        lines.append(f"{key}={shlex.quote(str(value))}\n")
    return "".join(lines)


# ---------------------------------------------------------------------------------------------------------
# the backend
# ---------------------------------------------------------------------------------------------------------


@dataclass
class _Remote:
    """One inventory host we connected to."""

    host: InventoryHost
    connection: Any  # fabric.Connection
    home: str = ""
    run_dir: str = ""
    hostname: str = ""
    machine: str = ""
    prepared: bool = False


@dataclass
class _NodeState:
    name: str
    host: str  # inventory alias
    router: str | None = None  # inventory alias of its router, if the inventory names one
    started: bool = False
    offset: int = 0
    pending: bytes = b""
    lines: list[str] = field(default_factory=list)


class _AcceptNew:
    """Missing host key policy for --accept-new-host-keys: trust a key never seen before, for this run only.

    A key that *differs* from known_hosts is still refused by paramiko (BadHostKeyException). Nothing is written
    to known_hosts; the fingerprint is logged so the user can check it and add it for good.
    """

    def __init__(self, alias: str) -> None:
        self.alias = alias

    def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
        fingerprint = hashlib.sha256(key.asbytes()).digest()
        import base64

        shown = base64.b64encode(fingerprint).decode().rstrip("=")
        log.warning("accepting a new host key for inventory host %r: %s SHA256:%s", self.alias, key.get_name(), shown)
        client.get_host_keys().add(hostname, key.get_name(), key)


class SshBackend:
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
        self._remotes: dict[str, _Remote] = {}
        self._nodes: dict[str, _NodeState] = {}
        self._routers: dict[str, str] = {}  # router name (<node>-router) -> inventory alias
        self._addresses: dict[str, NodeAddresses] = {}
        self._profiles: dict[str, str] = {}  # node -> NAT profile the runbook gave it
        self._relay_ip: str | None = None
        self._hostnames: set[str] = set()
        self._closed = False
        cleanup.register(self)

    # -- what the engine reads besides the protocol ------------------------------------------------------

    def sanitise_hints(self) -> SanitiseHints:
        """Inventory host names and users, for the sanitiser. Names a log uses as words (node names, roles,
        `<node>-router`) are left out: replacing them would break the checkpoints."""
        reserved = {*HOST_ROLES, "localhost", *self._nodes, *self._routers}
        names = set(self._hostnames)
        for host in self.inventory.hosts.values():
            names.add(host.name)
            if not _is_ip(host.ansible_host):
                names.add(host.ansible_host)
        hostnames = sorted(n for n in names if n and n.lower() not in reserved and not _is_ip(n))
        users = sorted({h.ansible_user for h in self.inventory.hosts.values() if h.ansible_user})
        return SanitiseHints(hostnames=tuple(hostnames), users=tuple(users))

    def describe(self) -> dict[str, Any]:
        """For the report's environment: no address, host name or user (this is not sanitised)."""
        declared = {
            h.dcutr_role: h.dcutr_nat_profile or "undeclared"
            for h in self.inventory.hosts.values()
            if h.dcutr_role not in ("router", "jump")
        }
        return {
            "backend": "ssh",
            "inventory": self.inventory.path.name,
            "inventory_hosts": len(self.inventory.hosts),
            "inventory_nat_profiles": declared,
            "routers_with_ground_truth": sum(1 for h in self.inventory.hosts.values() if h.dcutr_role == "router"),
            "host_keys": "accept-new (this run only)" if self.accept_new_host_keys else "strict (known_hosts)",
        }

    # -- provisioning ------------------------------------------------------------------------------------

    def provision(self, topology: Topology) -> None:
        if self._closed:
            raise LabError(f"SSH backend {self.run_id} is closed")
        again = sorted(set(topology.nodes) & set(self._nodes))
        if again:
            raise LabError(f"node {', '.join(again)} is already provisioned on this fleet")
        plan = self._plan(topology)
        binaries = self._local_binaries(sorted({node.sut for node in topology.nodes.values()}))
        try:
            # Reach every host before touching any: an unreachable one fails the run with nothing started.
            for alias in self._hosts_in_play(plan):
                self._connect(alias)
            added: list[str] = []
            for node_name, alias in plan.items():
                remote = self._prepare(alias, binaries if topology.nodes[node_name].sut == "reference" else [])
                router = self.inventory.router_of(alias)
                self._nodes[node_name] = _NodeState(node_name, alias, router.name if router else None)
                self._profiles[node_name] = topology.nodes[node_name].nat_profile
                added.append(node_name)
                self._hostnames.add(remote.hostname)
                if router is not None:
                    self._routers[f"{node_name}-router"] = router.name
                    self._hostnames.add(self._prepare(router.name, []).hostname)
            # The relay first: the others' addresses are the ones they use toward it.
            for node_name in sorted(added, key=lambda n: topology.nodes[n].role != Role.relay):
                self._learn_addresses(node_name, topology.nodes[node_name].role == Role.relay)
            for node_name in added:
                router_name = f"{node_name}-router"
                if router_name in self._routers:
                    self._record_conntrack(router_name, self._routers[router_name])
        except BaseException:
            self.close()
            raise

    def _plan(self, topology: Topology) -> dict[str, str]:
        """Runbook node -> inventory host: the host named like the node, else the only host of the node's role."""
        where = self.inventory.display
        hosts = self.inventory.hosts
        plan: dict[str, str] = {}
        for name, node in topology.nodes.items():
            role = node.role.value
            if name in hosts and hosts[name].dcutr_role not in ("router", "jump"):
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
            taken = {*plan.values(), *topology.nodes, *(state.host for state in self._nodes.values())}
            free = [h for h, v in hosts.items() if v.dcutr_role == role and h not in taken]
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

    def _hosts_in_play(self, plan: Mapping[str, str]) -> list[str]:
        """The mapped hosts, their routers and every jump host on the way, jump hosts first."""
        ordered: list[str] = []

        def add(alias: str) -> None:
            host = self.inventory.hosts[alias]
            if host.dcutr_jump:
                add(host.dcutr_jump)
            if alias not in ordered:
                ordered.append(alias)

        for alias in plan.values():
            add(alias)
            router = self.inventory.router_of(alias)
            if router is not None:
                add(router.name)
        return ordered

    def _local_binaries(self, suts: Sequence[str]) -> list[tuple[str, Path, str]]:
        """(program, path, sha256) of every program the topology's SUTs run, to upload."""
        from harness.images import sut_programs
        from harness.sut import get_sut

        wanted: dict[str, Path] = {}
        for name in suts:
            wanted.update(sut_programs(get_sut(name)))
        if self._binaries is not None:  # given explicitly: they stand in for the SUT's own, by name
            given = {path.name: path for path in self._binaries}
            unknown = sorted(set(given) - set(wanted))
            if unknown:
                raise BadInput(f"{', '.join(unknown)}: not a program of {', '.join(suts)} (known: {', '.join(wanted)})")
            wanted.update(given)
        missing = [name for name, path in wanted.items() if not path.is_file()]
        if missing:
            raise SetupError(f"programs missing ({', '.join(missing)}): run `dcutr-lab images build`")
        return [(name, path, _sha256(path)) for name, path in wanted.items()]

    # -- connections -------------------------------------------------------------------------------------

    def _connect(self, alias: str) -> _Remote:
        if alias in self._remotes:
            return self._remotes[alias]
        import paramiko
        from fabric import Config, Connection

        host = self.inventory.hosts[alias]
        gateway = self._connect(host.dcutr_jump).connection if host.dcutr_jump else None
        connect_kwargs: dict[str, Any] = {
            "banner_timeout": self.connect_timeout,
            "auth_timeout": self.connect_timeout,
            "channel_timeout": self.connect_timeout,
        }
        key = self.inventory.key_file(host)
        where = f"{self.inventory.display}: host {alias!r}"
        # Checked here, not when loading: an inventory is valid before its keys are made (fleet.example.yml).
        if key is not None and not key.is_file():
            raise BadInput(f"{where}: ansible_ssh_private_key_file {_shown(key)}: no such file")
        if host.dcutr_known_hosts is not None and not self.inventory.known_hosts(host).is_file():
            raise BadInput(f"{where}: dcutr_known_hosts {_shown(self.inventory.known_hosts(host))}: no such file")
        if key is not None:
            connect_kwargs["key_filename"] = str(key)
        if host.ansible_password is not None:
            connect_kwargs["password"] = host.ansible_password.get_secret_value()
        if key is not None or host.ansible_password is not None:
            connect_kwargs["look_for_keys"] = False
            connect_kwargs["allow_agent"] = False
        # The inventory is the whole truth: no ~/.ssh/config (its ProxyJump or HostName would bypass it).
        config = Config(ssh_config=paramiko.SSHConfig(), lazy=True)
        connection = Connection(
            host.ansible_host,
            user=host.ansible_user,
            port=host.ansible_port,
            config=config,
            gateway=gateway,
            connect_timeout=self.connect_timeout,
            connect_kwargs=connect_kwargs,
        )
        client = connection.client
        known_hosts = self.inventory.known_hosts(host)
        if known_hosts.is_file():
            try:
                # "system" host keys are never written back: accepting a new key cannot edit the user's file.
                client.load_system_host_keys(str(known_hosts))
            except (OSError, paramiko.SSHException) as error:
                raise BadInput(f"{_shown(known_hosts)}: cannot read known hosts: {type(error).__name__}") from None
        policy = _AcceptNew(alias) if self.accept_new_host_keys else paramiko.RejectPolicy()
        client.set_missing_host_key_policy(policy)
        remote = _Remote(host=host, connection=connection)
        try:
            connection.open()
        except Exception as error:
            with contextlib.suppress(Exception):
                connection.close()
            raise SetupError(self._connect_error(host, known_hosts, error)) from None
        if connection.transport is not None:
            connection.transport.set_keepalive(15)  # NAT routers drop idle flows; a matrix run is long
        self._remotes[alias] = remote
        return remote

    def _connect_error(self, host: InventoryHost, known_hosts: Path, error: Exception) -> str:
        import paramiko

        where = f"{self.inventory.display}: {host.via} (port {host.ansible_port})"
        via = f" through jump host {host.dcutr_jump!r}" if host.dcutr_jump else ""
        if isinstance(error, paramiko.BadHostKeyException):
            return f"{where}: its host key does not match {_shown(known_hosts)}: refusing to connect"
        if isinstance(error, paramiko.AuthenticationException):
            return f"{where}: authentication failed (check ansible_user and ansible_ssh_private_key_file)"
        if isinstance(error, paramiko.ChannelException):
            return f"{where}: unreachable{via}: {error.text if hasattr(error, 'text') else 'channel refused'}"
        if isinstance(error, paramiko.SSHException) and "known_hosts" in str(error):
            return (
                f"{where}: its host key is not in {_shown(known_hosts)}: add it (ssh-keyscan) "
                "or pass --accept-new-host-keys"
            )
        if isinstance(error, socket.gaierror):
            return f"{where}: cannot resolve its ansible_host"
        if isinstance(error, TimeoutError | socket.timeout):
            return f"{where}: unreachable{via}: no answer within {self.connect_timeout:g}s"
        if isinstance(error, paramiko.ssh_exception.NoValidConnectionsError | ConnectionRefusedError):
            return f"{where}: unreachable{via}: connection refused"
        if isinstance(error, OSError) and error.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
            return f"{where}: unreachable{via}: no route to it"
        return f"{where}: unreachable{via}: {type(error).__name__}: {self._scrub(str(error))}"

    def _scrub(self, text: str) -> str:
        """Inventory addresses out of a message meant for a human (it reaches the report unsanitised)."""
        for host in sorted(self.inventory.hosts.values(), key=lambda h: -len(h.ansible_host)):
            text = text.replace(host.ansible_host, host.name)
        return _IPV4.sub("<address>", text)

    def _run(self, alias: str, script: str, *, timeout: float = 60.0, sudo: bool = False) -> ExecResult:
        """A shell command on a host, stdout and stderr merged; exit code -1 when it ran past `timeout`."""
        remote = self._remotes.get(alias)
        if remote is None:
            raise LabError(f"{self.inventory.display}: host {alias!r} is not connected")
        # Always POSIX sh, whatever the user's login shell is.
        command = f"sh -c {shlex.quote(script)}"
        if sudo and remote.host.ansible_become:
            command = f"sudo -n {command}"
        transport = remote.connection.transport
        if transport is None or not transport.is_active():
            raise LabError(f"{self.inventory.display}: the SSH connection to host {alias!r} is gone")
        try:
            channel = transport.open_session(timeout=self.connect_timeout)
        except Exception as error:
            raise LabError(
                f"{self.inventory.display}: host {alias!r}: cannot open a session: {type(error).__name__}"
            ) from None
        deadline = time.monotonic() + timeout
        chunks: list[bytes] = []
        try:
            channel.set_combine_stderr(True)
            channel.settimeout(0.5)
            channel.exec_command(command)
            while True:
                try:
                    data: bytes | None = channel.recv(65536)
                except TimeoutError:
                    data = None
                if data:
                    chunks.append(data)
                elif data == b"" and channel.status_event.wait(max(0.0, deadline - time.monotonic())):
                    break
                if time.monotonic() > deadline:
                    output = b"".join(chunks).decode("utf-8", "replace")
                    return ExecResult(-1, f"{output}\n(timed out after {timeout:g}s)")
            code = channel.recv_exit_status()
        finally:
            channel.close()
        return ExecResult(code, b"".join(chunks).decode("utf-8", "replace"))

    def _must(self, alias: str, script: str, what: str, **kwargs: Any) -> str:
        result = self._run(alias, script, **kwargs)
        if result.exit_code != 0:
            raise SetupError(
                f"{self.inventory.display}: host {alias!r}: {what} failed (exit {result.exit_code}): "
                f"{self._scrub(result.output.strip()[-300:])}"
            )
        return result.output

    def _sftp(self, alias: str) -> Any:
        return self._remotes[alias].connection.sftp()

    # -- per-host preparation -----------------------------------------------------------------------------

    def _prepare(self, alias: str, binaries: Sequence[tuple[str, Path, str]]) -> _Remote:
        remote = self._remotes[alias]
        router = remote.host.dcutr_role == "router"
        if not remote.prepared:
            probe = (
                'echo "home=$HOME"; echo "machine=$(uname -m)"; echo "hostname=$(hostname 2>/dev/null || uname -n)"; '
                "for c in sh kill mkdir rm" + ("" if router else " setsid sleep timeout sha256sum ln") + "; do "
                'command -v "$c" > /dev/null 2>&1 || echo "missing=$c"; done'
            )
            facts = _key_values(self._must(alias, probe, "checking prerequisites", timeout=30))
            missing = [v for k, v in facts if k == "missing"]
            if missing:
                raise SetupError(
                    f"{self.inventory.display}: host {alias!r} lacks {', '.join(missing)}: "
                    "install the prerequisites (inventories/provision.yml)"
                )
            values = dict(facts)
            remote.home = values.get("home", "").rstrip("/")
            if not remote.home.startswith("/"):
                raise SetupError(f"{self.inventory.display}: host {alias!r}: the login user has no home directory")
            remote.machine = values.get("machine", "")
            remote.hostname = values.get("hostname", "").strip()
            remote.run_dir = f"{remote.home}/{REMOTE_ROOT}/{self.run_id}"
            root = shlex.quote(f"{remote.home}/{REMOTE_ROOT}")
            self._must(
                alias,
                f"umask 077 && mkdir -p {shlex.quote(remote.run_dir)}/bin && chmod 700 {root}",
                "creating the run directory",
                sudo=router,
            )
            if not router:
                self._put(alias, f"{remote.run_dir}/run.sh", WRAPPER.encode(), mode=0o700)
            remote.prepared = True
        if binaries:
            self._upload_binaries(remote, binaries)
        return remote

    def _upload_binaries(self, remote: _Remote, binaries: Sequence[tuple[str, Path, str]]) -> None:
        alias = remote.host.name
        for name, path, _digest in binaries:
            arch = _elf_machine(path)
            if arch and remote.machine not in arch:
                raise SetupError(
                    f"{self.inventory.display}: host {alias!r} is {remote.machine}, but {name} is built for {arch[0]}"
                )
        q = shlex.quote
        cache = f"{remote.home}/{REMOTE_ROOT}/bin"
        listing = self._must(
            alias, f"mkdir -p {q(cache)} && cd {q(cache)} && ls -1", "listing cached binaries", timeout=30
        ).split()
        links = []
        for name, path, digest in binaries:
            cached = f"{name}-{digest[:16]}"
            if cached not in listing:
                part = f"{cache}/.{cached}.{self.run_id}.part"
                log.info("uploading %s to host %r", name, alias)
                self._sftp(alias).put(str(path), part)
                check = self._must(alias, f"sha256sum {q(part)}", f"checking the upload of {name}", timeout=60)
                if check.split()[0] != digest:
                    self._run(alias, f"rm -f {q(part)}")
                    raise SetupError(f"{self.inventory.display}: host {alias!r}: the upload of {name} is corrupt")
                self._must(alias, f"chmod 755 {q(part)} && mv -f {q(part)} {q(cache)}/{q(cached)}", "storing " + name)
            links.append(f"ln -sfn {q(cache)}/{q(cached)} {q(remote.run_dir)}/bin/{q(name)}")
        self._must(alias, " && ".join(links), "linking the binaries")

    def _put(self, alias: str, path: str, data: bytes, mode: int = 0o600) -> None:
        with self._sftp(alias).open(path, "wb") as handle:
            handle.chmod(mode)  # before the content: an env file may hold a seed
            handle.write(data)

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
            result = self._run(alias, f"ip -4 route get {shlex.quote(toward)} 2>/dev/null", timeout=15)
            found = re.search(r"\bsrc (\S+)", result.output)
            if result.exit_code == 0 and found:
                return found.group(1)
        if not fallback:
            return None
        result = self._run(alias, 'set -- $SSH_CONNECTION; echo "$3"', timeout=15)
        value = result.output.strip()
        return value if _is_ip(value) else None

    def addresses(self) -> Mapping[str, NodeAddresses]:
        return dict(self._addresses)

    def routers(self) -> Sequence[str]:
        return list(self._routers)

    # -- node processes --------------------------------------------------------------------------------------

    def _node(self, node: str) -> _NodeState:
        try:
            return self._nodes[node]
        except KeyError:
            raise BadInput(f"unknown node {node!r} (known: {', '.join(self._nodes)})") from None

    def _dir(self, state: _NodeState) -> str:
        return self._remotes[state.host].run_dir

    def start(self, node: str, command: Sequence[str], env: Mapping[str, str]) -> None:
        state = self._node(node)
        if not command:
            raise BadInput(f"node {node}: empty command")
        if state.started and self.exit_code(node) is None:
            self.stop(node)
        run_dir = self._dir(state)
        self._put(state.host, f"{run_dir}/{node}.env", env_file(env).encode(), mode=0o600)
        self._must(state.host, start_script(run_dir, node, command), f"starting node {node}", timeout=30)
        state.started = True

    def stop(self, node: str, timeout: float = 5.0) -> None:
        state = self._node(node)
        if not state.started:
            return
        self._run(state.host, stop_script(self._dir(state), node, timeout), timeout=timeout + 15)

    def exit_code(self, node: str) -> int | None:
        state = self._node(node)
        if not state.started:
            return None
        data = self._read(state.host, f"{self._dir(state)}/{node}.exit")
        if data is None:
            return None
        try:
            return int(data.strip() or b"-1")
        except ValueError:
            return -1

    def _read(self, alias: str, path: str, offset: int = 0) -> bytes | None:
        """A remote file from `offset`, None when it does not exist."""
        sftp = self._sftp(alias)
        try:
            handle = sftp.open(path, "rb")
        except OSError as error:
            if getattr(error, "errno", None) == errno.ENOENT or isinstance(error, FileNotFoundError):
                return None
            raise
        with handle:
            if offset:
                handle.seek(offset)
            return handle.read()

    def _pull(self, state: _NodeState) -> None:
        data = self._read(state.host, f"{self._dir(state)}/{state.name}.log", state.offset)
        if not data:
            return
        state.offset += len(data)
        buffer = state.pending + data
        *complete, state.pending = buffer.split(b"\n")
        state.lines.extend(line.decode("utf-8", "replace") for line in complete)

    def log_lines(self, node: str, start: int = 0) -> list[str]:
        state = self._node(node)
        if state.started:
            self._pull(state)
        return state.lines[start:]

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

    def _record_conntrack(self, router: str, alias: str) -> None:
        """Log the router's conntrack events from now on (like the Docker backend), when it has `conntrack`."""
        run_dir = self._remotes[alias].run_dir
        q = shlex.quote
        script = (
            f"cd {q(run_dir)} && command -v conntrack > /dev/null 2>&1 || exit 0; "
            'sb=""; command -v stdbuf > /dev/null 2>&1 && sb="stdbuf -oL"; '
            'ss=""; command -v setsid > /dev/null 2>&1 && ss=setsid; '
            f"$ss sh -c 'echo $$ > {q(router)}.ctpid; exec '\"$sb\"' conntrack -E -p tcp -o timestamp' "
            f">> {q(router)}.conntrack.events 2>&1 < /dev/null &"
        )
        self._must(alias, script, f"starting the conntrack recorder of {router}", sudo=True, timeout=30)

    def _router_table(self, router: str) -> str:
        alias = self._routers[router]
        run_dir = self._remotes[alias].run_dir
        q = shlex.quote
        events = self._run(alias, f"cat {q(run_dir)}/{q(router)}.conntrack.events", sudo=True, timeout=30)
        table = self._run(
            alias,
            "if command -v conntrack > /dev/null 2>&1; then conntrack -L -p tcp; else cat /proc/net/nf_conntrack; fi",
            sudo=True,
            timeout=30,
        )
        return conntrack_text(events.output if events.exit_code == 0 else "", table.output)

    # -- artefacts and cleanup -------------------------------------------------------------------------------

    def collect(self, dest: Path) -> list[Path]:
        dest.mkdir(parents=True, exist_ok=True)
        written: list[Path] = []
        problems: list[str] = []
        for name, state in self._nodes.items():
            path = dest / f"{name}.log"
            try:
                data = self._read(state.host, f"{self._dir(state)}/{name}.log") if state.started else b""
                path.write_bytes(data or b"")
                written.append(path)
            except Exception as error:
                problems.append(f"{name}.log: {type(error).__name__}")
        for router, alias in self._routers.items():
            try:
                path = dest / f"{router}.conntrack"
                path.write_text(self._router_table(router))
                written.append(path)
                ruleset = self._run(alias, "nft list ruleset", sudo=True, timeout=30)
                if ruleset.exit_code == 0:
                    (dest / f"{router}.nft").write_text(ruleset.output)
                    written.append(dest / f"{router}.nft")
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
        # Hosts behind a jump host first: their connections ride on the jump host's.
        for alias in reversed(list(self._remotes)):
            remote = self._remotes[alias]
            if remote.run_dir:
                try:
                    result = self._run(
                        alias, cleanup_script(remote.run_dir), sudo=remote.host.dcutr_role == "router", timeout=30
                    )
                    if result.exit_code != 0:
                        log.warning("cleanup on host %r exited %s", alias, result.exit_code)
                except Exception as error:
                    log.warning("cleanup on host %r failed: %s", alias, type(error).__name__)
        for alias in reversed(list(self._remotes)):
            with contextlib.suppress(Exception):
                self._remotes[alias].connection.close()
        self._remotes.clear()
        cleanup.unregister(self)

    def __enter__(self) -> SshBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _shown(path: Path) -> str:
    """A local path for a message: `~/...` rather than the home directory (which names the user)."""
    home = str(Path.home())
    text = display_path(path)
    return "~" + text[len(home) :] if text.startswith(home + os.sep) else text


def _key_values(text: str) -> list[tuple[str, str]]:
    pairs = []
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            pairs.append((key.strip(), value.strip()))
    return pairs


_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def _sha256(path: Path) -> str:
    info = path.stat()
    key = (str(path.resolve()), info.st_size, info.st_mtime_ns)
    if key not in _SHA_CACHE:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        _SHA_CACHE[key] = digest.hexdigest()
    return _SHA_CACHE[key]


def _elf_machine(path: Path) -> tuple[str, ...] | None:
    """The `uname -m` names that can run an ELF binary, None when unknown (not ELF, other machine)."""
    with path.open("rb") as handle:
        header = handle.read(20)
    if len(header) < 20 or header[:4] != b"\x7fELF" or header[5] != 1:  # little-endian only
        return None
    return _ELF_MACHINES.get(int.from_bytes(header[18:20], "little"))


__all__ = [
    "WRAPPER",
    "Inventory",
    "InventoryHost",
    "SshBackend",
    "cleanup_script",
    "env_file",
    "load_inventory",
    "start_script",
    "stop_script",
]
