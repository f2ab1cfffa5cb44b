"""Content-addressed binary upload, run against a local "host": this machine's sh and file system.

`upload_binaries` only needs `run`, `must`, `upload` and the facts `prepare` learnt, so a host whose shell is
the local /bin/sh runs the very scripts a remote one would: the cache, the sha256sum check, the links.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from harness.backends.base import ExecResult
from harness.backends.ssh.upload import LocalBinary, elf_machines, local_binaries, sha256, upload_binaries
from harness.errors import BadInput, SetupError


def elf(path: Path, machine: int) -> Path:
    """A file with a little-endian ELF header for `machine` (e_machine), and a body."""
    header = b"\x7fELF\x02\x01\x01" + bytes(11) + machine.to_bytes(2, "little")
    path.write_bytes(header + b"#!/bin/sh\n" + path.name.encode())
    return path


@dataclass
class LocalHost:
    """The part of RemoteHost that upload_binaries uses, on this machine."""

    home: str
    run_dir: str
    machine: str = "x86_64"
    alias: str = "local"
    where: str = "inventory.yml: host 'local'"
    corrupt: bool = False
    uploads: list[str] = field(default_factory=list)

    def run(self, script: str, *, timeout: float = 60.0, sudo: bool = False) -> ExecResult:
        done = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=timeout, check=False)
        return ExecResult(done.returncode, done.stdout + done.stderr)

    def must(self, script: str, what: str, *, timeout: float = 60.0, sudo: bool = False) -> str:
        result = self.run(script, timeout=timeout)
        if result.exit_code != 0:
            raise SetupError(f"{what} failed: {result.output}")
        return result.output

    def upload(self, local: Path, path: str) -> None:
        self.uploads.append(local.name)
        shutil.copyfile(local, path)
        if self.corrupt:
            with open(path, "ab") as handle:
                handle.write(b"flipped on the wire")


@pytest.fixture
def host(tmp_path: Path) -> LocalHost:
    home = tmp_path / "home"
    run_dir = home / ".dcutr-lab" / "run-1"
    (run_dir / "bin").mkdir(parents=True)
    return LocalHost(home=str(home), run_dir=str(run_dir))


@pytest.fixture
def relay(tmp_path: Path) -> LocalBinary:
    path = elf(tmp_path / "kaspa_p2p_relay", 0x3E)
    return LocalBinary(path.name, path, sha256(path))


def test_sha256_is_the_content_hash_and_follows_changes(tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(b"a" * 3_000_000)  # more than one read chunk
    assert sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    path.write_bytes(b"b" * 10)
    os.utime(path, ns=(1, 1))  # a new (size, mtime): the cached hash must not be reused
    assert sha256(path) == hashlib.sha256(b"b" * 10).hexdigest()


def test_elf_machine_names_what_runs_it(tmp_path):
    assert elf_machines(elf(tmp_path / "x86", 0x3E)) == ("x86_64", "amd64")
    assert elf_machines(elf(tmp_path / "arm64", 0xB7))[0] == "aarch64"
    assert elf_machines(elf(tmp_path / "riscv", 0xF3)) is None  # unknown machine: not refused
    (tmp_path / "script").write_text("#!/bin/sh\necho not elf\n")
    assert elf_machines(tmp_path / "script") is None
    assert elf_machines(Path(os.path.realpath("/bin/sh"))) is not None  # this machine's own binaries


def test_local_binaries_missing_or_unknown_is_one_line(tmp_path):
    with pytest.raises(SetupError, match=r"programs missing \(kaspa_p2p_relay\): run `dcutr-lab images build`"):
        local_binaries(["reference"], [tmp_path / "kaspa_p2p_relay"])
    with pytest.raises(BadInput, match="kaspa_p2p_miner: not a program of reference"):
        local_binaries(["reference"], [elf(tmp_path / "kaspa_p2p_miner", 0x3E)])
    found = local_binaries(["reference"], [elf(tmp_path / "kaspa_p2p_server", 0x3E)])
    assert [(b.name, b.sha256) for b in found] == [("kaspa_p2p_server", sha256(tmp_path / "kaspa_p2p_server"))]


def test_upload_caches_by_content_and_links_into_the_run(host, relay):
    upload_binaries(host, [relay], "run-1")
    cached = Path(host.home) / ".dcutr-lab" / "bin" / relay.cached_name
    link = Path(host.run_dir) / "bin" / "kaspa_p2p_relay"
    assert cached.read_bytes() == relay.path.read_bytes()
    assert os.access(cached, os.X_OK)
    assert link.resolve() == cached.resolve()
    assert [p.name for p in cached.parent.iterdir()] == [cached.name]  # no .part left behind
    # The next run on the same host reuses the cached file: nothing is sent again.
    next_run = Path(host.home) / ".dcutr-lab" / "run-2"
    (next_run / "bin").mkdir(parents=True)
    host.run_dir = str(next_run)
    upload_binaries(host, [relay], "run-2")
    assert host.uploads == ["kaspa_p2p_relay"]
    assert (next_run / "bin" / "kaspa_p2p_relay").resolve() == cached.resolve()


def test_a_corrupt_upload_is_refused_and_removed(host, relay):
    host.corrupt = True
    with pytest.raises(SetupError, match=r"host 'local': the upload of kaspa_p2p_relay is corrupt"):
        upload_binaries(host, [relay], "run-1")
    assert list((Path(host.home) / ".dcutr-lab" / "bin").iterdir()) == []


def test_a_binary_for_another_machine_is_refused_before_sending(host, tmp_path):
    path = elf(tmp_path / "kaspa_p2p_client", 0xB7)
    with pytest.raises(SetupError, match="host 'local' is x86_64, but kaspa_p2p_client is built for aarch64"):
        upload_binaries(host, [LocalBinary(path.name, path, sha256(path))], "run-1")
    assert host.uploads == []
