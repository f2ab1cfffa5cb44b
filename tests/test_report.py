"""Reports render the same records the same way: golden files (UPDATE_GOLDEN=1 rewrites them)."""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from harness.errors import BadInput
from harness.report import load_record, render_dir, render_junit, render_markdown, run_record, update_index
from harness.results import RepeatResult
from harness.runbook import load_runbook, run_scenario
from tests.fakes import lab
from tests.test_runbook_models import PHASE4, RUNBOOKS

GOLDEN = Path(__file__).resolve().parent / "golden"
FIXED_ENV = {"harness": "0.1.0", "python": "3.11", "runbook": "phase4-mixed-nat", "backend_image": "sha256:abc"}


def _golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN") or not path.exists():
        path.write_text(text)
    assert text == path.read_text(), f"{name} changed; rerun with UPDATE_GOLDEN=1 if that is intended"


def _scenario(tmp_path: Path, scenario: str, **lab_kwargs):
    runbook = load_runbook(PHASE4)
    backend = lab(**lab_kwargs)
    result = run_scenario(runbook, scenario, backend, tmp_path / scenario, clock=backend.clock, poll_interval=0.2)
    result.environment = dict(FIXED_ENV, scenario=scenario)
    from harness.report import write_scenario_report

    write_scenario_report(result)
    return runbook, result


def test_scenario_report_golden(tmp_path):
    _, result = _scenario(tmp_path, "mixed_nat")
    record = load_record(result.report_dir)
    assert record["schema_version"] == 1 and record["verdict"] == "direct"
    _golden("scenario-direct.md", render_markdown(record))


def test_failed_scenario_report_golden(tmp_path):
    _, result = _scenario(tmp_path, "mixed_nat_no_dcutr", dcutr=False)
    _golden("scenario-no-dcutr.md", render_markdown(load_record(result.report_dir)))


def test_run_report_golden_with_negative_controls(tmp_path):
    runbook = None
    repeats = []
    for scenario, kwargs in (
        ("mixed_nat", {}),
        ("mixed_nat_symmetric_control", {"dcutr": False, "fallback": True}),
        ("mixed_nat_no_dcutr", {"dcutr": False}),
    ):
        runbook, result = _scenario(tmp_path, scenario, **kwargs)
        repeats.append(RepeatResult(scenario, "PASS", [result]))
    record = run_record("run00001", runbook, repeats, tmp_path, backend="fake", started_at=1_767_225_600.0, duration=42)
    text = render_markdown(record)
    assert "## Negative controls" in text and "mixed_nat_no_dcutr" in text
    _golden("run-phase4.md", text)


def test_matrix_section(tmp_path):
    runbook = load_runbook(RUNBOOKS / "matrix.yaml")
    record = run_record("run00002", runbook, [], tmp_path, backend="fake", started_at=1_767_225_600.0, duration=0)
    text = render_markdown(record)
    assert "## NAT matrix (server \u00d7 client)" in text
    header = next(line for line in text.splitlines() if line.startswith("| server ↓"))
    assert header.count("|") == 10  # 8 client columns (cgnat included) + the row header


def test_junit_is_valid_xml_with_a_failure(tmp_path):
    _, result = _scenario(tmp_path, "mixed_nat_no_dcutr", dcutr=False)
    record = load_record(result.report_dir)
    suite = ET.fromstring(render_junit(record))
    assert suite.get("failures") == "0"  # fail was the expected verdict
    record["as_expected"] = False
    suite = ET.fromstring(render_junit(record))
    failure = suite.find("testcase/failure")
    assert failure is not None and "client.dcutr_direct" in failure.get("message")


def test_rerender_and_index(tmp_path):
    _, result = _scenario(tmp_path, "mixed_nat")
    (result.report_dir / "report.md").unlink()
    render_dir(result.report_dir)
    assert (result.report_dir / "report.md").read_text().startswith("# phase4-mixed-nat · `mixed_nat`")
    index = update_index(tmp_path).read_text()
    assert "[mixed_nat](mixed_nat/report.md)" in index and "✅" in index


