"""Pydantic models of every file format the lab reads.

Every model forbids unknown keys, so a typo in a runbook or an inventory is an error naming the field
instead of a silently ignored setting. Cross-file checks (a checkpoint the SUT defines, a template variable an
earlier step provides) live in `harness.runbook.validate_runbook`, which has the SUT definitions at hand.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from harness.durations import Seconds


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Role(StrEnum):
    relay = "relay"
    server = "server"
    client = "client"


# The profile names of harness.nat.profiles, for when that module cannot be imported (a machine without the NAT
# engine's dependencies still validates runbooks).
FALLBACK_NAT_PROFILES = (
    "none",
    "full-cone",
    "restricted-cone",
    "port-restricted",
    "symmetric",
    "openwrt-fw4",
    "openwrt-fw4-fullcone",
    "cgnat",
)


def nat_profile_names() -> tuple[str, ...]:
    """The NAT profile names runbooks may use: harness.nat.profiles.PRESETS when present."""
    try:
        from harness.nat.profiles import PRESETS  # type: ignore[import-not-found]
    except Exception:  # not written yet, or its imports fail: the fixed list is the contract
        return FALLBACK_NAT_PROFILES
    return tuple(str(getattr(name, "value", name)) for name in PRESETS)


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


# ---------------------------------------------------------------------------------------------------------
# SUT definitions (harness/suts/*.yaml): how to start each role and which lines are checkpoints.
# ---------------------------------------------------------------------------------------------------------

FactValue = str | int | float | bool | None
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class Pattern(Strict):
    """One way to recognise a log line and read facts from it.

    JSON SUTs match on the object's `event` and read its fields; text SUTs match a regex whose named groups
    are the facts. `where` then filters on fact values (`result: ok`, `relayed: false`), `set` adds constant
    facts (a text line saying `relay=true` sets `relayed: true`).
    """

    description: str = ""
    event: str | None = None
    regex: str | None = None
    facts: list[str] = Field(default_factory=list, description="JSON: the fields this pattern provides")
    where: dict[str, FactValue] = Field(default_factory=dict)
    set: dict[str, FactValue] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_matcher(self) -> Pattern:
        if (self.event is None) == (self.regex is None):
            raise ValueError("give exactly one of 'event' (JSON logs) or 'regex' (text logs)")
        if self.regex is not None:
            try:
                re.compile(self.regex)
            except re.error as error:
                raise ValueError(f"regex does not compile: {error}") from None
        return self

    def provided_facts(self) -> set[str]:
        names = set(self.facts) | set(self.set)
        if self.regex is not None:
            names |= set(re.compile(self.regex).groupindex)
        return names


class CheckpointDef(Pattern):
    """A named checkpoint of one SUT: a pattern plus the node facts it carries and the hints it gives."""

    roles: list[Role] | None = Field(default=None, description="roles whose logs may show it (None: any)")
    needs: list[str] = Field(
        default_factory=list, description="node facts (from the SUT's `facts` patterns) that must be known"
    )
    hints: list[str] = Field(
        default_factory=list, description="other checkpoints of this SUT whose lines explain a miss of this one"
    )

    def provided_facts(self) -> set[str]:
        return super().provided_facts() | set(self.needs)


class SutRole(Strict):
    command: list[str] = Field(min_length=1)
    env: dict[str, str] = Field(default_factory=dict)


class SutExpect(Strict):
    """The default chains `dcutr-lab verify` uses for logs of this SUT (node names relay/server/client)."""

    direct: Chain
    relayed: Chain = Field(default_factory=list)


class Sut(Strict):
    name: str
    description: str = ""
    format: Literal["json", "text"]
    roles: dict[Role, SutRole] = Field(default_factory=dict, description="how the harness starts each role")
    facts: dict[str, Pattern] = Field(default_factory=dict, description="node facts learnt from any line")
    checkpoints: dict[str, CheckpointDef]
    expect: SutExpect | None = None

    @field_validator("checkpoints", "facts")
    @classmethod
    def _names(cls, value: dict[str, Any]) -> dict[str, Any]:
        for name in value:
            if not _NAME.match(name):
                raise ValueError(f"name {name!r} must be lower_snake_case")
        return value

    @model_validator(mode="after")
    def _references(self) -> Sut:
        for name, checkpoint in self.checkpoints.items():
            for need in checkpoint.needs:
                if need not in self.facts:
                    raise ValueError(f"checkpoint {name!r} needs fact {need!r}, which no `facts` pattern provides")
            for hint in checkpoint.hints:
                if hint not in self.checkpoints:
                    raise ValueError(f"checkpoint {name!r} hints at unknown checkpoint {hint!r}")
        return self


# ---------------------------------------------------------------------------------------------------------
# Runbooks (runbooks/*.yaml)
# ---------------------------------------------------------------------------------------------------------


class Verdict(StrEnum):
    direct = "direct"
    relayed = "relayed"
    fail = "fail"


class ExpectedVerdict(StrEnum):
    """What a scenario expects; `flaky` (matrix cells) accepts direct or relayed."""

    direct = "direct"
    relayed = "relayed"
    fail = "fail"
    flaky = "flaky"


def _chain_item_shorthand(value: Any) -> Any:
    """`"relay.listening"` and `{"server.x": {fact: "{{ ... }}"}}` are short forms of ChainItem."""
    if isinstance(value, str):
        return {"checkpoint": value}
    if isinstance(value, dict) and len(value) == 1:
        (key, inner), *_ = value.items()
        if key not in ChainItem.model_fields and (inner is None or isinstance(inner, dict)):
            return {"checkpoint": key, "where": inner or {}}
    return value


class ChainItem(Strict):
    """One entry of an ordered `expect` chain: a checkpoint (or alternatives), with fact equalities.

    `where` values are jinja2 templates over the facts learnt so far (`"{{ server.peer_id }}"`) or literals.
    `conntrack.established` is the ground-truth pseudo checkpoint; its `endpoints` are the two NAT public
    endpoints (multiaddrs, `ip:port` or bare addresses, templated).
    """

    checkpoint: str | None = None
    any_of: list[ChainItem] | None = None
    where: dict[str, FactValue] = Field(default_factory=dict)
    endpoints: list[str] = Field(default_factory=list)
    count: int = Field(default=1, ge=1, description="the checkpoint must be met on this many distinct lines")
    optional: bool = Field(default=False, description="skipped when the node's SUT does not define it")

    @model_validator(mode="after")
    def _one_kind(self) -> ChainItem:
        if (self.checkpoint is None) == (self.any_of is None):
            raise ValueError("give exactly one of 'checkpoint' or 'any_of'")
        if self.any_of is not None and any(alt.any_of for alt in self.any_of):
            raise ValueError("'any_of' alternatives cannot nest another 'any_of'")
        if self.endpoints and self.checkpoint != "conntrack.established":
            raise ValueError("'endpoints' belongs to conntrack.established only")
        return self

    def alternatives(self) -> list[ChainItem]:
        return list(self.any_of) if self.any_of is not None else [self]

    @property
    def label(self) -> str:
        return " | ".join(alt.checkpoint or "" for alt in self.alternatives())


Chain = list[Annotated[ChainItem, BeforeValidator(_chain_item_shorthand)]]


class RunbookNode(Strict):
    """A node as a runbook declares it: the topology fields plus its own env and args."""

    role: Role
    sut: str = "reference"
    nat_profile: str = "none"
    env: dict[str, str] = Field(default_factory=dict)
    args: list[str] = Field(default_factory=list)

    def topology_node(self, nat_profile: str | None = None) -> Node:
        return Node(role=self.role, sut=self.sut, nat_profile=nat_profile or self.nat_profile)


class StartStep(Strict):
    action: Literal["start"]
    node: str
    env: dict[str, str] = Field(default_factory=dict)
    args: list[str] = Field(default_factory=list)


class WaitStep(Strict):
    """Wait until a checkpoint is met on its node (since that node last started), or fail at the deadline."""

    action: Literal["wait"]
    checkpoint: str
    within: Seconds
    where: dict[str, FactValue] = Field(default_factory=dict)


class WaitExitStep(Strict):
    """Wait until a node's process ends; `code` (when given) is the exit code it must end with."""

    action: Literal["wait_exit"]
    node: str
    within: Seconds
    code: int | None = None


