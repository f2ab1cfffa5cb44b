"""One index over a whole nightly run: every runbook's scenarios, the NAT x NAT matrix, and trends against the
previous night.

    reports/nightly-<id>/            what the nightly workflow ran: run directories of `dcutr-lab run` (a run-level
      matrix-<id>/report.json          report.json each) and pytest's per-test directories (scenario-level
      kaspad-<id>/report.json          report.json files), in any depth
      fleet/<lab-id>/<scenario>/report.json
    ─ nightly_index(dir, previous) ─▶ nightly.json (schema dcutr-lab/nightly v1) and nightly.md (the job summary)

Contract: reads only `report.json` files (schema dcutr-lab/report v1, via harness.report.load_record); a run
record stands for the scenario and attempt records below it, a scenario record with no run record above it stands
for itself. An entry is keyed by runbook, scenario id and backend (`@ssh` when not Docker); several entries of one
key (pytest ran a scenario twice) are merged into one, their attempts added up. Trends compare each key with the
previous index's: worse (it was as expected and is not, or its success rate fell), better, new, gone, same; what
got worse is listed first. A file that is not a report is skipped and named in the index, never fatal; a previous
index that is not one is BadInput.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harness.errors import BadInput

SCHEMA = "dcutr-lab/nightly"
SCHEMA_VERSION = 1
TREND_ORDER = ("worse", "new", "gone", "better", "same")
_ICON = {"worse": "🔻", "better": "🔺", "new": "🆕", "gone": "⚪", "same": "·"}


def _entry(record: Mapping[str, Any], source: Path, root: Path) -> list[dict[str, Any]]:
    where = str(source.parent.relative_to(root)) if source.parent != root else "."
    if record.get("kind") == "run":
        entries = []
        for s in record.get("scenarios", []):
            rate = s.get("rate") or {}
            trials = int(rate.get("trials") or len(s.get("attempts", [])) or 1)
            successes = int(rate.get("successes") if rate.get("successes") is not None else int(s["as_expected"]))
            entries.append(
                {
                    "runbook": record.get("runbook", ""),
                    "scenario": s["id"],
                    "backend": record.get("backend") or "docker",
                    "label": s.get("label") or ("PASS" if s.get("as_expected") else "FAIL"),
                    "verdict": s.get("verdict"),
                    "expected": (s.get("expected") or {}).get("verdict"),
                    "as_expected": bool(s.get("as_expected")),
                    "successes": successes,
                    "trials": trials,
                    "duration_s": s.get("duration_s"),
                    "first_missing": (s.get("first_missing") or {}).get("checkpoint"),
                    "negative_control": bool(s.get("negative_control")),
                    "report": f"{where}/report.md",
                }
            )
        return entries
    expected = (record.get("expected") or {}).get("verdict")
    return [
        {
            "runbook": record.get("runbook", ""),
            "scenario": record.get("scenario", ""),
            "backend": record.get("backend") or "docker",
            "label": "PASS" if record.get("as_expected") else "FAIL",
            "verdict": record.get("verdict"),
            "expected": expected,
            "as_expected": bool(record.get("as_expected")),
            "successes": int(bool(record.get("as_expected"))),
            "trials": 1,
            "duration_s": record.get("duration_s"),
            "first_missing": (record.get("first_missing") or {}).get("checkpoint"),
            "negative_control": expected not in (None, "direct"),
            "error": record.get("error"),
            "report": f"{where}/report.md",
        }
    ]


def _merge(entries: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    merged: dict[str, dict[str, Any]] = {}
    for entry in entries:
        # The same scenario over SSH is another row than on Docker (the fleet runs phase 6 on both).
        backend = "" if entry["backend"] == "docker" else f"@{entry['backend']}"
        key = f"{entry['runbook']}:{entry['scenario']}{backend}"
        if key not in merged:
            merged[key] = dict(entry)
            continue
        into = merged[key]
        into["successes"] += entry["successes"]
        into["trials"] += entry["trials"]
        into["as_expected"] = into["as_expected"] and entry["as_expected"]
        if not entry["as_expected"]:
            for field in ("verdict", "first_missing", "report", "error"):
                into[field] = entry.get(field)
        labels = {into["label"], entry["label"]}
        into["label"] = "FAIL" if "FAIL" in labels else ("PASS-FLAKY" if "PASS-FLAKY" in labels else "PASS")
        into["duration_s"] = (into.get("duration_s") or 0) + (entry.get("duration_s") or 0)
    return merged


def collect(root: Path) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]], list[str]]:
    """(scenario entries by `runbook:scenario`, the matrices of run records, files skipped with the reason)."""
    from harness.report import load_record

    root = Path(root)
    found: list[tuple[Path, dict[str, Any]]] = []
    skipped: list[str] = []
    for path in sorted(root.rglob("report.json")):
        try:
            found.append((path, load_record(path.parent)))
        except BadInput as error:
            skipped.append(f"{path.relative_to(root)}: {str(error).split(': ', 1)[-1]}")
    run_dirs = [path.parent for path, record in found if record.get("kind") == "run"]
    entries: list[dict[str, Any]] = []
    matrices: list[dict[str, Any]] = []
    for path, record in found:
        if record.get("kind") != "run" and any(d in path.parents for d in run_dirs):
            continue  # an attempt of a run: the run record stands for it
        entries.extend(_entry(record, path, root))
        if record.get("kind") == "run" and record.get("matrix"):
            matrices.append({"runbook": record.get("runbook"), "run_id": record.get("run_id"), **record["matrix"]})
    return _merge(entries), matrices, skipped


def _rate(entry: Mapping[str, Any]) -> float:
    return entry["successes"] / entry["trials"] if entry.get("trials") else 0.0


def trends(current: Mapping[str, Mapping[str, Any]], previous: Mapping[str, Mapping[str, Any]] | None) -> list[dict]:
    """Each scenario's change since the previous index, what got worse first."""
    if previous is None:
        return []
    rows = []
    for key in sorted(set(current) | set(previous)):
        now, before = current.get(key), previous.get(key)
        if now is None:
            trend, why = "gone", "not run tonight"
        elif before is None:
            trend, why = "new", f"not in the previous index ({now['label']})"
        elif before["as_expected"] and not now["as_expected"]:
            trend, why = "worse", f"{before['label']} → {now['label']}"
        elif now["as_expected"] and not before["as_expected"]:
            trend, why = "better", f"{before['label']} → {now['label']}"
        elif _rate(now) < _rate(before):
            trend, why = "worse", f"rate {before['successes']}/{before['trials']} → {now['successes']}/{now['trials']}"
        elif _rate(now) > _rate(before):
            trend, why = "better", f"rate {before['successes']}/{before['trials']} → {now['successes']}/{now['trials']}"
        else:
            trend, why = "same", now["label"]
        rows.append({"key": key, "trend": trend, "why": why})
    rows.sort(key=lambda row: (TREND_ORDER.index(row["trend"]), row["key"]))
    return rows


