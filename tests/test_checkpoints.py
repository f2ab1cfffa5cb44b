"""Checkpoint sets against real log excerpts, and the ordered, fact-aware matcher."""

# ruff: noqa: E501  (log lines are quoted whole: cutting them would change what the patterns see)

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.chains import evaluate_chain
from harness.checkpoints import Hit, Miss, NodeLog, find, make_line, match_line, parse_timestamp
from harness.models import ChainItem, Role, Verdict
from harness.sanitise import Sanitiser
from harness.sut import get_sut
from harness.verify import discover_logs, verify_logs
from tests.fakes import CLIENT_ID, RELAY_ID, SERVER_ID

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "logs"


def _matches(sut: str, checkpoint: str, line: str) -> dict | None:
    definition = get_sut(sut).checkpoints[checkpoint]
    result = match_line(definition, make_line(1, line, get_sut(sut).format))
    return None if result is None or result.facts is None else result.facts


# -- the PoC's text logs --------------------------------------------------------------------------------

POC_DCUTR_OK = (
    "2025-10-29 19:54:50.282+11:00 [DEBUG] DCUtR behaviour event event=Event { remote_peer_id: "
    f'PeerId("{SERVER_ID}"), result: Ok(ConnectionId(4)) }}'
)
POC_DCUTR_ERR = (
    "2025-10-29 19:54:50.296+11:00 [DEBUG] DCUtR behaviour event event=Event { remote_peer_id: "
    f'PeerId("{CLIENT_ID}"), result: Err(Error {{ inner: AttemptsExceeded(3) }}) }}'
)
POC_RELAYED = (
    f"2025-10-29 04:23:59.976+00:00 [INFO ] P2P, Client connected via libp2p: peer={SERVER_ID} "
    f"addr=/ip4/<RELAY_IP>/tcp/4011/p2p/{RELAY_ID}/p2p-circuit/p2p/{SERVER_ID} relay=true"
)


def test_poc_dcutr_ok_and_not_err():
    assert _matches("rusty-kaspa-poc", "dcutr_direct", POC_DCUTR_OK) == {
        "remote_peer_id": SERVER_ID,
        "connection_id": "4",
    }
    assert _matches("rusty-kaspa-poc", "dcutr_direct", POC_DCUTR_ERR) is None
    assert _matches("rusty-kaspa-poc", "dcutr_failed", POC_DCUTR_ERR)["error"] == "Error { inner: AttemptsExceeded(3) }"


def test_poc_relay_true_is_not_a_direct_handshake():
    assert _matches("rusty-kaspa-poc", "handshake_direct", POC_RELAYED) is None
    facts = _matches("rusty-kaspa-poc", "handshake_relayed", POC_RELAYED)
    assert facts["peer_id"] == SERVER_ID and facts["relayed"] is True


def test_poc_circuit_accepted_not_denied():
    denied = f'BehaviourEvent: CircuitReqDenied {{ src_peer_id: PeerId("{CLIENT_ID}"), dst_peer_id: PeerId("{SERVER_ID}"), status: NoReservation }}'
    accepted = f'BehaviourEvent: CircuitReqAccepted {{ src_peer_id: PeerId("{CLIENT_ID}"), dst_peer_id: PeerId("{SERVER_ID}") }}'
    assert _matches("rusty-kaspa-poc", "circuit_accepted", denied) is None
    assert _matches("rusty-kaspa-poc", "circuit_accepted", accepted) == {
        "src_peer_id": CLIENT_ID,
        "dst_peer_id": SERVER_ID,
    }


def _poc(phase: str):
    base = FIXTURES / phase
    return verify_logs(discover_logs(base), "rusty-kaspa-poc")


def test_poc_phase4_was_relayed_the_punch_timed_out():
    outcome = _poc("poc-phase4").outcome
    assert outcome.verdict == Verdict.relayed
    missing = outcome.first_missing
    assert missing.name == "client.direct_connection"  # no connection to the server but the circuit
    notes = [e.note for e in missing.evidence]
    assert "hint: hole_punch_dial_failed" in notes and "hint: hole_punch_attempt" in notes
    met = [h.name for h in outcome.relayed.hits]
    assert met[-1] == "client.handshake_relayed"
    circuit = next(h for h in outcome.direct.hits if h.name == "relay.circuit_accepted")
    assert circuit.facts == {"src_peer_id": CLIENT_ID, "dst_peer_id": SERVER_ID}


