"""A Backend that replays canned log lines on a fake clock: the runbook engine's tests need no Docker.

Each node gets a script of `(seconds after its start, line)`; a line appears in `log_lines()` once the fake
clock has passed that time. `{ts}` in a line becomes the fake wall time (RFC 3339), so JSON logs carry times
like the real peers' do. Sleeping advances the clock: a 30 s wait costs nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from harness.backends.base import ExecResult, NodeAddresses, SanitiseHints
from harness.models import Topology
from harness.runbook import Clock

EPOCH = 1_767_225_600.0  # 2026-01-01T00:00:00Z

RELAY_ID = "12D3KooWR2KSRQWyanR1dPvnZkXt296xgf3FFn8135szya3zYYwY"
SERVER_ID = "12D3KooWPC7iF5f59UFdRFEUfNprqjshtWcevpHm3N9VxD8ArxYW"
CLIENT_ID = "12D3KooWDEHzowF9uYm5K3yXL34kKA4yRdxVHNf75jxPxdKCNqN2"

ADDRESSES = {
    "relay": NodeAddresses(node="relay", lan_ip=None, public_ip="198.18.0.2"),
    "server": NodeAddresses(
        node="server",
        lan_ip="192.168.1.2",
        public_ip="198.18.0.3",
        router_wan_ips=("198.18.0.3",),
        extra={"server-router.lan_ip": "192.168.1.1"},
    ),
    "client": NodeAddresses(
        node="client",
        lan_ip="10.0.1.2",
        public_ip="198.18.0.4",
        router_wan_ips=("198.18.0.4",),
        extra={"client-router.lan_ip": "10.0.1.1"},
    ),
}


def _event(at: float, flow: str) -> str:
    """A `conntrack -E -o timestamp` line, `at` seconds after EPOCH."""
    return f"[{EPOCH + at:.6f}]\t [UPDATE] tcp      6 432000 ESTABLISHED {flow} [ASSURED]\n"


# The routers' event logs: each private peer's flow to the relay early on, then the direct flow after the circuit
# (the relay's circuit line is at ~4 s), the same public 4-tuple (198.18.0.3:4012 <-> 198.18.0.4:4013) on both.
CONNTRACK = {
    "server-router": (
        _event(
            1.0,
            "src=192.168.1.2 dst=198.18.0.2 sport=4012 dport=4011 src=198.18.0.2 dst=198.18.0.3 sport=4011 dport=4012",
        )
        + _event(
            5.0,
            "src=192.168.1.2 dst=198.18.0.4 sport=4012 dport=4013 src=198.18.0.4 dst=198.18.0.3 sport=4013 dport=4012",
        )
    ),
    "client-router": _event(
        5.0, "src=10.0.1.2 dst=198.18.0.3 sport=4013 dport=4012 src=198.18.0.3 dst=198.18.0.4 sport=4012 dport=4013"
    ),
}


def _json(event: str, node: str, **facts: object) -> str:
    import json

    return json.dumps({"ts": "{ts}", "node": node, "event": event, **facts})


def relay_script() -> list[tuple[float, str]]:
    return [
        (0.1, "kaspa_p2p_relay starting (human line on stderr)"),
        (0.2, _json("peer_id", "relay", peer_id=RELAY_ID)),
        (0.3, _json("listening", "relay", addr="/ip4/0.0.0.0/tcp/4011")),
        (0.4, _json("listening", "relay", addr="/ip4/198.18.0.2/tcp/4011")),
    ]


def server_script(dcutr: bool = True) -> list[tuple[float, str]]:
    lines = [
        (0.1, _json("peer_id", "server", peer_id=SERVER_ID)),
        (0.2, _json("listening", "server", addr="/ip4/192.168.1.2/tcp/4012")),
        (0.3, _json("observed_addr", "server", addr="/ip4/198.18.0.3/tcp/4012")),
        (
            1.5,
            _json(
                "reservation_accepted",
                "server",
                relay_peer_id=RELAY_ID,
                circuit_addr=f"/ip4/198.18.0.2/tcp/4011/p2p/{RELAY_ID}/p2p-circuit/p2p/{SERVER_ID}",
            ),
        ),
        (
            4.0,
            _json(
                "connection_established",
                "server",
                peer_id=CLIENT_ID,
                remote_addr=f"/ip4/198.18.0.2/tcp/4011/p2p/{RELAY_ID}/p2p-circuit/p2p/{CLIENT_ID}",
                relayed=True,
                connection_id=3,
            ),
        ),
    ]
    if dcutr:
        lines += [
            (
                5.0,
                _json(
                    "connection_established",
                    "server",
                    peer_id=CLIENT_ID,
                    remote_addr="/ip4/198.18.0.4/tcp/4013",
                    relayed=False,
                    connection_id=4,
                ),
            ),
            (5.1, _json("dcutr", "server", remote_peer_id=CLIENT_ID, result="ok", connection_id=4, error=None)),
            (
                5.5,
                _json(
                    "session_connection",
                    "server",
                    peer_id=CLIENT_ID,
                    connection_id=4,
                    source="dcutr",
                    remote_addr="/ip4/198.18.0.4/tcp/4013",
                    relayed=False,
                ),
            ),
            (
                5.6,
                _json(
                    "handshake_complete",
                    "server",
                    peer_id=CLIENT_ID,
                    remote_addr="/ip4/198.18.0.4/tcp/4013",
                    relayed=False,
                    connection_id=4,
                    network="kaspa-devnet",
                    protocol_version=7,
                ),
            ),
        ]
    return lines


def client_script(dcutr: bool = True, fallback: bool = False) -> list[tuple[float, str]]:
    lines = [
        (0.1, _json("peer_id", "client", peer_id=CLIENT_ID)),
        (0.2, _json("listening", "client", addr="/ip4/10.0.1.2/tcp/4013")),
        (
            1.0,
            _json(
                "connection_established",
                "client",
                peer_id=SERVER_ID,
                remote_addr=f"/ip4/198.18.0.2/tcp/4011/p2p/{RELAY_ID}/p2p-circuit/p2p/{SERVER_ID}",
                relayed=True,
                connection_id=2,
            ),
        ),
    ]
    if dcutr:
        lines += [
            (2.0, _json("dcutr", "client", remote_peer_id=SERVER_ID, result="ok", connection_id=5, error=None)),
            (
                2.1,
                _json(
                    "session_connection",
                    "client",
                    peer_id=SERVER_ID,
                    connection_id=5,
                    source="dcutr",
                    remote_addr="/ip4/198.18.0.3/tcp/4012",
                    relayed=False,
                ),
            ),
            (
                2.4,
                _json(
                    "handshake_complete",
                    "client",
                    peer_id=SERVER_ID,
                    remote_addr="/ip4/198.18.0.3/tcp/4012",
                    relayed=False,
                    connection_id=5,
                    network="kaspa-devnet",
                    protocol_version=7,
                ),
            ),
            # one ping every 500 ms on the direct connection, outliving the relay-stop (~2.6 s after start)
            *(
                (
                    2.6 + 0.5 * n,
                    _json("kaspa_pong", "client", peer_id=SERVER_ID, nonce=n, connection_id=5, relayed=False),
                )
                for n in range(6)
            ),
            (5.5, _json("shutdown", "client", reason="session complete")),
        ]
    elif fallback:
        lines += [
            (2.0, _json("relay_fallback", "client", reason="no direct connection after 3 attempts")),
            (
                2.2,
                _json(
                    "handshake_complete",
                    "client",
                    peer_id=SERVER_ID,
                    remote_addr=f"/ip4/198.18.0.2/tcp/4011/p2p/{RELAY_ID}/p2p-circuit/p2p/{SERVER_ID}",
                    relayed=True,
                    connection_id=2,
                    network="kaspa-devnet",
                    protocol_version=7,
                ),
            ),
            # the relay is stopped ~2.4 s after the client started: the relayed session dies with it
            (2.8, _json("session_lost", "client", peer_id=SERVER_ID, connection_id=2, relayed=True, reason="closed")),
            (3.0, _json("shutdown", "client", reason="session lost", exit_code=3)),
        ]
    else:
        lines += [(3.0, _json("shutdown", "client", reason="no direct connection and no fallback allowed"))]
    return lines


def relay_circuit_line(at: float) -> tuple[float, str]:
    return (at, _json("circuit_accepted", "relay", src_peer_id=CLIENT_ID, dst_peer_id=SERVER_ID))


@dataclass
class FakeClock(Clock):
    """Monotonic and wall time that move only when someone sleeps."""

    now: float = 0.0

    def __post_init__(self) -> None:
        self.monotonic = lambda: self.now
        self.wall = lambda: EPOCH + self.now
        self.sleep = self._sleep

    def _sleep(self, seconds: float) -> None:
        self.now += max(seconds, 0.001)


@dataclass
class FakeBackend:
    clock: FakeClock
    scripts: Mapping[str, Sequence[tuple[float, str]]]
    exits: Mapping[str, tuple[float, int]] = field(default_factory=dict)
    conntrack: Mapping[str, str] = field(default_factory=lambda: dict(CONNTRACK))
    addresses_: Mapping[str, NodeAddresses] = field(default_factory=lambda: dict(ADDRESSES))
    run_id: str = "fake0001"
    name: str = "fake"
    starts: dict[str, list[tuple[float, list[str], dict[str, str]]]] = field(default_factory=dict)
    stopped: dict[str, float] = field(default_factory=dict)
    execs: list[tuple[str, list[str]]] = field(default_factory=list)
    api: dict[str, list[str]] = field(default_factory=dict)
    links: list[tuple[str, bool, float]] = field(default_factory=list)  # node -> the answers its API gives, in turn
    provisioned: Topology | None = None
    closed: bool = False
    _past: dict[str, list[str]] = field(default_factory=dict)

    def provision(self, topology: Topology) -> None:
        self.provisioned = topology

    def addresses(self) -> Mapping[str, NodeAddresses]:
        return dict(self.addresses_)

    def sanitise_hints(self) -> SanitiseHints:
        return SanitiseHints()

    def describe(self) -> dict[str, object]:
        return {"backend": "fake"}

    def routers(self) -> Sequence[str]:
        return [name for name in ("server-router", "client-router") if name.split("-")[0] in self.addresses_]

    def start(self, node: str, command: Sequence[str], env: Mapping[str, str]) -> None:
        if node in self.starts:  # a restart keeps the old lines, like the Docker backend
            self._past[node] = self._visible(node)
        self.starts.setdefault(node, []).append((self.clock.now, list(command), dict(env)))
        self.stopped.pop(node, None)

    def stop(self, node: str, timeout: float = 5.0) -> None:
        self.stopped[node] = self.clock.now

    def exit_code(self, node: str) -> int | None:
        if node in self.stopped:
            return 143
        if node not in self.starts or node not in self.exits:
            return None
        after, code = self.exits[node]
        return code if self.clock.now - self.starts[node][-1][0] >= after else None

    def _visible(self, node: str) -> list[str]:
        lines = list(self._past.get(node, []))
        if node not in self.starts:
            return lines
        began = self.starts[node][-1][0]
        end = self.stopped.get(node, self.clock.now)
        for delay, text in self.scripts.get(node, ()):
            if began + delay <= end:
                stamp = datetime.fromtimestamp(EPOCH + began + delay, tz=UTC).isoformat().replace("+00:00", "Z")
                lines.append(text.replace("{ts}", stamp))
        return lines

    def log_lines(self, node: str, start: int = 0) -> list[str]:
        return self._visible(node)[start:]

    def set_link(self, node: str, up: bool) -> None:
        self.links.append((node, up, self.clock.now))

    def exec(self, target: str, command: Sequence[str], timeout: float = 30.0) -> ExecResult:
        self.execs.append((target, list(command)))
        if command[:1] == ["conntrack"]:
            return ExecResult(0, self.conntrack.get(target, ""))
        if command[:2] == ["python3", "-c"]:  # an `ask` step's client: the node's API answers in turn
            answers = self.api.get(target, [])
            return ExecResult(0, answers.pop(0) + "\n") if answers else ExecResult(3, "cannot ask: refused")
        return ExecResult(0, f"ran {' '.join(command)} on {target} (198.18.0.3)")

    def collect(self, dest: Path) -> list[Path]:
        dest.mkdir(parents=True, exist_ok=True)
        written = []
        for node in self.addresses_:
            path = dest / f"{node}.log"
            path.write_text("".join(line + "\n" for line in self._visible(node)))
            written.append(path)
        for router in self.routers():
            path = dest / f"{router}.conntrack"
            path.write_text(self.conntrack.get(router, ""))
            written.append(path)
        (dest / "addresses.json").write_text('{"relay": "198.18.0.2"}')
        return written

    def close(self) -> None:
        self.closed = True


def lab(dcutr: bool = True, fallback: bool = False, circuit: bool = True) -> FakeBackend:
    """A fake lab playing the phase-4 mixed-NAT story: relay, server reservation, client via the circuit."""
    clock = FakeClock()
    relay = relay_script()
    if circuit:
        # The relay's circuit line appears when the client has been running ~1s: schedule it late enough.
        relay.append(relay_circuit_line(4.0))
    return FakeBackend(
        clock=clock,
        scripts={
            "relay": relay,
            "server": server_script(dcutr),
            "client": client_script(dcutr, fallback),
        },
        exits={"client": (6.0 if dcutr else 4.5, 0 if (dcutr or fallback) else 1)},
    )
