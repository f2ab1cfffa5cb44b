"""Peer binaries onto a host, content-addressed: uploaded once per content, linked into each run.

    ~/.dcutr-lab/bin/<binary>-<sha256[:16]>   kept across runs; an upload goes to a `.part` file, is checked
                                              with the host's sha256sum and only then renamed into place
    ~/.dcutr-lab/<run-id>/bin/<binary>         a symlink to the cached file (first on the node's PATH)

Contract: `local_binaries` finds and hashes the SUTs' programs here (a missing or unknown one is a one-line error
saying how to build it); `upload_binaries` refuses a binary built for another machine than the host's
`uname -m` before sending a byte, skips what the host's cache already has, and never leaves a corrupt file
under its final name. Hashes are cached by (path, size, mtime): a matrix run uploads to many hosts.
"""

from __future__ import annotations

import hashlib
import logging
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.backends.ssh.remote import RemoteHost
from harness.backends.ssh.scripts import REMOTE_ROOT
from harness.errors import BadInput, SetupError

log = logging.getLogger(__name__)

# ELF e_machine -> `uname -m` names that run it.
_ELF_MACHINES = {0x3E: ("x86_64", "amd64"), 0xB7: ("aarch64", "arm64"), 0x28: ("armv7l", "armv6l", "arm")}
_SHA_CACHE: dict[tuple[str, int, int], str] = {}


@dataclass(frozen=True)
class LocalBinary:
    name: str
    path: Path
    sha256: str

    @property
    def cached_name(self) -> str:
        return f"{self.name}-{self.sha256[:16]}"


def sha256(path: Path) -> str:
    info = path.stat()
    key = (str(path.resolve()), info.st_size, info.st_mtime_ns)
    if key not in _SHA_CACHE:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        _SHA_CACHE[key] = digest.hexdigest()
    return _SHA_CACHE[key]


def elf_machines(path: Path) -> tuple[str, ...] | None:
    """The `uname -m` names that can run an ELF binary, None when unknown (not ELF, other machine)."""
    with path.open("rb") as handle:
        header = handle.read(20)
    if len(header) < 20 or header[:4] != b"\x7fELF" or header[5] != 1:  # little-endian only
        return None
    return _ELF_MACHINES.get(int.from_bytes(header[18:20], "little"))


def local_binaries(suts: Sequence[str], paths: Sequence[Path] | None = None) -> list[LocalBinary]:
    """The programs the SUTs run (harness.images: built in place, or the last `images build --sut`), to upload.

    `paths` stand in for programs of the same name (tests, a user's own build).
    """
    from harness.images import sut_programs
    from harness.sut import get_sut

    wanted: dict[str, Path] = {}
    for name in suts:
        wanted.update(sut_programs(get_sut(name)) if paths is None else dict.fromkeys(get_sut(name).programs))
    if paths is not None:
        given = {path.name: path for path in paths}
        unknown = sorted(set(given) - set(wanted))
        if unknown:
            raise BadInput(f"{', '.join(unknown)}: not a program of {', '.join(suts)} (known: {', '.join(wanted)})")
        wanted = given
    missing = [name for name, path in wanted.items() if not path.is_file()]
    if missing:
        raise SetupError(f"programs missing ({', '.join(missing)}): run `dcutr-lab images build`")
    return [LocalBinary(name, path, sha256(path)) for name, path in wanted.items()]


def upload_binaries(remote: RemoteHost, binaries: Sequence[LocalBinary], run_id: str) -> None:
    """Make `binaries` the run's bin/ on a prepared host, uploading only what its cache lacks."""
    for binary in binaries:
        machines = elf_machines(binary.path)
        if machines and remote.machine not in machines:
            raise SetupError(f"{remote.where} is {remote.machine}, but {binary.name} is built for {machines[0]}")
    q = shlex.quote
    cache = f"{remote.home}/{REMOTE_ROOT}/bin"
    listing = remote.must(f"mkdir -p {q(cache)} && cd {q(cache)} && ls -1", "listing cached binaries", timeout=30)
    cached = set(listing.split())
    links = []
    for binary in binaries:
        final = f"{cache}/{binary.cached_name}"
        if binary.cached_name not in cached:
            part = f"{cache}/.{binary.cached_name}.{run_id}.part"
            log.info("uploading %s to host %r", binary.name, remote.alias)
            try:
                remote.upload(binary.path, part)
            except OSError as error:
                raise _upload_error(remote, binary, cache, part, error) from None
            check = remote.must(f"sha256sum {q(part)}", f"checking the upload of {binary.name}", timeout=60)
            if check.split()[0] != binary.sha256:
                remote.run(f"rm -f {q(part)}")
                raise SetupError(f"{remote.where}: the upload of {binary.name} is corrupt")
            remote.must(f"chmod 755 {q(part)} && mv -f {q(part)} {q(final)}", "storing " + binary.name)
        links.append(f"ln -sfn {q(final)} {q(remote.run_dir)}/bin/{q(binary.name)}")
    remote.must(" && ".join(links), "linking the binaries")


def _upload_error(remote: RemoteHost, binary: LocalBinary, cache: str, part: str, error: OSError) -> SetupError:
    """Why an upload failed, in one line: a full disk says how much room there is and how much is needed. The
    partial file is removed (a connection that died with it is reported as such by the backend)."""
    from harness.backends.ssh.remote import ConnectionLost

    if not remote.alive:
        raise ConnectionLost(f"{remote.where}: the connection died while uploading {binary.name}")
    q = shlex.quote
    remote.run(f"rm -f {q(part)}", timeout=30)
    need = (binary.path.stat().st_size + 1023) // 1024
    free = remote.run(f"df -Pk {q(cache)} | tail -n 1", timeout=30)
    fields = free.output.split()
    if free.exit_code == 0 and len(fields) >= 4 and fields[3].isdigit() and int(fields[3]) < need:
        return SetupError(
            f"{remote.where}: no space left on its disk for {binary.name} ({need} KiB) in ~/{REMOTE_ROOT}/bin: "
            f"{fields[3]} KiB free (the partial upload was removed)"
        )
    reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
    return SetupError(f"{remote.where}: uploading {binary.name} failed: {remote.inventory.scrub(reason)}")
