"""HostProcess against real processes, entering this test's own namespaces (no Docker needed): output in
order and whole, the process's own exit code, Docker's 128+N for a signal, stop's SIGTERM then SIGKILL."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from harness.backends.docker.hostproc import HostProcess

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("nsenter") is None, reason="needs root and nsenter")
ENV = {"PATH": "/usr/bin:/bin", "GREETING": "hello"}


def _run(script: str) -> HostProcess:
    return HostProcess("t", os.getpid(), ["sh", "-c", script], ENV)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _ended(process: HostProcess, within: float = 10.0) -> int:
    deadline = time.monotonic() + within
    while (code := process.exit_code()) is None:
        assert time.monotonic() < deadline, "the process never ended"
        time.sleep(0.01)
    return code


def test_output_is_whole_and_in_order_and_the_exit_code_is_the_process_own() -> None:
    process = _run('for i in $(seq 1 2000); do echo "line $i"; done; echo "$GREETING" >&2; printf tail; exit 3')
    assert _ended(process) == 3
    lines = process.final()
    assert lines[:2000] == [f"line {i}" for i in range(1, 2001)]
    assert lines[2000:] == ["hello", "tail"]  # stderr merged in order; a last line without newline kept


def test_lines_grow_while_it_runs() -> None:
    process = _run("echo first; sleep 5; echo second")
    deadline = time.monotonic() + 5
    while process.lines() != ["first"]:
        assert time.monotonic() < deadline, process.lines()
        time.sleep(0.01)
    assert process.exit_code() is None
    process.kill()
    assert _ended(process) == 137
    assert process.final() == ["first"]


def test_stop_terminates_and_a_process_that_ignores_it_is_killed() -> None:
    polite = _run("sleep 30")
    began = time.monotonic()
    polite.stop(timeout=5)
    assert _ended(polite) == 143 and time.monotonic() - began < 2

    stubborn = _run("trap '' TERM; echo ready; while :; do sleep 0.05; done")
    deadline = time.monotonic() + 5
    while stubborn.lines() != ["ready"]:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    stubborn.stop(timeout=0.5)
    assert _ended(stubborn) == 137


def test_what_it_leaves_behind_dies_with_it() -> None:
    """As in a container: a child that outlives the process neither keeps running nor holds the log open."""
    process = _run("sleep 30 & echo $!; exit 0")
    assert _ended(process) == 0
    began = time.monotonic()
    (orphan,) = process.final()
    assert time.monotonic() - began < 2
    deadline = time.monotonic() + 2
    while _alive(int(orphan)):
        assert time.monotonic() < deadline, f"pid {orphan} outlived the process"
        time.sleep(0.01)