def test_wrong_schema_version_is_bad_input(tmp_path):
    (tmp_path / "report.json").write_text(json.dumps({"schema": "dcutr-lab/report", "schema_version": 99}))
    with pytest.raises(BadInput, match="schema version 99"):
        load_record(tmp_path)


def test_charts_are_drawn_from_the_json(tmp_path):
    """A scenario report gets its timeline; a matrix run its heat map (PNG and SVG) with rates and latency."""
    import json

    from harness import charts
    from harness.report import SCHEMA, SCHEMA_VERSION, render_dir

    record = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "kind": "scenario",
        "scenario": "s",
        "verdict": "direct",
        "checkpoints": [
            {"name": "relay.listening", "node": "relay", "status": "met", "t": 0.4},
            {"name": "client.dcutr_direct", "node": "client", "status": "met", "t": 2.0},
        ],
    }
    assert charts.timeline(record, tmp_path) == [tmp_path / "timeline.png"]
    assert (tmp_path / "timeline.png").read_bytes()[:4] == b"\x89PNG"
    assert charts.timeline({**record, "checkpoints": []}, tmp_path / "none") == []  # nothing met: no chart
    matrix = {
        "servers": ["a", "b"],
        "clients": ["a", "b"],
        "cells": [
            [
                {"server": "a", "client": "a", "direct": 9, "trials": 10, "punch_p50_s": 1.2, "punch_p95_s": 2.0},
                {"server": "a", "client": "b", "direct": 0, "trials": 0},
            ],
            [
                {
                    "server": "b",
                    "client": "a",
                    "direct": 2,
                    "trials": 10,
                    "as_expected": False,
                    "punch_p50_s": 1.5,
                    "punch_p95_s": 3.0,
                },
                {"server": "b", "client": "b", "direct": 0, "trials": 10},
            ],
        ],
    }
    drawn = charts.heatmap(matrix, tmp_path)
    assert [p.name for p in drawn] == ["matrix.png", "matrix.svg"]
    svg = (tmp_path / "matrix.svg").read_text()
    assert "9/10" in svg and "2/10 ✗" in svg and "1.2s/2.0s" in svg
    assert charts.percentiles([1.0, 2.0, 3.0, 10.0]) == (2.5, 10.0)
    run = tmp_path / "run"
    run.mkdir()
    for row in matrix["cells"]:  # the rest of a cell record, as run_record writes it
        for cell in row:
            cell.setdefault("as_expected", True)
            cell.update(expected="direct", why="w", scenario="x", measured="direct" if cell["trials"] else None)
            cell.update(rate=None, punch_p50_s=cell.get("punch_p50_s"), punch_p95_s=cell.get("punch_p95_s"))
    (run / "report.json").write_text(
        json.dumps(
            {
                "schema": SCHEMA,
                "schema_version": SCHEMA_VERSION,
                "kind": "run",
                "run_id": "r1",
                "runbook": "m",
                "description": "",
                "backend": "docker",
                "started_at": None,
                "duration_s": 0,
                "as_expected": True,
                "scenarios": [],
                "matrix": matrix,
            }
        )
    )
    render_dir(run)
    assert "![direct rate per NAT pair](matrix.png)" in (run / "report.md").read_text()


def test_every_table_row_has_as_many_cells_as_its_header(tmp_path):
    """An `any_of` name (`client.dcutr_direct | client.session_inbound`) must not split a markdown table cell."""
    import re

    text = (GOLDEN / "scenario-no-dcutr.md").read_text() + (GOLDEN / "run-phase4.md").read_text()
    assert "client.dcutr_direct \\| client.session_inbound" in text

    def cells(row: str) -> int:
        return len(re.findall(r"(?<!\\)\|", row)) - 1

    header = None
    for line in text.splitlines():
        if not line.startswith("|"):
            header = None
            continue
        if header is None:
            header = cells(line)
        assert cells(line) == header, line
