"""Ordered chains of checkpoints over several nodes' logs, with facts carried from one to the next.

`evaluate_chain()` walks an ordered list of chain items. Each must be met after the previous one (a later line
on the same node; across nodes not earlier than the previous one, minus a clock-skew tolerance, when both lines
have a time), and its `where` equalities (templates over the facts met so far) must hold. It stops at the first
one missed, with the reason and the nearest lines that explain it. One checkpoint on one log is
`harness.checkpoints.find`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from harness.checkpoints import (
    ADDRESS_FACTS,
    ChainResult,
    Evidence,
    Hit,
    LogLine,
    Miss,
    NodeLog,
    Skip,
    find,
    match_line,
    node_facts,
    norm,
)
from harness.models import ChainItem, CheckpointDef, FactValue
from harness.sut import CONNTRACK, find_checkpoint
from harness.templating import TemplateError, is_template, referenced_paths, render

# The ground-truth pseudo checkpoint (harness.ground_truth.GroundTruth): (two nodes, not before) -> outcome.
ConntrackCheck = Callable[[Sequence[str], float | None], Hit | Miss | Skip]


def _expected(where: Mapping[str, FactValue], namespace: Mapping[str, Any]) -> dict[str, str]:
    return {key: render(value, namespace) if isinstance(value, str) else norm(value) for key, value in where.items()}


def _session_of(
    item: ChainItem, node: str, log: NodeLog, hits: Sequence[Hit], after_line: int
) -> tuple[int, int | None]:
    """Where on `node`'s log the item may match: after `after_line`, and, when its facts name an earlier hit on
    the same node (`{{ client.handshake_direct.connection_id }}`), within that hit's process session."""
    named = set()
    for value in item.where.values():
        if isinstance(value, str) and is_template(value):
            named |= {path[1] for path in referenced_paths(value) if path[0] == node and len(path) > 2}
    anchors = [hit for hit in hits if hit.node == node and hit.checkpoint in named]
    if not anchors:
        return after_line, None
    before, end = log.session_bounds(anchors[-1].line)
    return max(after_line, before), end


def split_ref(ref: str) -> tuple[str, str]:
    node, _, checkpoint = ref.partition(".")
    return node, checkpoint


def bind(namespace: dict[str, dict[str, Any]], hit: Hit) -> None:
    """Facts of a hit become `node.fact` (latest wins) and `node.checkpoint.fact`."""
    facts = namespace.setdefault(hit.node, {})
    facts.update({k: v for k, v in (hit.facts if hit.flat is None else hit.flat).items() if k not in ADDRESS_FACTS})
    facts[hit.checkpoint] = dict(hit.facts)


def ambient_namespace(logs: Mapping[str, NodeLog], base: Mapping[str, Mapping[str, Any]] | None = None) -> dict:
    """The namespace a chain starts from: addresses (`relay.public_ip`...) and every node's `facts`."""
    namespace: dict[str, dict[str, Any]] = {node: dict(values) for node, values in (base or {}).items()}
    for node, log in logs.items():
        for name, (value, _line) in node_facts(log).items():
            namespace.setdefault(node, {}).setdefault(name, value)
    return namespace


def evaluate_chain(
    chain: Sequence[ChainItem],
    logs: Mapping[str, NodeLog],
    *,
    base: Mapping[str, Mapping[str, Any]] | None = None,
    conntrack: ConntrackCheck | None = None,
    clock_skew: float = 2.0,
) -> ChainResult:
    """Walk `chain` in order over `logs`; stop at the first checkpoint missed."""
    namespace = ambient_namespace(logs, base)
    result = ChainResult(items=[], namespace=namespace)
    last_line: dict[str, int] = {}
    last_time: float | None = None
    for index, item in enumerate(chain):
        outcome, also = _evaluate_item(item, logs, namespace, last_line, last_time, clock_skew, conntrack, result.hits)
        result.items.append(outcome)
        if isinstance(outcome, Miss):
            result.not_reached = [later.label for later in chain[index + 1 :]]
            break
        if isinstance(outcome, Hit):
            if outcome.node in logs:
                last_line[outcome.node] = outcome.line
            if outcome.time is not None:
                last_time = outcome.time if last_time is None else max(last_time, outcome.time)
            bind(namespace, outcome)
            for other in also:  # alternatives that happened too are facts a later item may name, nothing more
                namespace.setdefault(other.node, {})[other.checkpoint] = dict(other.facts)
    return result


