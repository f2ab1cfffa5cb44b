"""Ground truth a SUT cannot forge: the direct flow as the lab's own routers and hosts recorded it.

The `conntrack.established` pseudo checkpoint names two nodes (`between: [client, server]`). Where their
addresses come from is the point: the lab assigned or measured them (Docker: the address it gave each router
on transit; SSH: the inventory's public address; `verify --public NODE=ADDR`), never a peer's log. For each
side:

- behind NAT: every router on the path (cgnat: the home router and the carrier) must have logged, in its
  `conntrack -E` event log, a TCP flow that reached ESTABLISHED and [ASSURED] whose addresses include that
  router's own WAN address and the other side's public address, and none of the relay's addresses; its event
  time is at or after the `since` checkpoint (minus the chain's clock skew), so a flow from before the punch
  does not count. A table without event times (`conntrack -L` alone) cannot show when a flow was made.
- without NAT: the host's own socket table, sampled during the run, must show the established connection to
  the other side's public address.

The two sides must then agree on one public 4-tuple (A's public address:port <-> B's public address:port), so
two unrelated flows cannot add up to a direct path. Anything missing (no tables, no addresses the lab knows)
is a Skip marked unverifiable: the verdict is then `unverified`, never `direct`.

A peer's own claim of where it is connected (`remote_addr` on a direct line) is compared with what the lab gave:
a mismatch is a finding in the report (`claims_against_the_lab`), never evidence either way.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from harness.checkpoints import Evidence, Hit, Miss, Skip
from harness.conntrack import Flow, parse_endpoint, parse_flows

NAME = "conntrack.established"
Endpoint = tuple[str, int | None]
_SOCKET = re.compile(r"^\[(?P<ts>\d+(?:\.\d+)?)\]\s.*?(?P<local>\S+):(?P<lport>\d+)\s+(?P<peer>\S+):(?P<pport>\d+)\s*$")


@dataclass(frozen=True)
class NatHop:
    router: str
    wan: str  # the router's own WAN address, as the report shows it (a placeholder)


@dataclass(frozen=True)
class Side:
    """One end of the claimed direct path, as the lab knows it."""

    node: str
    public: str  # the address the other side's packets carry (the outermost router's WAN, or the host's own)
    hops: tuple[NatHop, ...] = ()  # innermost first; empty: no NAT, the host's socket table is the evidence


@dataclass(frozen=True)
class Socket:
    line: int
    text: str
    ts: float
    local: Endpoint
    peer: Endpoint


def parse_sockets(text: str) -> list[Socket]:
    """Lines of the socket sampler: `[<epoch>] <ss -tnH state established columns> local:port peer:port`."""
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        match = _SOCKET.match(line.strip())
        if match:
            local = (match["local"].strip("[]"), int(match["lport"]))
            peer = (match["peer"].strip("[]"), int(match["pport"]))
            found.append(Socket(number, line, float(match["ts"]), local, peer))
    return found


def _hosts(flow: Flow) -> set[str]:
    return {host for host, _port in flow.endpoints()}


def _port_of(flow: Flow, host: str) -> int | None:
    return next((port for h, port in sorted(flow.endpoints(), key=str) if h == host), None)


Candidate = tuple[frozenset[Endpoint], list[Evidence], dict[str, str | int | None]]


@dataclass
class GroundTruth:
    """The `conntrack.established` check, made by the engine (or `verify`) from what the lab knows."""

    sides: Mapping[str, Side]
    tables: Mapping[str, tuple[str, str]]  # router -> (report file, sanitised text)
    sockets: Mapping[str, tuple[str, str]] = field(default_factory=dict)  # node -> (report file, text)
    excluded: frozenset[str] = frozenset()  # the relay's addresses: a flow touching one is not direct
    skew: float = 2.0

    def __call__(self, between: Sequence[str], not_before: float | None) -> Hit | Miss | Skip:
        if len(between) != 2:
            return Miss(NAME, f"names {len(between)} nodes; a direct path has two ends")
        unknown = [node for node in between if node not in self.sides]
        if unknown:
            return _unverifiable(f"the lab knows no addresses of {', '.join(unknown)}")
        a, b = (self.sides[node] for node in between)
        found = []
        for side, other in ((a, b), (b, a)):
            outcome = self._candidates(side, other, not_before)
            if not isinstance(outcome, list):
                return outcome
            found.append(outcome)
        # Each side may hold several flows to the other (two public nodes dial each other): the direct path is
        # a 4-tuple both sides witnessed, not any flow of each.
        for pair, evidence_a, facts_a in found[0]:
            for other_pair, evidence_b, facts_b in found[1]:
                if pair == other_pair:
                    facts: dict[str, str | int | None] = {**facts_a, **facts_b}
                    facts["a"], facts["b"] = sorted(_show(e) for e in pair)
                    return Hit(NAME, "conntrack", "established", facts, evidence_a + evidence_b, line=0, time=None)
        shown = [" <-> ".join(sorted(_show(e) for e in candidates[0][0])) for candidates in found]
        evidence = found[0][0][1] + found[1][0][1]
        return Miss(NAME, f"{a.node}'s side saw {shown[0]}, {b.node}'s side saw {shown[1]}: not one flow", evidence)

    def _candidates(self, side: Side, other: Side, not_before: float | None) -> list[Candidate] | Miss | Skip:
        """Every public 4-tuple this side's witnesses saw towards the other, with its evidence."""
        if not side.hops:
            return self._sockets(side, other, not_before)
        inner: list[Evidence] = []
        facts: dict[str, str | int | None] = {}
        candidates: list[Candidate] = []
        for index, hop in enumerate(side.hops):
            if hop.router not in self.tables:
                return _unverifiable(f"no conntrack table was collected from {hop.router}")
            file, text = self.tables[hop.router]
            flows = [f for f in parse_flows(text) if f.ts is not None]
            if not flows:
                return _unverifiable(f"{hop.router}'s table has no conntrack event times (conntrack -E -o timestamp)")
            between = [f for f in flows if f.protocol == "tcp" and {hop.wan, other.public} <= _hosts(f)]
            good = [
                f
                for f in between
                if f.state == "ESTABLISHED"
                and f.assured
                and not (_hosts(f) & self.excluded)
                and (not_before is None or (f.ts or 0.0) >= not_before - self.skew)
            ]
            if not good:
                return Miss(NAME, self._why_not(hop, other, between, not_before), inner + self._near(file, between))
            facts[f"{hop.router}.state"] = "ESTABLISHED ASSURED"
            if index < len(side.hops) - 1:  # an inner NAT layer: it must have seen the flow too
                inner.append(Evidence(file, good[0].line, good[0].text, note=hop.router))
                continue
            for flow in good:  # the outermost hop's flows carry the public 4-tuples
                pair = frozenset({(hop.wan, _port_of(flow, hop.wan)), (other.public, _port_of(flow, other.public))})
                evidence = [*inner, Evidence(file, flow.line, flow.text, note=hop.router)]
                candidates.append((pair, evidence, dict(facts)))
        return candidates

    def _sockets(self, side: Side, other: Side, not_before: float | None) -> list[Candidate] | Miss | Skip:
        if side.node not in self.sockets:
            return _unverifiable(f"no socket table of {side.node} (a node without NAT) was sampled")
        file, text = self.sockets[side.node]
        seen = [
            s
            for s in parse_sockets(text)
            if s.peer[0] == other.public and (not_before is None or s.ts >= not_before - self.skew)
        ]
        if not seen:
            return Miss(NAME, f"{side.node}'s socket table shows no established connection to {other.public}")
        candidates: dict[frozenset[Endpoint], Candidate] = {}
        for socket in seen:  # the sampler repeats a socket every sample: keep its first line
            pair = frozenset({(side.public, socket.local[1]), socket.peer})
            evidence = [Evidence(file, socket.line, socket.text, note=f"{side.node} sockets")]
            candidates.setdefault(pair, (pair, evidence, {}))
        return list(candidates.values())

    def _why_not(self, hop: NatHop, other: Side, flows: Sequence[Flow], not_before: float | None) -> str:
        base = f"{hop.router} logged no ESTABLISHED, ASSURED TCP flow between {hop.wan} and {other.public}"
        if not flows:
            return base
        late = [f for f in flows if f.state == "ESTABLISHED" and f.assured]
        if late and not_before is not None:
            return f"{base} after the punch began (the only one was from before it)"
        states = sorted({f.state or "?" for f in flows})
        return f"{base} (seen only as {', '.join(states)})"

    @staticmethod
    def _near(file: str, flows: Iterable[Flow]) -> list[Evidence]:
        return [Evidence(file, f.line, f.text, note="same hosts, not a direct flow") for f in list(flows)[:2]]


def _unverifiable(reason: str) -> Skip:
    return Skip(NAME, f"unverifiable: {reason}", unverified=True)


def _show(endpoint: Endpoint) -> str:
    host, port = endpoint
    return f"{host}:{port}" if port is not None else host


def claims_against_the_lab(hits: Iterable[Hit], ground: GroundTruth | None) -> list[str]:
    """Findings: a peer's claimed remote address that is not the address the lab gave the other end.

    A mismatch is reported, never counted as evidence either way: the verdict rests on the ground truth."""
    if ground is None:
        return []
    findings = []
    ends = list(ground.sides.values())
    for hit in hits:
        claimed = hit.facts.get("remote_addr")
        side = ground.sides.get(hit.node)
        direct_claim = str(hit.facts.get("relayed")).lower() == "false"
        if not isinstance(claimed, str) or side is None or not direct_claim:
            continue
        others = [other for other in ends if other.node != side.node]
        host, _port = parse_endpoint(claimed)
        if others and host not in {other.public for other in others}:
            gave = ", ".join(f"{other.node} {other.public}" for other in others)
            findings.append(f"finding: {hit.name} claims remote_addr {claimed}; the lab gave {gave}")
    return findings
