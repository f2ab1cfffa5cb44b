"""Inventory files as Ansible writes them, read into one shape: groups (hosts, vars, children) and hosts (vars), each
value with the file, line and key it came from.

    YAML   all: {hosts, vars, children}; other top-level keys are groups too (children of `all`)
    INI    [group] host lines with key=value, [group:vars], [group:children]; hosts before any section: ungrouped
    JSON   what `ansible-inventory -i FILE --list` prints (`_meta.hostvars`, groups with hosts/children/vars)

Contract: `read_source` returns a `RawInventory` or raises one BadInput line naming the file, the line and the key.
Values are read the way Ansible reads them (INI values through `ast.literal_eval`, as Ansible does), but never
rendered: an Ansible template stays a string (the inventory model refuses one where dcutr-lab needs a value).
Inventory plugins, scripts and directories are not read here (`harness.backends.ssh.ansible_parser` hands them to
`ansible-inventory` when it is installed). Pure: reads the one file, nothing else.
"""

from __future__ import annotations

import ast
import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import BadInput
from harness.yamlsource import YamlSource, display_path, format_loc, load_yaml, read_text_file

_GROUP_KEYS = ("hosts", "vars", "children")
_SECTION = re.compile(r"^\[([^\]:\s]+)(?::(\w+))?\]\s*(?:[#;].*)?$")
_RANGE = re.compile(r"\[[^\]]*:[^\]]*\]")


@dataclass(frozen=True)
class Where:
    """Where a value was written: file, line and a dotted name for the key (`all.children.server.vars.x`)."""

    file: str
    line: int | None
    key: str

    def error(self, message: str) -> BadInput:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return BadInput(f"{where}: {self.key}: {message}" if self.key else f"{where}: {message}")


@dataclass(frozen=True)
class Value:
    value: Any
    where: Where


@dataclass
class RawGroup:
    name: str
    where: Where
    vars: dict[str, Value] = field(default_factory=dict)
    hosts: list[str] = field(default_factory=list)
    children: list[str] = field(default_factory=list)


@dataclass
class RawHost:
    name: str
    where: Where  # its first declaration
    vars: dict[str, Value] = field(default_factory=dict)  # a later declaration's value wins, as in Ansible


@dataclass
class RawInventory:
    path: Path
    format: str  # yaml | ini | json
    groups: dict[str, RawGroup]
    hosts: dict[str, RawHost]

    def group(self, name: str, where: Where) -> RawGroup:
        if name not in self.groups:
            self.groups[name] = RawGroup(name, where)
        return self.groups[name]

    def host(self, name: str, where: Where) -> RawHost:
        if name not in self.hosts:
            self.hosts[name] = RawHost(name, where)
        return self.hosts[name]

    def add_host(self, group: str, name: str, where: Where) -> RawHost:
        members = self.groups[group].hosts
        if name not in members:
            members.append(name)
        return self.host(name, where)

    def add_child(self, parent: str, child: str) -> None:
        if child not in self.groups[parent].children:
            self.groups[parent].children.append(child)


def sniff_format(path: Path, text: str) -> str:
    """yaml, ini or json: by suffix, else by content (a `[section]` line is INI, a leading `{` JSON)."""
    suffix = path.suffix.lower()
    if suffix in (".yml", ".yaml"):
        return "yaml"
    if suffix == ".json":
        return "json"
    if suffix in (".ini", ".cfg"):
        return "ini"
    significant = [ln.strip() for ln in text.splitlines() if ln.strip() and ln.strip()[0] not in "#;"]
    if significant and significant[0].startswith("{"):
        return "json"
    if any(_SECTION.match(line) for line in significant):
        return "ini"
    if significant and (significant[0].startswith("---") or re.match(r"^[\w.\-]+:\s*(#.*)?$", significant[0])):
        return "yaml"
    return "ini"


def read_source(path: Path) -> RawInventory:
    path = Path(path)
    if path.is_dir():
        raise BadInput(f"{display_path(path)}: an inventory directory is not read (give one file)")
    text = read_text_file(path)  # not UTF-8, too large, unreadable: one line
    kind = sniff_format(path, text)
    if kind == "ini":
        return _read_ini(path, text)
    source = load_yaml(path)  # JSON is YAML: the same reader gives line numbers for both
    return _read_json(path, source) if kind == "json" else _read_yaml(path, source)


# -- YAML -------------------------------------------------------------------------------------------------------