def _evaluate_item(
    item: ChainItem,
    logs: Mapping[str, NodeLog],
    namespace: dict[str, dict[str, Any]],
    last_line: Mapping[str, int],
    last_time: float | None,
    clock_skew: float,
    conntrack: ConntrackCheck | None,
    hits_so_far: Sequence[Hit] = (),
) -> tuple[Hit | Miss | Skip, list[Hit]]:
    """The item's outcome, and the other alternatives that were met as well (they lost the race)."""
    hits: list[Hit] = []
    misses: list[Miss] = []
    skips: list[Skip] = []
    for alternative in item.alternatives():
        assert alternative.checkpoint is not None
        node, checkpoint = split_ref(alternative.checkpoint)
        if node == CONNTRACK:
            if conntrack is None:
                skips.append(
                    Skip(alternative.checkpoint, "unverifiable: no router tables were collected", unverified=True)
                )
                continue
            since = next((h for h in reversed(hits_so_far) if h.name == alternative.since), None)
            outcome = conntrack(alternative.between, None if since is None else since.time)
        elif node not in logs:
            misses.append(Miss(alternative.checkpoint, f"no log for node {node!r}"))
            continue
        elif alternative.absent:
            outcome = _absent(alternative, logs[node], namespace, last_line.get(node, 0), last_time)
        else:
            log = logs[node]
            if alternative.optional and find_checkpoint(log.sut, checkpoint, log.role) is None:
                skips.append(Skip(alternative.checkpoint, f"SUT {log.sut.name!r} does not define it"))
                continue
            try:
                expected = _expected(alternative.where, namespace)
            except TemplateError as error:
                misses.append(Miss(alternative.checkpoint, f"cannot evaluate its facts: {error}"))
                continue
            tolerance = clock_skew if alternative.skew is None else alternative.skew
            not_before = None if last_time is None else last_time - tolerance
            after_line, before_line = _session_of(alternative, node, log, hits_so_far, last_line.get(node, 0))
            outcome = find(
                log,
                checkpoint,
                expected=expected,
                after_line=after_line,
                not_before=not_before,
                count=alternative.count,
                before_line=before_line,
            )
        if isinstance(outcome, Hit):
            hits.append(outcome)
        elif isinstance(outcome, Miss):
            misses.append(_with_role_hints(outcome, node, checkpoint, logs))
        else:
            skips.append(outcome)
    if hits:
        # Alternatives race: the one that happened first is the one that counts.
        first = min(hits, key=lambda h: (h.time is None, h.time or 0.0, h.line))
        return first, [hit for hit in hits if hit is not first]
    if misses:
        if len(misses) == 1:
            return misses[0], []
        return Miss(
            item.label,
            "none of: " + "; ".join(f"{m.name}: {m.reason}" for m in misses),
            [e for m in misses for e in m.evidence][:4],
        ), []
    if len(skips) == 1:
        return skips[0], []
    return Skip(item.label, "; ".join(s.reason for s in skips), unverified=any(s.unverified for s in skips)), []


def _absent(
    item: ChainItem, log: NodeLog, namespace: Mapping[str, Any], after_line: int, since: float | None
) -> Hit | Miss:
    """An item that must not happen: no line of its checkpoint (with its facts) after `after_line`, and a log
    that goes on for `hold` seconds after `since`, so that a log which merely ended early cannot pass."""
    _node, checkpoint = split_ref(item.checkpoint or "")
    label = item.label
    try:
        expected = _expected(item.where, namespace)
    except TemplateError as error:
        return Miss(label, f"cannot evaluate its facts: {error}")
    found = find(log, checkpoint, expected=expected, after_line=after_line)
    if isinstance(found, Hit):
        return Miss(label, f"it happened: {found.evidence[0].ref}", found.evidence[:1])
    last = next((ln for ln in reversed(log.lines) if ln.number > after_line and ln.time is not None), None)
    if item.hold is not None:
        covered = None if last is None or since is None else last.time - since
        if covered is None or covered < item.hold:
            said = "no timed line" if covered is None else f"{covered:.1f}s"
            return Miss(label, f"{log.file} goes on for {said} after the previous checkpoint, {item.hold:g}s needed")
    evidence = [Evidence(log.file, last.number, last.text, note="the log goes on to here without it")] if last else []
    return Hit(label, log.node, checkpoint, {"absent": True}, evidence, line=after_line, time=None)


def _with_role_hints(miss: Miss, node: str, checkpoint: str, logs: Mapping[str, NodeLog]) -> Miss:
    """A miss explained from another node's log: the checkpoint's `role_hints` lines, first one each."""
    log = logs.get(node)
    definition = find_checkpoint(log.sut, checkpoint, log.role) if log is not None else None
    if log is None or definition is None or not definition.role_hints:
        return miss
    known = node_facts(log).get("peer_id")
    if known is None:  # without its own id the other log's lines cannot be told to be about this node
        return miss
    own_id = str(known[0])
    extra: list[Evidence] = []
    for hint in definition.role_hints:
        role, _, other = hint.partition(".")
        for peer in logs.values():
            hint_def = find_checkpoint(peer.sut, other, peer.role) if peer.role and peer.role.value == role else None
            if peer is log or hint_def is None:
                continue
            line = next((ln for ln in peer.lines if own_id in ln.text and _matches(hint_def, ln)), None)
            if line is not None:
                extra.append(Evidence(peer.file, line.number, line.text, note=f"hint: {peer.node}.{other}"))
    return Miss(miss.name, miss.reason, [*miss.evidence, *extra[:2]]) if extra else miss


def _matches(definition: CheckpointDef, line: LogLine) -> bool:
    result = match_line(definition, line)
    return result is not None and result.facts is not None
