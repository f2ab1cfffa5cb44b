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
    # each side's session stream is on the connection its own DCUtR success named
    assert facts["server.dcutr_stream"]["connection_id"] == facts["server.dcutr_direct"]["connection_id"]
    client_dcutr = outcome.direct.namespace["client"]["dcutr_direct"]  # A's own success lost the race to B's
    assert facts["client.dcutr_stream"]["connection_id"] == client_dcutr["connection_id"]
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


# -- the runbook's own chains: the relay-stop proof ---------------------------------------------------------

RUNBOOK = Path(__file__).resolve().parent.parent / "runbooks" / "kaspad-mixed-nat.yaml"


def _runbook_verdict(base: Path):
    from harness.runbook import load_runbook

    step = load_runbook(RUNBOOK).expect_step()
    files = discover_logs(base, sut=None)
    assert "lab" in files  # the lab's own record is found beside the nodes' logs
    tables = sorted(base.glob("*.conntrack"))
    return verify_logs(
        files, "kaspad-bridge", conntrack_files=tables, public=PUBLIC, direct=step.checkpoints, relayed=step.relayed
    ).outcome


def _copy(tmp_path: Path, name: str) -> Path:
    import shutil

    shutil.copytree(FIXTURES / name, tmp_path / name)
    return tmp_path / name


def test_the_pass_outlives_the_relay_and_the_control_dies_with_it(tmp_path) -> None:
    direct = _runbook_verdict(FIXTURES / "pass")
    assert direct.verdict == Verdict.direct, direct.first_missing
    assert [h.name for h in direct.direct.hits][-4:] == [
        "lab.stopped",
        "lab.held",
        "no client.session_ended",
        "no server.session_ended",
    ]
    control = _runbook_verdict(FIXTURES / "control")
    assert control.verdict == Verdict.relayed
    ended = control.relayed.hits[-1]
    assert ended.name == "client.session_ended"
    assert ended.facts["net_address"] == control.relayed.namespace["client"]["handshake_ready"]["net_address"]


def test_a_direct_session_that_ends_after_the_relay_stop_is_not_direct(tmp_path) -> None:
    """Doctored: A logs that B's direct session broke, after the lab stopped the relay."""
    base = _copy(tmp_path, "pass")
    session = _runbook_verdict(base).direct.namespace["client"]["handshake_ready"]["net_address"]
    log = base / "client.log"
    last = log.read_text().splitlines()[-1][:29]  # the last line's timestamp and level
    log.write_text(log.read_text() + f"{last} P2P, network error: broken pipe from peer {session}\n")
    outcome = _runbook_verdict(base)
    assert outcome.verdict != Verdict.direct
    assert outcome.first_missing.name == "no client.session_ended" and "it happened" in outcome.first_missing.reason


def test_without_the_labs_hold_there_is_no_relay_stop_proof(tmp_path) -> None:
    """A log collected right after the stop shows nothing ended only because nothing had time to: no `held`."""
    base = _copy(tmp_path, "pass")
    lab = base / "lab.log"
    lab.write_text("".join(line + "\n" for line in lab.read_text().splitlines() if '"held"' not in line))
    outcome = _runbook_verdict(base)
    assert outcome.verdict != Verdict.direct and outcome.first_missing.name == "lab.held"


def test_a_control_whose_relayed_session_survives_the_stop_is_not_relayed(tmp_path) -> None:
    base = _copy(tmp_path, "control")
    log = base / "client.log"
    log.write_text("".join(line + "\n" for line in log.read_text().splitlines() if "P2P, network error" not in line))
    assert _runbook_verdict(base).verdict == Verdict.fail


def test_a_reservation_the_relay_accepted_but_the_node_never_saw_is_shown_plainly(tmp_path) -> None:
    """The relay without an external address: B's reservation is the first miss, and the relay's own
    ReservationReqAccepted for B (not for anyone else) is the hint beside it."""
    base = _copy(tmp_path, "no-relay-address")
    outcome = verify_logs(discover_logs(base), "kaspad-bridge").outcome
    missing = outcome.first_missing
    assert missing.name == "server.reservation_accepted"
    server_id = outcome.direct.namespace["server"]["peer_id"]
    hint = next(e for e in missing.evidence if e.note == "hint: relay.reservation_req_accepted")
    assert "ReservationReqAccepted" in hint.text and server_id in hint.text
    relay = base / "relay.log"  # the control: without the relay's line there is nothing to hint at
    relay.write_text(
        "".join(line + "\n" for line in relay.read_text().splitlines() if "ReservationReqAccepted" not in line)
    )
    missing = verify_logs(discover_logs(base), "kaspad-bridge").outcome.first_missing
    assert missing.name == "server.reservation_accepted" and not any("hint: relay" in e.note for e in missing.evidence)


@pytest.mark.parametrize("hint", ["relay.no_such_checkpoint", "router.reservation_req_accepted", "reservation_failed"])
def test_a_role_hint_must_name_a_role_and_a_checkpoint_of_the_sut(hint) -> None:
    from harness.models import Sut
    from harness.sut import get_sut

    data = get_sut("kaspad-bridge").model_dump(exclude_none=True)
    data["checkpoints"]["reservation_accepted"]["role_hints"] = [hint]
    with pytest.raises(ValueError, match="role hint"):
        Sut.model_validate(data)