def test_poc_phase5_punched_but_kaspa_stayed_on_the_relay():
    outcome = _poc("poc-phase5").outcome
    assert outcome.verdict == Verdict.relayed
    assert outcome.first_missing.name == "client.handshake_direct"
    assert any("handshake_relayed" in e.note for e in outcome.first_missing.evidence)
    dcutr = next(h for h in outcome.direct.hits if h.checkpoint == "dcutr_direct")
    assert dcutr.facts["connection_id"] == "4"


def test_poc_handshake_tied_to_the_punched_connection(tmp_path):
    """Phase 5 doctored to claim `relay=false`: the handshake's address is still the circuit's, not the one the
    punched connection had, so the direct chain breaks there; with the punched address it holds (logs only)."""
    import shutil

    base = tmp_path / "poc"
    shutil.copytree(FIXTURES / "poc-phase5", base)
    client = base / "client.log"
    text = client.read_text()
    client.write_text(text.replace(" relay=true", " relay=false"))
    outcome = verify_logs(discover_logs(base), "rusty-kaspa-poc").outcome
    assert outcome.verdict != Verdict.direct
    assert outcome.first_missing.name == "client.handshake_direct"
    assert "remote_addr" in outcome.first_missing.reason
    circuit = "/ip4/127.0.0.1/tcp/4011/p2p/12D3KooWR2KSRQWyanR1dPvnZkXt296xgf3FFn8135szya3zYYwY/p2p-circuit"
    punched = text.replace(" relay=true", " relay=false").replace(
        f"addr={circuit}/p2p/12D3KooWGmakV4jeKDg5eqt7Cwah8w95cGgDEA2vPM1GcJFxyHXg",
        "addr=/ip4/127.0.0.1/tcp/4100/p2p/12D3KooWGmakV4jeKDg5eqt7Cwah8w95cGgDEA2vPM1GcJFxyHXg",
    )
    assert punched != text.replace(" relay=true", " relay=false")
    client.write_text(punched)
    outcome = verify_logs(discover_logs(base), "rusty-kaspa-poc").outcome
    assert [h.name for h in outcome.direct.hits][4:7] == [
        "client.direct_connection",
        "client.dcutr_direct",
        "client.handshake_direct",
    ]


def test_evidence_points_at_the_sanitised_line():
    verification = _poc("poc-phase4")
    for hit in verification.outcome.direct.hits:
        for evidence in hit.evidence:
            log = verification.logs[evidence.file.split("/")[1].removesuffix(".log")]
            assert log.lines[evidence.line - 1].text == evidence.text


def test_needs_fact_from_a_later_line_is_carried():
    """The PoC relay prints `Listening on` before `Relay peer id:`; the checkpoint still carries the id."""
    hit = _poc("poc-phase5").outcome.direct.hits[0]
    assert hit.name == "relay.listening"
    assert hit.facts["peer_id"] == RELAY_ID
    assert [e.note for e in hit.evidence] == ["", "peer_id"]


# -- kaspad --libp2p-mode=bridge ------------------------------------------------------------------------