class RunStep(Strict):
    """Run a command on a node or a router (`<node>-router`); its sanitised output goes into the report."""

    action: Literal["run"]
    on: str
    command: list[str] = Field(min_length=1)
    timeout: Seconds = 30.0
    code: int | None = Field(default=0, description="required exit code (None: any)")
    name: str | None = None


class StopStep(Strict):
    action: Literal["stop"]
    node: str
    timeout: Seconds = 5.0


class RestartStep(Strict):
    """Stop a node and start it again with the command and env of its last start (plus `env` here)."""

    action: Literal["restart"]
    node: str
    env: dict[str, str] = Field(default_factory=dict)
    timeout: Seconds = 5.0


class CollectStep(Strict):
    action: Literal["collect"]


class ExpectStep(Strict):
    """The ordered checkpoints of a direct run (`checkpoints`) and of a relayed one (`relayed`)."""

    action: Literal["expect"]
    checkpoints: Chain = Field(min_length=1)
    relayed: Chain = Field(default_factory=list)
    clock_skew: Seconds = Field(default=2.0, description="tolerance when ordering lines of different nodes")


Step = Annotated[
    StartStep | WaitStep | WaitExitStep | RunStep | StopStep | RestartStep | CollectStep | ExpectStep,
    Field(discriminator="action"),
]


