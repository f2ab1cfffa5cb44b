"""SUT definitions: how to start each role of one implementation and which log lines are its checkpoints.

They live as data in `harness/suts/<name>.yaml` (a user may add one with `--sut-file`); this module loads and
validates them once and answers "which SUTs exist" and "what does SUT x call checkpoint y".
"""

from __future__ import annotations

import functools
from pathlib import Path

import yaml
from pydantic import ValidationError

from harness.errors import BadInput
from harness.models import CheckpointDef, Role, Sut

SUT_DIR = Path(__file__).resolve().parent / "suts"

# The pseudo node whose "checkpoint" is the routers' conntrack ground truth, not a log line.
CONNTRACK = "conntrack"
CONNTRACK_CHECKPOINTS = ("established",)

# The pseudo node whose log is the lab's own record of what it did to the nodes (logs/lab.log): a chain can
# require a peer's line after the lab stopped the relay, and no SUT can write that line.
LAB = "lab"
LAB_SUT = Sut(
    name="lab",
    description="the lab's own actions on the nodes, one JSON object a line",
    format="json",
    checkpoints={
        "started": CheckpointDef(event="started", facts=["target"]),
        "stopped": CheckpointDef(event="stopped", facts=["target"]),
        "link_down": CheckpointDef(event="link_down", facts=["target"]),
        "link_up": CheckpointDef(event="link_up", facts=["target"]),
    },
)


def load_sut_file(path: Path) -> Sut:
    """Read and validate one SUT file; errors name the file and the field."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise BadInput(f"{path}: cannot read SUT definition: {error}") from None
    try:
        return Sut.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "(top)"
        raise BadInput(f"{path}: {where}: {first['msg']}") from None


@functools.cache
def _builtin() -> dict[str, Sut]:
    suts = {}
    for path in sorted(SUT_DIR.glob("*.yaml")):
        sut = load_sut_file(path)
        suts[sut.name] = sut
    return suts


_extra: dict[str, Sut] = {}


def register_sut(sut: Sut) -> None:
    """Make a user's SUT file known for this process (the CLI's `--sut-file`)."""
    _extra[sut.name] = sut


def sut_names() -> list[str]:
    return sorted({*_builtin(), *_extra})


def get_sut(name: str) -> Sut:
    found = _extra.get(name) or _builtin().get(name)
    if found is None:
        raise BadInput(f"unknown SUT {name!r} (known: {', '.join(sut_names())})")
    return found


def pseudo_node(name: str) -> bool:
    """Names no runbook node may take: they are the lab's own evidence."""
    return name in (CONNTRACK, LAB)


def find_checkpoint(sut: Sut, name: str, role: Role | None = None) -> CheckpointDef | None:
    """The checkpoint `name` of `sut`, or None when it does not define it for that role."""
    checkpoint = sut.checkpoints.get(name)
    if checkpoint is None:
        return None
    if role is not None and checkpoint.roles is not None and role not in checkpoint.roles:
        return None
    return checkpoint


def checkpoint_defined_anywhere(name: str) -> bool:
    return any(name in get_sut(s).checkpoints for s in sut_names())
