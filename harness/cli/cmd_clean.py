"""`dcutr-lab clean`: remove containers and networks a crashed or killed run left behind."""

from __future__ import annotations

import typer

from harness.cli import app
from harness.console import console


@app.command()
def clean(
    run: str | None = typer.Option(None, "--run", help="Only the objects of this run id (default: every run)."),
) -> None:
    """Remove every Docker container and network labelled dcutr-lab.run (or one run's)."""
    from harness.backends.docker import sweep

    containers, networks = sweep(run_id=run)
    scope = f"run {run}" if run else "all runs"
    console.print(f"[ok]clean[/]: removed {containers} container(s) and {networks} network(s) of {scope}")
