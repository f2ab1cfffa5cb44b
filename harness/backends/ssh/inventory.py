"""The inventory: which machines a fleet has, how to reach each, and what each is for.

An Ansible inventory, read the way Ansible reads it (see inventories/README.md): YAML, INI or the JSON of
`ansible-inventory --list` (`sources`), groups through `children` with group `vars`, and Ansible's variable
precedence (host vars over child group over parent group over `all`; groups of one depth by
`ansible_group_priority`, then name). A host's role is the group it is in (`relay`, `server`, `client`,
`router`, `jump`, also through parent groups); `dcutr_role` overrides it. A host in none of them and without
`dcutr_role` is not part of the lab (listed by `dcutr-lab inventory check`, never used).

Ansible's keys say how to connect (`ansible_host`, `ansible_port`, `ansible_user`, `ansible_ssh_private_key_file`,
`ansible_password`, `ansible_become`, and the ssh options of `ansible_ssh_common_args` / `_extra_args` / `_args`,
read by `sshargs`: a ProxyJump there is a jump chain, as `dcutr_jump`); ours, all `dcutr_`, say what a host is for:
`dcutr_role`, `dcutr_nat_profile` (checked against the runbook), `dcutr_public_ip`, `dcutr_jump` (another
inventory host to connect through), `dcutr_router_of` (a router's LAN host: its conntrack table is the ground
truth) and `dcutr_known_hosts`. Unknown `dcutr_` keys are errors; other `ansible_*` keys are Ansible's business
and ignored, except those that would change how we connect (refused, so nothing is silently not done).

Contract: `load_inventory` returns a checked `Inventory` (with where each value came from: `Inventory.origins`) or
raises one BadInput line naming the file, the line, the host and the key; references between hosts (routers,
jump chains) are checked whole. Loading never touches the network or the key files: an inventory is valid before
its keys exist (fleet.example.yml). Messages name hosts by their alias, never their address: they reach the
report before the sanitiser exists. A jump host that only ssh options name (not an inventory host) becomes a host
of role `jump` named `<host>-jump` (`-jump1`, `-jump2` along a chain), reached with the key and known_hosts of the
host behind it.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from harness.backends.ssh.sources import RawInventory, Where, read_source
from harness.errors import BadInput
from harness.yamlsource import display_path

HOST_ROLES = ("relay", "server", "client", "router", "jump")
HOST_ALIAS = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_IPV4 = re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}\b")

# Ansible keys that would change how a host is reached: refused rather than silently ignored.
UNSUPPORTED_ANSIBLE = {
    "ansible_become_password": "only passwordless sudo (sudo -n) is used",
    "ansible_become_pass": "only passwordless sudo (sudo -n) is used",
    "ansible_ssh_executable": "dcutr-lab connects with paramiko, not an ssh program",
    "ansible_ssh_host_key_checking": "host keys are always strict (--accept-new-host-keys for one run)",
    "ansible_host_key_checking": "host keys are always strict (--accept-new-host-keys for one run)",
    "ansible_paramiko_proxy_command": "ProxyCommand is not supported: use ProxyJump (-J) or dcutr_jump",
}
# Read in this order (OpenSSH keeps an option's first value): Ansible puts ssh_args first, then common, then extra.
SSH_ARGS = ("ansible_ssh_args", "ansible_ssh_common_args", "ansible_ssh_extra_args")


@dataclass(frozen=True)
class Origin:
    """Where a host's value came from: `host`, `group <name>`, `all`, `default`, or how it was derived."""

    source: str
    where: Where | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "from": self.source,
            "file": self.where.file if self.where else None,
            "line": self.where.line if self.where else None,
        }


class InventoryHost(BaseModel):
    """One host of the inventory, with its variables resolved by Ansible's precedence."""

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
    # Derived, never read from the file: the ssh options understood, the groups, a jump host made from options.
    groups: tuple[str, ...] = ()
    connect_timeout: float | None = None
    keepalive: int | None = None
    ssh_no_effect: tuple[str, ...] = ()
    derived_from: str | None = None  # a jump host only ssh options name: "the ssh options of group nat"

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


SETTABLE_KEYS = {name for name in InventoryHost.model_fields if name.startswith(("ansible_", "dcutr_"))}


@dataclass(frozen=True)
class Inventory:
    path: Path
    hosts: Mapping[str, InventoryHost]
    origins: Mapping[str, Mapping[str, Origin]] = field(default_factory=dict)
    ignored: Mapping[str, Where] = field(default_factory=dict)  # hosts of the file that are not part of the lab
    format: str = "yaml"

    @property
    def display(self) -> str:
        return shown(self.path)

    def key_file(self, host: InventoryHost) -> Path | None:
        return _resolve(self.path, host.ansible_ssh_private_key_file)

    def known_hosts(self, host: InventoryHost) -> Path:
        return _resolve(self.path, host.dcutr_known_hosts) or Path("~/.ssh/known_hosts").expanduser()

    def router_of(self, host_name: str) -> InventoryHost | None:
        return next((h for h in self.hosts.values() if h.dcutr_router_of == host_name), None)

    def origin(self, host: str, key: str) -> Origin:
        return self.origins.get(host, {}).get(key, Origin("default"))

    def where(self, host: str, key: str = "ansible_host") -> str:
        """`file:line: host 'x'`: the start of a message about a host, at the line its `key` was written."""
        origin = self.origin(host, key)
        if origin.where is None:
            origin = self.origin(host, "ansible_host")
        line = f":{origin.where.line}" if origin.where and origin.where.line else ""
        return f"{self.display}{line}: host {host!r}"

    def jump_chain(self, host: str) -> list[str]:
        """The jump hosts a connection to `host` goes through, first hop first."""
        chain: list[str] = []
        current = self.hosts[host].dcutr_jump
        while current is not None and current not in chain:
            chain.insert(0, current)
            current = self.hosts[current].dcutr_jump
        return chain

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


# -- loading ---------------------------------------------------------------------------------------------------


def load_inventory(path: Path) -> Inventory:
    """Parse and check an inventory; any problem is one BadInput line naming the file, line, host and key."""
    path = Path(path)
    from harness.backends.ssh.ansible_parser import read_with_ansible, vars_directories, wants_ansible

    if wants_ansible(path):
        return resolve(read_with_ansible(path))
    beside = vars_directories(path)
    if beside:
        raise BadInput(
            f"{shown(path)}: {' and '.join(f'{d}/' for d in beside)} beside it: only Ansible reads those "
            "(pip install ansible-core), or move the variables into the inventory"
        )
    raw = read_source(path)
    return resolve(raw)


def resolve(raw: RawInventory) -> Inventory:
    """An inventory read by any reader (ours or Ansible's) as the lab's model: harness.backends.ssh.resolve."""
    from harness.backends.ssh.resolve import resolve_inventory

    return resolve_inventory(raw)
