"""The reference peers' newer events against the chains a runbook can build from them: the either-side tie of
the handshake to the DCUtR success, the relay-stop proof, the relayed session dying with the relay, and the
lying-peer control (LAB_LIE_DIRECT) fooling every chain that reads only logs.

Fixtures: tests/fixtures/reference-peers/, real logs of the release binaries on loopback
(images/peers/scripts/loopback-logs.sh). Loopback has no conntrack, so the ground-truth item is unverifiable
there and a chain the logs satisfy ends `unverified`, never `direct`: what these tests pin is what the logs alone
say.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from pydantic import TypeAdapter

from harness.chains import evaluate_chain
from harness.checkpoints import Hit, NodeLog, Skip
from harness.models import Chain, Role, Verdict
from harness.sut import get_sut
from harness.verify import discover_logs, verify_logs
from tests.fakes import CLIENT_ID, SERVER_ID

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "reference-peers"

_PREFIX = """
- relay.listening
- server.reservation_accepted: {relay_peer_id: "{{ relay.peer_id }}"}
- client.relayed_connection: {peer_id: "{{ server.peer_id }}"}
- relay.circuit_accepted: {src_peer_id: "{{ client.peer_id }}", dst_peer_id: "{{ server.peer_id }}"}
"""

# On loopback the relay listens on 127.0.0.1 only, which relay.listening rightly refuses as its address (a lab
# relay's is its transit one): the fixtures' chains start at the reservation.
ON_LOOPBACK = _PREFIX.replace("- relay.listening\n", "")

# The handshake on the DCUtR success's connection, whichever side's SYN made it.
EITHER_SIDE = """
# The direct connection the client's session takes: its own DCUtR dial's (its dcutr ok), or the server's
# DCUtR dial that reached the client's listener (the client has no dcutr ok of its own then).
- any_of:
    - checkpoint: client.dcutr_direct
      where: {remote_peer_id: "{{ server.peer_id }}"}
    - checkpoint: client.session_inbound
      where: {peer_id: "{{ server.peer_id }}"}
# The server names the connection the client's session arrived on: its own DCUtR connection, or the
# client's DCUtR dial to its listener.
- any_of:
    - checkpoint: server.session_direct
      where: {peer_id: "{{ client.peer_id }}", source: dcutr}
    - checkpoint: server.session_direct
      where: {peer_id: "{{ client.peer_id }}", source: inbound}
# Both handshakes run on those connections (client.connection_id: the client alternative met above).
- client.handshake_direct:
    peer_id: "{{ server.peer_id }}"
    connection_id: "{{ client.connection_id }}"
- server.handshake_direct:
    peer_id: "{{ client.peer_id }}"
    connection_id: "{{ server.session_direct.connection_id }}"
"""

# The relay is stopped after the handshake (runbook: wait client.kaspa_pong, stop relay): the direct session
# goes on pinging on its connection, on both sides, and ends as planned.
RELAY_STOP = """
- relay.shutdown
- client.relay_connection_closed
- checkpoint: client.kaspa_pong
  where: {connection_id: "{{ client.handshake_direct.connection_id }}", relayed: false}
  count: 6
- checkpoint: server.kaspa_pong
  where: {connection_id: "{{ server.handshake_direct.connection_id }}", relayed: false}
  count: 6
- client.shutdown: {reason: session complete, exit_code: 0}
"""

CONNTRACK = """
- checkpoint: conntrack.established
  between: [client, server]
  since: relay.circuit_accepted
"""

# A session still on the relay dies with it, visibly.
RELAYED_DIES = """
- client.handshake_relayed: {peer_id: "{{ server.peer_id }}"}
- relay.shutdown
- client.session_lost:
    connection_id: "{{ client.handshake_relayed.connection_id }}"
    relayed: true