def test_kaspad_bridge_lines():
    ok = f'2026-02-22 10:15:45.811+00:00 [INFO ] libp2p dcutr event: Event {{ remote_peer_id: PeerId("{SERVER_ID}"), result: Ok(ConnectionId(26)) }} (swarm has 1 external addrs: [/ip4/<IP_1>/tcp/16112])'
    err = ok.replace("Ok(ConnectionId(26))", "Err(Error { inner: AttemptsExceeded(3) })")
    assert _matches("kaspad-bridge", "dcutr_direct", ok)["connection_id"] == "26"
    assert _matches("kaspad-bridge", "dcutr_direct", err) is None
    assert _matches("kaspad-bridge", "dcutr_failed", err)["error"] == "Error { inner: AttemptsExceeded(3) }"
    reservation = f"[INFO ] libp2p reservation accepted by {RELAY_ID}, renewal=false, pending=true"
    assert _matches("kaspad-bridge", "reservation_accepted", reservation) == {
        "relay_peer_id": RELAY_ID,
        "renewal": "false",
    }
    relayed = (
        f'libp2p_bridge: connecting Kaspa peer from libp2p stream with metadata TransportMetadata {{ libp2p_peer_id: Some("{SERVER_ID}"), '
        f'peer_id: None, reported_ip: None, path: Relay {{ relay_id: Some("{RELAY_ID}") }}, capabilities: Capabilities {{ libp2p: true }} }}'
    )
    direct = relayed.replace(f'Relay {{ relay_id: Some("{RELAY_ID}") }}', "Direct")
    assert _matches("kaspad-bridge", "handshake_direct", relayed) is None
    assert _matches("kaspad-bridge", "handshake_direct", direct)["peer_id"] == SERVER_ID
    assert _matches("kaspad-bridge", "handshake_relayed", relayed)["relay_id"] == f'Some("{RELAY_ID}")'
    # The runbook's own shorthand is not a log line: it must not match.
    assert _matches("kaspad-bridge", "dcutr_direct", "libp2p dcutr event: ... result: Ok(ConnectionId(...))") is None
    assert _matches(
        "kaspad-bridge", "handshake_ready", "[INFO ] P2P Connected to outgoing peer [<IP_1>]:54728 (outbound: 2)"
    )


@pytest.mark.parametrize("with_conntrack", [True, False])
def test_kaspad_bridge_direct_after_a_failed_attempt(with_conntrack):
    base = FIXTURES / "kaspad-bridge"
    conntrack = sorted(base.glob("*.conntrack")) if with_conntrack else []
    public = {"relay": "10.0.3.26", "client": "10.0.3.61", "server": "10.0.3.62"}  # the fork's lab's addresses
    verification = verify_logs(discover_logs(base), "kaspad-bridge", conntrack_files=conntrack, public=public)
    outcome = verification.outcome
    # The logs hold (every log checkpoint met), but these tables are `conntrack -L` output without event times:
    # nothing shows the flow came from this punch, so the verdict is unverified, never direct.
    assert outcome.verdict == Verdict.unverified
    streams = {h.node: h.facts["connection_id"] for h in outcome.direct.hits if h.checkpoint == "dcutr_stream"}
    assert streams == {"client": "26", "server": "31"}  # A's retry, not the AttemptsExceeded(3) before it
    last = outcome.direct.items[-1]
    expected = "has no conntrack event times" if with_conntrack else "no router tables were collected"
    assert expected in last.reason


# -- the matcher ----------------------------------------------------------------------------------------


def _json_log(node: str, role: Role, events: list[dict]) -> NodeLog:
    log = NodeLog(node, f"logs/{node}.log", get_sut("reference"), role)
    log.append([json.dumps(e) for e in events])
    return log


def _ev(ts: int, event: str, **facts) -> dict:
    return {"ts": f"2026-01-01T00:00:{ts:02d}Z", "event": event, **facts}


def test_reference_skips_human_lines_and_matches_json():
    log = NodeLog("client", "logs/client.log", get_sut("reference"), Role.client)
    log.append(["starting up (not JSON)", json.dumps(_ev(1, "dcutr", remote_peer_id=SERVER_ID, result="error"))])
    miss = find(log, "dcutr_direct")
    assert isinstance(miss, Miss)
    assert "result='error' (want 'ok')" in miss.evidence[0].note
    log.append([json.dumps(_ev(2, "dcutr", remote_peer_id=SERVER_ID, result="ok", connection_id=9))])
    hit = find(log, "dcutr_direct")  # streaming: the same log, more lines
    assert isinstance(hit, Hit) and hit.line == 3 and hit.facts["connection_id"] == 9


