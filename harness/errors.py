"""Errors that carry their CLI exit code.

The CLI maps them to one line on stderr; tracebacks only with --debug.
Exit codes: 0 verdict as expected, 1 verdict not as expected, 2 bad input,
3 broken setup (Docker, mmdebstrap, root).
"""

from __future__ import annotations


class LabError(Exception):
    """Base class: a message meant for a human, plus an exit code."""

    exit_code = 1


class BadInput(LabError):
    """A file, field, host or name given by the user is wrong. Raised before anything starts."""

    exit_code = 2


class SetupError(LabError):
    """The machine cannot run the lab: no Docker daemon, no mmdebstrap, not root, a build step failed."""

    exit_code = 3
