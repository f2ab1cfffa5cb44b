"""One rich console and theme for everything that prints: the CLI and the benchmarks."""

from __future__ import annotations

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

console = Console(theme=THEME)
err_console = Console(theme=THEME, stderr=True)


def verdict_style(verdict: str) -> str:
    return f"verdict.{verdict}" if verdict in ("direct", "relayed", "unverified", "fail") else "muted"
