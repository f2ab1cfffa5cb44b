"""Turn termination signals into KeyboardInterrupt, so every `finally:` and fixture teardown runs.

Python's default SIGTERM kills the interpreter on the spot: containers would outlive a CI job that is
cancelled. SIGINT already raises KeyboardInterrupt. `harness.cleanup` closes, at interpreter exit, whatever
a caller forgot to close.
"""

from __future__ import annotations

import signal
from types import FrameType

import harness.cleanup  # noqa: F401  (registers its interpreter-exit net)

_installed = False


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    # Restore the default so a second signal ends a cleanup that hangs.
    signal.signal(signum, signal.SIG_DFL)
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


def install_cleanup_handlers() -> None:
    global _installed
    if _installed:
        return
    _installed = True
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_interrupt)
