"""SUT images: the base image plus a SUT's programs, tagged by their hash, and which image serves a SUT.

`build_sut_image()` makes `dcutr-lab/sut-<name>:<hash of the programs and the context>`; when a program links
a library the base image lacks, the host's copy goes into the image (a wrong glibc or a library nobody has is
one line). The last image built for a SUT is recorded under `<cache>/suts/<name>.json`, so `dcutr-lab run`
starts nodes whose `sut:` is that name on it; a SUT built in place from this repository (the reference peers)
is rebuilt when its sources changed (cargo decides; a no-op otherwise).
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import BadInput, SetupError
from harness.images.build import ProgressFn, Steps, build_context, docker_client, ensure_image, image_exists, locked
from harness.images.recipe import IMAGES_DIR, LABEL_SUT, ContextFile, cache_dir, context_digest, tag_for
from harness.images.source import build_from_source, sha256s
from harness.labels import new_run_id, run_labels
from harness.models import Sut

_NOT_FOUND = re.compile(r"^\s*(\S+) => not found", re.M)
_VERSION = re.compile(r"version `([^']+)' not found")
_LIBRARY = re.compile(r"^\s*(\S+) => (/\S+)", re.M)


@dataclass(frozen=True)
class SutImage:
    """The image a SUT's nodes run on, and the programs in it (for backends that upload them instead)."""

    sut: str
    tag: str
    programs: Mapping[str, Path]
    sha256: Mapping[str, str]
    source: str


def kind_of(sut: Sut) -> str:
    return f"sut-{sut.name}"


def _context(programs: Mapping[str, Path], libraries: Mapping[str, Path]) -> list[ContextFile]:
    files = [
        ContextFile("Dockerfile", IMAGES_DIR / "sut" / "Dockerfile"),
        ContextFile("bin/peer-entry", IMAGES_DIR / "sut" / "peer-entry", 0o755),
        ContextFile("lib/README", IMAGES_DIR / "sut" / "lib-README"),
    ]
    files += [ContextFile(f"bin/{name}", path, 0o755) for name, path in sorted(programs.items())]
    files += [ContextFile(f"lib/{name}", path) for name, path in sorted(libraries.items())]
    return files


def _linkage(client: Any, tag: str, programs: Mapping[str, Path]) -> tuple[list[str], list[str]]:
    """What the image cannot resolve: (missing libraries, missing symbol versions), from `ldd` inside it."""
    script = " ".join(f"ldd /usr/local/bin/{name} 2>&1;" for name in sorted(programs))
    output = client.containers.run(
        tag,
        ["sh", "-c", script + " true"],
        entrypoint=[],
        network_mode="none",
        remove=True,
        labels=run_labels(new_run_id(), role="image-check"),
    ).decode("utf-8", "replace")
    return sorted(set(_NOT_FOUND.findall(output))), sorted(set(_VERSION.findall(output)))


def _host_libraries(programs: Mapping[str, Path], wanted: list[str]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in programs.values():
        done = subprocess.run(["ldd", str(path)], capture_output=True, text=True, check=False)
        for soname, location in _LIBRARY.findall(done.stdout):
            if soname in wanted:
                found[soname] = Path(location)
    return found


def build_sut_image(
    sut: Sut, programs: Mapping[str, Path], *, source: str, progress: ProgressFn | None = None
) -> SutImage:
    """The SUT's image holding exactly `programs` (name -> file); built unless its tag exists; recorded."""
    kind = kind_of(sut)
    steps = Steps(kind, progress)
    parent = ensure_image("base", progress=progress)
    client = docker_client()
    libraries: dict[str, Path] = {}
    with locked(kind):
        for _round in range(2):
            files = _context(programs, libraries)
            content = context_digest(kind, parent, files)
            tag = tag_for(kind, content)
            if image_exists(client, tag):
                steps.emit("image", "cached", detail=tag)
            else:
                build_context(client, kind, tag, content, parent, files, steps, labels={LABEL_SUT: sut.name})
            with steps.step("link check", "ldd inside the image"):
                missing, versions = _linkage(client, tag, programs)
            if versions:
                raise BadInput(
                    f"SUT {sut.name}: the programs need {', '.join(versions)}, which the lab's Debian 12 image lacks: "
                    "build them on Debian 12 (bookworm)"
                )
            if not missing:
                break
            found = _host_libraries(programs, missing)
            absent = [name for name in missing if name not in found]
            if absent or _round:
                raise BadInput(
                    f"SUT {sut.name}: the programs link {', '.join(absent or missing)}, found neither in the "
                    "lab's image nor on this machine: install them here, or link them statically"
                )
            libraries.update(found)
    image = SutImage(sut.name, tag, dict(programs), sha256s(programs), source)
    _record(image)
    return image


def _record_path(name: str) -> Path:
    return cache_dir() / "suts" / f"{name}.json"


def _record(image: SutImage) -> None:
    path = _record_path(image.sut)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "sut": image.sut,
        "tag": image.tag,
        "programs": {name: str(p) for name, p in image.programs.items()},
        "sha256": dict(image.sha256),
        "source": image.source,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def _how_to_build(sut: Sut) -> str:
    return (
        f"no image for SUT {sut.name!r} yet: build one with "
        f"`dcutr-lab images build --sut {sut.name} --source PATH` (a checkout or tarball) or `--binary FILE`"
    )


def recorded_image(sut: Sut) -> SutImage | None:
    """The image `images build --sut` made last for this SUT, if it and its programs still exist."""
    try:
        data = json.loads(_record_path(sut.name).read_text())
    except (OSError, ValueError):
        return None
    programs = {name: Path(p) for name, p in data.get("programs", {}).items()}
    if set(programs) != set(sut.programs):  # the SUT file changed what its roles run
        return None
    return SutImage(sut.name, str(data["tag"]), programs, dict(data.get("sha256", {})), str(data.get("source", "")))


def sut_image(sut: Sut, *, progress: ProgressFn | None = None) -> SutImage:
    """The image nodes of this SUT run on: built in place for a repository SUT, else the recorded one."""
    if sut.build is not None and sut.build.source is not None:
        programs = build_from_source(sut, None, progress)
        return build_sut_image(sut, programs, source=sut.build.source, progress=progress)
    image = recorded_image(sut)
    if image is None:
        raise BadInput(_how_to_build(sut))
    if not image_exists(docker_client(), image.tag):
        raise BadInput(f"{_how_to_build(sut)} (its last image {image.tag} is gone)")
    missing = [str(p) for p in image.programs.values() if not p.is_file()]
    if missing:
        raise SetupError(f"SUT {sut.name}: image {image.tag} was built from {', '.join(missing)}, now missing")
    return image


def sut_programs(sut: Sut, *, progress: ProgressFn | None = None) -> dict[str, Path]:
    """The SUT's programs on this machine (for a backend that uploads them): no image needed."""
    if sut.build is not None and sut.build.source is not None:
        return build_from_source(sut, None, progress)
    image = recorded_image(sut)
    if image is None:
        raise BadInput(_how_to_build(sut))
    missing = [str(p) for p in image.programs.values() if not p.is_file()]
    if missing:
        raise BadInput(f"SUT {sut.name}: {', '.join(missing)} is gone: {_how_to_build(sut)}")
    return dict(image.programs)