def test_chain_order_facts_and_first_missing():
    logs = {
        "server": _json_log(
            "server",
            Role.server,
            [
                _ev(0, "peer_id", peer_id=SERVER_ID),
                _ev(9, "handshake_complete", peer_id=CLIENT_ID, relayed=False, connection_id=4),
            ],
        ),
        "client": _json_log(
            "client",
            Role.client,
            [
                _ev(1, "peer_id", peer_id=CLIENT_ID),
                _ev(2, "handshake_complete", peer_id=SERVER_ID, relayed=False, connection_id=3),  # before dcutr
                _ev(3, "dcutr", remote_peer_id=SERVER_ID, result="ok", connection_id=4),
                _ev(4, "handshake_complete", peer_id=SERVER_ID, relayed=False, connection_id=7),  # wrong connection
            ],
        ),
    }
    chain = [
        ChainItem(checkpoint="client.dcutr_direct", where={"remote_peer_id": "{{ server.peer_id }}"}),
        ChainItem(
            checkpoint="client.handshake_direct",
            where={"connection_id": "{{ client.dcutr_direct.connection_id }}"},
        ),
    ]
    result = evaluate_chain(chain, logs)
    assert [type(i).__name__ for i in result.items] == ["Hit", "Miss"]
    miss = result.first_missing
    assert miss.name == "client.handshake_direct"
    assert "after line 3" in miss.reason  # line 2 was before the DCUtR event: order matters
    assert "connection_id='7' (want '4')" in miss.evidence[0].note

    chain[1] = ChainItem(
        checkpoint="server.handshake_direct", where={"connection_id": "{{ client.dcutr_direct.connection_id }}"}
    )
    assert evaluate_chain(chain, logs).complete


def test_cross_node_order_uses_time_with_skew():
    logs = {
        "relay": _json_log(
            "relay", Role.relay, [_ev(50, "circuit_accepted", src_peer_id=CLIENT_ID, dst_peer_id=SERVER_ID)]
        ),
        "client": _json_log(
            "client", Role.client, [_ev(10, "dcutr", remote_peer_id=SERVER_ID, result="ok", connection_id=1)]
        ),
    }
    chain = [ChainItem(checkpoint="relay.circuit_accepted"), ChainItem(checkpoint="client.dcutr_direct")]
    miss = evaluate_chain(chain, logs, clock_skew=2.0).first_missing
    assert miss is not None and "too early" in miss.evidence[0].note
    assert evaluate_chain(chain, logs, clock_skew=60.0).complete


def test_any_of_takes_the_first_alternative_met_and_count():
    logs = {"client": _json_log("client", Role.client, [_ev(i, "kaspa_pong") for i in range(5)])}
    item = ChainItem.model_validate(
        {"any_of": [{"checkpoint": "client.shutdown"}, {"checkpoint": "client.kaspa_pong", "count": 3}]}
    )
    result = evaluate_chain([item], logs)
    assert result.complete and result.hits[0].line == 3
    too_many = ChainItem(checkpoint="client.kaspa_pong", count=6)
    assert "5 of 6 lines" in evaluate_chain([too_many], logs).first_missing.reason


def test_an_absent_item_holds_only_while_nothing_happens_and_the_log_goes_on():
    """`absent`: the session must not end after the handshake, and the log must cover `hold` seconds to say so."""
    events = [
        _ev(1, "handshake_complete", peer_id=SERVER_ID, relayed=False, connection_id=4),
        _ev(2, "kaspa_pong", connection_id=4),
        _ev(9, "kaspa_pong", connection_id=4),
    ]
    handshake = ChainItem(checkpoint="client.handshake_direct", where={"peer_id": SERVER_ID})

    def chain(hold: float):
        lost = {"checkpoint": "client.session_lost", "absent": True, "hold": hold}
        return [handshake, ChainItem.model_validate({**lost, "where": {"connection_id": "4"}})]

    logs = {"client": _json_log("client", Role.client, events)}
    result = evaluate_chain(chain(5), logs)
    assert result.complete and result.hits[-1].name == "no client.session_lost"
    assert result.hits[-1].evidence[0].line == 3  # the log went on to here without it
    short = evaluate_chain(chain(10), logs).first_missing  # 8 s of log after the handshake: not enough for 10
    assert short.name == "no client.session_lost" and "8.0s" in short.reason
    logs["client"].append([json.dumps(_ev(10, "session_lost", connection_id=4, relayed=False))])
    ended = evaluate_chain(chain(5), logs).first_missing  # the negative control: it happened
    assert ended.name == "no client.session_lost" and "it happened: logs/client.log:4" in ended.reason
    other = [handshake, ChainItem(checkpoint="client.session_lost", absent=True, where={"connection_id": "5"})]
    assert evaluate_chain(other, logs).complete  # another connection's loss is not this session's


