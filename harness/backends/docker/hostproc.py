"""A node's process inside its host container, not in a container of its own.

The host container runs the node's image, so the binary, the libraries it links and the image's environment
are all in it; the process joins the host's mount, network and pid namespaces with `nsenter`, started from
the lab machine (as every lab command is, `plumbing.py`). Why: creating and starting a container costs about
0.2 s on a 2-core machine, three per attempt; `nsenter` costs milliseconds.

What a process container gave, it keeps:
- its output, stdout and stderr merged in order, read from one pipe by a thread; `lines()` hands out complete
  lines, `final()` waits for the end of the pipe once the process ended, so no line is lost;
- its own exit code (death by signal N reads 128+N, as Docker reports it);
- no leak whatever happens to the harness: the process lives in the host container's pid namespace, so the
  kernel kills it when the container goes (the lab's close, `dcutr-lab clean`, the cleanup on Ctrl-C).

`nsenter` forks to enter a pid namespace and waits for its child without passing signals on, so SIGTERM goes
to the child itself (found in /proc), and nsenter then exits as its child did. The process is not its pid
namespace's init, so what it leaves behind would outlive it (and hold the pipe open): once it has ended, or on
kill, its whole process group (its own session, started by the lab) gets SIGKILL, as a container's processes
die with the container's init.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from harness.errors import SetupError

FORK_WITHIN = 2.0  # seconds nsenter may take to fork the process into the namespace
DRAIN_WITHIN = 5.0  # seconds the pipe may stay open after the process ended (a child of it holding it)


class HostProcess:
    """One run of a node's command inside the host container whose init has pid `host_pid` on the machine."""

    def __init__(self, name: str, host_pid: int, command: Sequence[str], env: Mapping[str, str]) -> None:
        nsenter = shutil.which("nsenter")
        if nsenter is None:
            raise SetupError("nsenter (util-linux) is missing on the lab machine: install util-linux")
        self.name = name
        self._lock = threading.Lock()
        self._lines: list[str] = []
        self._partial = b""
        self._drained = threading.Event()
        self._popen = subprocess.Popen(
            # Its host's mount, UTS (host name), IPC, network and pid namespaces: what a container sharing them had.
            [nsenter, "-t", str(host_pid), "-m", "-u", "-i", "-n", "-p", "--", *command],
            env={"HOME": "/root", **env},  # Docker's default for root, unless the image or node says otherwise
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C meant for the harness is not the SUT's: the lab stops it
        )
        self._reader = threading.Thread(target=self._read, name=f"out-{name}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._popen.stdout is not None
        fd = self._popen.stdout.fileno()
        try:
            while chunk := os.read(fd, 65536):
                with self._lock:
                    *complete, self._partial = (self._partial + chunk).split(b"\n")
                    self._lines.extend(line.decode("utf-8", "replace") for line in complete)
        except OSError:
            pass
        finally:
            with self._lock:
                if self._partial:  # a last line without its newline is still what it said
                    self._lines.append(self._partial.decode("utf-8", "replace"))
                    self._partial = b""
            self._drained.set()
            with contextlib.suppress(OSError):
                self._popen.stdout.close()

    # -- output ----------------------------------------------------------------------------------------

    def lines(self) -> list[str]:
        with self._lock:
            return list(self._lines)

    def final(self) -> list[str]:
        """Every line, all of them once the process ended (the pipe read to its end)."""
        if self._popen.poll() is not None:
            self._kill_group()  # what it left behind goes with it and lets the pipe close
            self._drained.wait(DRAIN_WITHIN)
        return self.lines()

    # -- state and signals -----------------------------------------------------------------------------

    def exit_code(self) -> int | None:
        code = self._popen.poll()
        if code is None:
            return None
        self.final()  # what it printed on its way out is in the log before its exit is told
        return 128 - code if code < 0 else code

    def _target(self) -> int:
        """The pid to signal: nsenter's child (the command), or nsenter itself before it has forked."""
        deadline = time.monotonic() + FORK_WITHIN
        pid = self._popen.pid
        while self._popen.poll() is None:
            with contextlib.suppress(OSError):
                children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
                if children:
                    return int(children[0])
            if time.monotonic() >= deadline:
                break
            time.sleep(0.005)
        return pid

    def _signal(self, signum: int) -> None:
        if self._popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._target(), signum)

    def stop(self, timeout: float) -> None:
        """SIGTERM, then SIGKILL after `timeout` seconds (Docker's stop)."""
        self._signal(signal.SIGTERM)
        try:
            self._popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        self._kill_group()
        self._popen.wait()

    def _kill_group(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._popen.pid, signal.SIGKILL)
