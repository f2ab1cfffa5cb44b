"""`dcutr-lab report RUN_DIR`: re-render report.md and junit.xml from report.json, and reports/index.md.
`--nightly`: RUN_DIR holds a whole nightly run; write its index (harness.nightly)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from harness.cli import app
from harness.console import console


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="A run directory (reports/<run-id>) or a scenario's directory.")],
    index: Annotated[
        bool, typer.Option("--index/--no-index", help="Also rewrite the index of the parent folder.")
    ] = True,
    nightly: Annotated[
        bool,
        typer.Option("--nightly", help="RUN_DIR holds several runs: write one index (nightly.md/.json) over them."),
    ] = False,
    previous: Annotated[
        Path | None, typer.Option("--previous", help="--nightly: the previous night's nightly.json, for trends.")
    ] = None,
) -> None:
    """Render the markdown and JUnit XML of RUN_DIR (and of every scenario/attempt in it) from the JSON."""
    from harness.report import render_dir, update_index

    if nightly or previous is not None:
        from harness.errors import BadInput
        from harness.nightly import nightly_index

        if not nightly:
            raise BadInput("--previous goes with --nightly")
        built = nightly_index(run_dir, previous)
        console.print(f"[ok]wrote[/] {run_dir / 'nightly.md'} ({len(built['scenarios'])} scenarios)")
        return

    written = []
    for record in sorted(run_dir.glob("**/report.json"), key=lambda p: len(p.parts), reverse=True):
        written += render_dir(record.parent)
    if not written:
        written = render_dir(run_dir)  # raises BadInput with the reason
    for path in written:
        console.print(f"[ok]wrote[/] {path}")
    if index:
        console.print(f"[ok]wrote[/] {update_index(run_dir.parent)}")
