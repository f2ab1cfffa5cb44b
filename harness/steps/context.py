"""The two contexts a step acts through: the loader's checks and the running scenario's actions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

from harness.checkpoints import NodeLog
from harness.models import Chain, CheckpointDef

if TYPE_CHECKING:
    from harness.backends.base import Backend
    from harness.errors import BadInput
    from harness.runbook.model import RunbookNode

Loc = tuple[str | int, ...]


class StepFailed(Exception):
    """A step could not be completed (a wait missed its deadline, a command failed): stop the steps."""


class StepMissed(Exception):
    """A soft wait met its deadline: the miss is recorded and the steps go on (the chain decides the verdict)."""


class CheckContext(Protocol):
    """What a step may ask of the runbook loader (harness.runbook.load.Checker)."""

    nodes: Mapping[str, RunbookNode]
    started: set[str]

    def fail(self, loc: Loc, message: str) -> BadInput: ...

    def node(self, name: str, loc: Loc) -> None:
        """The step's node must be one of the runbook's."""

    def templates(self, values: Sequence[object], loc: Loc) -> None:
        """Every template among `values` names facts an earlier step provides."""

    def start_templates(self, node: str, extra: Sequence[str]) -> list[str]:
        """The templates a start of `node` renders: runbook env, node env and args, plus `extra`."""

    def checkpoint(self, ref: str, loc: Loc, *, optional: bool = False) -> CheckpointDef | None:
        """The definition of `node.checkpoint` in that node's SUT; None for conntrack or an optional miss."""

    def provide(self, ref: str, definition: CheckpointDef) -> None:
        """From here on, the facts of `definition` are known as `node.fact` and `node.checkpoint.fact`."""

    def check_chain(self, chain: Chain, loc: Loc) -> None:
        """An `expect` chain: each item's checkpoint defined and its templates provided by earlier items."""


class RunContext(Protocol):
    """What a step may do on a running scenario (harness.runbook.engine.ScenarioRun)."""

    backend: Backend
    logs: Mapping[str, NodeLog]
    namespace: dict[str, dict[str, object]]
    last_start: dict[str, tuple[list[str], dict[str, str]]]
    waited: dict[str, int]  # node -> the line its latest wait matched
    poll_interval: float

    def now(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...

    def pull(self, nodes: Sequence[str] | None = None) -> None:
        """Read, sanitise and append what the nodes logged since the last pull."""

    def render(self, value: str) -> str:
        """A template rendered over the facts, with real addresses put back for the node."""

    def sanitise(self, text: str, stream: str = "") -> str: ...

    def start(self, node: str, env: Mapping[str, str], args: Sequence[str]) -> str:
        """Start a node with its SUT role's command and the merged env; returns the sanitised command line."""

    def launch(self, node: str, command: list[str], env: dict[str, str]) -> str:
        """Start a node with exactly this command and env."""

    def collect(self) -> None: ...

    def note(self, event: str, target: str) -> None:
        """Record in the lab's own log (logs/lab.log) that the lab did `event` to `target`."""

    def sut_of(self, node: str) -> str:
        """The SUT a node runs."""

    def record(self, file: str, entry: Mapping[str, object]) -> str:
        """Append a sanitised JSON line to a report file; returns its `file:line` reference."""
