"""What the lab's images are made of, and the content hashes that name them.

Every tag is `dcutr-lab/<kind>:<16 hex>`, the sha256 of the kind's inputs (recipe and package list for base;
Dockerfile, context files and the parent's tag for the others), so a tag that exists is an image that needs no
rebuild.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from harness.errors import SetupError

REPO_ROOT = Path(__file__).resolve().parents[2]
IMAGES_DIR = REPO_ROOT / "images"
PROBE_AGENT = REPO_ROOT / "harness" / "nat" / "probe_agent.py"

REPOSITORY = "dcutr-lab"
LABEL_INPUTS = "dcutr-lab.inputs"
LABEL_SUT = "dcutr-lab.sut"


class ImageKind(StrEnum):
    base = "base"
    router = "router"


# The base recipe: everything here (and packages.txt) is part of the base image's hash.
BASE_SUITE = "bookworm"
BASE_VARIANT = "minbase"
BASE_GLIBC = (2, 36)  # bookworm's: a SUT binary that needs a newer glibc cannot run on the base image
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
class ContextFile:
    """A file of a docker build context: its name in the context, where it comes from and its mode."""

    name: str
    source: Path
    mode: int = 0o644


def cache_dir() -> Path:
    """Locks, build logs, source builds and SUT records: $DCUTR_LAB_CACHE, else ~/.cache/dcutr-lab."""
    path = Path(os.environ.get("DCUTR_LAB_CACHE") or Path.home() / ".cache" / "dcutr-lab")
    path.mkdir(parents=True, exist_ok=True)
    return path


def log_path(kind: str, step: str) -> Path:
    logs = cache_dir() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    return logs / f"{kind}-{step.replace(' ', '_')}-{stamp}-{os.getpid()}.log"


def base_packages() -> list[str]:
    path = IMAGES_DIR / "base" / "packages.txt"
    try:
        text = path.read_text()
    except OSError as error:
        raise SetupError(f"cannot read the base package list {path}: {error.strerror}") from error
    packages = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    return [p for p in packages if p]


def digest(parts: Sequence[bytes]) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()


def file_digest(path: Path) -> str:
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
    return digest([b"base", json.dumps(recipe, sort_keys=True).encode()])


def context_digest(kind: str, parent_tag: str, files: Sequence[ContextFile]) -> str:
    parts = [kind.encode(), parent_tag.encode()]
    for item in sorted(files, key=lambda f: f.name):
        parts += [item.name.encode(), f"{item.mode:o}".encode(), file_digest(item.source).encode()]
    return digest(parts)


def tag_for(kind: str, content_digest: str) -> str:
    return f"{REPOSITORY}/{kind}:{content_digest[:16]}"


def router_context() -> list[ContextFile]:
    return [
        ContextFile("Dockerfile", IMAGES_DIR / "router" / "Dockerfile"),
        ContextFile("dcutr-probe", PROBE_AGENT, 0o755),
        ContextFile("dcutr-wire", IMAGES_DIR / "router" / "dcutr-wire", 0o755),
    ]