class NodeOverride(Strict):
    nat_profile: str | None = None
    env: dict[str, str] = Field(default_factory=dict)


class ScenarioExpect(Strict):
    verdict: ExpectedVerdict
    first_missing: str | None = Field(
        default=None, description="fail only: the checkpoint that must be the first one missed (name or node.name)"
    )

    @model_validator(mode="after")
    def _only_for_fail(self) -> ScenarioExpect:
        if self.first_missing and self.verdict != ExpectedVerdict.fail:
            raise ValueError("'first_missing' only applies to verdict 'fail'")
        return self


class Scenario(Strict):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_]*$")
    description: str = ""
    markers: list[str] = Field(default_factory=list)
    nodes: dict[str, NodeOverride] = Field(default_factory=dict)
    expect: ScenarioExpect
    why: str = ""


class MatrixCell(Strict):
    expect: ExpectedVerdict
    why: str


class Matrix(Strict):
    """NAT pairs (server profile -> client profile -> expected outcome), expanded into one scenario per cell."""

    server_node: str = "server"
    client_node: str = "client"
    markers: list[str] = Field(default_factory=lambda: ["matrix", "slow"])
    cells: dict[str, dict[str, MatrixCell]]


class SanitiseOptions(Strict):
    aliases: dict[str, str] = Field(default_factory=dict, description='"<SERVER_NAT_IP>": "<HOME_IP>"')
    hash_peer_ids: bool = False


class Runbook(Strict):
    name: str
    description: str = ""
    markers: list[str] = Field(default_factory=list, description="added to every scenario")
    nodes: dict[str, RunbookNode] = Field(min_length=1)
    env: dict[str, str] = Field(default_factory=dict, description="env of every node")
    steps: list[Step] = Field(min_length=1)
    scenarios: list[Scenario] = Field(default_factory=list)
    matrix: Matrix | None = None
    sanitise: SanitiseOptions = Field(default_factory=SanitiseOptions)

    @model_validator(mode="after")
    def _expand_scenarios(self) -> Runbook:
        """`scenarios` ends up holding every scenario: declared ones, then one per matrix cell, each carrying
        the runbook's markers. (Frozen model: assigned once, here, through object.__setattr__.)"""
        if not self.scenarios and self.matrix is None:
            raise ValueError("a runbook needs 'scenarios' or a 'matrix'")
        scenarios = list(self.scenarios)
        declared = {s.id for s in scenarios}
        if self.matrix is not None:
            scenarios += [s for s in self._matrix_scenarios(self.matrix) if s.id not in declared]
        ids = [s.id for s in scenarios]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"duplicate scenario ids: {', '.join(duplicates)}")
        scenarios = [
            s.model_copy(update={"markers": list(dict.fromkeys([*self.markers, *s.markers]))}) for s in scenarios
        ]
        object.__setattr__(self, "scenarios", scenarios)
        return self

    @staticmethod
    def _matrix_scenarios(matrix: Matrix) -> list[Scenario]:
        return [
            Scenario(
                id=matrix_scenario_id(server_profile, client_profile),
                description=f"server behind {server_profile}, client behind {client_profile}",
                markers=list(matrix.markers),
                nodes={
                    matrix.server_node: NodeOverride(nat_profile=server_profile),
                    matrix.client_node: NodeOverride(nat_profile=client_profile),
                },
                expect=ScenarioExpect(verdict=cell.expect),
                why=cell.why,
            )
            for server_profile, row in matrix.cells.items()
            for client_profile, cell in row.items()
        ]

    @property
    def scenarios_by_id(self) -> dict[str, Scenario]:
        return {s.id: s for s in self.scenarios}

    def topology(self, scenario: Scenario | None = None) -> Topology:
        """The topology a scenario runs on: the runbook's nodes with the scenario's NAT overrides."""
        overrides = scenario.nodes if scenario else {}
        return Topology(
            nodes={
                name: node.topology_node(overrides[name].nat_profile if name in overrides else None)
                for name, node in self.nodes.items()
            }
        )

    def expect_step(self) -> ExpectStep | None:
        found = [s for s in self.steps if isinstance(s, ExpectStep)]
        return found[-1] if found else None


def matrix_scenario_id(server_profile: str, client_profile: str) -> str:
    def slug(profile: str) -> str:
        return profile.replace("-", "_")

    return f"matrix_{slug(server_profile)}_x_{slug(client_profile)}"


SutExpect.model_rebuild()
Sut.model_rebuild()
