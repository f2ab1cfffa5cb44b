"""Verdicts a lying or silent SUT cannot fool: doctored copies of real runs must never be `direct`.

The fixtures are real lab runs (`tests/fixtures/reference/pass`: the reference peers, phase 4's mixed NAT;
`tests/fixtures/kaspad-bridge/pass`: the fork's kaspad). The public addresses come from the lab (here given as
the report's placeholders, as `verify --public` takes them), never from the peers' logs.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from harness.checkpoints import Skip
from harness.ground_truth import GroundTruth, NatHop, Side, parse_sockets
from harness.models import Verdict
from harness.verify import discover_logs, verify_logs

FIXTURES = Path(__file__).resolve().parent / "fixtures"
REFERENCE = {"client": "<CLIENT_VPS_IP>", "server": "<HOME_IP>", "relay": "<RELAY_IP>"}
KASPAD = {"client": "<CLIENT_NAT_IP>", "server": "<SERVER_NAT_IP>", "relay": "<RELAY_IP>"}
DIRECT = re.compile(r"ESTABLISHED src=<(?:CLIENT|SERVER)_LAN_IP> dst=<(?:HOME|CLIENT_VPS|CLIENT_NAT|SERVER_NAT)_IP>")


def _copy(tmp_path: Path, name: str) -> Path:
    target = tmp_path / name.replace("/", "-")
    shutil.copytree(FIXTURES / name, target)
    return target


def _verdict(base: Path, sut: str, public: dict[str, str] | None):
    tables = sorted(base.glob("*.conntrack"))
    return verify_logs(discover_logs(base), sut, conntrack_files=tables, public=public).outcome


def _edit(path: Path, change) -> None:
    path.write_text("".join(change(line) for line in path.read_text().splitlines(keepends=True)))


@pytest.mark.parametrize(
    ("fixture", "sut", "public"),
    [("reference/pass", "reference", REFERENCE), ("kaspad-bridge/pass", "kaspad-bridge", KASPAD)],
)
def test_the_real_runs_are_direct(tmp_path, fixture, sut, public) -> None:
    outcome = _verdict(_copy(tmp_path, fixture), sut, public)
    assert outcome.verdict == Verdict.direct, outcome.first_missing


@pytest.mark.parametrize(("fixture", "sut"), [("reference/pass", "reference"), ("kaspad-bridge/pass", "kaspad-bridge")])
def test_without_the_labs_addresses_or_tables_the_logs_are_only_unverified(tmp_path, fixture, sut) -> None:
    base = _copy(tmp_path, fixture)
    assert _verdict(base, sut, None).verdict == Verdict.unverified  # tables, but no address the lab knows
    for table in base.glob("*.conntrack"):
        table.unlink()
    public = REFERENCE if sut == "reference" else KASPAD
    outcome = _verdict(base, sut, public)
    assert outcome.verdict == Verdict.unverified
    assert all(isinstance(i, Skip) and i.unverified for i in outcome.direct.unverified)


def test_tables_without_event_times_are_unverified(tmp_path) -> None:
    base = _copy(tmp_path, "reference/pass")
    for table in base.glob("*.conntrack"):  # what `conntrack -L` alone gives: no time, no proof of when
        _edit(table, lambda line: re.sub(r"^\[\d+\.\d+\]\s+\[\w+\]\s+", "", line))
    assert _verdict(base, "reference", REFERENCE).verdict == Verdict.unverified


def test_a_handshake_claiming_the_relay_and_no_direct_flow_is_not_direct(tmp_path) -> None:
    """The sceptic's case: both handshakes' remote_addr set to the relay's, every direct flow deleted."""
    base = _copy(tmp_path, "reference/pass")
    for log in ("client.log", "server.log"):
        _edit(
            base / log,
            lambda line: (
                re.sub(r'"remote_addr":"[^"]+"', '"remote_addr":"/ip4/<RELAY_IP>/tcp/4011"', line)
                if '"handshake_complete"' in line
                else line
            ),
        )
    for table in base.glob("*.conntrack"):
        _edit(table, lambda line: "" if DIRECT.search(line) else line)
    outcome = _verdict(base, "reference", REFERENCE)
    assert outcome.verdict != Verdict.direct
    assert outcome.first_missing.name == "conntrack.established"
    assert (
        "logged no ESTABLISHED, ASSURED TCP flow between <CLIENT_VPS_IP> and <HOME_IP>" in outcome.first_missing.reason
    )


