"""Ansible's own inventory parser, where it is installed (`ansible-core`, a test dependency): for the inventories
dcutr-lab does not read itself, and to check that it reads the others as Ansible does.

    wants_ansible(path)       a directory, a script, an inventory plugin's YAML, or a file with group_vars/ or
                              host_vars/ beside it: only Ansible reads those
    read_with_ansible(path)   `ansible-inventory -i PATH --list`, read as the JSON dcutr-lab reads (`sources`)
    compare_with_ansible(inv) what Ansible makes of the same file, against ours: a list of differences

Contract: nothing here runs unless asked for or needed (dcutr-lab reads YAML, INI and JSON inventories without
Ansible); a missing `ansible-inventory` or a failing one is one BadInput line. The comparison covers what a run
uses of each lab host: role, address, port, user, NAT profile, public address, router target and the jump chain
(as addresses: derived jump hosts are named after where their option was set, which only ours can see).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from harness.backends.ssh.sources import RawInventory, _read_json
from harness.errors import BadInput
from harness.yamlsource import YamlSource, display_path

COMPARED = (
    "dcutr_role",
    "ansible_host",
    "ansible_port",
    "ansible_user",
    "dcutr_nat_profile",
    "dcutr_public_ip",
    "dcutr_router_of",
)


def ansible_inventory() -> str | None:
    return shutil.which("ansible-inventory")


def wants_ansible(path: Path) -> bool:
    """Whether only Ansible can read `path` (and it is installed to do so)."""
    path = Path(path)
    if ansible_inventory() is None:
        return False
    if path.is_dir() or vars_directories(path):
        return True
    if not path.is_file():
        return False
    if path.suffix.lower() in (".yml", ".yaml"):
        try:
            head = path.read_text(errors="replace")[:4096]
        except OSError:
            return False
        return any(line.startswith("plugin:") for line in head.splitlines())
    return os.access(path, os.X_OK) and path.suffix.lower() not in (".ini", ".json", ".cfg")


def vars_directories(path: Path) -> list[str]:
    """group_vars/ and host_vars/ beside an inventory file: Ansible reads them, so must whoever reads the file."""
    path = Path(path)
    return [name for name in ("group_vars", "host_vars") if path.is_file() and (path.parent / name).is_dir()]


def ansible_list(path: Path) -> dict[str, Any]:
    """`ansible-inventory -i PATH --list` as data; its failure is one line."""
    program = ansible_inventory()
    if program is None:
        raise BadInput(f"{display_path(Path(path))}: reading it needs Ansible: pip install ansible-core")
    env = {**os.environ, "ANSIBLE_INVENTORY_UNPARSED_FAILED": "true", "ANSIBLE_NOCOLOR": "1"}
    try:
        done = subprocess.run(
            [program, "-i", str(path), "--list"], capture_output=True, text=True, timeout=120, env=env, check=False
        )
    except subprocess.TimeoutExpired:
        raise BadInput(f"{display_path(Path(path))}: ansible-inventory did not finish within 120s") from None
    if done.returncode != 0:
        lines = [ln.strip() for ln in done.stderr.splitlines() if ln.strip() and "WARNING" not in ln]
        reason = lines[0] if lines else f"exit {done.returncode}"
        raise BadInput(f"{display_path(Path(path))}: ansible-inventory cannot read it: {reason}")
    try:
        return json.loads(done.stdout)
    except ValueError:
        raise BadInput(f"{display_path(Path(path))}: ansible-inventory printed no JSON") from None


def read_with_ansible(path: Path) -> RawInventory:
    """The inventory as Ansible reads it (host variables already merged by Ansible's precedence)."""
    raw = _read_json(Path(path), YamlSource(path=Path(path), data=ansible_list(path)))
    raw.format = "ansible-inventory"
    return raw


def _chain(inventory, name: str) -> list[str]:
    return [
        f"{h.ansible_user + '@' if h.ansible_user else ''}{h.ansible_host}:{h.ansible_port}"
        for h in (inventory.hosts[hop] for hop in inventory.jump_chain(name))
    ]


def compare_with_ansible(inventory) -> list[str]:
    """Differences between our reading of `inventory`'s file and Ansible's: empty when they agree."""
    from harness.backends.ssh.inventory import resolve

    theirs = resolve(read_with_ansible(inventory.path))
    differences = []
    ours_hosts = {n for n, h in inventory.hosts.items() if h.derived_from is None}
    their_hosts = {n for n, h in theirs.hosts.items() if h.derived_from is None}
    for name in sorted(ours_hosts ^ their_hosts):
        side = "only dcutr-lab" if name in ours_hosts else "only Ansible"
        differences.append(f"host {name!r}: {side} makes it a lab host")
    for name in sorted(ours_hosts & their_hosts):
        mine, other = inventory.hosts[name], theirs.hosts[name]
        for key in COMPARED:
            if getattr(mine, key) != getattr(other, key):
                differences.append(f"host {name!r}: {key} is {getattr(mine, key)!r}, Ansible: {getattr(other, key)!r}")
        if _chain(inventory, name) != _chain(theirs, name):
            differences.append(f"host {name!r}: jump chain {_chain(inventory, name)}, Ansible: {_chain(theirs, name)}")
    return differences
