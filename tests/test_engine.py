"""The runbook engine on a fake backend: steps, waits with deadlines, verdicts, and what lands on disk."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from harness.errors import BadInput
from harness.models import Verdict
from harness.runbook import load_runbook, run_repeated, run_scenario
from tests.fakes import CLIENT_ID, RELAY_ID, SERVER_ID, FakeBackend, FakeClock, lab, relay_script
from tests.test_runbook_models import PHASE4, RUNBOOKS

RAW_ADDRESS = re.compile(r"\b(?:198\.18|192\.168|10\.0)\.\d+\.\d+\b")


@pytest.fixture(scope="module")
def phase4():
    return load_runbook(PHASE4)


def _run(runbook, scenario: str, backend: FakeBackend, tmp_path: Path, **kwargs):
    messages: list[str] = []
    result = run_scenario(
        runbook,
        scenario,
        backend,
        tmp_path / scenario,
        clock=backend.clock,
        poll_interval=0.2,
        progress=messages.append,
        **kwargs,
    )
    return result, messages


def test_mixed_nat_direct(phase4, tmp_path):
    backend = lab()
    result, messages = _run(phase4, "mixed_nat", backend, tmp_path)
    assert result.verdict == Verdict.direct and result.as_expected and result.error is None
    assert [c.status for c in result.checkpoints] == ["met"] * 11
    assert result.timings["punch"] == pytest.approx(2.0, abs=0.5)
    assert result.timings["handshake"] is not None
    assert not backend.closed  # the caller owns the backend
    assert any(m.startswith("step 5/10: start client") for m in messages)

    # Env was templated from facts learnt by the waits, with real addresses put back for the node.
    _, command, env = backend.starts["client"][0]
    assert command == ["kaspa_p2p_client"]
    assert env["LIBP2P_REMOTE_PEER_ID"] == SERVER_ID
    assert env["LIBP2P_REMOTE_MULTIADDRS"] == f"/ip4/198.18.0.2/tcp/4011/p2p/{RELAY_ID}/p2p-circuit/p2p/{SERVER_ID}"
    assert env["LIBP2P_IDENTITY_SEED"] == "3" and env["KASPA_NETWORK"] == "devnet"


def test_evidence_line_numbers_match_the_written_logs(phase4, tmp_path):
    result, _ = _run(phase4, "mixed_nat", lab(), tmp_path)
    for record in result.checkpoints:
        for evidence in record.evidence:
            lines = (result.report_dir / evidence.file).read_text().splitlines()
            assert lines[evidence.line - 1] == evidence.text


def test_no_raw_address_or_map_in_the_report_dir(phase4, tmp_path):
    result, _ = _run(phase4, "mixed_nat", lab(), tmp_path)
    files = [p for p in result.report_dir.rglob("*") if p.is_file()]
    assert not (result.report_dir / "raw").exists()
    assert {p.name for p in files} >= {"report.md", "report.json", "junit.xml", "relay.log", "server-router.conntrack"}
    for path in files:
        text = path.read_bytes().decode("utf-8", "replace")  # charts (PNG) included
        assert not RAW_ADDRESS.search(text), f"raw address in {path}"
    server_log = (result.report_dir / "logs" / "server.log").read_text()
    assert "<HOME_IP>" in server_log  # the runbook's alias for the server's NAT address


def test_keep_raw_for_debugging(phase4, tmp_path):
    result, _ = _run(phase4, "mixed_nat", lab(), tmp_path, keep_raw=True)
    assert (result.report_dir / "raw" / "addresses.json").exists()


def test_symmetric_control_is_relayed(phase4, tmp_path):
    backend = lab(dcutr=False, fallback=True)
    result, _ = _run(phase4, "mixed_nat_symmetric_control", backend, tmp_path)
    assert result.verdict == Verdict.relayed and result.as_expected
    assert result.first_missing.name == "client.dcutr_direct | client.session_inbound"
    assert backend.provisioned.nodes["server"].nat_profile == "symmetric"
    assert backend.starts["client"][0][2]["ALLOW_RELAY_FALLBACK"] == "true"


def test_no_dcutr_control_fails_at_dcutr(phase4, tmp_path):
    backend = lab(dcutr=False)
    result, _ = _run(phase4, "mixed_nat_no_dcutr", backend, tmp_path)
    assert result.verdict == Verdict.fail and result.as_expected
    assert result.first_missing.name == "client.dcutr_direct | client.session_inbound"
    assert all(start[2]["DCUTR_ENABLED"] == "false" for n in ("server", "client") for start in backend.starts[n])
    report = json.loads((result.report_dir / "report.json").read_text())
    assert report["first_missing"]["checkpoint"] == "client.dcutr_direct | client.session_inbound"


def test_a_wait_past_its_deadline_stops_the_steps_but_not_the_report(phase4, tmp_path):
    backend = lab()
    backend.scripts = {**backend.scripts, "server": backend.scripts["server"][:3]}  # never gets a reservation
    result, _ = _run(phase4, "mixed_nat", backend, tmp_path)
    assert result.verdict == Verdict.fail and not result.as_expected
    assert "server.reservation_accepted not met within 30s" in result.error
    assert result.first_missing.name == "server.reservation_accepted"
    assert "client" not in backend.starts
    assert [s.status for s in result.steps][3:] == ["failed"] + ["skipped"] * 6
    assert backend.clock.now == pytest.approx(30.5, abs=1.0)  # waited on the fake clock, no real sleep
    assert (result.report_dir / "report.md").exists()


def test_a_soft_wait_records_its_miss_and_the_steps_go_on(phase4, tmp_path):
    """A soft wait paces a run whose outcome the chain decides: past its deadline it is `missed`, not `failed`,
    and the later steps (the relay's stop) still run; the verdict is the chain's, as always."""
    index = next(i for i, step in enumerate(phase4.steps) if getattr(step, "checkpoint", "") == "client.handshake")
    wait = phase4.steps[index].model_copy(update={"soft": True})
    backend = lab()
    backend.scripts = {**backend.scripts, "client": backend.scripts["client"][:2]}  # never gets to a handshake
    runbook = phase4.model_copy(update={"steps": [*phase4.steps[:index], wait, *phase4.steps[index + 1 :]]})
    result, _ = _run(runbook, "mixed_nat", backend, tmp_path)
    statuses = [s.status for s in result.steps]
    assert statuses[index] == "missed" and "skipped" not in statuses and "failed" not in statuses
    assert "relay" in backend.stopped
    assert result.verdict != Verdict.direct


def test_a_direct_run_whose_steps_broke_is_not_as_expected(phase4, tmp_path):
    """The chain may still say direct, but a scenario that must punch runs its checks to the end: a failed step
    (here a second wait for a line the relay printed once) makes it not as expected, and the report says why."""
    from harness.steps import WaitStep

    again = WaitStep(action="wait", checkpoint="relay.listening", within=1.0)
    runbook = phase4.model_copy(update={"steps": [*phase4.steps[:-2], again, *phase4.steps[-2:]]})
    result, _ = _run(runbook, "mixed_nat", lab(), tmp_path)
    assert result.verdict == Verdict.direct and not result.as_expected
    assert any("wait relay.listening within 1s) failed" in note for note in result.notes)
    assert _run(phase4, "mixed_nat", lab(), tmp_path / "whole")[0].as_expected  # the same run, steps whole


def test_a_node_that_exits_before_its_checkpoint_fails_fast(phase4, tmp_path):
    backend = lab()
    backend.scripts = {**backend.scripts, "relay": relay_script()[:2]}
    backend.exits = {"relay": (1.0, 2)}
    result, _ = _run(phase4, "mixed_nat", backend, tmp_path)
    assert "relay exited with code 2 before relay.listening" in result.error
    assert backend.clock.now < 5


def test_a_broken_backend_still_writes_a_report(phase4, tmp_path):
    backend = lab()

    def explode(node, command, env):
        raise RuntimeError("container vanished")

    backend.start = explode
    result, _ = _run(phase4, "mixed_nat", backend, tmp_path)
    assert result.verdict == Verdict.fail and "container vanished" in result.error
    assert (result.report_dir / "junit.xml").exists()


def test_setup_errors_propagate_after_the_report(phase4, tmp_path):
    backend = lab()

    def refuse(topology):
        raise BadInput("SUT 'x' has no Docker image")

    backend.provision = refuse
    with pytest.raises(BadInput):
        _run(phase4, "mixed_nat", backend, tmp_path)
    assert (tmp_path / "mixed_nat" / "report.json").exists()


def test_unknown_scenario(phase4, tmp_path):
    with pytest.raises(BadInput, match="no scenario 'nope'"):
        run_scenario(phase4, "nope", lab(), tmp_path)


def test_run_repeated_stops_at_the_first_success_and_closes_backends(phase4, tmp_path):
    clock = FakeClock()
    made: list[FakeBackend] = []

    def make(attempt: int) -> FakeBackend:
        backend = lab(dcutr=attempt == 2, fallback=attempt != 2)
        backend.clock = clock  # one clock for all attempts, as in a real run
        clock.now = 0.0
        made.append(backend)
        return backend

    repeat = run_repeated(phase4, "mixed_nat", make, tmp_path, clock=clock, poll_interval=0.2)
    assert repeat.label == "PASS-FLAKY" and len(repeat.attempts) == 2
    assert all(b.closed for b in made)
    assert (tmp_path / "attempt-2" / "report.md").exists()
    exact = run_repeated(phase4, "mixed_nat", make, tmp_path / "n", attempts=3, clock=clock, poll_interval=0.2)
    assert len(exact.attempts) == 3 and exact.label == "PASS-FLAKY"  # attempt 2 of 3 direct
    assert [a.verdict for a in exact.attempts] == [Verdict.relayed, Verdict.direct, Verdict.relayed]


def test_run_and_restart_steps(tmp_path):
    runbook = load_runbook(RUNBOOKS / "phase5-hardened.yaml")
    backend = lab()
    result = run_scenario(runbook, "hardened", backend, tmp_path / "p5", clock=backend.clock, poll_interval=0.2)
    assert len(backend.starts["client"]) == 3  # start + 2 restarts
    assert backend.starts["client"][2][2]["ALLOW_RELAY_FALLBACK"] == "false"
    assert "server" in backend.stopped
    # The fake client sends no 40 pongs: the hardened chain stops there, after the direct handshake.
    assert result.first_missing.name == "client.kaspa_pong"
    names = [c.name for c in result.checkpoints if c.status == "met"]
    assert "server.handshake_direct" in names
    assert CLIENT_ID in (result.report_dir / "logs" / "server.log").read_text()


def test_phases_come_from_the_expect_step_when_it_names_them(phase4, tmp_path):
    """The engine times what the runbook names, not a fixed list of checkpoints: an expect step's own phases
    replace the SUT file's, and a phase whose checkpoint was never met has no time."""
    from harness.models import Phase

    expect = phase4.expect_step()
    phases = [
        Phase(name="circuit", start="server.reservation_accepted", end="relay.circuit_accepted"),
        Phase(name="never", start="relay.listening", end="client.relayed_connection_that_is_not"),
    ]
    steps = [*phase4.steps[:-1], expect.model_copy(update={"phases": phases})]
    runbook = phase4.model_copy(update={"steps": steps})
    result, _ = _run(runbook, "mixed_nat", lab(), tmp_path)
    assert set(result.timings) == {"setup", "teardown", "circuit", "never"}
    assert result.timings["circuit"] is not None and result.timings["circuit"] > 0
    assert result.timings["never"] is None


def test_a_sut_phase_must_name_its_checkpoints():
    from pydantic import ValidationError

    from harness.models import Sut

    definition = {
        "name": "x",
        "format": "json",
        "checkpoints": {"up": {"event": "up"}},
        "phases": [{"name": "boot", "start": "up", "end": "down"}],
    }
    with pytest.raises(ValidationError, match="phase 'boot' names unknown checkpoint 'down'"):
        Sut.model_validate(definition)


def test_waits_on_one_node_are_ordered(phase4, tmp_path):
    """A second wait for the same checkpoint needs the next matching line, never the one an earlier wait used:
    otherwise an earlier look-alike satisfies a wait and the run collects before the real line exists. The
    relay prints one transit `listening` line (its 0.0.0.0 one is not the checkpoint): a second wait fails."""
    from harness.steps import WaitStep

    wait = WaitStep(action="wait", checkpoint="relay.listening", within=5.0)
    steps = [phase4.steps[0], wait, wait, *phase4.steps[2:]]
    result, _ = _run(phase4.model_copy(update={"steps": steps}), "mixed_nat", lab(), tmp_path)
    assert result.steps[1].status == "ok" and result.steps[1].detail.startswith("logs/relay.log:4 ")
    assert result.steps[2].status == "failed" and "not met within 5s" in result.steps[2].detail


def test_a_negative_control_is_never_retried(phase4, tmp_path):
    """A control that goes wrong on attempt 1 is FAIL at once: retrying it would let luck make it pass."""
    clock = FakeClock()
    made: list[FakeBackend] = []

    def make(attempt: int) -> FakeBackend:
        backend = lab(dcutr=True)  # a direct run: wrong for the symmetric control, which expects relayed
        backend.clock = clock
        clock.now = 0.0
        made.append(backend)
        return backend

    repeat = run_repeated(phase4, "mixed_nat_symmetric_control", make, tmp_path, clock=clock, poll_interval=0.2)
    assert len(made) == 1 and repeat.label == "FAIL" and repeat.final.verdict == Verdict.direct
    counted = run_repeated(phase4, "mixed_nat_symmetric_control", make, tmp_path / "n", attempts=3, clock=clock)
    assert len(counted.attempts) == 3  # --repeat N still records every attempt, for a rate


def test_a_claimed_remote_address_the_lab_did_not_give_is_a_finding(phase4, tmp_path):
    """The client says its direct peer is at an address nobody in the lab has: reported, not believed."""
    backend = lab()
    backend.scripts = {
        node: [(t, line.replace("/ip4/198.18.0.3/tcp/4012", "/ip4/198.18.255.254/tcp/4012")) for t, line in script]
        for node, script in backend.scripts.items()
    }
    result, _ = _run(phase4, "mixed_nat", backend, tmp_path)
    findings = [n for n in result.notes if n.startswith("finding:")]
    assert len(findings) == 1 and "client.handshake_direct claims remote_addr /ip4/<IP_" in findings[0]
    assert "the lab gave server <HOME_IP>" in findings[0]
    assert not [n for n in _run(phase4, "mixed_nat", lab(), tmp_path / "honest")[0].notes if n.startswith("finding")]


def test_pongs_only_before_the_relay_stop_are_no_direct_session(phase4, tmp_path):
    """The relay-stop proof: the same run whose session answers only until the relay died is not direct."""
    backend = lab()
    client = backend.scripts["client"]
    # The relay is stopped ~2.6 s after the client started: keep only the pongs from before that.
    backend.scripts = {
        **backend.scripts,
        "client": [(t, line) for t, line in client if "kaspa_pong" not in line or t < 2.6],
    }
    result, _ = _run(phase4, "mixed_nat", backend, tmp_path)
    assert result.verdict != Verdict.direct
    assert result.first_missing.name == "client.kaspa_pong"
    assert "0 of 3 lines" in result.first_missing.reason
    lab_log = (result.report_dir / "logs" / "lab.log").read_text()
    assert '"event": "stopped", "target": "relay"' in lab_log


def test_a_link_step_takes_the_link_down_and_the_lab_says_when(phase4, tmp_path):
    from harness.steps import LinkStep

    down, up = LinkStep(action="link", node="client", state="down"), LinkStep(action="link", node="client", state="up")
    steps = [*phase4.steps[:-2], down, up, *phase4.steps[-2:]]
    backend = lab()
    result, _ = _run(phase4.model_copy(update={"steps": steps}), "mixed_nat", backend, tmp_path)
    assert [(node, is_up) for node, is_up, _ in backend.links] == [("client", False), ("client", True)]
    events = [json.loads(line)["event"] for line in (result.report_dir / "logs" / "lab.log").read_text().splitlines()]
    assert events[-2:] == ["link_down", "link_up"]


def test_a_hold_watches_a_node_for_its_window_and_the_lab_says_when_it_ended(phase4, tmp_path):
    from harness.steps import HoldStep

    hold = HoldStep.model_validate({"action": "hold", "node": "server", "for": "2s"})
    steps = [*phase4.steps[:-2], hold, *phase4.steps[-2:]]
    backend = lab()
    result, _ = _run(phase4.model_copy(update={"steps": steps}), "mixed_nat", backend, tmp_path)
    record = next(step for step in result.steps if step.summary.startswith("hold server"))
    assert record.status == "ok" and record.duration >= 2.0
    lines = [json.loads(line) for line in (result.report_dir / "logs" / "lab.log").read_text().splitlines()]
    held = next(line for line in lines if line["event"] == "held")
    assert held["target"] == "server"

    # The negative control: a node whose process ends inside the window breaks the hold, and no `held` is written.
    client_hold = HoldStep.model_validate({"action": "hold", "node": "client", "for": "60s"})
    steps = [*phase4.steps[:-2], client_hold, *phase4.steps[-2:]]
    result, _ = _run(phase4.model_copy(update={"steps": steps}), "mixed_nat", lab(), tmp_path / "exit")
    record = next(step for step in result.steps if step.summary.startswith("hold client"))
    assert record.status == "failed" and "exited with code 0" in record.detail
    assert '"held"' not in (result.report_dir / "logs" / "lab.log").read_text()


def test_link_conditions_per_node_reach_the_topology(tmp_path):
    import yaml

    data = yaml.safe_load(PHASE4.read_text())
    data["nodes"]["client"]["link"] = {"delay_ms": 0, "loss": 1.5}
    data["scenarios"][0]["nodes"] = {"server": {"link": {"delay_ms": 50, "jitter_ms": 10}}}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    runbook = load_runbook(path)
    nodes = runbook.topology(runbook.scenarios[0]).nodes
    assert (nodes["client"].link.delay_ms, nodes["client"].link.loss) == (0, 1.5)
    assert (nodes["server"].link.delay_ms, nodes["server"].link.jitter_ms) == (50, 10)
    assert nodes["relay"].link.delay_ms is None  # the run's default
    data["nodes"]["client"]["link"] = {"loss": 100}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(BadInput, match=r"nodes\.client\.link\.loss"):
        load_runbook(path)
