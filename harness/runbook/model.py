"""The runbook file (runbooks/*.yaml) as pydantic models: nodes, steps, scenarios, a NAT matrix.

A runbook is data: the topology (nodes with role, SUT and NAT profile), the ordered steps (harness.steps), and
the scenarios that run those steps on variations of the topology (one per matrix cell, too). Loading and the
checks across files are `harness.runbook.load`'s.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from harness.durations import Seconds
from harness.models import ExpectedVerdict, Link, Node, RateBand, Role, ScenarioExpect, Strict, Topology
from harness.steps import ExpectStep, Step

DEFAULT_POLL = 0.25  # seconds between a wait's looks at the logs, unless the runbook or the caller says


class RunbookNode(Strict):
    """A node as a runbook declares it: the topology fields plus its own env and args."""

    role: Role
    sut: str = "reference"
    nat_profile: str = "none"
    env: dict[str, str] = Field(default_factory=dict)
    args: list[str] = Field(default_factory=list)
    link: Link = Field(default_factory=Link)

    def topology_node(self, nat_profile: str | None = None, link: Link | None = None) -> Node:
        return Node(role=self.role, sut=self.sut, nat_profile=nat_profile or self.nat_profile, link=link or self.link)


class NodeOverride(Strict):
    nat_profile: str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    link: Link | None = None


class Scenario(Strict):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_]*$")
    description: str = ""
    markers: list[str] = Field(default_factory=list)
    nodes: dict[str, NodeOverride] = Field(default_factory=dict)
    expect: ScenarioExpect
    why: str = ""

    @property
    def is_control(self) -> bool:
        """A negative control: it expects anything but a direct path (relayed, fail, a measured rate)."""
        return self.expect.verdict != ExpectedVerdict.direct


class Measured(Strict):
    """What a cell gave when it was last measured: when, over how many attempts, how many direct."""

    date: str = Field(pattern=r"^\d{4}-\d{2}-\d{2}$")
    attempts: int = Field(ge=1)
    direct: int = Field(ge=0)
    wan_delay_ms: float = 20.0


class MatrixCell(Strict):
    """One NAT pair: a verdict every attempt must give (`expect: direct|relayed`), or a band its direct rate must
    stay in (`direct_rate: {min: 0.6}`), judged on the Wilson interval of its attempts. No cell that cannot fail."""

    expect: ExpectedVerdict | None = None
    direct_rate: RateBand | None = None
    measured: Measured | None = None
    why: str

    @model_validator(mode="after")
    def _one_expectation(self) -> MatrixCell:
        if (self.expect is None) == (self.direct_rate is None):
            raise ValueError("give exactly one of 'expect' (direct or relayed) and 'direct_rate'")
        if self.expect is not None and self.expect not in (ExpectedVerdict.direct, ExpectedVerdict.relayed):
            raise ValueError(f"a matrix cell expects direct or relayed, or a direct_rate band (not {self.expect})")
        if self.measured is not None and self.measured.direct > self.measured.attempts:
            raise ValueError("measured.direct above measured.attempts")
        return self

    @property
    def expectation(self) -> ScenarioExpect:
        if self.direct_rate is not None:
            return ScenarioExpect(verdict=ExpectedVerdict.rate, direct_rate=self.direct_rate)
        assert self.expect is not None
        return ScenarioExpect(verdict=self.expect)


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
    poll: Seconds = Field(
        default=DEFAULT_POLL, gt=0, le=5, description="seconds between a wait's looks at the logs and exit codes"
    )

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
                expect=cell.expectation,
                why=cell.why,
            )
            for server_profile, row in matrix.cells.items()
            for client_profile, cell in row.items()
        ]

    @property
    def scenarios_by_id(self) -> dict[str, Scenario]:
        return {s.id: s for s in self.scenarios}

    def topology(self, scenario: Scenario | None = None) -> Topology:
        """The topology a scenario runs on: the runbook's nodes with the scenario's NAT and link overrides."""
        overrides = scenario.nodes if scenario else {}
        empty = NodeOverride()
        return Topology(
            nodes={
                name: node.topology_node(overrides.get(name, empty).nat_profile, overrides.get(name, empty).link)
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