def load_index(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise BadInput(f"{path}: no such file (the previous nightly.json)") from None
    except ValueError as error:
        raise BadInput(f"{path}: not valid JSON: {error}") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise BadInput(f"{path}: not a dcutr-lab nightly index")
    if data.get("schema_version") != SCHEMA_VERSION:
        raise BadInput(f"{path}: nightly index version {data.get('schema_version')} (this reads {SCHEMA_VERSION})")
    return data


def nightly_index(root: Path, previous: Path | None = None) -> dict[str, Any]:
    """nightly.json and nightly.md in `root`; returns the index."""
    root = Path(root)
    if not root.is_dir():
        raise BadInput(f"{root}: not a directory (the nightly run's reports)")
    before = load_index(previous)["scenarios"] if previous is not None else None
    scenarios, matrices, skipped = collect(root)
    if not scenarios:
        raise BadInput(f"{root}: no report.json of a run or scenario below it")
    index = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "root": root.name,
        "as_expected": all(e["as_expected"] for e in scenarios.values()),
        "scenarios": scenarios,
        "matrices": matrices,
        "trends": trends(scenarios, before),
        "previous": str(previous) if previous is not None else None,
        "skipped": skipped,
    }
    (root / "nightly.json").write_text(json.dumps(index, indent=2) + "\n")
    (root / "nightly.md").write_text(render(index))
    return index


def _cell(text: Any) -> str:
    return str("" if text is None else text).replace("|", "\\|").replace("\n", " ").replace("<", "&lt;")


def render(index: Mapping[str, Any]) -> str:
    scenarios = index["scenarios"]
    failed = [k for k, e in scenarios.items() if not e["as_expected"]]
    lines = [
        f"# dcutr-lab nightly · {index['root']}",
        "",
        f"{'✅ every scenario as expected' if not failed else f'❌ {len(failed)} not as expected'} · "
        f"{len(scenarios)} scenarios · generated {index['generated_at']}",
        "",
    ]
    rows = index["trends"]
    if rows:
        changed = [row for row in rows if row["trend"] != "same"]
        lines += ["## Since the previous night", ""]
        if changed:
            lines += ["| | scenario | change |", "|---|---|---|"]
            lines += [f"| {_ICON[r['trend']]} {r['trend']} | `{r['key']}` | {_cell(r['why'])} |" for r in changed]
        else:
            lines.append("Nothing changed.")
        lines.append("")
    elif index.get("previous") is None:
        lines += ["No previous index: no trends tonight.", ""]
    for matrix in index["matrices"]:
        lines += [f"## Matrix · {matrix['runbook']} (server rows, client columns)", ""]
        lines += ["| server \\ client | " + " | ".join(matrix["clients"]) + " |"]
        lines += ["|---" * (len(matrix["clients"]) + 1) + "|"]
        for server, row in zip(matrix["servers"], matrix["cells"], strict=False):
            cells = []
            for cell in row:
                mark = "✅" if cell.get("as_expected") else ("❌" if cell.get("measured") else "·")
                rate = f" {cell['rate']}" if cell.get("rate") else ""
                cells.append(f"{mark} {cell.get('measured') or '-'} (exp. {cell.get('expected')}){rate}")
            lines.append(f"| **{server}** | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Scenarios", "", "| scenario | label | verdict | expected | rate | first missing | report |"]
    lines += ["|---|---|---|---|---|---|---|"]
    ordered = sorted(scenarios.items(), key=lambda item: (item[1]["as_expected"], item[0]))
    for key, e in ordered:
        control = " (negative control)" if e.get("negative_control") else ""
        lines.append(
            f"| `{key}`{control} | **{e['label']}** | {e['verdict']} | {e['expected']} | "
            f"{e['successes']}/{e['trials']} | {_cell(e.get('first_missing') or '')} | [report]({e['report']}) |"
        )
    if index["skipped"]:
        lines += ["", "## Skipped files", ""] + [f"- {_cell(item)}" for item in index["skipped"]]
    return "\n".join(lines) + "\n"