def _read_yaml(path: Path, source: YamlSource) -> RawInventory:
    shown = display_path(path)

    def where(loc: tuple) -> Where:
        return Where(shown, source.line_of(loc), format_loc(loc))

    data = source.data
    if not isinstance(data, dict) or not data:
        raise where(()).error("an inventory is a mapping of groups, e.g. 'all' with 'hosts' (Ansible YAML format)")
    if "plugin" in data:
        raise where(("plugin",)).error(
            "an inventory plugin's configuration, not an inventory: give the output of "
            "`ansible-inventory -i FILE --list` (a .json file) instead"
        )
    inventory = RawInventory(path, "yaml", {"all": RawGroup("all", where(("all",)))}, {})
    for name, body in data.items():
        _yaml_group(inventory, str(name), body, (str(name),), where, parent=None if name == "all" else "all")
    return inventory


def _yaml_group(inventory: RawInventory, name: str, body: Any, loc: tuple, where, parent: str | None) -> None:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_\-]*", name):
        raise where(loc).error(f"group name {name!r}: use letters, digits, '_' and '-'")
    group = inventory.group(name, where(loc))
    if parent is not None:
        if name == "all":
            raise where(loc).error("'all' cannot be a child group")
        inventory.add_child(parent, name)
    if body is None:
        return
    if not isinstance(body, dict):
        raise where(loc).error("must be a mapping with 'hosts', 'vars' or 'children'")
    for key in body:
        if key not in _GROUP_KEYS:
            raise where((*loc, key)).error(f"unknown key {key!r} (known: hosts, vars, children)")
    shared = body.get("vars") or {}
    if not isinstance(shared, dict):
        raise where((*loc, "vars")).error("must be a mapping of variables")
    for key, value in shared.items():
        group.vars[str(key)] = Value(value, where((*loc, "vars", key)))
    hosts = body.get("hosts") or {}
    if not isinstance(hosts, dict):
        raise where((*loc, "hosts")).error("must be a mapping of host names (each with its variables)")
    for host_name, values in hosts.items():
        host_loc = (*loc, "hosts", host_name)
        if _RANGE.search(str(host_name)):
            raise where(host_loc).error("host ranges are not read: list the hosts (or use ansible-inventory --list)")
        host = inventory.add_host(name, str(host_name), where(host_loc))
        if values is None:
            continue
        if not isinstance(values, dict):
            raise where(host_loc).error(f"host {str(host_name)!r} must be a mapping of variables")
        for key, value in values.items():
            host.vars[str(key)] = Value(value, where((*host_loc, key)))
    children = body.get("children") or {}
    if not isinstance(children, dict):
        raise where((*loc, "children")).error("must be a mapping of group names")
    for child, child_body in children.items():
        _yaml_group(inventory, str(child), child_body, (*loc, "children", child), where, parent=name)


# -- INI --------------------------------------------------------------------------------------------------------


