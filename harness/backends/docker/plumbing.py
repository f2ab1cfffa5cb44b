"""The lab's plumbing, done from the lab machine: commands in a container's namespaces with its own binaries
(`nsenter`, milliseconds instead of a `docker exec`), files read and written through `/proc/<pid>/root`,
veth pairs and addresses. Where the lab machine is not the Docker host, it falls back to `docker exec`.

ContainerLab mixes this in; it gives the containers (`container()`) and the plain `exec`/`must`.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from harness.backends.base import ExecResult
from harness.errors import SetupError

if TYPE_CHECKING:
    from harness.backends.docker.lab import LabContainer

_NSENTER = shutil.which("nsenter")
_NS_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}


def _run_host(command: Sequence[str], what: str) -> None:
    """A command on the lab machine itself (only `ip link` to create veth pairs between namespaces)."""
    result = subprocess.run(list(command), capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise SetupError(f"{what} failed: `{' '.join(command)}`: {result.stderr.strip()}")


class Plumbing:
    def container(self, name: str) -> LabContainer:
        raise NotImplementedError

    def exec(self, target: str, command: Sequence[str], timeout: float = 30.0) -> ExecResult:
        raise NotImplementedError

    def must(self, target: str, command: Sequence[str], what: str, timeout: float = 30.0) -> str:
        raise NotImplementedError

    def ns_run(
        self, target: str, command: Sequence[str], *, stdin: str | None = None, timeout: float = 30.0
    ) -> ExecResult:
        """A short lab command (ip, nft, conntrack, ss) in `target`'s network and mount namespaces, run from
        the lab machine: the container's own binaries, without a round trip through the Docker daemon.

        For the lab's own plumbing only; a runbook's `run` step and every SUT go through `exec`."""
        if _NSENTER is None:
            if stdin is not None:
                command = ["sh", "-c", 'printf %s "$0" | "$@"', stdin, *command]
            return self.exec(target, command, timeout=timeout)
        pid = self.container(target).pid
        try:
            done = subprocess.run(
                [_NSENTER, "-t", str(pid), "-m", "-n", "--", *command],
                input=stdin,
                capture_output=True,
                text=True,
                timeout=timeout,
                env=_NS_ENV,
            )
        except subprocess.TimeoutExpired:
            return ExecResult(exit_code=124, output=f"timed out after {timeout:g}s")
        return ExecResult(exit_code=done.returncode, output=done.stdout + done.stderr)

    def ns_must(self, target: str, command: Sequence[str], what: str, *, stdin: str | None = None) -> str:
        result = self.ns_run(target, command, stdin=stdin)
        if result.exit_code != 0:
            raise SetupError(f"{what} on {target} failed (exit {result.exit_code}): {result.output.strip()}")
        return result.output

    def _rooted(self, target: str, path: str) -> Path:
        return Path(f"/proc/{self.container(target).pid}/root") / path.lstrip("/")

    def read_from(self, target: str, path: str, offset: int = 0) -> bytes:
        """The bytes of a file in `target` from `offset` on (b"" when it does not exist yet)."""
        try:
            with self._rooted(target, path).open("rb") as handle:
                handle.seek(offset)
                return handle.read()
        except FileNotFoundError:
            return b""
        except OSError:  # no /proc view of the container (not the Docker host): ask the container
            result = self.exec(target, ["sh", "-c", f"test -f {path} && tail -c +{offset + 1} {path} || true"])
            return result.output.encode()

    def file_size(self, target: str, path: str) -> int:
        try:
            return self._rooted(target, path).stat().st_size
        except FileNotFoundError:
            return 0
        except OSError:
            result = self.exec(target, ["sh", "-c", f"test -f {path} && wc -c < {path} || echo 0"])
            return int(result.output.strip() or 0)

    def wait_for_file(self, target: str, path: str, within: float) -> bool:
        """Whether a file in `target` is non-empty within `within` seconds (polled from the lab machine)."""
        deadline = time.monotonic() + within
        while True:
            if self.file_size(target, path) > 0:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)

    def put_file(self, target: str, path: str, content: str) -> None:
        rooted = self._rooted(target, path)
        try:
            rooted.parent.mkdir(parents=True, exist_ok=True)
            rooted.write_text(content)
            return
        except OSError:
            pass
        data = content.encode()
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            info = tarfile.TarInfo(name=os.path.basename(path))
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
        self.must(target, ["mkdir", "-p", os.path.dirname(path)], "mkdir")
        self.container(target).wrapped.put_archive(os.path.dirname(path), buffer.getvalue())

    def _veth(self, a: str, a_if: str, b: str, b_if: str) -> None:
        """A veth pair with one end in each container's namespace; it dies with them, nothing stays on the host."""
        pid_a, pid_b = self.container(a).pid, self.container(b).pid
        _run_host(
            ["ip", "link", "add", a_if, "netns", str(pid_a), "type", "veth", "peer", "name", b_if, "netns", str(pid_b)],
            f"veth {a}:{a_if} <-> {b}:{b_if}",
        )
        self._small_segments(a, a_if)
        self._small_segments(b, b_if)

    def ip_batch(self, target: str, commands: Sequence[str], what: str) -> None:
        """Several `ip` commands in one go (`ip -batch -`): addresses, links, routes."""
        self.ns_must(target, ["ip", "-batch", "-"], what, stdin="".join(f"{line}\n" for line in commands))

    def _address(self, target: str, ifname: str, cidr: str) -> None:
        self.ip_batch(target, [f"addr add {cidr} dev {ifname}", f"link set {ifname} up"], f"address {cidr} on {ifname}")

    def _small_segments(self, target: str, ifname: str) -> None:
        """No GSO super-frames on this interface: a user-space wire can only pass frames that fit the MTU."""
        self.ns_must(target, ["ip", "link", "set", "dev", ifname, "gso_max_size", "1500"], f"gso_max_size on {ifname}")
