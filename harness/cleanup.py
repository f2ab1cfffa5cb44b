"""One registry of everything this process must tear down, whichever backend made it.

Backends register themselves when they start creating things and unregister in `close()`. The signal
handlers of `harness.signals` turn SIGTERM/SIGHUP into KeyboardInterrupt, so `finally:` blocks normally do
the work; `close_all()` is the last net, run at interpreter exit for whatever a caller forgot to close.
"""

from __future__ import annotations

import atexit
import contextlib
import threading
from typing import Protocol


class Closeable(Protocol):
    def close(self) -> None: ...


_OPEN: dict[int, Closeable] = {}
_LOCK = threading.Lock()


def register(thing: Closeable) -> None:
    with _LOCK:
        _OPEN[id(thing)] = thing


def unregister(thing: Closeable) -> None:
    with _LOCK:
        _OPEN.pop(id(thing), None)


def open_count() -> int:
    with _LOCK:
        return len(_OPEN)


def close_all() -> None:
    """Close everything still registered, newest first (a backend's lab after the backend itself)."""
    with _LOCK:
        things = list(_OPEN.values())
    for thing in reversed(things):
        with contextlib.suppress(Exception):
            thing.close()
        unregister(thing)


atexit.register(close_all)
