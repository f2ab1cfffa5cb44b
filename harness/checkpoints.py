"""Ordered, fact-aware matching of checkpoints over sanitised node logs, with evidence.

A node's log is a list of `LogLine`s (sanitised text, its 1-based number in `logs/<node>.log`, the time it
carries or the time the engine saw it). A checkpoint of the node's SUT is a `Pattern`: JSON `event` or text
`regex`, filtered by `where`. On top of it:

- node facts: the SUT's `facts` patterns (a peer id) are learnt from any line of the node; a checkpoint that
  `needs` them is met once they are known, and carries them;
- `find()`: the first line after a given one that meets a checkpoint with expected fact values, or a `Miss`
  that explains itself. Ordered chains over several logs are `harness.chains`.

Matching works the same while logs are still being written (`find()` on what arrived so far, used by `wait`)
and after the fact (`dcutr-lab verify`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from harness.models import CheckpointDef, FactValue, Pattern, Role, Sut
from harness.sut import compile_pattern, find_checkpoint

_TIMESTAMP = re.compile(r"^\s*\[?(?P<ts>\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:[.,]\d+)?(?:Z|[+-]\d{2}:?\d{2})?)")
_COMPILED: dict[str, Any] = {}
ADDRESS_FACTS = ("public_ip", "lan_ip")  # given by the backend, never overwritten by a log line


def _regex(pattern: str) -> re.Pattern[str]:
    """Compiled for linear-time matching (RE2, `harness.sut.compile_pattern`): no line can hang a run."""
    compiled = _COMPILED.get(pattern)
    if compiled is None:
        compiled = _COMPILED[pattern] = compile_pattern(pattern)
    return compiled


def parse_timestamp(text: str | None) -> float | None:
    """Epoch seconds of an RFC 3339 / kaspad-style timestamp; None when absent or unreadable.

    A timestamp without a zone is read as UTC: logs of one run come from one clock, and guessing the
    local zone of a remote machine would be worse.
    """
    if not text:
        return None
    value = text.strip().replace(",", ".").replace(" ", "T", 1)
    if value.endswith("Z"):
        value = value[:-1] + "+00:00"
    # fromisoformat takes up to 6 fraction digits; the reference peers print nanoseconds.
    value = re.sub(r"(\.\d{6})\d+", r"\1", value)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def norm(value: Any) -> str:
    """Facts compare as text: JSON `false` equals a regex's "false", 3 equals "3"."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


@dataclass(frozen=True)
class LogLine:
    number: int
    text: str
    ts: float | None = None
    seen: float | None = None
    data: Mapping[str, Any] | None = None

    @property
    def time(self) -> float | None:
        return self.ts if self.ts is not None else self.seen


def make_line(number: int, text: str, fmt: Literal["json", "text"], seen: float | None = None) -> LogLine:
    """Parse one sanitised line: JSON SUTs keep the object (non-JSON lines keep data=None and never match)."""
    data = None
    ts = None
    if fmt == "json":
        stripped = text.strip()
        if stripped.startswith("{"):
            try:
                loaded = json.loads(stripped)
            except ValueError:
                loaded = None
            if isinstance(loaded, dict):
                data = loaded
                ts = parse_timestamp(str(loaded.get("ts", "")))
    if ts is None:
        found = _TIMESTAMP.match(text)
        ts = parse_timestamp(found.group("ts")) if found else None
    return LogLine(number=number, text=text, ts=ts, seen=seen, data=data)


@dataclass
class NodeLog:
    """The sanitised log of one node as far as it has been read, and where its current session starts."""

    node: str
    file: str
    sut: Sut
    role: Role | None = None
    lines: list[LogLine] = field(default_factory=list)
    session_start: int = 0  # number of the last line before the node's latest (re)start
    starts: list[int] = field(default_factory=list)  # the last line before each (re)start, in order

    def append(self, texts: Iterable[str], seen: float | None = None) -> None:
        for text in texts:
            self.lines.append(make_line(len(self.lines) + 1, text, self.sut.format, seen))

    def mark_restart(self) -> None:
        self.session_start = len(self.lines)
        self.starts.append(self.session_start)

    def session_bounds(self, line: int) -> tuple[int, int | None]:
        """(last line before, first line after) the process session that wrote `line`: a restarted process
        numbers its connections afresh, so a fact of one session means nothing in another."""
        before = max((start for start in self.starts if start < line), default=0)
        after = min((start + 1 for start in self.starts if start >= line), default=None)
        return before, after