def _ini_value(text: str) -> Any:
    """As Ansible's INI plugin: a Python literal when it is one, else the string."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return text
    return value if isinstance(value, str | int | float | bool | list | dict) or value is None else text


def _read_ini(path: Path, text: str) -> RawInventory:
    shown = display_path(path)
    inventory = RawInventory(path, "ini", {"all": RawGroup("all", Where(shown, 1, "all"))}, {})
    inventory.group("ungrouped", Where(shown, 1, "ungrouped"))
    inventory.add_child("all", "ungrouped")
    declared = {"all", "ungrouped"}
    referenced: dict[str, Where] = {}  # groups named by [g:vars] or as a child: each needs [g] or [g:children]
    group, state = "ungrouped", "hosts"
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        section = _SECTION.match(line)
        if section:
            group, state = section.group(1), section.group(2) or "hosts"
            here = Where(shown, number, f"[{line.strip('[]').split(']')[0]}]")
            if state not in ("hosts", "vars", "children"):
                raise here.error(f"unknown section type {state!r} (known: hosts, vars, children)")
            inventory.group(group, here)
            if state == "vars":
                referenced.setdefault(group, here)
            else:
                declared.add(group)
            if group != "all" and group not in inventory.groups["all"].children and group != "ungrouped":
                inventory.add_child("all", group)
            continue
        if line.startswith("["):
            raise Where(shown, number, "").error(f"not a section: {line!r} (no spaces inside [group:kind])")
        if state == "hosts":
            try:
                words = shlex.split(line, comments=True)
            except ValueError as error:
                raise Where(shown, number, f"[{group}]").error(f"cannot split the host line: {error}") from None
            if not words:
                continue
            name, port = words[0], None
            if _RANGE.search(name):
                raise Where(shown, number, f"[{group}] {name}").error(
                    "host ranges are not read: list the hosts (or use ansible-inventory --list)"
                )
            if re.fullmatch(r"[^:\[\]]+:\d+", name):
                name, port = name.rsplit(":", 1)
            host = inventory.add_host(group, name, Where(shown, number, f"[{group}] {name}"))
            if port is not None:
                host.vars["ansible_port"] = Value(int(port), Where(shown, number, f"[{group}] {name}:{port}"))
            for word in words[1:]:
                key, sep, value = word.partition("=")
                if not sep:
                    raise Where(shown, number, f"[{group}] {name}").error(f"expected key=value, got {word!r}")
                host.vars[key] = Value(_ini_value(value), Where(shown, number, f"[{group}] {name} {key}"))
        elif state == "vars":
            key, sep, value = line.partition("=")
            if not sep:
                raise Where(shown, number, f"[{group}:vars]").error(f"expected key=value, got {line!r}")
            key = key.strip()
            inventory.groups[group].vars[key] = Value(
                _ini_value(value.strip()), Where(shown, number, f"[{group}:vars] {key}")
            )
        else:  # children
            child = line.split()[0]
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_\-]*", child):
                raise Where(shown, number, f"[{group}:children]").error(f"expected a group name, got {line!r}")
            if child == "all":
                raise Where(shown, number, f"[{group}:children]").error("'all' cannot be a child group")
            inventory.group(child, Where(shown, number, f"[{group}:children] {child}"))
            inventory.add_child(group, child)
            referenced.setdefault(child, Where(shown, number, f"[{group}:children] {child}"))
    for name, here in referenced.items():
        if name not in declared:
            raise here.error(f"group {name!r} is never declared (no [{name}] or [{name}:children] section)")
    # A group named as a child of another is no longer a direct child of all (Ansible moves it).
    nested = {child for g in inventory.groups.values() if g.name != "all" for child in g.children}
    inventory.groups["all"].children = [c for c in inventory.groups["all"].children if c not in nested]
    return inventory


# -- JSON (ansible-inventory --list) ----------------------------------------------------------------------------


def _read_json(path: Path, source: YamlSource) -> RawInventory:
    shown = display_path(path)

    def where(loc: tuple) -> Where:
        return Where(shown, source.line_of(loc), format_loc(loc))

    data = source.data
    if not isinstance(data, dict) or "all" not in data:
        raise where(()).error("expected the output of `ansible-inventory -i FILE --list` (a mapping with 'all')")
    inventory = RawInventory(path, "json", {"all": RawGroup("all", where(("all",)))}, {})
    meta = data.get("_meta") or {}
    if not isinstance(meta, dict):
        raise where(("_meta",)).error("must be a mapping with 'hostvars'")
    for name, body in data.items():
        if name == "_meta":
            continue
        loc = (name,)
        if not isinstance(body, dict):
            raise where(loc).error("a group: a mapping with 'hosts', 'children' or 'vars'")
        for key in body:
            if key not in _GROUP_KEYS:
                raise where((*loc, key)).error(f"unknown key {key!r} (known: hosts, vars, children)")
        group = inventory.group(name, where(loc))
        for index, host in enumerate(body.get("hosts") or []):
            inventory.add_host(name, str(host), where((*loc, "hosts", index)))
        for child in body.get("children") or []:
            inventory.group(str(child), where((*loc, "children")))
            inventory.add_child(name, str(child))
        shared = body.get("vars") or {}
        if not isinstance(shared, dict):
            raise where((*loc, "vars")).error("must be a mapping of variables")
        for key, value in shared.items():
            group.vars[str(key)] = Value(value, where((*loc, "vars", key)))
    hostvars = meta.get("hostvars") or {}
    if not isinstance(hostvars, dict):
        raise where(("_meta", "hostvars")).error("must be a mapping of host names")
    for name, values in hostvars.items():
        loc = ("_meta", "hostvars", name)
        host = inventory.host(str(name), where(loc))
        if not isinstance(values, dict):
            raise where(loc).error(f"host {name!r} must be a mapping of variables")
        for key, value in values.items():
            host.vars[str(key)] = Value(value, where((*loc, key)))
    return inventory


def dump_json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=False)
