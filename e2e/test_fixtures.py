"""The fixtures compose into a lab by hand: a relay, a private server and a private client behind NATs.

These tests exercise the pieces without a runbook; the verdicts of record come from `test_runbooks.py`.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.docker


def test_cone_nats_punch_and_handshake_directly(relay, private_server, private_client, node_logs):
    server = private_server("full-cone")
    client = private_client("port-restricted", server)
    dcutr = client.wait("dcutr_direct", remote_peer_id=str(server.facts["peer_id"]))
    handshake = client.wait("handshake_direct", connection_id=str(dcutr.facts["connection_id"]))
    assert handshake.facts["relayed"] is False
    assert client.exit_code() == 0


def test_symmetric_nats_do_not_punch(relay, private_server, private_client, node_logs):
    """Negative control for the test above: address+port-dependent mapping on both sides defeats DCUtR."""
    server = private_server("symmetric")
    client = private_client("symmetric", server, DIRECT_DEADLINE_SECS="8")
    assert client.exit_code() == 1
    assert not [line for line in client.log.lines if '"result":"ok"' in line.text]
    assert [line for line in client.log.lines if '"event":"shutdown"' in line.text and "no direct" in line.text]
