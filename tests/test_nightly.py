"""`dcutr-lab report --nightly`: one index over several runbooks' report.json files, the matrix, and trends against
the previous night (what got worse first). Built from records shaped like the real ones (reports/example)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from harness.cli import main
from harness.errors import BadInput
from harness.nightly import collect, load_index, nightly_index, trends

EXAMPLE = Path(__file__).resolve().parent.parent / "reports" / "example" / "report.json"


def _run_record(runbook: str, scenarios: dict[str, tuple[str, int, int]], matrix: bool = False) -> dict:
    """A run record like reports/example's, with `scenarios`: id -> (label, successes, trials)."""
    base = json.loads(EXAMPLE.read_text())
    record = copy.deepcopy(base)
    record["runbook"] = runbook
    template = base["scenarios"][0]
    record["scenarios"] = []
    for scenario_id, (label, successes, trials) in scenarios.items():
        entry = copy.deepcopy(template)
        entry.update(id=scenario_id, label=label, as_expected=label != "FAIL")
        entry["verdict"] = "direct" if label != "FAIL" else "fail"
        entry["first_missing"] = None if label != "FAIL" else {"checkpoint": "dcutr_direct", "reason": "no punch"}
        entry["rate"] = {"successes": successes, "trials": trials, "low": 0, "high": 1}
        record["scenarios"].append(entry)
    record["as_expected"] = all(s["as_expected"] for s in record["scenarios"])
    record["matrix"] = None
    if matrix:
        cell = {"expected": "direct", "why": "", "rate": "3/3", "scenario": "m_a_x_b"}
        record["matrix"] = {
            "servers": ["full-cone", "symmetric"],
            "clients": ["port-restricted"],
            "cells": [
                [
                    {
                        **cell,
                        "server": "full-cone",
                        "client": "port-restricted",
                        "measured": "direct",
                        "as_expected": True,
                    }
                ],
                [
                    {
                        **cell,
                        "server": "symmetric",
                        "client": "port-restricted",
                        "measured": "fail",
                        "as_expected": False,
                    }
                ],
            ],
        }
    return record


def _scenario_record(runbook: str, scenario: str, ok: bool) -> dict:
    return {
        "schema": "dcutr-lab/report",
        "schema_version": 1,
        "kind": "scenario",
        "runbook": runbook,
        "scenario": scenario,
        "verdict": "direct" if ok else "fail",
        "expected": {"verdict": "direct", "first_missing": None},
        "as_expected": ok,
        "first_missing": None if ok else {"checkpoint": "setup", "reason": "x", "evidence": []},
        "error": None if ok else "host 'home-pc' became unreachable",
        "duration_s": 12.5,
    }


def _write(path: Path, record: dict) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "report.json").write_text(json.dumps(record))


@pytest.fixture
def night(tmp_path: Path) -> Path:
    root = tmp_path / "nightly-1"
    _write(root / "matrix-1", _run_record("matrix", {"m_a_x_b": ("PASS", 3, 3), "m_s_x_b": ("FAIL", 0, 3)}, True))
    # An attempt below a run: the run record stands for it.
    _write(root / "matrix-1" / "m_a_x_b" / "attempt-1", _scenario_record("matrix", "m_a_x_b", False))
    _write(root / "kaspad-1", _run_record("kaspad-mixed-nat", {"kaspad_mixed_nat": ("PASS-FLAKY", 1, 2)}))
    # pytest's fleet tests: scenario records two levels down, one scenario run twice.
    _write(root / "fleet" / "lab1" / "remote_validation", _scenario_record("phase6", "remote_validation", True))
    _write(root / "fleet" / "lab2" / "remote_validation", _scenario_record("phase6", "remote_validation", True))
    over_ssh = {**_scenario_record("phase6", "remote_validation", False), "backend": "ssh"}
    _write(root / "fleet" / "lab3" / "remote_validation", over_ssh)
    (root / "fleet" / "junk").mkdir(parents=True)
    (root / "fleet" / "junk" / "report.json").write_text("{not json")
    return root


