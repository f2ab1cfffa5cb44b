"""Runbooks load into pydantic models; bad ones fail before anything starts, with file:line: field: problem."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from harness.errors import BadInput
from harness.models import ExpectedVerdict
from harness.runbook import load_runbook
from harness.runbook.model import matrix_scenario_id

RUNBOOKS = Path(__file__).resolve().parent.parent / "runbooks"
PHASE4 = RUNBOOKS / "phase4-mixed-nat.yaml"


@pytest.mark.parametrize("path", sorted(RUNBOOKS.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_runbooks_load(path):
    runbook = load_runbook(path)
    assert runbook.scenarios
    assert runbook.expect_step() is not None


def test_phase4_scenarios_and_overrides():
    runbook = load_runbook(PHASE4)
    by_id = runbook.scenarios_by_id
    assert list(by_id) == [
        "mixed_nat",
        "mixed_nat_symmetric_control",
        "mixed_nat_lying_peer_control",
        "mixed_nat_no_dcutr",
    ]
    assert all(s.markers == ["mixed_nat"] for s in runbook.scenarios)
    topology = runbook.topology(by_id["mixed_nat"])
    assert topology.nodes["server"].nat_profile == "openwrt-fw4-fullcone"
    assert topology.nodes["client"].nat_profile == "port-restricted"
    control = runbook.topology(by_id["mixed_nat_symmetric_control"])
    assert {control.nodes[n].nat_profile for n in ("server", "client")} == {"symmetric"}
    assert by_id["mixed_nat_symmetric_control"].nodes["client"].env == {"ALLOW_RELAY_FALLBACK": "true"}
    no_dcutr = by_id["mixed_nat_no_dcutr"].expect
    assert (no_dcutr.verdict, no_dcutr.first_missing) == (ExpectedVerdict.fail, "dcutr_direct")


def test_matrix_expands_to_one_scenario_per_cell():
    runbook = load_runbook(RUNBOOKS / "matrix.yaml")
    assert len(runbook.scenarios) == 64
    cell = runbook.scenarios_by_id[matrix_scenario_id("symmetric", "symmetric")]
    assert cell.expect.verdict == ExpectedVerdict.relayed
    assert cell.markers == ["matrix", "slow"]
    assert runbook.topology(cell).nodes["client"].nat_profile == "symmetric"
    measured = runbook.matrix.cells["openwrt-fw4"]["full-cone"]
    assert measured.expect == ExpectedVerdict.direct and measured.measured.attempts >= 10
    assert all(s.why for s in runbook.scenarios)


@pytest.mark.parametrize(
    ("cell", "message"),
    [
        ({"expect": "flaky", "why": "x"}, "Input should be 'direct', 'relayed'"),
        ({"expect": "fail", "why": "x"}, "expects direct or relayed, or a direct_rate band"),
        ({"why": "x"}, "exactly one of 'expect'"),
        ({"expect": "direct", "direct_rate": {"min": 0.5}, "why": "x"}, "exactly one of 'expect'"),
        ({"direct_rate": {}, "why": "x"}, "can never fail"),
        ({"direct_rate": {"min": 0.8, "max": 0.2}, "why": "x"}, "above max"),
    ],
)
def test_a_matrix_cell_that_cannot_fail_is_refused(tmp_path, cell, message):
    data = yaml.safe_load((RUNBOOKS / "matrix.yaml").read_text())
    data["matrix"]["cells"]["none"]["none"] = cell
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    assert message in _error(path)


def _write(tmp_path: Path, mutate) -> Path:
    data = yaml.safe_load(PHASE4.read_text())
    mutate(data)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _error(path: Path) -> str:
    with pytest.raises(BadInput) as caught:
        load_runbook(path)
    message = str(caught.value)
    assert "\n" not in message
    return message


def _line_of(path: Path, text: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), start=1) if text in line)


def test_unknown_key_names_line_and_field(tmp_path):
    path = _write(tmp_path, lambda d: d["steps"][1].update(whithin="30s"))
    message = _error(path)
    assert message.startswith(f"{path}:{_line_of(path, 'whithin')}: steps[1]")
    assert "unknown key 'whithin'" in message


def test_unknown_action(tmp_path):
    path = _write(tmp_path, lambda d: d["steps"][0].update(action="launch"))
    assert "unknown action 'launch'" in _error(path)


def test_unknown_nat_profile(tmp_path):
    path = _write(tmp_path, lambda d: d["nodes"]["server"].update(nat_profile="full-cone-ish"))
    message = _error(path)
    assert f":{_line_of(path, 'full-cone-ish')}: nodes.server.nat_profile: unknown NAT profile" in message


def test_unknown_nat_profile_in_scenario_override(tmp_path):
    path = _write(tmp_path, lambda d: d["scenarios"][1]["nodes"]["server"].update(nat_profile="symetric"))
    assert "scenarios[1].nodes.server.nat_profile: unknown NAT profile 'symetric'" in _error(path)


def test_unknown_sut(tmp_path):
    path = _write(tmp_path, lambda d: d["nodes"]["relay"].update(sut="go-libp2p"))
    assert "nodes.relay.sut: unknown SUT 'go-libp2p'" in _error(path)


def test_unknown_checkpoint_in_wait(tmp_path):
    path = _write(tmp_path, lambda d: d["steps"][3].update(checkpoint="server.foo"))
    message = _error(path)
    assert f":{_line_of(path, 'server.foo')}: steps[3].checkpoint: unknown checkpoint 'server.foo'" in message


def test_checkpoint_of_another_role_is_unknown(tmp_path):
    path = _write(tmp_path, lambda d: d["steps"][1].update(checkpoint="server.circuit_accepted"))
    assert "unknown checkpoint 'server.circuit_accepted'" in _error(path)


def test_template_variable_no_earlier_step_provides(tmp_path):
    def mutate(data):
        data["steps"][2]["env"]["LIBP2P_REMOTE_PEER_ID"] = "{{ client.peer_id }}"  # client not waited on yet

    message = _error(_write(tmp_path, mutate))
    # the error points at the key that uses the variable (issue 13)
    assert "steps[2].env.LIBP2P_REMOTE_PEER_ID: template variable 'client.peer_id' is provided by no earlier step" in (
        message
    )


def test_template_variable_from_a_later_wait_is_refused(tmp_path):
    def mutate(data):
        data["steps"][2]["env"]["X"] = "{{ server.circuit_addr }}"  # provided by the wait *after* it

    assert "template variable 'server.circuit_addr'" in _error(_write(tmp_path, mutate))


def test_template_root_must_be_a_node(tmp_path):
    def mutate(data):
        data["env"]["X"] = "{{ relais.peer_id }}"

    assert "template variable 'relais' is not a node" in _error(_write(tmp_path, mutate))


def test_expect_fact_must_be_known(tmp_path):
    def mutate(data):
        data["steps"][-1]["checkpoints"][4] = {"client.dcutr_direct": {"remote_peer_id": "{{ server.nickname }}"}}

    assert "steps[9].checkpoints[4].expect: template variable 'server.nickname'" in _error(_write(tmp_path, mutate))


def test_expect_must_be_last(tmp_path):
    def mutate(data):
        data["steps"].append({"action": "collect"})

    assert "one 'expect' step, and it must be the last step" in _error(_write(tmp_path, mutate))


def test_stop_of_a_node_never_started(tmp_path):
    def mutate(data):
        data["steps"].insert(0, {"action": "stop", "node": "client"})

    assert "steps[0].node: node 'client' is not started by an earlier step" in _error(_write(tmp_path, mutate))


def test_first_missing_only_for_fail(tmp_path):
    def mutate(data):
        data["scenarios"][0]["expect"] = {"verdict": "direct", "first_missing": "dcutr_direct"}

    assert "'first_missing' only applies to verdict 'fail'" in _error(_write(tmp_path, mutate))


def test_duplicate_scenario_ids(tmp_path):
    def mutate(data):
        data["scenarios"][1]["id"] = "mixed_nat"

    assert "duplicate scenario ids: mixed_nat" in _error(_write(tmp_path, mutate))


def test_bad_duration(tmp_path):
    path = _write(tmp_path, lambda d: d["steps"][1].update(within="soon"))
    assert "not a duration: 'soon'" in _error(path)


def test_invalid_yaml_names_the_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\nnodes:\n  relay: {role: relay\n")
    assert f"{path}:" in _error(path) and "not valid YAML" in _error(path)


def test_optional_checkpoint_must_exist_in_some_sut(tmp_path):
    def mutate(data):
        data["steps"][-1]["checkpoints"].append({"checkpoint": "relay.reservaton_closed", "optional": True})

    assert "unknown checkpoint 'relay.reservaton_closed'" in _error(_write(tmp_path, mutate))


def test_an_optional_checkpoint_no_sut_of_this_runbook_defines_is_an_error(tmp_path):
    """kaspad-bridge defines reservation_closed, the reference SUT does not: in a runbook of reference nodes an
    optional reservation_closed would be skipped on every run, a check that never checks."""

    def mutate(data):
        data["steps"][-1]["checkpoints"].append({"checkpoint": "relay.reservation_closed", "optional": True})

    assert "unknown checkpoint 'relay.reservation_closed'" in _error(_write(tmp_path, mutate))
