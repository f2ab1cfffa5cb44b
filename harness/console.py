"""One rich console and theme for everything that prints: the CLI and the benchmarks.

When the output is not a terminal (CI logs, a pipe, a file) nothing is wrapped: an error stays the one line it
is, and a table is as wide as its content needs (up to `PIPE_WIDTH` columns, or `$COLUMNS` when set), not cut
to rich's default of 80.
"""

from __future__ import annotations

import os

from rich.console import Console
from rich.theme import Theme

THEME = Theme(
    {
        "error": "bold red",
        "ok": "bold green",
        "warn": "yellow",
        "step": "cyan",
        "muted": "dim",
        "verdict.direct": "bold green",
        "verdict.relayed": "bold yellow",
        "verdict.unverified": "bold magenta",
        "verdict.fail": "bold red",
    }
)
PIPE_WIDTH = 240


def make_console(*, stderr: bool = False) -> Console:
    console = Console(theme=THEME, stderr=stderr)
    if console.is_terminal:
        return Console(theme=THEME, stderr=stderr, soft_wrap=stderr)
    width = int(os.environ["COLUMNS"]) if os.environ.get("COLUMNS", "").isdigit() else PIPE_WIDTH
    return Console(theme=THEME, stderr=stderr, soft_wrap=True, width=width)


console = make_console()
err_console = make_console(stderr=True)


def verdict_style(verdict: str) -> str:
    return f"verdict.{verdict}" if verdict in ("direct", "relayed", "unverified", "fail") else "muted"
