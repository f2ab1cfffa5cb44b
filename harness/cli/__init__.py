"""The `dcutr-lab` command line: one module per command, each a thin function over the library.

Errors derived from `harness.errors.LabError` become one line on stderr and their exit code;
tracebacks are shown only with `--debug`.
"""

from __future__ import annotations

import sys

import typer
from rich.markup import escape

from harness.console import console, err_console
from harness.errors import LabError

app = typer.Typer(
    name="dcutr-lab",
    help="End-to-end validation lab for NAT hole punching (libp2p DCUtR) between private Kaspa nodes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_state = {"debug": False}


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors.")) -> None:
    _state["debug"] = debug


def _register() -> None:
    """Import the cmd_* modules; each adds itself to `app`, in name order so --help is stable."""
    import importlib
    import pkgutil

    import harness.cli as package

    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        if info.name.startswith("cmd_"):
            importlib.import_module(f"harness.cli.{info.name}")


def main(argv: list[str] | None = None) -> int:
    from harness.signals import install_cleanup_handlers

    install_cleanup_handlers()
    _register()
    try:
        # Without standalone mode click returns typer.Exit's code instead of raising it.
        code = app(args=argv, standalone_mode=False)
    except LabError as error:
        if _state["debug"]:
            console.print_exception()
        # One line, whatever the message holds: newlines folded, `[...]` not read as markup.
        err_console.print(f"[error]error:[/] {escape(' '.join(str(error).split()))}")
        return error.exit_code
    except typer.Exit as done:
        return done.exit_code
    except KeyboardInterrupt:
        err_console.print("[error]interrupted[/]: cleaned up what this command started")
        return 130
    except Exception as error:
        # Usage errors of the click that typer vendors: they know how to print themselves.
        if hasattr(error, "show") and isinstance(getattr(error, "exit_code", None), int):
            error.show()
            return 2
        if type(error).__name__ == "Abort":
            return 130
        raise
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
