"""Building images on the local Docker daemon: steps with progress and logs, locks, the base and router images.

No registry is reachable, so nothing is pulled: `base` is a Debian root filesystem made by
`mmdebstrap --variant=minbase` from the host's apt sources and `docker import`ed; every other image is a classic
Dockerfile `FROM` that local tag that only `COPY`s. `ensure_image` first asks Docker whether the tag exists, so a
second call with nothing changed does no work; a file lock per kind makes parallel pytest-xdist workers build
once. Each step's output goes to a log file under the cache directory; a failing step raises one `SetupError`
line naming the step, the command and that log.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from filelock import FileLock, Timeout

from harness.errors import BadInput, SetupError
from harness.images.recipe import (
    BASE_IMPORT_CHANGES,
    BASE_MMDEBSTRAP_OPTIONS,
    BASE_SUITE,
    LABEL_INPUTS,
    ContextFile,
    ImageKind,
    base_inputs_digest,
    base_packages,
    cache_dir,
    context_digest,
    log_path,
    router_context,
    tag_for,
)
from harness.labels import LABEL_IMAGE

LOCK_TIMEOUT = 45 * 60.0  # a cold base build takes well under a minute; a source build is another matter
Status = Literal["start", "done", "cached", "failed", "output"]


@dataclass(frozen=True)
class BuildEvent:
    """One step of a build, for progress displays. `elapsed` is set on `done`, `cached` and `failed`; `output`
    events carry a line a long step printed (cargo's `Compiling ...`)."""

    kind: str
    step: str
    status: Status
    elapsed: float = 0.0
    detail: str = ""


ProgressFn = Callable[[BuildEvent], None]


class Steps:
    """Times steps, reports them to `progress` and turns failures into one-line SetupErrors."""

    def __init__(self, kind: str, progress: ProgressFn | None) -> None:
        self.kind = kind
        self.progress = progress

    def emit(self, step: str, status: Status, elapsed: float = 0.0, detail: str = "") -> None:
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

    def run(
        self,
        name: str,
        argv: Sequence[str],
        *,
        cwd: Path | None = None,
        detail: str = "",
        env: Mapping[str, str] | None = None,
        stream: bool = False,
    ) -> Path:
        """Run a command as a step; its output goes to a log file whose path is returned.

        With `stream`, each line it prints is also an `output` event, so a 30-minute build shows progress.
        """
        log = log_path(self.kind, name)
        command = shlex.join(argv)
        with self.step(name, detail), log.open("w") as out:
            out.write(f"$ {command}\n")
            out.flush()
            try:
                process = subprocess.Popen(
                    list(argv),
                    cwd=cwd,
                    env=None if env is None else {**os.environ, **env},
                    stdout=subprocess.PIPE if stream else out,
                    stderr=subprocess.STDOUT,
                    text=stream,
                    errors="replace" if stream else None,
                )
            except OSError as error:
                raise SetupError(
                    f"image {self.kind}: step {name} could not start `{command}`: {error.strerror}"
                ) from error
            try:
                if stream:
                    assert process.stdout is not None
                    for line in process.stdout:
                        out.write(line)
                        self.emit(name, "output", detail=line.rstrip())
                code = process.wait()
            except BaseException:  # Ctrl-C: the build must not outlive us
                process.kill()
                process.wait()
                raise
            if code != 0:
                raise SetupError(f"image {self.kind}: step {name} failed: `{command}` exited {code} (details: {log})")
        return log


def locked(kind: str) -> contextlib.AbstractContextManager[None]:
    locks = cache_dir() / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    return _hold(FileLock(str(locks / f"image-{kind}.lock"), timeout=LOCK_TIMEOUT), kind)


@contextlib.contextmanager
def _hold(lock: FileLock, kind: str) -> Iterator[None]:
    try:
        with lock:
            yield
    except Timeout as error:
        raise SetupError(
            f"image {kind}: another build held {lock.lock_file} for {LOCK_TIMEOUT:.0f}s; "
            "if no build is running, remove that file"
        ) from error


def docker_client() -> Any:
    from harness.dockerd import connect

    # Image builds can take minutes per API call (docker import of a 200 MB rootfs).
    return connect(timeout=600)


def image_exists(client: Any, tag: str) -> bool:
    import docker.errors

    try:
        client.images.get(tag)
    except docker.errors.ImageNotFound:
        return False
    except docker.errors.APIError as error:
        raise SetupError(f"docker image inspect {tag} failed: {error.explanation or error}") from error
    return True


def build_base(client: Any, tag: str, content_digest: str, steps: Steps) -> None:
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
        changes = [*BASE_IMPORT_CHANGES, f"LABEL {LABEL_IMAGE}=base {LABEL_INPUTS}={content_digest}"]
        with steps.step("docker import", f"{size_mb:.0f} MB rootfs"):
            try:
                client.api.import_image_from_file(str(rootfs), repository=repository, tag=version, changes=changes)
            except Exception as error:
                raise SetupError(f"image base: step docker import failed: {error}") from error
            if not image_exists(client, tag):
                raise SetupError(f"image base: docker import finished but {tag} does not exist")


def build_context(
    client: Any,
    kind: str,
    tag: str,
    content_digest: str,
    parent: str,
    files: Sequence[ContextFile],
    steps: Steps,
    labels: Mapping[str, str] | None = None,
) -> None:
    """`docker build` of a context made of `files` (the Dockerfile among them), FROM `parent`, never pulling."""
    import docker.errors

    log = log_path(kind, "docker build")
    with tempfile.TemporaryDirectory(prefix=f"{kind}-ctx-") as tmp:
        for item in files:
            dest = Path(tmp) / item.name
            dest.parent.mkdir(parents=True, exist_ok=True)
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
                    labels={LABEL_IMAGE: kind, LABEL_INPUTS: content_digest, **(labels or {})},
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


def image_kind(kind: str) -> ImageKind:
    try:
        return ImageKind(kind)
    except ValueError:
        known = ", ".join(k.value for k in ImageKind)
        raise BadInput(f"unknown image kind {kind!r} (known: {known}; SUT images: --sut NAME)") from None


def ensure_image(kind: str, *, progress: ProgressFn | None = None, force: bool = False) -> str:
    """Return the tag of the base or router image, building it (and its parent) first when it does not exist.

    `force` rebuilds this kind even when its tag exists (its parent only when missing).
    """
    chosen = image_kind(kind)
    client = docker_client()
    steps = Steps(chosen.value, progress)
    if chosen is ImageKind.base:
        content = base_inputs_digest()
        tag = tag_for("base", content)
        if not force and image_exists(client, tag):
            steps.emit("image", "cached", detail=tag)
            return tag
        with locked("base"):
            if force or not image_exists(client, tag):  # another worker may have built it while we waited
                build_base(client, tag, content, steps)
            else:
                steps.emit("image", "cached", detail=tag)
        return tag
    parent = ensure_image("base", progress=progress)
    files = router_context()
    content = context_digest("router", parent, files)
    tag = tag_for("router", content)
    if not force and image_exists(client, tag):  # the common case, without waiting for the lock
        steps.emit("image", "cached", detail=tag)
        return tag
    with locked("router"):
        if force or not image_exists(client, tag):
            build_context(client, "router", tag, content, parent, files, steps)
        else:
            steps.emit("image", "cached", detail=tag)
    return tag
