"""Lab images, built offline and tagged by the hash of their inputs.

No registry is reachable, so nothing is pulled:

- `base`: a Debian root filesystem made by `mmdebstrap --variant=minbase` from the host's apt sources (the
  packages of `images/base/packages.txt`), then `docker import`ed.
- `router`: `FROM` base + the NAT probe agent (`harness/nat/probe_agent.py` as `/usr/local/bin/dcutr-probe`).
- `peer`: `FROM` base + the Rust reference peers (`images/peers`, built with cargo on the host) + an entry script.

Every tag is `dcutr-lab/<kind>:<16 hex>`, the sha256 of the kind's inputs (recipe and package list for base;
Dockerfile, context files and the parent's tag for the others). `ensure_image` first asks Docker whether the tag
exists, so a second call with nothing changed does no work; a file lock per kind makes parallel pytest-xdist
workers build once. Each step's output goes to a log file under the cache directory; a failing step raises one
`SetupError` line naming the step, the command and that log.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Literal

from filelock import FileLock, Timeout

from harness.errors import BadInput, SetupError
from harness.labels import LABEL_IMAGE

REPO_ROOT = Path(__file__).resolve().parent.parent
IMAGES_DIR = REPO_ROOT / "images"
PEERS_DIR = IMAGES_DIR / "peers"
PROBE_AGENT = Path(__file__).resolve().parent / "nat" / "probe_agent.py"

REPOSITORY = "dcutr-lab"
LABEL_INPUTS = "dcutr-lab.inputs"
PEER_BINARIES = ("kaspa_p2p_relay", "kaspa_p2p_server", "kaspa_p2p_client")
LOCK_TIMEOUT = 45 * 60.0  # a cold base build takes well under a minute; a stuck peer build is another matter


class ImageKind(StrEnum):
    base = "base"
    router = "router"
    peer = "peer"


# The base recipe: everything here (and packages.txt) is part of the base image's hash.
BASE_SUITE = "bookworm"
BASE_VARIANT = "minbase"
BASE_MMDEBSTRAP_OPTIONS: tuple[str, ...] = (
    f"--variant={BASE_VARIANT}",
    "--mode=root",
    "--format=tar",
    '--aptopt=APT::Install-Recommends "false"',
    "--dpkgopt=path-exclude=/usr/share/man/*",
    "--dpkgopt=path-exclude=/usr/share/info/*",
    "--dpkgopt=path-exclude=/usr/share/locale/*",
    "--dpkgopt=path-exclude=/usr/share/doc/*",
    "--dpkgopt=path-include=/usr/share/doc/*/copyright",
    # Host keys baked into an image would be shared by every container: whoever runs sshd makes its own.
    '--customize-hook=rm -f "$1"/etc/ssh/ssh_host_*_key "$1"/etc/ssh/ssh_host_*_key.pub',
    # No daemon starts by itself in a container, but make sure sshd never does.
    '--customize-hook=rm -f "$1"/etc/systemd/system/multi-user.target.wants/ssh.service',
)
BASE_IMPORT_CHANGES: tuple[str, ...] = (
    "ENV LANG=C.UTF-8",
    'CMD ["/bin/bash"]',
)


@dataclass(frozen=True)
class BuildEvent:
    """One step of an image build, for progress displays. `elapsed` is set on `done`, `cached` and `failed`."""

    kind: str
    step: str
    status: Literal["start", "done", "cached", "failed"]
    elapsed: float = 0.0
    detail: str = ""


ProgressFn = Callable[[BuildEvent], None]


@dataclass(frozen=True)
class ContextFile:
    """A file of a docker build context: its name in the context, where it comes from and its mode."""

    name: str
    source: Path
    mode: int = 0o644


# -- paths -------------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """Locks and build logs: $DCUTR_LAB_CACHE, else ~/.cache/dcutr-lab."""
    path = Path(os.environ.get("DCUTR_LAB_CACHE") or Path.home() / ".cache" / "dcutr-lab")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _log_path(kind: str, step: str) -> Path:
    logs = cache_dir() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    return logs / f"{kind}-{step.replace(' ', '_')}-{stamp}-{os.getpid()}.log"


# -- hashing -----------------------------------------------------------------------------------------------


def base_packages() -> list[str]:
    path = IMAGES_DIR / "base" / "packages.txt"
    try:
        text = path.read_text()
    except OSError as error:
        raise SetupError(f"cannot read the base package list {path}: {error.strerror}") from error
    packages = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    return [p for p in packages if p]


def _digest(parts: Sequence[bytes]) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def base_inputs_digest() -> str:
    recipe = {
        "suite": BASE_SUITE,
        "packages": base_packages(),
        "options": list(BASE_MMDEBSTRAP_OPTIONS),
        "import": list(BASE_IMPORT_CHANGES),
    }
    return _digest([b"base", json.dumps(recipe, sort_keys=True).encode()])


def context_digest(kind: str, parent_tag: str, files: Sequence[ContextFile]) -> str:
    parts = [kind.encode(), parent_tag.encode()]
    for item in sorted(files, key=lambda f: f.name):
        parts += [item.name.encode(), f"{item.mode:o}".encode(), _file_digest(item.source).encode()]
    return _digest(parts)


def tag_for(kind: str, digest: str) -> str:
    return f"{REPOSITORY}/{kind}:{digest[:16]}"


# -- build contexts ----------------------------------------------------------------------------------------


def _cargo_target_dir() -> Path:
    target = os.environ.get("CARGO_TARGET_DIR")
    if target:
        path = Path(target)
        return path if path.is_absolute() else PEERS_DIR / path
    return PEERS_DIR / "target"


def peer_binary_paths() -> list[Path]:
    release = _cargo_target_dir() / "release"
    return [release / name for name in PEER_BINARIES]


def context_files(kind: ImageKind) -> list[ContextFile]:
    """The files of a kind's build context (for `peer`, the binaries must exist: see `ensure_image`)."""
    if kind is ImageKind.router:
        return [
            ContextFile("Dockerfile", IMAGES_DIR / "router" / "Dockerfile"),
            ContextFile("dcutr-probe", PROBE_AGENT, 0o755),
            ContextFile("dcutr-wire", IMAGES_DIR / "router" / "dcutr-wire", 0o755),
        ]
    if kind is ImageKind.peer:
        files = [
            ContextFile("Dockerfile", IMAGES_DIR / "peer" / "Dockerfile"),
            ContextFile("peer-entry", IMAGES_DIR / "peer" / "peer-entry", 0o755),
        ]
        files += [ContextFile(path.name, path, 0o755) for path in peer_binary_paths()]
        return files
    raise ValueError(f"{kind} has no docker build context")


