"""SUT definitions: how to start each role of one implementation and which log lines are its checkpoints.

They live as data in `harness/suts/<name>.yaml` (a user may add one with `--sut-file`); this module loads and
validates them once and answers "which SUTs exist" and "what does SUT x call checkpoint y".

Text patterns are matched with RE2 (`google-re2`), which runs in time linear in the line: a pattern that
would backtrack catastrophically in Python's `re` (`(a+)+$`) cannot hang a run on a long line. A pattern RE2
cannot run (look-arounds, back-references) is refused when the SUT file loads, naming its file, line and
checkpoint.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from harness.errors import BadInput
from harness.models import CheckpointDef, Role, Sut
from harness.yamlsource import display_path, load_yaml, pydantic_message

try:
    import re2 as _re2  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - google-re2 is a dependency
    _re2 = None

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
        "stopping": CheckpointDef(event="stopping", facts=["target"]),  # the lab begins to stop it
        "stopped": CheckpointDef(event="stopped", facts=["target"]),  # its process is gone
        "link_down": CheckpointDef(event="link_down", facts=["target"]),
        "link_up": CheckpointDef(event="link_up", facts=["target"]),
        "held": CheckpointDef(event="held", facts=["target"]),  # a hold on it ended with its process up
    },
)


def compile_pattern(pattern: str) -> Any:
    """A checkpoint regex, compiled for linear-time matching (RE2); `re` only when RE2 is not installed."""
    if _re2 is None:  # pragma: no cover
        return re.compile(pattern)
    return _re2.compile(pattern)


def load_sut_file(path: Path) -> Sut:
    """Read and validate one SUT file; errors are one line naming the file, the line and the field."""
    source = load_yaml(Path(path), "SUT definition")
    if not isinstance(source.data, dict):
        raise source.error((), "a SUT definition is a mapping (name, roles, checkpoints)")
    try:
        sut = Sut.model_validate(source.data)
    except ValidationError as error:
        first = error.errors()[0]
        raise source.error(tuple(first["loc"]), pydantic_message(first)) from None
    for section, patterns in (("facts", sut.facts), ("checkpoints", sut.checkpoints)):
        for name, pattern in patterns.items():
            if pattern.regex is None or _re2 is None:
                continue
            try:
                compile_pattern(pattern.regex)
            except Exception as error:  # re2.error
                raise source.error(
                    (section, name, "regex"),
                    f"regex needs backtracking ({' '.join(str(error).split())}): look-arounds and back-references "
                    "can take exponential time on a long line; write it without them",
                ) from None
    return sut


@functools.cache
def _builtin() -> dict[str, Sut]:
    suts = {}
    for path in sorted(SUT_DIR.glob("*.yaml")):
        sut = load_sut_file(path)
        suts[sut.name] = sut
    return suts


_extra: dict[str, Sut] = {}


def register_sut(sut: Sut, *, source: Path | None = None, replace: bool = False) -> None:
    """Make a user's SUT file known for this process (the CLI's `--sut-file`). A name of a built-in SUT is
    refused unless `replace` says the user means to shadow it."""
    if sut.name in _builtin() and not replace:
        where = f"{display_path(source)}: " if source is not None else ""
        raise BadInput(
            f"{where}name: SUT {sut.name!r} is built in; rename yours, or pass --replace-sut to use it instead"
        )
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