- client.shutdown: {exit_code: 3}
"""

_CHAIN = TypeAdapter(Chain)


def chain(*parts: str):
    return _CHAIN.validate_python(yaml.safe_load("".join(parts)))


def verify(scenario: str, direct, relayed=None):
    files = discover_logs(FIXTURES / scenario, sut=get_sut("reference"))
    return verify_logs(files, "reference", direct=direct, relayed=relayed).outcome


def test_the_sut_default_chain_is_the_either_side_one():
    expect = get_sut("reference").expect
    assert expect is not None
    assert expect.direct == chain(_PREFIX, EITHER_SIDE, CONNTRACK)


def test_direct_run_ties_both_handshakes_to_their_session_connections():
    outcome = verify("direct", chain(ON_LOOPBACK, EITHER_SIDE, CONNTRACK))
    assert outcome.verdict == Verdict.unverified  # every log item holds; nothing independent was collected
    hits = {h.name: h for h in outcome.direct.hits}
    # On loopback the client's own dial wins: its dcutr ok, and the server sees the session arrive inbound.
    assert hits["client.handshake_direct"].facts["connection_id"] == hits["client.dcutr_direct"].facts["connection_id"]
    assert hits["server.session_direct"].facts["source"] == "inbound"
    assert isinstance(outcome.direct.items[-1], Skip)  # no conntrack on loopback


def test_the_relay_stop_proof_holds_for_a_direct_session_only():
    direct = chain(ON_LOOPBACK, EITHER_SIDE, RELAY_STOP, CONNTRACK)
    relayed = chain(ON_LOOPBACK, RELAYED_DIES)
    survived = verify("relay-stop", direct, relayed)
    assert survived.verdict == Verdict.unverified and survived.first_missing is None

    died = verify("relay-stop-relayed", direct, relayed)
    assert died.verdict == Verdict.relayed
    assert died.first_missing is not None and "client.dcutr_direct" in died.first_missing.name
    lost = next(h for h in died.relayed.hits if h.name == "client.session_lost")
    assert lost.facts["stage"] == "session"

    # A run whose relay was only stopped after the client had finished (the fixture script stops it then)
    # does not prove the session outlived the relay.
    unproven = verify("direct", direct, relayed)
    assert unproven.verdict == Verdict.fail
    assert unproven.first_missing.name == "client.relay_connection_closed"


def test_the_liar_fools_a_log_only_chain_but_not_the_relay_stop():
    lied = verify("liar", chain(ON_LOOPBACK, EITHER_SIDE, CONNTRACK))
    # Every log item holds; only the ground truth (none on loopback) can say otherwise: unverified, not direct.
    assert lied.verdict == Verdict.unverified
    assert all(isinstance(item, Hit) for item in lied.direct.items[:-1])
    assert isinstance(lied.direct.items[-1], Skip)
    hits = {h.name: h for h in lied.direct.hits}
    relayed_id = hits["client.relayed_connection"].facts["connection_id"]
    # The tell: DCUtR "succeeded" on the relayed connection itself.
    assert hits["client.dcutr_direct"].facts["connection_id"] == relayed_id
    claimed = hits["client.handshake_direct"].facts["remote_addr"]  # LAB_LIE_DIRECT's made-up address, sanitised
    assert claimed.endswith("/tcp/4012") and "p2p-circuit" not in claimed

    # Its "direct" session dies with the relay: the relay-stop proof fails at the pongs after the relay left.
    died = verify("relay-stop-liar", chain(ON_LOOPBACK, EITHER_SIDE, RELAY_STOP, CONNTRACK))
    assert died.verdict == Verdict.fail
    assert died.first_missing is not None and died.first_missing.name == "client.kaspa_pong"


# -- the inbound path, which loopback does not produce: the server's DCUtR dial reached the client -----------


def _log(node: str, role: Role, events: list[dict]) -> NodeLog:
    log = NodeLog(node, f"logs/{node}.log", get_sut("reference"), role)
    log.append([json.dumps({"ts": f"2026-01-01T00:00:{i:02d}Z", "node": node, **e}) for i, e in enumerate(events)])
    return log


def _inbound_logs(client_handshake_conn: int) -> dict[str, NodeLog]:
    direct = {"relayed": False, "remote_addr": "/ip4/198.51.100.2/tcp/4012"}
    to_server = {"peer_id": SERVER_ID, "connection_id": 3, **direct}
    return {
        "server": _log(
            "server",
            Role.server,
            [
                {"event": "peer_id", "peer_id": SERVER_ID},
                {"event": "dcutr", "remote_peer_id": CLIENT_ID, "result": "ok", "connection_id": 5},
                {"event": "session_connection", "peer_id": CLIENT_ID, "connection_id": 5, "source": "dcutr", **direct},
                {"event": "handshake_complete", "peer_id": CLIENT_ID, "connection_id": 5, **direct},
            ],
        ),
        "client": _log(
            "client",
            Role.client,
            [
                {"event": "peer_id", "peer_id": CLIENT_ID},
                {"event": "connection_established", "endpoint": "listener", **to_server},
                {"event": "direct_connection", "source": "inbound", **to_server},
                {"event": "session_connection", "source": "inbound", **to_server},
                {"event": "handshake_complete", "peer_id": SERVER_ID, "connection_id": client_handshake_conn, **direct},
            ],
        ),
    }


@pytest.mark.parametrize(("handshake_conn", "complete"), [(3, True), (9, False)])
def test_the_inbound_path_ties_the_clients_handshake_to_the_connection_it_took(handshake_conn, complete):
    result = evaluate_chain(chain(EITHER_SIDE), _inbound_logs(handshake_conn))
    assert result.complete is complete
    if not complete:
        assert result.first_missing.name == "client.handshake_direct"
        assert "connection_id='9' (want '3')" in result.first_missing.evidence[0].note
