"""`dcutr-lab verify --logs DIR --sut NAME`: check logs captured anywhere against a SUT's checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from harness.cli import app
from harness.console import console, verdict_style
from harness.errors import BadInput, LabError

STATUS_STYLE = {"met": "ok", "missed": "error", "skipped": "warn", "not reached": "muted"}


@app.command()
def verify(
    logs: Annotated[Path, typer.Option("--logs", "-l", help="Directory with one log per node (relay/server/client).")],
    sut: Annotated[str, typer.Option("--sut", help="Checkpoint set: reference, rusty-kaspa-poc, kaspad-bridge.")],
    node: Annotated[
        list[str] | None,
        typer.Option(
            "--node", help="NAME=FILE (relative to --logs) for a log whose name does not say its node; repeatable."
        ),
    ] = None,
    runbook: Annotated[
        Path | None, typer.Option("--runbook", help="Use this runbook's expect step, not the SUT's.")
    ] = None,
    expect: Annotated[str, typer.Option("--expect", help="Verdict you expect: direct, relayed or fail.")] = "direct",
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Report directory (default: reports/verify-<id>).")
    ] = None,
    hash_peer_ids: Annotated[bool, typer.Option("--hash-peer-ids", help="Replace peer ids by stable hashes.")] = False,
    sut_file: Annotated[Path | None, typer.Option("--sut-file", help="A SUT definition YAML of your own.")] = None,
    public: Annotated[
        list[str] | None,
        typer.Option("--public", help="NODE=ADDR: a node's public (NAT) address as your lab knows it; repeatable."),
    ] = None,
    accept_log_only: Annotated[
        bool,
        typer.Option("--accept-log-only", help="Let an unverified verdict (no ground truth) count as direct."),
    ] = False,
    replace_sut: Annotated[
        bool, typer.Option("--replace-sut", help="Let --sut-file replace the built-in SUT of the same name.")
    ] = False,
) -> None:
    """Match the logs in DIR in order, with facts; exit 0 when the verdict is as expected, 1 when not."""
    from harness.labels import new_run_id
    from harness.models import ExpectedVerdict, ScenarioExpect
    from harness.sut import load_sut_file, register_sut
    from harness.verify import discover_logs, verify_logs, write_verification_report

    if sut_file is not None:
        register_sut(load_sut_file(sut_file), source=sut_file, replace=replace_sut)
    if expect not in ("direct", "relayed", "fail"):
        raise BadInput(f"--expect {expect!r}: use direct, relayed or fail")
    expected = ScenarioExpect(verdict=ExpectedVerdict(expect))
    from harness.sut import get_sut

    files = discover_logs(logs, sut=get_sut(sut), given=_pairs(node or [], "--node", "NAME=FILE"))
    direct = relayed = None
    skew = 2.0
    if runbook is not None:
        from harness.runbook import load_runbook

        step = load_runbook(runbook).expect_step()
        if step is None:
            raise BadInput(f"{runbook}: no expect step")
        direct, relayed, skew = step.checkpoints, step.relayed, step.clock_skew
    conntrack_files = sorted(Path(logs).glob("*.conntrack")) if Path(logs).is_dir() else []
    verification = verify_logs(
        files,
        sut,
        conntrack_files=conntrack_files,
        direct=direct,
        relayed=relayed,
        hash_peer_ids=hash_peer_ids,
        clock_skew=skew,
        public=_pairs(public or [], "--public", "NODE=ADDR"),
    )
    out_dir = out or Path("reports") / f"verify-{new_run_id()}"
    # The report names the logs' directory only by its (sanitised) name: the path around it is the user's.
    source = Path(logs).resolve().name or str(logs)
    result = write_verification_report(
        verification, out_dir, sut_name=sut, expect=expected, source=source, accept_log_only=accept_log_only
    )
    console.print(_table(result))
    style = verdict_style(result.verdict.value)
    console.print(
        f"verdict [{style}]{result.verdict.value}[/] "
        f"({'[ok]as expected[/]' if result.as_expected else '[error]NOT as expected[/]'}, expected {expect})"
    )
    if result.first_missing is not None:
        console.print(f"first missing [bold]{result.first_missing.name}[/]: {result.first_missing.reason}")
    if result.verdict.value == "unverified":
        note = "accepted on log-only evidence (--accept-log-only)" if accept_log_only else "give --public and tables"
        console.print(f"[warn]the logs say direct; nothing independent confirms it[/] ({note})")
    console.print(f"report: {out_dir / 'report.md'}")
    if not result.as_expected:
        raise LabError(f"verdict {result.verdict.value}, expected {expect}")


def _pairs(pairs: list[str], option: str, form: str) -> dict[str, str]:
    given: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name or not value:
            raise BadInput(f"{option} {pair!r}: write {form}")
        given[name] = value
    return given


def _table(result) -> Table:
    table = Table(title="checkpoints (direct chain)")
    for column in ("#", "checkpoint", "status", "t", "evidence"):
        table.add_column(column)
    for index, record in enumerate(result.checkpoints, start=1):
        evidence = record.evidence[0].ref if record.evidence else record.reason[:80]
        t = f"{record.t:.2f}s" if record.t is not None else "-"
        style = STATUS_STYLE.get(record.status, "muted")
        table.add_row(str(index), record.name, f"[{style}]{record.status}[/]", t, evidence)
    return table
