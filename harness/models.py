"""The lab's shared vocabulary as pydantic models: roles, topologies, SUT definitions, chains, verdicts.

Every model forbids unknown keys, so a typo in a runbook, a SUT file or an inventory is an error naming the
field instead of a silently ignored setting. The runbook file's own models are in `harness.runbook.model`, its
steps in `harness.steps`, the inventory's in `harness.backends.ssh`. Cross-file checks (a checkpoint the SUT
defines, a template variable an earlier step provides) live in `harness.runbook.load`.
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


def nat_profile_names() -> tuple[str, ...]:
    """The NAT profile names runbooks may use (harness.nat.profiles)."""
    from harness.nat.profiles import profile_names

    return profile_names()


class Link(Strict):
    """The conditions of a node's WAN link (its outermost router's, or its own for a public node): one-way delay
    and jitter in ms (jitter never reorders), and the percent of frames lost, each way. None: the run's default
    delay (20 ms, `$DCUTR_LAB_WAN_DELAY_MS`)."""

    delay_ms: float | None = Field(default=None, ge=0, le=10_000)
    jitter_ms: float = Field(default=0.0, ge=0, le=10_000)
    loss: float = Field(default=0.0, ge=0, lt=100)


class Node(Strict):
    """One node of a topology: its role, the SUT it runs, the NAT it sits behind and its WAN link."""

    role: Role
    sut: str = "reference"
    nat_profile: str = Field(default="none", description="a preset name of harness.nat.profiles")
    link: Link = Field(default_factory=Link)


class Topology(Strict):
    """Nodes by name. The relay is public; every other node sits behind its own router(s)."""

    nodes: dict[str, Node]


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
    unless: dict[str, str] = Field(
        default_factory=dict, description="fact -> regex: a line whose fact matches is not this pattern at all"
    )
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
    role_hints: list[str] = Field(
        default_factory=list,
        description="ROLE.checkpoint on another node's log whose line explains a miss of this one (the relay "
        "accepted the reservation that the node never saw accepted)",
    )

    def provided_facts(self) -> set[str]:
        return super().provided_facts() | set(self.needs)


class SutRole(Strict):
    command: list[str] = Field(min_length=1)
    env: dict[str, str] = Field(default_factory=dict)


class SutBuild(Strict):
    """How `dcutr-lab images build --sut NAME --source PATH` turns a source tree into the SUT's programs.

    `outputs` are paths relative to the source root; a leading `target/` follows CARGO_TARGET_DIR, which the lab
    points at a cache so a second build of the same source costs seconds. `source` is a default source inside
    this repository, built in place (the reference peers); without it, the user names one.
    """

    command: list[str] = Field(min_length=1)
    outputs: list[str] = Field(min_length=1)
    packages: list[str] = Field(default_factory=list, description="Debian packages the build needs")
    tools: list[str] = Field(default_factory=list, description="programs the build runs (checked on PATH)")
    source: str | None = None

    @property
    def programs(self) -> dict[str, str]:
        """Program name (what a role's command runs) -> output path."""
        return {output.rsplit("/", 1)[-1]: output for output in self.outputs}


class SutApi(Strict):
    """A control API the SUT serves inside its node: one JSON object a line over TCP (kaspad's helper API)."""

    host: str = "127.0.0.1"
    port: int = Field(ge=1, le=65535)


class SutExpect(Strict):
    """The default chains `dcutr-lab verify` uses for logs of this SUT (node names relay/server/client)."""

    direct: Chain
    relayed: Chain = Field(default_factory=list)


class Phase(Strict):
    """A timing in the report: from the earliest hit of `start` to the latest hit of `end` in the direct chain.

    Both are checkpoint names (`dcutr_direct`) or node-qualified ones (`client.dcutr_direct`).
    """

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    start: str
    end: str


class Sut(Strict):
    name: str = Field(pattern=r"^[a-z][a-z0-9-]{0,40}$", description="also its image's name: sut-<name>")
    description: str = ""
    format: Literal["json", "text"]
    roles: dict[Role, SutRole] = Field(default_factory=dict, description="how the harness starts each role")
    facts: dict[str, Pattern] = Field(default_factory=dict, description="node facts learnt from any line")
    checkpoints: dict[str, CheckpointDef]
    expect: SutExpect | None = None
    phases: list[Phase] = Field(default_factory=list, description="the timings a report shows for this SUT")
    build: SutBuild | None = None
    api: SutApi | None = None
    log_names: dict[Role, list[str]] = Field(
        default_factory=dict, description="file stems this SUT's own labs give each role's log (verify finds them)"
    )

    @property
    def programs(self) -> list[str]:
        """The programs the roles run (the first word of each role's command), in role order, once each."""
        return list(dict.fromkeys(role.command[0] for role in self.roles.values()))

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
            for hint in checkpoint.role_hints:
                role, _, other = hint.partition(".")
                if role not in Role.__members__ or other not in self.checkpoints:
                    raise ValueError(f"checkpoint {name!r}: role hint {hint!r} is not ROLE.checkpoint of this SUT")
        if self.build is not None:
            missing = [p for p in self.programs if p not in self.build.programs]
            if missing:
                raise ValueError(f"build.outputs has no program {', '.join(map(repr, missing))} that a role runs")
        for phase in self.phases:
            for ref in (phase.start, phase.end):
                if ref.rpartition(".")[2] not in self.checkpoints:
                    raise ValueError(f"phase {phase.name!r} names unknown checkpoint {ref!r}")
        return self


# ---------------------------------------------------------------------------------------------------------
# Chains and verdicts (an `expect` step, a SUT's default chains)
# ---------------------------------------------------------------------------------------------------------


class Verdict(StrEnum):
    """`unverified`: the logs say direct, but nothing independent of the peers confirms it."""

    direct = "direct"
    relayed = "relayed"
    unverified = "unverified"
    fail = "fail"


class ExpectedVerdict(StrEnum):
    """What a scenario expects. `rate`: a measured direct rate (a NAT-matrix cell's band): one attempt is as
    expected when it ran to a verdict (direct or relayed); the cell is judged on the Wilson interval of all."""

    direct = "direct"
    relayed = "relayed"
    fail = "fail"
    rate = "rate"


class RateBand(Strict):
    """A direct-rate band. It fails only when the 95% Wilson interval of the attempts lies wholly outside it:
    the data exclude the band, not merely miss its centre."""

    min: float = Field(default=0.0, ge=0.0, le=1.0)
    max: float = Field(default=1.0, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _ordered(self) -> RateBand:
        if self.min > self.max:
            raise ValueError(f"min {self.min} above max {self.max}")
        if self.min == 0.0 and self.max == 1.0:
            raise ValueError("a band of 0..1 can never fail: give min or max")
        return self

    def admits(self, low: float, high: float) -> bool:
        return high >= self.min and low <= self.max

    def __str__(self) -> str:
        parts = [f"≥{self.min:.0%}" if self.min > 0 else "", f"≤{self.max:.0%}" if self.max < 1 else ""]
        return " and ".join(p for p in parts if p)


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
    `conntrack.established` is the ground-truth pseudo checkpoint (harness.ground_truth): `between` names the two
    nodes of the direct path, whose addresses the lab knows; `since` an earlier checkpoint of the chain whose time
    the flow must not precede (the start of the punch).
    """

    checkpoint: str | None = None
    any_of: list[ChainItem] | None = None
    where: dict[str, FactValue] = Field(default_factory=dict)
    between: list[str] = Field(default_factory=list)
    since: str | None = None
    skew: Seconds | None = Field(
        default=None,
        description="clock-skew tolerance for this item against the previous ones (0: strictly after them)",
    )
    count: int = Field(default=1, ge=1, description="the checkpoint must be met on this many distinct lines")
    optional: bool = Field(default=False, description="skipped when the node's SUT does not define it")
    absent: bool = Field(
        default=False,
        description="met when the checkpoint does NOT happen on its node after that node's previous item (a session "
        "that must not end); `hold` says how long the node's log must go on after the previous item to tell",
    )
    hold: Seconds | None = Field(default=None, description="absent only: the log must cover this long, or it misses")

    @model_validator(mode="after")
    def _one_kind(self) -> ChainItem:
        if (self.checkpoint is None) == (self.any_of is None):
            raise ValueError("give exactly one of 'checkpoint' or 'any_of'")
        if self.any_of is not None and any(alt.any_of for alt in self.any_of):
            raise ValueError("'any_of' alternatives cannot nest another 'any_of'")
        ground = self.checkpoint == "conntrack.established"
        if self.absent and (self.any_of is not None or ground or self.count != 1):
            raise ValueError("'absent' takes one checkpoint of a node's log (no any_of, count or conntrack)")
        if self.hold is not None and not self.absent:
            raise ValueError("'hold' belongs to an 'absent' item")
        if (self.between or self.since) and not ground:
            raise ValueError("'between' and 'since' belong to conntrack.established only")
        if ground and (len(self.between) != 2 or not self.since):
            raise ValueError(
                "conntrack.established needs 'between' (the two nodes of the direct path) and 'since' "
                "(the checkpoint that starts the punch: a flow from before it does not count)"
            )
        return self

    def alternatives(self) -> list[ChainItem]:
        return list(self.any_of) if self.any_of is not None else [self]

    @property
    def label(self) -> str:
        if self.absent:
            return f"no {self.checkpoint}"
        return " | ".join(alt.checkpoint or "" for alt in self.alternatives())


Chain = list[Annotated[ChainItem, BeforeValidator(_chain_item_shorthand)]]


class ScenarioExpect(Strict):
    verdict: ExpectedVerdict
    direct_rate: RateBand | None = Field(default=None, description="verdict `rate` only: the band of the cell")
    first_missing: str | None = Field(
        default=None, description="fail only: the checkpoint that must be the first one missed (name or node.name)"
    )

    @model_validator(mode="after")
    def _only_for_fail(self) -> ScenarioExpect:
        if self.first_missing and self.verdict != ExpectedVerdict.fail:
            raise ValueError("'first_missing' only applies to verdict 'fail'")
        if (self.verdict == ExpectedVerdict.rate) != (self.direct_rate is not None):
            raise ValueError("verdict 'rate' goes with a 'direct_rate' band, and only it")
        return self


SutExpect.model_rebuild()
Sut.model_rebuild()
