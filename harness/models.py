"""Pydantic models of every file format the lab reads.

Every model forbids unknown keys, so a typo in a runbook or an inventory is an error naming the field
instead of a silently ignored setting.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Role(StrEnum):
    relay = "relay"
    server = "server"
    client = "client"


class Node(Strict):
    """One node of a topology: its role, the SUT it runs and the NAT it sits behind."""

    role: Role
    sut: str = "reference"
    nat_profile: str = Field(default="none", description="a preset name of harness.nat.profiles")


class Topology(Strict):
    """Nodes by name. The relay is public; every other node sits behind its own router(s)."""

    nodes: dict[str, Node]

    def by_role(self, role: Role) -> list[str]:
        return [name for name, node in self.nodes.items() if node.role == role]
