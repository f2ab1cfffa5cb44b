"""Ground truth from the routers: parse `conntrack -L` output and find the direct flow between two NATs.

A line looks like

    tcp      6 431999 ESTABLISHED src=192.168.1.2 dst=198.18.0.4 sport=4012 dport=4013 \
        src=198.18.0.4 dst=198.18.0.3 sport=4013 dport=4012 [ASSURED] mark=0 use=1

the original tuple first, the reply tuple second. On the server's router the original tuple carries the
server's LAN address and the reply tuple the server's public (NAT) address; so a flow "between the two NAT
public endpoints" is an entry whose four endpoints include both of them. Parsing works the same on raw and on
sanitised text (placeholders instead of addresses), which is what the engine compares: facts from the logs are
sanitised too.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from harness.checkpoints import Evidence, Hit, Miss, Skip

_FIELD = re.compile(r"(\w+)=(\S+)")
_STATE = re.compile(r"\b(ESTABLISHED|SYN_SENT|SYN_RECV|FIN_WAIT|CLOSE_WAIT|LAST_ACK|TIME_WAIT|CLOSE|LISTEN|NONE)\b")


@dataclass(frozen=True)
class Flow:
    line: int
    text: str
    protocol: str
    state: str | None
    original: tuple[str, str, int | None, int | None]  # src, dst, sport, dport
    reply: tuple[str, str, int | None, int | None] | None
    assured: bool

    def endpoints(self) -> set[tuple[str, int | None]]:
        found = {(self.original[0], self.original[2]), (self.original[1], self.original[3])}
        if self.reply is not None:
            found |= {(self.reply[0], self.reply[2]), (self.reply[1], self.reply[3])}
        return found


def parse_flows(text: str) -> list[Flow]:
    """Entries of `conntrack -L` output or `conntrack -E` event lines; summary and comment lines are skipped."""
    flows: list[Flow] = []
    for number, line in enumerate(text.splitlines(), start=1):
        words = line.split()
        # `conntrack -E -o timestamp` lines start with "[1732500000.123456]" and "[NEW]"/"[UPDATE]"/"[DESTROY]".
        while words and words[0].startswith("[") and words[0].endswith("]"):
            words = words[1:]
        if len(words) < 3 or words[0] not in ("tcp", "udp", "icmp", "ipv4", "ipv6"):
            continue
        if words[0] in ("ipv4", "ipv6"):  # `conntrack -L -o extended` prefixes the family
            words = words[2:]
        fields = _FIELD.findall(line)
        src = [v for k, v in fields if k == "src"]
        dst = [v for k, v in fields if k == "dst"]
        sport = [_port(v) for k, v in fields if k == "sport"]
        dport = [_port(v) for k, v in fields if k == "dport"]
        if not src or not dst:
            continue
        state = _STATE.search(line)
        original = (src[0], dst[0], sport[0] if sport else None, dport[0] if dport else None)
        reply = None
        if len(src) > 1 and len(dst) > 1:
            reply = (src[1], dst[1], sport[1] if len(sport) > 1 else None, dport[1] if len(dport) > 1 else None)
        flows.append(
            Flow(
                line=number,
                text=line,
                protocol=words[0],
                state=state.group(1) if state else None,
                original=original,
                reply=reply,
                assured="[ASSURED]" in line,
            )
        )
    return flows


def _port(value: str) -> int | None:
    try:
        return int(value)
    except ValueError:
        return None


_MULTIADDR = re.compile(r"^/(?:ip4|ip6|dns4|dns6|dns)/(?P<host>[^/]+)(?:/tcp/(?P<port>\d+))?")
_BRACKETED = re.compile(r"^\[(?P<host>[^\]]+)\](?::(?P<port>\d+))?$")
_HOST_PORT = re.compile(r"^(?P<host>[^:\s]+):(?P<port>\d+)$")


def parse_endpoint(text: str) -> tuple[str, int | None]:
    """`/ip4/<X>/tcp/4012/p2p/...`, `<X>:4012`, `[v6]:4012` or a bare address -> (host, port or None)."""
    value = text.strip()
    for pattern in (_MULTIADDR, _BRACKETED, _HOST_PORT):
        found = pattern.match(value)
        if found:
            port = found.group("port")
            return found.group("host"), int(port) if port else None
    return value, None


def _holds(flow: Flow, endpoint: tuple[str, int | None]) -> bool:
    host, port = endpoint
    return any(h == host and (port is None or p == port) for h, p in flow.endpoints())


def established_between(flows: Sequence[Flow], a: tuple[str, int | None], b: tuple[str, int | None]) -> Flow | None:
    for flow in flows:
        if flow.protocol == "tcp" and flow.state == "ESTABLISHED" and _holds(flow, a) and _holds(flow, b):
            return flow
    return None


@dataclass
class ConntrackGroundTruth:
    """The `conntrack.established` pseudo checkpoint: every required router holds the direct flow.

    `tables` maps router name -> (report-relative file, sanitised text). `required` lists the routers that
    must show the flow (the outermost router of each private peer); empty means no NAT in the topology.
    """

    tables: Mapping[str, tuple[str, str]]
    required: Sequence[str]

    def __call__(self, endpoints: Sequence[str]) -> Hit | Miss | Skip:
        name = "conntrack.established"
        if not self.required:
            return Skip(name, "no NAT router in this topology")
        if len(endpoints) != 2:
            return Miss(name, f"needs two endpoints, got {len(endpoints)}")
        a, b = (parse_endpoint(e) for e in endpoints)
        evidence: list[Evidence] = []
        facts: dict[str, str | int | None] = {"a": endpoints[0], "b": endpoints[1]}
        for router in self.required:
            if router not in self.tables:
                return Miss(name, f"no conntrack table was collected from {router}", evidence)
            file, text = self.tables[router]
            flows = parse_flows(text)
            flow = established_between(flows, a, b)
            if flow is None:
                seen = [f for f in flows if _holds(f, a) and _holds(f, b)]
                detail = f" (found it in state {seen[0].state})" if seen else ""
                near = [Evidence(file, f.line, f.text, note="same endpoints, not ESTABLISHED") for f in seen[:2]]
                return Miss(
                    name,
                    f"{router} holds no ESTABLISHED TCP flow between {_show(a)} and {_show(b)}{detail}",
                    evidence + near,
                )
            evidence.append(Evidence(file, flow.line, flow.text, note=router))
            facts[f"{router}.state"] = flow.state
        return Hit(name, "conntrack", "established", facts, evidence, line=0, time=None)


def _show(endpoint: tuple[str, int | None]) -> str:
    host, port = endpoint
    return f"{host}:{port}" if port is not None else host


def outermost_routers(router_names: Sequence[str], private_nodes: Sequence[str]) -> list[str]:
    """For each private node, the last of its routers (`server-router`, then `server-carrier`): the one on
    transit, whose table shows the public endpoints. Router names are `<node>-<suffix>`, innermost first."""
    chosen: list[str] = []
    for node in private_nodes:
        mine = [r for r in router_names if r.startswith(f"{node}-")]
        if mine:
            chosen.append(mine[-1])
    return chosen