def test_a_handshake_on_another_connection_is_not_direct(tmp_path) -> None:
    base = _copy(tmp_path, "reference/pass")
    _edit(
        base / "client.log",
        lambda line: line.replace('"connection_id":3', '"connection_id":7') if '"handshake_complete"' in line else line,
    )
    outcome = _verdict(base, "reference", REFERENCE)
    assert outcome.verdict != Verdict.direct and outcome.first_missing.name == "client.handshake_direct"


@pytest.mark.parametrize("node", ["client", "server"])
def test_a_kaspad_session_on_another_connection_than_the_punched_one_is_not_direct(tmp_path, node) -> None:
    """Each side's Kaspa stream must be on the connection its own DCUtR success named: moving the stream to
    another connection id (the doctored log still says `path: Direct`) breaks the chain on that side."""
    base = _copy(tmp_path, "kaspad-bridge/pass")
    real = _verdict(base, "kaspad-bridge", KASPAD)
    stream = next(h for h in real.direct.hits if h.name == f"{node}.dcutr_stream")
    punched = f"req_id=ConnectionId({stream.facts['connection_id']})"
    _edit(base / f"{node}.log", lambda line: line.replace(punched, "req_id=ConnectionId(999)"))
    outcome = _verdict(base, "kaspad-bridge", KASPAD)
    assert outcome.verdict != Verdict.direct
    assert outcome.first_missing.name == f"{node}.dcutr_stream | {node}.inbound_direct_stream"


def test_a_kaspad_path_direct_line_without_a_direct_stream_is_not_direct(tmp_path) -> None:
    """Any `path: Direct` line is not enough: with no stream of the client's on a non-circuit connection to B
    (here every such stream line rewritten as a circuit's), the handshake lines alone do not make it direct."""
    base = _copy(tmp_path, "kaspad-bridge/pass")
    as_circuit = r"address: \1/p2p/R/p2p-circuit/p2p/"
    _edit(base / "client.log", lambda line: re.sub(r"address: (/ip4/<SERVER_NAT_IP>/tcp/\d+)/p2p/", as_circuit, line))
    outcome = _verdict(base, "kaspad-bridge", KASPAD)
    assert outcome.verdict != Verdict.direct
    assert outcome.first_missing.name == "client.dcutr_stream | client.inbound_direct_stream"


@pytest.mark.parametrize(
    ("fixture", "sut", "public"),
    [("reference/pass", "reference", REFERENCE), ("kaspad-bridge/pass", "kaspad-bridge", KASPAD)],
)
def test_dcutr_ok_but_no_direct_flow_is_not_direct(tmp_path, fixture, sut, public) -> None:
    base = _copy(tmp_path, fixture)
    for table in base.glob("*.conntrack"):
        _edit(table, lambda line: "" if DIRECT.search(line) else line)
    outcome = _verdict(base, sut, public)
    assert outcome.verdict != Verdict.direct and outcome.first_missing.name == "conntrack.established"


def test_a_flow_in_only_one_router_is_not_direct(tmp_path) -> None:
    base = _copy(tmp_path, "reference/pass")
    _edit(base / "server-router.conntrack", lambda line: "" if DIRECT.search(line) else line)
    outcome = _verdict(base, "reference", REFERENCE)
    assert outcome.verdict != Verdict.direct and "server-router logged no ESTABLISHED" in outcome.first_missing.reason