# -- docker ------------------------------------------------------------------------------------------------


def _docker():
    from harness.dockerd import connect

    # Image builds can take minutes per API call (docker import of a 200 MB rootfs).
    return connect(timeout=600)


def image_exists(client, tag: str) -> bool:
    import docker.errors

    try:
        client.images.get(tag)
    except docker.errors.ImageNotFound:
        return False
    except docker.errors.APIError as error:
        raise SetupError(f"docker image inspect {tag} failed: {error.explanation or error}") from error
    return True


# -- steps -------------------------------------------------------------------------------------------------


class _Steps:
    """Times steps, reports them to `progress` and turns failures into one-line SetupErrors."""

    def __init__(self, kind: str, progress: ProgressFn | None) -> None:
        self.kind = kind
        self.progress = progress

    def emit(self, step: str, status: Literal["start", "done", "cached", "failed"], elapsed=0.0, detail="") -> None:
        if self.progress is not None:
            self.progress(BuildEvent(self.kind, step, status, elapsed, detail))

    @contextlib.contextmanager
    def step(self, name: str, detail: str = "") -> Iterator[None]:
        started = time.monotonic()
        self.emit(name, "start", detail=detail)
        try:
            yield
        except BaseException:
            self.emit(name, "failed", time.monotonic() - started)
            raise
        self.emit(name, "done", time.monotonic() - started, detail)

    def run(self, name: str, argv: Sequence[str], *, cwd: Path | None = None, detail: str = "") -> Path:
        """Run a command as a step; its output goes to a log file whose path is returned."""
        log = _log_path(self.kind, name)
        command = shlex.join(argv)
        with self.step(name, detail), log.open("w") as out:
            out.write(f"$ {command}\n")
            out.flush()
            try:
                result = subprocess.run(list(argv), cwd=cwd, stdout=out, stderr=subprocess.STDOUT, check=False)
            except OSError as error:
                raise SetupError(
                    f"image {self.kind}: step {name} could not start `{command}`: {error.strerror}"
                ) from error
            if result.returncode != 0:
                raise SetupError(
                    f"image {self.kind}: step {name} failed: `{command}` exited {result.returncode} (details: {log})"
                )
        return log


