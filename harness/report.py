"""Reports: JSON first (schema versioned), markdown and JUnit XML rendered from the same records.

Per scenario, in its report dir: `report.json`, `report.md`, `junit.xml`, beside the sanitised `logs/`,
`conntrack/` and `routers/`. Per run of several scenarios (or attempts): a run-level `report.json` /
`report.md` / `junit.xml` that links to them. Across runs: `reports/index.md`. `dcutr-lab report RUN_DIR`
re-renders the markdown and XML from the JSON, so a template change never needs a lab rerun.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2

from harness.checkpoints import Evidence, NodeLog
from harness.errors import BadInput
from harness.results import CheckpointRecord, RepeatResult, ScenarioResult

if TYPE_CHECKING:
    from harness.runbook.model import Runbook

SCHEMA = "dcutr-lab/report"
SCHEMA_VERSION = 1
TEMPLATES = Path(__file__).resolve().parent / "templates"


def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["seconds"] = _seconds
    env.filters["cell"] = _cell
    env.filters["code"] = _code
    env.filters["evidence_link"] = _evidence_link
    return env


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}s" if abs(value) < 10 else f"{value:.1f}s"


def _one_line(value: Any) -> str:
    text = "" if value is None else str(value)
    return text.replace("\r", " ").replace("\n", " ").replace("|", "\\|")


def _cell(value: Any) -> str:
    """Safe markdown text: one line, pipes escaped, and `<RELAY_IP>` kept visible (GitHub drops unknown tags)."""
    return _one_line(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _code(value: Any, limit: int = 200) -> str:
    """A code span: shown literally, so placeholders need no escaping there."""
    text = _one_line(value)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    text = text.replace("`", "'")
    return f"`{text}`" if text else "` `"


def _evidence_link(evidence: Mapping[str, Any], prefix: str = "") -> str:
    target = f"{prefix}{evidence['file']}"
    if evidence.get("line"):
        return f"[{evidence['file']}:{evidence['line']}]({target}#L{evidence['line']})"
    return f"[{evidence['file']}]({target})"


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, tz=UTC).isoformat(timespec="seconds")


def _evidence(items: Sequence[Evidence]) -> list[dict[str, Any]]:
    return [{"file": e.file, "line": e.line, "text": e.text, "note": e.note} for e in items]


def _fact(value: Any) -> Any:
    """JSON keeps numbers; booleans read like the logs print them."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


# ---------------------------------------------------------------------------------------------------------
# records
# ---------------------------------------------------------------------------------------------------------


def scenario_record(result: ScenarioResult) -> dict[str, Any]:
    """The JSON record of one scenario run. Plain data: no real address in it."""

    def checkpoints(records: Sequence[CheckpointRecord]) -> list[dict[str, Any]]:
        return [
            {
                "name": r.name,
                "node": r.node,
                "status": r.status,
                "t": _round(r.t),
                "facts": {k: _fact(v) for k, v in r.facts.items() if not isinstance(v, dict)},
                "evidence": _evidence(r.evidence),
                "reason": r.reason,
            }
            for r in records
        ]

    missing = result.first_missing
    topology = result.topology
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "kind": "scenario",
        "runbook": result.runbook,
        "scenario": result.scenario_id,
        "description": result.description,
        "markers": list(result.markers),
        "run_id": result.run_id,
        "backend": result.backend,
        "attempt": result.attempt,
        "started_at": _iso(result.started_at),
        "duration_s": _round(result.duration),
        "verdict": result.verdict.value,
        "expected": {
            "verdict": result.expected.verdict.value,
            "first_missing": result.expected.first_missing,
        },
        "as_expected": result.as_expected,
        "first_missing": None
        if missing is None
        else {"checkpoint": missing.name, "reason": missing.reason, "evidence": _evidence(missing.evidence)},
        "error": result.error,
        "topology": {
            "nodes": {
                name: {"role": node.role.value, "sut": node.sut, "nat_profile": node.nat_profile}
                for name, node in (topology.nodes.items() if topology else [])
            }
        },
        "checkpoints": checkpoints(result.checkpoints),
        "relayed_checkpoints": checkpoints(result.relayed_checkpoints),
        "timings": {k: _round(v) for k, v in result.timings.items()},
        "steps": [
            {
                "index": s.index,
                "action": s.action,
                "summary": s.summary,
                "status": s.status,
                "t": _round(s.t),
                "duration": _round(s.duration),
                "detail": s.detail,
            }
            for s in result.steps
        ],
        "conntrack": [{"router": t.router, "file": t.file, "required": t.required} for t in result.conntrack],
        "environment": dict(result.environment),
        "placeholders": list(result.placeholders),
        "notes": list(result.notes),
        "logs": [],
    }


