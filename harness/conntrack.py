"""The routers' conntrack records as data: `conntrack -L` tables and `conntrack -E -o timestamp` event lines.

A line looks like

    tcp      6 431999 ESTABLISHED src=192.168.1.2 dst=198.18.0.4 sport=4012 dport=4013 \
        src=198.18.0.4 dst=198.18.0.3 sport=4013 dport=4012 [ASSURED] mark=0 use=1

the original tuple first, the reply tuple second. On the server's router the original tuple carries the
server's LAN address and the reply tuple the server's public (NAT) address; so a flow "between the two NAT
public endpoints" is an entry whose four endpoints include both of them. Parsing works the same on raw and on
sanitised text (placeholders instead of addresses). What counts as the direct flow is `harness.ground_truth`'s.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

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
    ts: float | None = None  # `conntrack -E -o timestamp`: when the router's kernel reported it
    event: str | None = None  # NEW, UPDATE, DESTROY (event lines only)

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
        ts: float | None = None
        event: str | None = None
        while words and words[0].startswith("[") and words[0].endswith("]"):
            inner = words[0][1:-1]
            try:
                ts = float(inner)
            except ValueError:
                event = inner
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
                ts=ts,
                event=event,
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
