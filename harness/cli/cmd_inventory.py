"""`dcutr-lab inventory check FILE`: what the lab makes of an inventory, before anything connects."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from harness.cli import app
from harness.console import console

inventory_app = typer.Typer(help="Ansible inventories for --backend ssh.", no_args_is_help=True)
app.add_typer(inventory_app, name="inventory")

# What `check` shows of each host, in this order: (label, the key whose origin is shown).
SHOWN = (
    ("role", "dcutr_role"),
    ("address", "ansible_host"),
    ("port", "ansible_port"),
    ("user", "ansible_user"),
    ("jump", "dcutr_jump"),
    ("nat profile", "dcutr_nat_profile"),
    ("public ip", "dcutr_public_ip"),
    ("router of", "dcutr_router_of"),
    ("key file", "ansible_ssh_private_key_file"),
    ("known hosts", "dcutr_known_hosts"),
)


def describe_inventory(inventory) -> dict[str, Any]:
    """The inventory as `check --json` prints it: each lab host's values, each with where it came from."""
    hosts = {}
    for name, host in inventory.hosts.items():
        values: dict[str, Any] = {}
        for _label, key in SHOWN:
            value = getattr(host, key)
            values[key] = {"value": value, **inventory.origin(name, key).as_dict()}
        values["jump_chain"] = inventory.jump_chain(name)
        values["groups"] = list(host.groups)
        values["derived_from"] = host.derived_from
        values["ssh_options_without_effect"] = list(host.ssh_no_effect)
        values["known_hosts_file"] = str(inventory.known_hosts(host))
        hosts[name] = values
    return {
        "inventory": inventory.display,
        "format": inventory.format,
        "hosts": hosts,
        "ignored": {
            name: {"file": where.file, "line": where.line, "why": "in no role group and no dcutr_role"}
            for name, where in inventory.ignored.items()
        },
    }


@inventory_app.command("check")
def check(
    file: Annotated[Path, typer.Argument(help="An Ansible inventory: YAML, INI, or ansible-inventory --list JSON.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON, for scripts.")] = False,
    ansible: Annotated[
        bool,
        typer.Option("--ansible", help="Also read it with ansible-inventory; list what Ansible reads otherwise."),
    ] = False,
) -> None:
    """Show each host's role, address, port, user, jump chain and NAT profile, and where each value came from.

    Nothing connects. Exit 0 when the inventory is usable, 2 (one line naming file, line, host and key) when not,
    1 with --ansible when Ansible reads it differently.
    """
    from harness.backends.ssh import load_inventory
    from harness.errors import LabError

    inventory = load_inventory(file)
    described = describe_inventory(inventory)
    differences: list[str] = []
    if ansible:
        from harness.backends.ssh.ansible_parser import compare_with_ansible

        differences = compare_with_ansible(inventory)
        described["ansible_differences"] = differences
    if as_json:
        print(json.dumps(described, indent=2))
    else:
        table = Table(title=f"{described['inventory']} ({described['format']})")
        for column in ("host", "", "value", "from"):
            table.add_column(column)
        for name, values in described["hosts"].items():
            rows = []
            for label, key in SHOWN:
                entry = values[key]
                value = entry["value"]
                if key == "dcutr_jump":
                    value = " → ".join([*values["jump_chain"], name]) if values["jump_chain"] else "direct"
                elif value is None:
                    continue
                where = f" ({Path(entry['file']).name}:{entry['line']})" if entry.get("line") else ""
                rows.append((label, str(value), f"{entry['from']}{where}"))
            if values["derived_from"]:
                rows.append(("made from", values["derived_from"], ""))
            for index, (label, value, origin) in enumerate(rows):
                table.add_row(
                    f"[bold]{name}[/]" if index == 0 else "",
                    label,
                    value,
                    f"[muted]{origin}[/]",
                    end_section=index == len(rows) - 1,
                )
        console.print(table)
        for name, values in described["hosts"].items():
            if values["ssh_options_without_effect"]:
                console.print(
                    f"[muted]host {name!r}: ssh options without effect here (one connection per host): "
                    f"{', '.join(values['ssh_options_without_effect'])}[/]"
                )
        for name, info in described["ignored"].items():
            console.print(f"[warn]not in the lab[/]: host {name!r} ({info['file']}:{info['line']}): {info['why']}")
        if ansible:
            if differences:
                for line in differences:
                    console.print(f"[error]ansible reads it otherwise[/]: {line}")
            else:
                console.print("[ok]ansible-inventory reads it the same[/]")
    if differences:
        raise LabError(f"{inventory.display}: Ansible reads {len(differences)} value(s) otherwise (see above)")