def test_a_flow_from_before_the_punch_is_not_direct(tmp_path) -> None:
    """The same flow, its events moved an hour before the circuit that began the punch."""
    base = _copy(tmp_path, "reference/pass")
    for table in base.glob("*.conntrack"):
        _edit(
            table,
            lambda line: (
                re.sub(r"^\[(\d+)\.", lambda m: f"[{int(m.group(1)) - 3600}.", line) if DIRECT.search(line) else line
            ),
        )
    outcome = _verdict(base, "reference", REFERENCE)
    assert outcome.verdict != Verdict.direct and "after the punch began" in outcome.first_missing.reason


def test_two_unrelated_flows_do_not_add_up_to_one_path() -> None:
    """Each router holds a flow between the two NATs, but on different ports: no single 4-tuple."""

    def event(src, dst, sport, dport, rsrc, rdst):
        return (
            f"[2000.0] [UPDATE] tcp 6 432000 ESTABLISHED src={src} dst={dst} sport={sport} dport={dport} "
            f"src={dst} dst={rdst} sport={dport} dport={sport} [ASSURED]\n"
        )

    tables = {
        "a-router": ("conntrack/a-router.conntrack", event("<A_LAN>", "<B>", 4000, 5000, "<B>", "<A>")),
        "b-router": ("conntrack/b-router.conntrack", event("<B_LAN>", "<A>", 5000, 4999, "<A>", "<B>")),
    }
    sides = {"a": Side("a", "<A>", (NatHop("a-router", "<A>"),)), "b": Side("b", "<B>", (NatHop("b-router", "<B>"),))}
    outcome = GroundTruth(sides, tables)(["a", "b"], 1000.0)
    assert "not one flow" in outcome.reason
    tables["b-router"] = ("conntrack/b-router.conntrack", event("<B_LAN>", "<A>", 5000, 4000, "<A>", "<B>"))
    assert GroundTruth(sides, tables)(["a", "b"], 1000.0).facts["a"] == "<A>:4000"


def test_a_side_without_nat_is_checked_on_its_socket_table() -> None:
    sockets = "[2001.5] 0 0 <S>:4012 <C>:4013\n[2001.7] 0 0 <S>:4012 <RELAY>:4011\n"
    assert [s.peer for s in parse_sockets(sockets)] == [("<C>", 4013), ("<RELAY>", 4011)]
    flow = (
        "[2001.0] [UPDATE] tcp 6 432000 ESTABLISHED src=<C_LAN> dst=<S> sport=4013 dport=4012 "
        "src=<S> dst=<C> sport=4012 dport=4013 [ASSURED]\n"
    )
    sides = {"client": Side("client", "<C>", (NatHop("client-router", "<C>"),)), "server": Side("server", "<S>")}
    check = GroundTruth(sides, {"client-router": ("c", flow)}, {"server": ("sockets/server.sockets", sockets)})
    assert check(["client", "server"], 2000.0).facts["b"] == "<S>:4012"
    no_socket = GroundTruth(sides, {"client-router": ("c", flow)}, {"server": ("s", sockets.splitlines()[1])})
    assert "shows no established connection to <C>" in no_socket(["client", "server"], 2000.0).reason
    assert GroundTruth(sides, {"client-router": ("c", flow)})(["client", "server"], 2000.0).unverified


def test_the_common_flow_is_found_among_several():
    """Two public nodes dial each other: each side sees two connections, only one of which both sides saw.
    Taking each side's first would report 'not one flow' for a real direct path."""
    sockets_a = "[2001.0] 0 0 <A>:4012 <B>:50001\n[2001.1] 0 0 <A>:50002 <B>:4013\n"
    sockets_b = "[2001.2] 0 0 <B>:4013 <A>:50002\n"
    sides = {"a": Side("a", "<A>"), "b": Side("b", "<B>")}
    check = GroundTruth(sides, {}, {"a": ("sa", sockets_a), "b": ("sb", sockets_b)})
    hit = check(["a", "b"], 2000.0)
    assert (hit.facts["a"], hit.facts["b"]) == ("<A>:50002", "<B>:4013")
    only_other = GroundTruth(sides, {}, {"a": ("sa", sockets_a.splitlines()[0]), "b": ("sb", sockets_b)})
    assert "not one flow" in only_other(["a", "b"], 2000.0).reason