def test_collect_reads_runs_and_lone_scenarios_once(night: Path):
    scenarios, matrices, skipped = collect(night)
    assert set(scenarios) == {
        "matrix:m_a_x_b",
        "matrix:m_s_x_b",
        "kaspad-mixed-nat:kaspad_mixed_nat",
        "phase6:remote_validation",
        "phase6:remote_validation@ssh",  # the same scenario over SSH is its own row
    }
    assert scenarios["matrix:m_a_x_b"]["as_expected"]  # the failed attempt record below the run is not counted
    assert (scenarios["phase6:remote_validation"]["successes"], scenarios["phase6:remote_validation"]["trials"]) == (
        2,
        2,
    )
    assert scenarios["kaspad-mixed-nat:kaspad_mixed_nat"]["label"] == "PASS-FLAKY"
    assert len(matrices) == 1 and matrices[0]["servers"] == ["full-cone", "symmetric"]
    assert len(skipped) == 1 and skipped[0].startswith("fleet/junk/report.json: not valid JSON"), skipped


def test_index_without_previous_has_matrix_and_failures_first(night: Path):
    index = nightly_index(night)
    assert not index["as_expected"] and index["trends"] == []
    markdown = (night / "nightly.md").read_text()
    assert "❌ 2 not as expected" in markdown and "No previous index" in markdown
    assert "| **symmetric** | ❌ fail (exp. direct) 3/3 |" in markdown
    table = markdown.split("## Scenarios", 1)[1]
    assert table.index("matrix:m_s_x_b") < table.index("matrix:m_a_x_b")  # what failed first
    assert "Skipped files" in markdown
    assert load_index(night / "nightly.json")["schema"] == "dcutr-lab/nightly"


def test_trends_list_what_got_worse_first(night: Path, tmp_path: Path):
    yesterday = tmp_path / "nightly-0"
    _write(yesterday / "matrix-0", _run_record("matrix", {"m_a_x_b": ("PASS", 3, 3), "m_s_x_b": ("PASS", 3, 3)}, True))
    _write(yesterday / "kaspad-0", _run_record("kaspad-mixed-nat", {"kaspad_mixed_nat": ("PASS", 2, 2)}))
    _write(yesterday / "old" / "x", _scenario_record("phase5", "gone_one", True))
    nightly_index(yesterday)
    index = nightly_index(night, yesterday / "nightly.json")
    rows = [(row["trend"], row["key"]) for row in index["trends"]]
    assert rows == [
        ("worse", "kaspad-mixed-nat:kaspad_mixed_nat"),  # as expected both nights, but its rate fell (2/2 -> 1/2)
        ("worse", "matrix:m_s_x_b"),
        ("new", "phase6:remote_validation"),
        ("new", "phase6:remote_validation@ssh"),
        ("gone", "phase5:gone_one"),
        ("same", "matrix:m_a_x_b"),
    ]
    markdown = (night / "nightly.md").read_text()
    since = markdown.split("## Since the previous night", 1)[1].split("##", 1)[0]
    assert since.index("m_s_x_b") < since.index("remote_validation") and "PASS → FAIL" in since


def test_trends_see_recovery_and_no_change():
    entry = {"as_expected": True, "label": "PASS", "successes": 3, "trials": 3}
    failed = {**entry, "as_expected": False, "label": "FAIL", "successes": 0}
    assert trends({"a": entry}, {"a": failed})[0]["trend"] == "better"
    assert trends({"a": entry}, {"a": entry})[0]["trend"] == "same"
    assert trends({"a": entry}, None) == []


def test_cli_nightly_and_bad_input(night: Path, tmp_path: Path, capsys):
    assert main(["report", str(night), "--nightly"]) == 0
    assert (night / "nightly.md").is_file()
    bad = tmp_path / "previous.json"
    bad.write_text(json.dumps({"schema": "something-else"}))
    assert main(["report", str(night), "--nightly", "--previous", str(bad)]) == 2
    assert "not a dcutr-lab nightly index" in capsys.readouterr().err
    assert main(["report", str(night), "--previous", str(night / "nightly.json")]) == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BadInput, match=r"no report\.json"):
        nightly_index(empty)