def _log_files(report_dir: Path, logs: Mapping[str, NodeLog] | None) -> list[dict[str, Any]]:
    found = []
    if logs:
        for name, log in logs.items():
            found.append({"node": name, "file": log.file, "lines": len(log.lines)})
    else:
        for path in sorted((report_dir / "logs").glob("*.log")):
            found.append({"node": path.stem, "file": f"logs/{path.name}", "lines": _count_lines(path)})
    return found


def _count_lines(path: Path) -> int:
    with path.open(errors="replace") as handle:
        return sum(1 for _ in handle)


# ---------------------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------------------


def write_scenario_report(result: ScenarioResult, logs: Mapping[str, NodeLog] | None = None) -> Path:
    """report.json, report.md and junit.xml of one scenario run, in its report dir."""
    report_dir = Path(result.report_dir)
    record = scenario_record(result)
    record["logs"] = _log_files(report_dir, logs)
    write_json(report_dir / "report.json", record)
    render_dir(report_dir)
    return report_dir / "report.md"


def write_json(path: Path, record: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, sort_keys=False) + "\n")


def load_record(report_dir: Path) -> dict[str, Any]:
    path = Path(report_dir) / "report.json"
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise BadInput(f"{path}: no report.json here (is this a run directory?)") from None
    except ValueError as error:
        raise BadInput(f"{path}: not valid JSON: {error}") from None
    if record.get("schema") != SCHEMA:
        raise BadInput(f"{path}: not a dcutr-lab report")
    if record.get("schema_version") != SCHEMA_VERSION:
        raise BadInput(
            f"{path}: report schema version {record.get('schema_version')} (this dcutr-lab reads {SCHEMA_VERSION})"
        )
    return record


def _latency(punches: Sequence[float]) -> dict[str, float | None]:
    from harness.charts import percentiles

    p50, p95 = percentiles(punches)
    return {"punch_p50_s": _round(p50), "punch_p95_s": _round(p95)}


def render_dir(report_dir: Path) -> list[Path]:
    """(Re)render report.md, junit.xml and the charts of a report dir from its report.json."""
    from harness import charts

    report_dir = Path(report_dir)
    record = load_record(report_dir)
    drawn = charts.timeline(record, report_dir) if record.get("kind") == "scenario" else []
    if record.get("matrix"):
        drawn += charts.heatmap(record["matrix"], report_dir)
    markdown = render_markdown(record, charts=[p.name for p in drawn if p.suffix == ".png"])
    (report_dir / "report.md").write_text(markdown)
    (report_dir / "junit.xml").write_text(render_junit(record))
    return [report_dir / "report.md", report_dir / "junit.xml"]


def render_markdown(record: Mapping[str, Any], charts: Sequence[str] = ()) -> str:
    template = "scenario.md.j2" if record.get("kind") == "scenario" else "run.md.j2"
    return _env().get_template(template).render(r=record, present=_present_columns, charts=list(charts))


def _present_columns(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> list[str]:
    """Drop table columns that are empty in every row."""
    return [c for c in columns if any(row.get(c) not in (None, "", [], {}) for row in rows)]


def render_junit(record: Mapping[str, Any]) -> str:
    cases = [record] if record.get("kind") == "scenario" else list(record.get("scenarios", []))
    suite = ET.Element(
        "testsuite",
        name=str(record.get("runbook", "dcutr-lab")),
        tests=str(len(cases)),
        failures=str(sum(1 for c in cases if not c.get("as_expected"))),
        timestamp=str(record.get("started_at") or ""),
        time=f"{float(record.get('duration_s') or 0):.3f}",
    )
    for case in cases:
        name = case.get("scenario") or case.get("id")
        element = ET.SubElement(
            suite,
            "testcase",
            classname=str(record.get("runbook", "dcutr-lab")),
            name=str(name),
            time=f"{float(case.get('duration_s') or 0):.3f}",
        )
        verdict = case.get("verdict")
        expected = case.get("expected", {}).get("verdict")
        if not case.get("as_expected"):
            missing = case.get("first_missing") or {}
            message = f"verdict {verdict}, expected {expected}"
            if missing:
                message += f"; first missing {missing.get('checkpoint')}: {missing.get('reason')}"
            failure = ET.SubElement(element, "failure", message=message, type="verdict")
            failure.text = message
        out = ET.SubElement(element, "system-out")
        out.text = f"verdict: {verdict} (expected {expected}){' label: ' + case['label'] if case.get('label') else ''}"
    ET.indent(suite)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suite, encoding="unicode") + "\n"