def test_absent_takes_one_plain_checkpoint():
    for bad in (
        {"any_of": [{"checkpoint": "client.session_lost"}], "absent": True},
        {"checkpoint": "client.session_lost", "absent": True, "count": 2},
        {"checkpoint": "client.session_lost", "hold": 3},
    ):
        with pytest.raises(ValueError):
            ChainItem.model_validate(bad)


def test_optional_checkpoint_the_sut_lacks_is_skipped():
    logs = {"relay": _json_log("relay", Role.relay, [])}
    result = evaluate_chain([ChainItem(checkpoint="relay.reservation_closed", optional=True)], logs)
    assert result.complete and result.items[0].reason == "SUT 'reference' does not define it"


def test_connection_peer_id_does_not_overwrite_the_nodes_own():
    logs = {
        "client": _json_log(
            "client",
            Role.client,
            [_ev(0, "peer_id", peer_id=CLIENT_ID), _ev(1, "connection_established", peer_id=SERVER_ID, relayed=True)],
        )
    }
    result = evaluate_chain([ChainItem(checkpoint="client.relayed_connection")], logs)
    assert result.namespace["client"]["peer_id"] == CLIENT_ID
    assert result.namespace["client"]["relayed_connection"]["peer_id"] == SERVER_ID


def test_matching_runs_on_sanitised_text():
    sanitiser = Sanitiser()
    raw = f'{{"ts": "2026-01-01T00:00:01Z", "event": "handshake_complete", "peer_id": "{SERVER_ID}", "remote_addr": "/ip4/203.0.113.9/tcp/4012", "relayed": false}}'
    log = NodeLog("client", "logs/client.log", get_sut("reference"), Role.client)
    log.append([sanitiser.line(raw)])
    hit = find(log, "handshake_direct", expected={"remote_addr": "/ip4/<IP_1>/tcp/4012"})
    assert isinstance(hit, Hit)


@pytest.mark.parametrize(
    ("text", "epoch"),
    [
        ("2026-01-01T00:00:01Z", 1767225601.0),
        ("2026-01-01 11:00:01.500+11:00", 1767225601.5),
        ("2026-01-01T00:00:01.123456789Z", 1767225601.123456),
        ("not a time", None),
    ],
)
def test_parse_timestamp(text, epoch):
    parsed = parse_timestamp(text)
    assert parsed == pytest.approx(epoch) if epoch else parsed is None


def test_facts_of_one_process_session_do_not_bind_lines_of_the_next():
    """A restarted client numbers its connections afresh: the second session's pongs on "its" connection 5
    must not count for the first session's handshake on connection 5."""
    import json

    from harness.chains import evaluate_chain
    from harness.models import ChainItem
    from harness.sut import get_sut

    def line(event: str, **facts) -> str:
        return json.dumps({"ts": "2026-01-01T00:00:00Z", "node": "client", "event": event, **facts})

    log = NodeLog("client", "logs/client.log", get_sut("reference"), Role.client)
    for session in range(2):
        log.mark_restart()
        log.append([line("handshake_complete", peer_id="P", relayed=False, connection_id=5, remote_addr="a")])
        log.append([line("kaspa_pong", connection_id=5, relayed=False)] * (1 if session == 0 else 3))
    chain = [
        ChainItem(checkpoint="client.handshake_direct", where={"peer_id": "P"}),
        ChainItem(
            checkpoint="client.kaspa_pong",
            where={"connection_id": "{{ client.handshake_direct.connection_id }}", "relayed": False},
            count=2,
        ),
    ]
    result = evaluate_chain(chain, {"client": log})
    assert result.first_missing is not None and "1 of 2 lines" in result.first_missing.reason
    chain[1] = chain[1].model_copy(update={"count": 1})
    assert evaluate_chain(chain, {"client": log}).complete