def _lock(kind: str) -> FileLock:
    locks = cache_dir() / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    return FileLock(str(locks / f"image-{kind}.lock"), timeout=LOCK_TIMEOUT)


@contextlib.contextmanager
def _locked(kind: str) -> Iterator[None]:
    lock = _lock(kind)
    try:
        with lock:
            yield
    except Timeout as error:
        raise SetupError(
            f"image {kind}: another build held {lock.lock_file} for {LOCK_TIMEOUT:.0f}s; "
            "if no build is running, remove that file"
        ) from error


def _build_base(client, tag: str, digest: str, steps: _Steps) -> None:
    mmdebstrap = shutil.which("mmdebstrap")
    if mmdebstrap is None:
        raise SetupError("mmdebstrap is missing: apt-get install mmdebstrap (or run `make setup`)")
    if os.geteuid() != 0:
        raise SetupError("building the base image runs mmdebstrap --mode=root: run this as root (sudo)")
    packages = base_packages()
    work = cache_dir() / "build"
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="base-", dir=work) as tmp:
        rootfs = Path(tmp) / "rootfs.tar"
        steps.run(
            "mmdebstrap",
            [mmdebstrap, *BASE_MMDEBSTRAP_OPTIONS, f"--include={','.join(packages)}", BASE_SUITE, str(rootfs)],
            detail=f"{BASE_SUITE}, {len(packages)} packages",
        )
        size_mb = rootfs.stat().st_size / 1e6
        repository, _, version = tag.partition(":")
        changes = [*BASE_IMPORT_CHANGES, f"LABEL {LABEL_IMAGE}=base {LABEL_INPUTS}={digest}"]
        with steps.step("docker import", f"{size_mb:.0f} MB rootfs"):
            try:
                client.api.import_image_from_file(str(rootfs), repository=repository, tag=version, changes=changes)
            except Exception as error:
                raise SetupError(f"image base: step docker import failed: {error}") from error
            if not image_exists(client, tag):
                raise SetupError(f"image base: docker import finished but {tag} does not exist")


def _build_context(
    client, kind: str, tag: str, digest: str, parent: str, files: Sequence[ContextFile], steps: _Steps
) -> None:
    import docker.errors

    log = _log_path(kind, "docker build")
    with tempfile.TemporaryDirectory(prefix=f"{kind}-ctx-") as tmp:
        for item in files:
            dest = Path(tmp) / item.name
            shutil.copyfile(item.source, dest)
            os.chmod(dest, item.mode)
        detail = f"FROM {parent}, {len(files) - 1} file(s)"
        with steps.step("docker build", detail), log.open("w") as out:
            out.write(f"docker build --pull=false --build-arg BASE_IMAGE={parent} -t {tag} {tmp}\n")
            try:
                stream = client.api.build(
                    path=tmp,
                    tag=tag,
                    pull=False,
                    rm=True,
                    forcerm=True,
                    buildargs={"BASE_IMAGE": parent},
                    labels={LABEL_IMAGE: kind, LABEL_INPUTS: digest},
                    decode=True,
                )
                failure = None
                for chunk in stream:
                    if "stream" in chunk:
                        out.write(chunk["stream"])
                    if "error" in chunk:
                        failure = chunk["error"].strip()
                        out.write(f"ERROR: {failure}\n")
            except docker.errors.APIError as error:
                failure = str(error.explanation or error)
                out.write(f"ERROR: {failure}\n")
            if failure:
                raise SetupError(f"image {kind}: step docker build failed: {failure} (details: {log})")
    if not image_exists(client, tag):
        raise SetupError(f"image {kind}: docker build finished but {tag} does not exist (details: {log})")


def _cargo() -> str | None:
    found = shutil.which("cargo")
    if found:
        return found
    home_cargo = Path.home() / ".cargo" / "bin" / "cargo"
    return str(home_cargo) if home_cargo.exists() else None


def build_peer_binaries(steps: _Steps) -> list[Path]:
    """`cargo build --release` in images/peers (a no-op when nothing changed); returns the three binaries."""
    if not (PEERS_DIR / "Cargo.toml").exists():
        raise SetupError(
            f"{PEERS_DIR.relative_to(REPO_ROOT)}/Cargo.toml does not exist yet: the Rust reference peers are "
            "missing from this checkout, so the peer image cannot be built"
        )
    binaries = peer_binary_paths()
    cargo = _cargo()
    if cargo is None:
        if all(path.exists() for path in binaries):
            steps.emit("cargo build", "cached", detail="cargo not installed; using the binaries already built")
            return binaries
        raise SetupError("cargo is missing: install Rust (https://rustup.rs) to build images/peers")
    steps.run("cargo build", [cargo, "build", "--release"], cwd=PEERS_DIR, detail="images/peers")
    missing = [str(path.relative_to(REPO_ROOT)) for path in binaries if not path.exists()]
    if missing:
        raise SetupError(f"image peer: cargo build --release succeeded but {', '.join(missing)} is missing")
    return binaries


