"""The raw artefacts both backends write into a run's `raw/` folder, in one format.

- `<router>.conntrack`: the router's conntrack events recorded during the run, then its table at collection;
  `harness.conntrack` reads both parts.
- `addresses.json`: every node's real addresses (never copied into a report; the sanitiser's input).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path

from harness.backends.base import NodeAddresses

EVENTS_HEADER = "# conntrack -E -p tcp (events during the run)\n"
TABLE_HEADER = "# conntrack -L -p tcp (table at collection)\n"


def conntrack_text(events: str | None, table: str) -> str:
    """Events first (every state the router's kernel went through), then the table as it is now."""
    return EVENTS_HEADER + (events or "") + TABLE_HEADER + table


def write_conntrack(dest: Path, router: str, events: str | None, table: str) -> Path:
    path = dest / f"{router}.conntrack"
    path.write_text(conntrack_text(events, table))
    return path


def write_addresses(dest: Path, addresses: Mapping[str, NodeAddresses]) -> Path:
    path = dest / "addresses.json"
    path.write_text(
        json.dumps(
            {name: dataclasses.asdict(address) | {"extra": dict(address.extra)} for name, address in addresses.items()},
            indent=2,
        )
    )
    return path
