"""`dcutr-lab run RUNBOOK`: run a runbook's scenarios on a backend and write their reports."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from harness.cli import app
from harness.console import console, verdict_style
from harness.errors import BadInput, LabError

LABEL_STYLE = {"PASS": "ok", "PASS-FLAKY": "warn", "FAIL": "error"}


@app.command()
def run(
    runbook: Annotated[Path, typer.Argument(help="A runbook YAML file, e.g. runbooks/phase4-mixed-nat.yaml.")],
    backend: Annotated[str, typer.Option("--backend", "-b", help="Where nodes run: docker or ssh.")] = "docker",
    scenario: Annotated[
        list[str] | None,
        typer.Option("--scenario", "-s", help="Scenario id to run (repeatable; default: all of the runbook)."),
    ] = None,
    marker: Annotated[str | None, typer.Option("--marker", "-m", help="Only scenarios carrying this marker.")] = None,
    repeat: Annotated[
        int,
        typer.Option(
            "--repeat", "-n", min=0, help="Run each scenario exactly N times (success rate with a 95% interval)."
        ),
    ] = 0,
    retries: Annotated[
        bool,
        typer.Option(
            "--retries/--no-retries", help="Without --repeat: retry up to 3 attempts (PASS / PASS-FLAKY / FAIL)."
        ),
    ] = True,
    reports: Annotated[
        Path, typer.Option("--reports", envvar="DCUTR_LAB_REPORTS", help="Where run directories go.")
    ] = Path("reports"),
    run_id: Annotated[
        str | None,
        typer.Option("--run-id", help="Name the run (default: random); its labs are labelled <run-id>aN."),
    ] = None,
    inventory: Annotated[Path | None, typer.Option("--inventory", "-i", help="Ansible-format inventory (ssh).")] = None,
    accept_new_host_keys: Annotated[
        bool,
        typer.Option(
            "--accept-new-host-keys", help="ssh: trust host keys not in known_hosts, for this run only (never changed)."
        ),
    ] = False,
    poll: Annotated[
        float | None,
        typer.Option("--poll", help="Seconds between log polls while waiting (default: the runbook's poll)."),
    ] = None,
) -> None:
    """Run RUNBOOK's scenarios; exit 0 when every verdict is as expected, 1 otherwise, 2 on bad input."""
    from harness.labels import new_run_id
    from harness.report import run_record, update_index, write_run_report
    from harness.runbook import load_runbook, run_repeated

    loaded = load_runbook(runbook)  # bad runbooks fail here, before anything starts
    if backend == "ssh" and inventory is not None:
        from harness.backends.ssh import load_inventory

        load_inventory(inventory)  # likewise a bad inventory: no report folder is made for a run that never starts
    chosen = _select(loaded, scenario or [], marker)
    if run_id is not None and not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,30}", run_id):
        raise BadInput(f"--run-id {run_id!r}: use 1-31 lowercase letters, digits and dashes")
    run_id = run_id or new_run_id()
    run_dir = reports / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    console.print(
        f"[step]run[/] {loaded.name} · {len(chosen)} scenario(s) on {backend} · run [bold]{run_id}[/] → {run_dir}"
    )

    def make_backend(attempt: int):
        from harness.backends import create_backend

        # One lab per attempt, named after the run so `dcutr-lab clean --run <run-id>aN` finds it.
        options = {"accept_new_host_keys": True} if accept_new_host_keys else {}
        return create_backend(backend, run_id=f"{run_id}a{attempt}", inventory=inventory, **options)

    started = time.time()
    results = []
    for scenario_id in chosen:
        console.rule(f"[step]{scenario_id}[/]")
        with console.status(f"{scenario_id}: starting", spinner="dots") as status:

            def progress(message: str, status=status, scenario_id=scenario_id) -> None:
                status.update(f"{scenario_id}: {message}")
                console.print(f"  [muted]{time.strftime('%H:%M:%S')}[/] {message}")

            attempts = repeat if repeat > 0 else (None if retries else 1)
            results.append(
                run_repeated(
                    loaded,
                    scenario_id,
                    make_backend,
                    run_dir / scenario_id,
                    attempts=attempts,
                    progress=progress,
                    poll_interval=poll,
                )
            )
    record = run_record(
        run_id, loaded, results, run_dir, backend=backend, started_at=started, duration=time.time() - started
    )
    report = write_run_report(run_dir, record)
    update_index(reports)
    _link_latest(reports, run_dir)
    console.print(_table(record))
    console.print(f"report: {report}")
    if not record["as_expected"]:
        failed = [s["id"] for s in record["scenarios"] if not s["as_expected"]]
        # LabError carries exit code 1 (typer.Exit's code is lost under standalone_mode=False).
        raise LabError(f"not as expected: {', '.join(failed)} (see {report})")


def _select(runbook, wanted: list[str], marker: str | None) -> list[str]:
    known = runbook.scenarios_by_id
    unknown = [s for s in wanted if s not in known]
    if unknown:
        raise BadInput(f"{runbook.name}: no scenario {', '.join(unknown)} (known: {', '.join(known)})")
    chosen = wanted or list(known)
    if marker:
        chosen = [s for s in chosen if marker in known[s].markers]
    if not chosen:
        raise BadInput(f"{runbook.name}: no scenario selected (marker {marker!r})")
    return chosen


def _table(record: dict) -> Table:
    table = Table(title=f"{record['runbook']} · run {record['run_id']}")
    for column in ("scenario", "label", "verdict", "expected", "attempts", "first missing"):
        table.add_column(column)
    for s in record["scenarios"]:
        missing = s["first_missing"]["checkpoint"] if s["first_missing"] else ""
        table.add_row(
            s["id"],
            f"[{LABEL_STYLE[s['label']]}]{s['label']}[/]",
            f"[{verdict_style(s['verdict'])}]{s['verdict']}[/]",
            s["expected"]["verdict"],
            str(len(s["attempts"])),
            missing,
        )
    return table


def _link_latest(reports: Path, run_dir: Path) -> None:
    """`reports/latest` points at the newest run (best effort: some filesystems have no symlinks)."""
    latest = reports / "latest"
    try:
        if latest.is_symlink() or latest.exists():
            latest.unlink()
        latest.symlink_to(run_dir.name, target_is_directory=True)
    except OSError:
        pass
