"""The `ask` step: a SUT's JSON-line API as evidence, with JSON-path conditions that must hold."""

from __future__ import annotations

import json

import pytest
import yaml

from harness import jsonmatch
from harness.errors import BadInput
from harness.runbook import load_runbook, run_scenario
from tests.fakes import RELAY_ID, SERVER_ID, lab
from tests.test_runbook_models import PHASE4

PEERS = {
    "ok": True,
    "peers": [
        {"peer_id": RELAY_ID, "path": "direct", "libp2p": True},
        {"peer_id": SERVER_ID, "path": "relay", "relay_id": RELAY_ID},
    ],
}


def test_paths_select_what_they_name() -> None:
    assert jsonmatch.select(PEERS, "ok") == [True]
    assert jsonmatch.select(PEERS, f"peers[peer_id={SERVER_ID}].path") == ["relay"]
    assert jsonmatch.select(PEERS, "peers[*].path") == ["direct", "relay"]
    assert jsonmatch.select(PEERS, "peers[peer_id=nobody].path") == []
    assert jsonmatch.holds(PEERS, "ok", "true") and not jsonmatch.holds(PEERS, "ok", False)
    # the relay's direct path does not make the server's direct: the selector binds the element
    assert not jsonmatch.holds(PEERS, f"peers[peer_id={SERVER_ID}].path", "direct")
    for bad in ("", "peers[", "peers..path", "peers."):
        with pytest.raises(jsonmatch.PathError):
            jsonmatch.parse(bad)


def _runbook(tmp_path, ask: dict):
    data = yaml.safe_load(PHASE4.read_text())
    steps = data["steps"]
    at = next(i for i, s in enumerate(steps) if s["action"] == "wait_exit")
    steps.insert(at, {"action": "ask", "node": "client", "port": 38080, **ask})
    path = tmp_path / "ask.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_runbook(path)


def _ask(tmp_path, answers: list[str], **ask):
    runbook = _runbook(
        tmp_path,
        {"request": {"action": "peers"}, "expect": {"peers[peer_id={{ server.peer_id }}].path": "direct"}, **ask},
    )
    backend = lab()
    backend.api["client"] = list(answers)
    result = run_scenario(runbook, "mixed_nat", backend, tmp_path / "run", clock=backend.clock, poll_interval=0.2)
    step = next(s for s in result.steps if s.action == "ask")
    return result, step, backend


def test_an_answer_that_holds_passes_and_is_kept_as_evidence(tmp_path) -> None:
    direct = json.dumps({"ok": True, "peers": [{"peer_id": SERVER_ID, "path": "direct"}]})
    result, step, backend = _ask(tmp_path, [direct])
    assert step.status == "ok" and step.detail.startswith("api/client.jsonl:1")
    line = (result.report_dir / "api" / "client.jsonl").read_text().splitlines()[0]
    assert json.loads(json.loads(line)["answer"]) == json.loads(direct)
    target, command = backend.execs[-1]
    assert target == "client" and command[:2] == ["python3", "-c"] and command[3:5] == ["127.0.0.1", "38080"]
    assert json.loads(command[5]) == {"action": "peers"}


def test_an_answer_that_does_not_hold_fails_the_step_naming_the_condition(tmp_path) -> None:
    result, step, _ = _ask(tmp_path, [json.dumps(PEERS)])
    assert step.status == "failed"
    assert f"want peers[peer_id={SERVER_ID}].path='direct'" in step.detail and "api/client.jsonl:1" in step.detail
    assert not result.as_expected


def test_within_repeats_the_question_until_it_holds(tmp_path) -> None:
    direct = json.dumps({"ok": True, "peers": [{"peer_id": SERVER_ID, "path": "direct"}]})
    result, step, _ = _ask(tmp_path, [json.dumps(PEERS), json.dumps(PEERS), direct], within="10s", every="1s")
    assert step.status == "ok" and step.detail.startswith("api/client.jsonl:3")
    assert len((result.report_dir / "api" / "client.jsonl").read_text().splitlines()) == 3


def test_an_api_that_does_not_answer_fails_with_what_it_said(tmp_path) -> None:
    _, step, _ = _ask(tmp_path, [])
    assert step.status == "failed" and "could not ask client's api on port 38080: cannot ask: refused" in step.detail


def test_a_bad_path_or_a_sut_without_api_is_refused_at_load(tmp_path) -> None:
    with pytest.raises(BadInput, match=r"expect\.peers\[: cannot read JSON path"):
        _runbook(tmp_path, {"request": {"action": "peers"}, "expect": {"peers[": "x"}})
    data = {"request": {"action": "peers"}}
    with pytest.raises(BadInput, match="SUT 'reference' declares no api: give the port"):
        path = tmp_path / "no-port.yaml"
        runbook = yaml.safe_load(PHASE4.read_text())
        runbook["steps"].insert(2, {"action": "ask", "node": "relay", **data})
        path.write_text(yaml.safe_dump(runbook, sort_keys=False))
        load_runbook(path)
