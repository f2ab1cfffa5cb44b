"""The kaspad-bridge checkpoint set against real lab runs of the fork's kaspad (tests/fixtures/kaspad-bridge/).

`pass/`: node B behind openwrt-fw4-fullcone, node A behind port-restricted, direct. `control/`: both behind
symmetric NATs, the session stays on the relay. Both are sanitised copies of `dcutr-lab run
runbooks/kaspad-mixed-nat.yaml` reports: the node logs, both routers' conntrack files, A's helper API answers.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.checkpoints import Hit
from harness.models import Verdict
from harness.verify import discover_logs, verify_logs

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "kaspad-bridge"


PUBLIC = {"client": "<CLIENT_NAT_IP>", "server": "<SERVER_NAT_IP>", "relay": "<RELAY_IP>"}  # what the lab gave


def _verify(name: str, *, conntrack: bool = True):
    base = FIXTURES / name
    files = discover_logs(base, sut=None)
    tables = sorted(base.glob("*.conntrack")) if conntrack else []
    return verify_logs(files, "kaspad-bridge", conntrack_files=tables, public=PUBLIC)


def test_every_checkpoint_of_the_pass_is_met() -> None:
    outcome = _verify("pass").outcome
    assert outcome.verdict == Verdict.direct
    assert all(isinstance(item, Hit) for item in outcome.direct.items)
    names = [hit.name for hit in outcome.direct.hits]
    assert names == [
        "relay.listening",
        "server.reservation_accepted",
        "client.relayed_connection",
        "relay.circuit_accepted",
        "server.dcutr_direct",  # either side's DCUtR success: B's came first on this run
        "client.dcutr_stream",
        "client.handshake_direct",
        "client.handshake_ready",
        "server.dcutr_stream",
        "server.handshake_direct",
        "server.handshake_ready",
        "conntrack.established",
    ]
    facts = {hit.name: hit.facts for hit in outcome.direct.hits}
    server_id = facts["client.dcutr_stream"]["peer_id"]
    assert facts["server.dcutr_direct"]["remote_peer_id"] == facts["server.dcutr_stream"]["peer_id"]
    # each side's session stream is on the connection its own DCUtR success named (A's: ConnectionId(5))
    assert facts["server.dcutr_stream"]["connection_id"] == facts["server.dcutr_direct"]["connection_id"] == "6"
    assert facts["client.dcutr_stream"]["connection_id"] == "5"
    assert facts["client.handshake_direct"]["peer_id"] == server_id
    assert facts["relay.circuit_accepted"]["dst_peer_id"] == server_id
    assert not str(facts["relay.listening"]["addr"]).startswith("/ip4/127.")  # the transit address


def test_the_pass_without_router_tables_has_no_ground_truth() -> None:
    last = _verify("pass", conntrack=False).outcome.direct.items[-1]
    assert not isinstance(last, Hit)


def test_the_symmetric_control_is_relayed_and_misses_dcutr() -> None:
    outcome = _verify("control").outcome
    assert outcome.verdict == Verdict.relayed
    assert outcome.first_missing is not None
    assert outcome.first_missing.name == "client.dcutr_direct | server.dcutr_direct"


@pytest.mark.parametrize(("name", "path"), [("pass", "direct"), ("control", "relay")])
def test_the_helper_api_answers_say_the_same(name: str, path: str) -> None:
    """The SUT's own words agree with the verdict here; they are evidence, never the proof of it."""
    answers = [json.loads(line) for line in (FIXTURES / name / "client-api.jsonl").read_text().splitlines()]
    assert json.loads(answers[0]["answer"]) == {"msg": "dial successful", "ok": True}
    if name == "pass":
        peers = json.loads(answers[-1]["answer"])["peers"]
        server = _verify("pass").outcome.direct.hits[5].facts["peer_id"]
        assert next(p for p in peers if p["peer_id"] == server)["path"] == path


def test_verify_reads_a_folder_as_the_forks_manual_lab_leaves_it(tmp_path) -> None:
    """kaspa-relay.log, kaspa-a.log (A dials: our client), kaspa-b.log, plus saved conntrack tables; no --node.
    One --node (relative to --logs) does not stop the others from being found."""
    import shutil

    from harness.cli import main

    for ours, theirs in (("relay", "kaspa-relay"), ("client", "kaspa-a"), ("server", "kaspa-b")):
        shutil.copy(FIXTURES / "pass" / f"{ours}.log", tmp_path / f"{theirs}.log")
    for table in (FIXTURES / "pass").glob("*.conntrack"):
        shutil.copy(table, tmp_path / table.name)
    public = [f"--public={node}={address}" for node, address in PUBLIC.items()]
    assert main(["verify", "--logs", str(tmp_path), "--sut", "kaspad-bridge", *public, "-o", str(tmp_path / "r1")]) == 0
    (tmp_path / "b-side.txt").write_text((tmp_path / "kaspa-b.log").read_text())
    (tmp_path / "kaspa-b.log").unlink()
    args = ["verify", "--logs", str(tmp_path), "--sut", "kaspad-bridge", *public, "--node", "server=b-side.txt"]
    assert main([*args, "-o", str(tmp_path / "r2")]) == 0
    record = json.loads((tmp_path / "r2" / "report.json").read_text())
    assert record["verdict"] == "direct" and {log["node"] for log in record["logs"]} == {"relay", "client", "server"}
    (tmp_path / "kaspa-a.log").unlink()  # negative control: without A's log there is no direct verdict
    assert main([*args, "-o", str(tmp_path / "r3")]) == 1