def run_record(
    run_id: str,
    runbook: Runbook,
    repeats: Sequence[RepeatResult],
    run_dir: Path,
    *,
    backend: str,
    started_at: float,
    duration: float,
) -> dict[str, Any]:
    """The run-level record over scenarios, each with all its attempts."""
    from harness.matrix import cell_ok, direct_rate, grid, profiles

    scenarios = []
    for repeat in repeats:
        final = repeat.final
        attempts = [
            {
                "attempt": a.attempt,
                "dir": _relative(a.report_dir, run_dir),
                "verdict": a.verdict.value,
                "as_expected": a.as_expected,
                "first_missing": a.first_missing_text,
                "duration_s": _round(a.duration),
            }
            for a in repeat.attempts
        ]
        rate = direct_rate([a.verdict.value for a in repeat.attempts])
        scenarios.append(
            {
                "id": repeat.scenario_id,
                "description": final.description,
                "markers": list(final.markers),
                "label": repeat.label,
                "verdict": final.verdict.value,
                "expected": {
                    "verdict": final.expected.verdict.value,
                    "first_missing": final.expected.first_missing,
                },
                "as_expected": cell_ok(final.expected, [a.verdict.value for a in repeat.attempts])
                if final.expected.direct_rate is not None
                else repeat.label != "FAIL",
                "first_missing": None
                if final.first_missing is None
                else {"checkpoint": final.first_missing.name, "reason": final.first_missing.reason},
                "negative_control": final.expected.verdict.value != "direct",
                "timings": {k: _round(v) for k, v in final.timings.items()},
                "duration_s": _round(sum(a.duration for a in repeat.attempts)),
                "attempts": attempts,
                "rate": {"successes": rate.successes, "trials": rate.trials, "low": rate.low, "high": rate.high},
                "topology": {
                    name: node.nat_profile for name, node in (final.topology.nodes.items() if final.topology else [])
                },
            }
        )
    matrix = None
    if runbook.matrix is not None:
        results = {s["id"]: [a["verdict"] for a in s["attempts"]] for s in scenarios}
        punches = {
            r.scenario_id: [a.timings["punch"] for a in r.attempts if a.timings.get("punch") is not None]
            for r in repeats
        }
        servers, clients = profiles(runbook)
        matrix = {
            "servers": servers,
            "clients": clients,
            "cells": [
                [
                    {
                        "server": c.server,
                        "client": c.client,
                        "scenario": c.scenario_id,
                        "expected": c.expected,
                        "why": c.why,
                        "measured": c.measured,
                        "rate": str(c.rate) if c.rate else None,
                        "direct": c.rate.successes if c.rate else 0,
                        "trials": c.rate.trials if c.rate else 0,
                        **_latency(punches.get(c.scenario_id, [])),
                        "as_expected": c.as_expected,
                    }
                    for c in row
                ]
                for row in grid(runbook, results)
            ],
        }
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "kind": "run",
        "run_id": run_id,
        "runbook": runbook.name,
        "description": runbook.description,
        "backend": backend,
        "started_at": _iso(started_at),
        "duration_s": _round(duration),
        "as_expected": all(s["as_expected"] for s in scenarios),
        "scenarios": scenarios,
        "matrix": matrix,
    }


def _relative(path: Path, parent: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path(parent).resolve()))
    except ValueError:
        return str(path)


def write_run_report(run_dir: Path, record: Mapping[str, Any]) -> Path:
    write_json(Path(run_dir) / "report.json", record)
    render_dir(Path(run_dir))
    return Path(run_dir) / "report.md"


def update_index(reports_root: Path) -> Path:
    """reports/index.md: one row per run directory that holds a report.json, newest first."""
    reports_root = Path(reports_root)
    rows = []
    for path in sorted(reports_root.glob("*/report.json")):
        try:
            record = load_record(path.parent)
        except BadInput:
            continue
        if record.get("kind") == "scenario":
            summary = f"{record['scenario']}: {record['verdict']}"
            labels = ["PASS" if record.get("as_expected") else "FAIL"]
        else:
            summary = ", ".join(f"{s['id']}: {s['label']}" for s in record.get("scenarios", []))
            labels = [s["label"] for s in record.get("scenarios", [])]
        rows.append(
            {
                "dir": path.parent.name,
                "started_at": record.get("started_at") or "",
                "runbook": record.get("runbook", ""),
                "backend": record.get("backend", ""),
                "ok": record.get("as_expected", False),
                "labels": labels,
                "summary": summary,
            }
        )
    rows.sort(key=lambda row: row["started_at"], reverse=True)
    index = reports_root / "index.md"
    index.write_text(_env().get_template("index.md.j2").render(rows=rows))
    return index