@dataclass(frozen=True)
class Evidence:
    file: str
    line: int
    text: str
    note: str = ""

    @property
    def ref(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass
class Hit:
    """A checkpoint met: its facts and the lines that prove it (the checkpoint's line first)."""

    name: str
    node: str
    checkpoint: str
    facts: dict[str, FactValue]
    evidence: list[Evidence]
    line: int
    time: float | None
    flat: dict[str, FactValue] | None = None
    """The facts that become `node.fact`; None means all. A connection's `peer_id` is the remote peer's, so it
    must not overwrite the node's own `peer_id` (a SUT `facts` name) unless the checkpoint `needs` it."""


@dataclass
class Miss:
    name: str
    reason: str
    evidence: list[Evidence] = field(default_factory=list)

    @property
    def checkpoint(self) -> str:
        return self.name.split(".", 1)[-1]


@dataclass
class Skip:
    """A checkpoint not evaluated. `unverified`: evidence the verdict needs could not be had (no router tables),
    so the chain cannot say `direct`; otherwise the checkpoint just does not apply (an optional one)."""

    name: str
    reason: str
    unverified: bool = False


@dataclass
class ChainResult:
    items: list[Hit | Miss | Skip]
    namespace: dict[str, dict[str, Any]]
    not_reached: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not any(isinstance(item, Miss) for item in self.items)

    @property
    def unverified(self) -> list[Skip]:
        """Checkpoints whose independent evidence could not be had: such a chain cannot be `direct`."""
        return [item for item in self.items if isinstance(item, Skip) and item.unverified]

    @property
    def first_missing(self) -> Miss | None:
        return next((item for item in self.items if isinstance(item, Miss)), None)

    @property
    def hits(self) -> list[Hit]:
        return [item for item in self.items if isinstance(item, Hit)]


# ---------------------------------------------------------------------------------------------------------
# one pattern, one line
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _LineMatch:
    facts: dict[str, FactValue] | None  # None: the pattern's base matched but a condition failed
    failed: str = ""


def match_line(pattern: Pattern, line: LogLine) -> _LineMatch | None:
    """None when the line is not this pattern at all; facts when it is; `failed` when a `where` differs."""
    facts: dict[str, FactValue]
    if pattern.event is not None:
        if line.data is None or line.data.get("event") != pattern.event:
            return None
        facts = {k: v for k, v in line.data.items() if k not in ("ts", "node", "event")}
    else:
        assert pattern.regex is not None
        found = _regex(pattern.regex).search(line.text)
        if not found:
            return None
        facts = {k: v for k, v in found.groupdict().items() if v is not None}
    for key, unwanted in pattern.unless.items():
        if key in facts and _regex(unwanted).search(norm(facts[key])):
            return None
    facts.update(pattern.set)
    for key, want in pattern.where.items():
        if norm(facts.get(key)) != norm(want):
            return _LineMatch(None, f"{key}={norm(facts.get(key))!r} (want {norm(want)!r})")
    return _LineMatch(facts)


def node_facts(log: NodeLog, near_line: int | None = None, since: int = 0) -> dict[str, tuple[FactValue, LogLine]]:
    """Facts of the SUT's `facts` patterns: for each, the value on the nearest line at or before `near_line`,
    else the first one after it (a relay may print its listen address before its peer id)."""
    found: dict[str, tuple[FactValue, LogLine]] = {}
    for name, pattern in log.sut.facts.items():
        before: tuple[FactValue, LogLine] | None = None
        after: tuple[FactValue, LogLine] | None = None
        for line in log.lines[since:]:
            result = match_line(pattern, line)
            if result is None or result.facts is None:
                continue
            value = result.facts.get(name, next(iter(result.facts.values()), None))
            if near_line is None or line.number <= near_line:
                before = (value, line)
                if near_line is None:
                    break
            else:
                after = (value, line)
                break
        chosen = before or after
        if chosen is not None:
            found[name] = chosen
    return found


# ---------------------------------------------------------------------------------------------------------
# one checkpoint, one node
# ---------------------------------------------------------------------------------------------------------


def find(
    log: NodeLog,
    checkpoint: str,
    *,
    expected: Mapping[str, str] | None = None,
    after_line: int = 0,
    not_before: float | None = None,
    count: int = 1,
    before_line: int | None = None,
) -> Hit | Miss:
    """The first line of `log` after `after_line` that meets `checkpoint` with the `expected` fact values.

    `not_before` (epoch seconds) rejects lines that carry an earlier time. A miss explains itself: the first
    line that looked like the checkpoint but failed a condition, or the lines of the checkpoint's `hints`.
    """
    name = f"{log.node}.{checkpoint}"
    definition = find_checkpoint(log.sut, checkpoint, log.role)
    if definition is None:
        return Miss(name, f"SUT {log.sut.name!r} defines no checkpoint {checkpoint!r} for role {log.role}")
    expected = dict(expected or {})
    matched: list[tuple[LogLine, dict[str, FactValue], list[Evidence]]] = []
    near: list[Evidence] = []
    for line in log.lines:
        if line.number <= after_line:
            continue
        if before_line is not None and line.number >= before_line:
            break
        result = match_line(definition, line)
        if result is None:
            continue
        if result.facts is None:
            _note(near, log, line, f"looks like {checkpoint} but {result.failed}")
            continue
        facts = dict(result.facts)
        evidence = [Evidence(log.file, line.number, line.text)]
        missing_need = _carry_needs(log, definition, line, facts, evidence)
        if missing_need:
            _note(near, log, line, f"{checkpoint} without fact {missing_need!r} known on this node")
            continue
        wrong = [f"{k}={norm(facts.get(k))!r} (want {v!r})" for k, v in expected.items() if norm(facts.get(k)) != v]
        if wrong:
            _note(near, log, line, f"{checkpoint} with {', '.join(wrong)}")
            continue
        if not_before is not None and line.time is not None and line.time < not_before:
            _note(near, log, line, f"{checkpoint} too early: before the previous checkpoint")
            continue
        matched.append((line, facts, evidence))
        if len(matched) >= count:
            line, facts, evidence = matched[-1]
            times = [t for t in (line.time, *(_line_time(log, e.line) for e in evidence[1:])) if t is not None]
            flat = {k: v for k, v in facts.items() if k not in log.sut.facts or k in definition.needs}
            return Hit(name, log.node, checkpoint, facts, evidence, line.number, max(times) if times else None, flat)
    return Miss(
        name,
        _miss_reason(log, checkpoint, definition, expected, after_line, count, len(matched)),
        near[:3] + _hint_evidence(log, definition, after_line),
    )


def _line_time(log: NodeLog, number: int) -> float | None:
    return log.lines[number - 1].time if 0 < number <= len(log.lines) else None


def _carry_needs(
    log: NodeLog, definition: CheckpointDef, line: LogLine, facts: dict[str, FactValue], evidence: list[Evidence]
) -> str | None:
    if not definition.needs:
        return None
    known = node_facts(log, near_line=line.number, since=log.session_start)
    for need in definition.needs:
        if need not in known:
            return need
        value, source = known[need]
        facts.setdefault(need, value)
        if source.number != line.number:
            evidence.append(Evidence(log.file, source.number, source.text, note=need))
    return None


def _note(near: list[Evidence], log: NodeLog, line: LogLine, note: str) -> None:
    if len(near) < 3:
        near.append(Evidence(log.file, line.number, line.text, note=note))


def _miss_reason(
    log: NodeLog,
    checkpoint: str,
    definition: CheckpointDef,
    expected: Mapping[str, str],
    after_line: int,
    count: int,
    got: int,
) -> str:
    if definition.event:
        what = f"event {definition.event!r}"
    else:
        regex = definition.regex or ""
        what = f"{checkpoint} /{regex[:60]}{'…' if len(regex) > 60 else ''}/"
    if definition.where:
        what += " with " + ", ".join(f"{k}={norm(v)}" for k, v in definition.where.items())
    if expected:
        what += "; facts " + ", ".join(f"{k}={v}" for k, v in expected.items())
    scope = f"after line {after_line}" if after_line else "anywhere"
    if count > 1:
        return f"{got} of {count} lines of {log.file} ({scope}) match {what}"
    if not log.lines:
        return f"{log.file} is empty"
    return f"no line of {log.file} ({scope}) matches {what}"


def _hint_evidence(log: NodeLog, definition: CheckpointDef, after_line: int) -> list[Evidence]:
    evidence: list[Evidence] = []
    for hint in definition.hints:
        hint_def = log.sut.checkpoints[hint]
        for line in log.lines:
            if line.number <= after_line:
                continue
            result = match_line(hint_def, line)
            if result is not None and result.facts is not None:
                evidence.append(Evidence(log.file, line.number, line.text, note=f"hint: {hint}"))
                break
    return evidence[:3]