# -- the API -----------------------------------------------------------------------------------------------


def _kind(kind: str) -> ImageKind:
    try:
        return ImageKind(kind)
    except ValueError:
        known = ", ".join(k.value for k in ImageKind)
        raise BadInput(f"unknown image kind {kind!r} (known: {known})") from None


def ensure_image(kind: str, *, progress: ProgressFn | None = None, force: bool = False) -> str:
    """Return the tag of `kind`'s image, building it (and its parent) first when it does not exist yet.

    `force` rebuilds this kind even when its tag exists (its parent only when missing).
    """
    image_kind = _kind(kind)
    client = _docker()
    steps = _Steps(image_kind.value, progress)
    if image_kind is ImageKind.base:
        digest = base_inputs_digest()
        tag = tag_for("base", digest)
        if not force and image_exists(client, tag):
            steps.emit("image", "cached", detail=tag)
            return tag
        with _locked("base"):
            if force or not image_exists(client, tag):  # another worker may have built it while we waited
                _build_base(client, tag, digest, steps)
            else:
                steps.emit("image", "cached", detail=tag)
        return tag

    parent = ensure_image("base", progress=progress)
    if image_kind is ImageKind.router and not force:
        tag = tag_for("router", context_digest("router", parent, context_files(image_kind)))
        if image_exists(client, tag):  # the common case, without waiting for the lock
            steps.emit("image", "cached", detail=tag)
            return tag
    with _locked(image_kind.value):
        if image_kind is ImageKind.peer:
            build_peer_binaries(steps)  # cargo decides what is stale; a no-op when nothing changed
        files = context_files(image_kind)
        digest = context_digest(image_kind.value, parent, files)
        tag = tag_for(image_kind.value, digest)
        if not force and image_exists(client, tag):
            steps.emit("image", "cached", detail=tag)
            return tag
        _build_context(client, image_kind.value, tag, digest, parent, files, steps)
    return tag


def current_tags() -> dict[str, str]:
    """The tags the current inputs give, without building anything (peer only when its binaries exist)."""
    tags = {"base": tag_for("base", base_inputs_digest())}
    tags["router"] = tag_for("router", context_digest("router", tags["base"], context_files(ImageKind.router)))
    if all(path.exists() for path in peer_binary_paths()):
        tags["peer"] = tag_for("peer", context_digest("peer", tags["base"], context_files(ImageKind.peer)))
    return tags


def prune_images() -> tuple[list[str], list[str]]:
    """Remove lab images that the current inputs no longer produce. Returns (removed, kept-because-in-use)."""
    import docker.errors

    client = _docker()
    current = current_tags()
    keep = set(current.values())
    removed: list[str] = []
    busy: list[str] = []
    for image in client.images.list(filters={"label": LABEL_IMAGE}):
        for tag in image.tags:
            kind = tag.removeprefix(f"{REPOSITORY}/").partition(":")[0]
            # a kind whose current tag is unknown (peer before its binaries exist) keeps every image
            if not tag.startswith(f"{REPOSITORY}/") or tag in keep or kind not in current:
                continue
            try:
                client.images.remove(tag)
                removed.append(tag)
            except docker.errors.APIError:  # a container still uses it, or a child image does
                busy.append(tag)
    return removed, busy


@dataclass(frozen=True)
class LocalImage:
    kind: str
    tag: str
    size: int  # bytes
    created: str  # ISO 8601, seconds


def local_images() -> list[LocalImage]:
    """The lab's images present locally, newest first."""
    found = []
    for image in _docker().images.list(filters={"label": LABEL_IMAGE}):
        for tag in image.tags:
            if tag.startswith(f"{REPOSITORY}/"):
                created = str(image.attrs.get("Created", ""))[:19]
                found.append(
                    LocalImage(image.labels.get(LABEL_IMAGE, "?"), tag, int(image.attrs.get("Size", 0)), created)
                )
    return sorted(found, key=lambda i: i.created, reverse=True)
