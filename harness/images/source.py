"""A SUT's programs: built from its source with the SUT file's recipe, or taken from the user's own build.

- `--source PATH`: a checkout (directory) or a `git archive` tarball. Its content hash keys a cache outside the
  clone (`<cache>/builds/<sut>/<hash>/`): a second build of the same source copies nothing and runs nothing. A
  tarball is unpacked once under `<cache>/sources/<hash>/`; cargo's target directory is
  `<cache>/cargo-target/<sut>/`, shared by every source of that SUT, so a changed source rebuilds incrementally.
- a SUT whose recipe names a `source` inside this repository (the reference peers) is built in place.
- `--binary FILE` / `--binary NAME=FILE`: the user's binaries, checked before any image is built (ELF, this
  machine's architecture, a glibc the base image has).

Every problem is one line saying what to do: missing tools and packages, a failed build, a wrong binary.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tarfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from harness.errors import BadInput, SetupError
from harness.images.build import ProgressFn, Steps
from harness.images.recipe import BASE_GLIBC, REPO_ROOT, cache_dir, digest, file_digest
from harness.models import Sut, SutBuild

SKIPPED_DIRS = {".git", "target", "node_modules", "__pycache__"}
ELF_MACHINES = {"x86_64": 62, "aarch64": 183, "arm64": 183}
_GLIBC = re.compile(rb"GLIBC_(\d+)\.(\d+)")


def find_tool(name: str) -> str | None:
    found = shutil.which(name)
    if found is None and name == "cargo":
        home = Path.home() / ".cargo" / "bin" / "cargo"
        found = str(home) if home.exists() else None
    return found


def check_build_needs(sut: Sut, build: SutBuild) -> None:
    """Every tool on PATH and every Debian package installed, else one line naming them and the fix."""
    missing_tools = [tool for tool in build.tools if find_tool(tool) is None]
    missing_packages = [p for p in build.packages if not _installed(p)]
    if missing_packages:
        raise BadInput(
            f"building SUT {sut.name!r} needs Debian packages {', '.join(missing_packages)}: "
            f"apt-get install {' '.join(missing_packages)}"
        )
    if missing_tools:
        raise BadInput(f"building SUT {sut.name!r} needs {', '.join(missing_tools)} on PATH (not found)")


def _installed(package: str) -> bool:
    if shutil.which("dpkg-query") is None:  # not Debian: the tools check above is what we can do
        return True
    done = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True, check=False)
    return done.returncode == 0 and "install ok installed" in done.stdout


def source_digest(source: Path) -> str:
    """A tarball's sha256, or a hash over a directory's files (names, modes, bytes; no .git, no target/)."""
    if source.is_file():
        return file_digest(source)
    parts: list[bytes] = []
    for root, dirs, files in os.walk(source):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS)
        for name in sorted(files):
            path = Path(root) / name
            if path.is_symlink() or not path.is_file():
                continue
            relative = path.relative_to(source).as_posix()
            parts += [relative.encode(), f"{path.stat().st_mode & 0o111:o}".encode(), file_digest(path).encode()]
    if not parts:
        raise BadInput(f"{source}: an empty directory is no source")
    return digest(parts)


def _unpacked(tarball: Path, key: str, steps: Steps) -> Path:
    """The tarball's top folder under the cache, unpacked once (a marker file says it is complete)."""
    target = cache_dir() / "sources" / key
    marker = target / ".dcutr-lab-unpacked"
    if not marker.exists():
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        with steps.step("unpack", tarball.name):
            try:
                with tarfile.open(tarball) as archive:
                    archive.extractall(target, filter="data")
            except (tarfile.TarError, OSError) as error:
                shutil.rmtree(target, ignore_errors=True)
                raise BadInput(f"{tarball}: not a readable tarball: {error}") from None
        marker.write_text(f"{tarball}\n")
    entries = [p for p in target.iterdir() if p.name != marker.name]
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else target


def _output_path(source: Path, output: str, target_dir: Path | None) -> Path:
    if target_dir is not None and output.startswith("target/"):
        return target_dir / output.removeprefix("target/")
    return source / output


def build_from_source(sut: Sut, source: Path | None, progress: ProgressFn | None = None) -> dict[str, Path]:
    """The SUT's programs (name -> file) built from `source` (or the recipe's in-repo source)."""
    build = sut.build
    if build is None:
        raise BadInput(f"SUT {sut.name!r} has no build recipe: give its binaries with --binary FILE")
    steps = Steps(f"sut-{sut.name}", progress)
    if source is None:
        if build.source is None:
            raise BadInput(f"SUT {sut.name!r} needs --source PATH (a checkout or a tarball) or --binary FILE")
        return _build_in_place(sut, build, REPO_ROOT / build.source, steps)
    source = Path(source).expanduser()
    if not source.exists():
        raise BadInput(f"--source {source}: no such file or directory")
    key = source_digest(source)[:16]
    out = cache_dir() / "builds" / sut.name / key
    programs = {name: out / name for name in build.programs}
    if all(path.is_file() for path in programs.values()):
        steps.emit("build", "cached", detail=f"{source.name} ({key})")
        return programs
    check_build_needs(sut, build)
    tree = _unpacked(source, key, steps) if source.is_file() else source
    target_dir = cache_dir() / "cargo-target" / sut.name
    command = [find_tool(build.command[0]) or build.command[0], *build.command[1:]]
    steps.run(
        "build", command, cwd=tree, env={"CARGO_TARGET_DIR": str(target_dir)}, detail=f"{source.name}", stream=True
    )
    out.mkdir(parents=True, exist_ok=True)
    for name, output in build.programs.items():
        built = _output_path(tree, output, target_dir)
        if not built.is_file():
            raise SetupError(f"SUT {sut.name}: `{' '.join(build.command)}` succeeded but {output} is missing")
        shutil.copy2(built, out / f".{name}.part")
        os.replace(out / f".{name}.part", programs[name])  # complete files only: a killed copy is no cache hit
    return programs


def _build_in_place(sut: Sut, build: SutBuild, tree: Path, steps: Steps) -> dict[str, Path]:
    if not tree.is_dir():
        raise SetupError(f"SUT {sut.name}: its source {tree} is missing from this checkout")
    env_target = os.environ.get("CARGO_TARGET_DIR")
    target_dir = None if not env_target else (Path(env_target) if Path(env_target).is_absolute() else tree / env_target)
    programs = {name: _output_path(tree, output, target_dir) for name, output in build.programs.items()}
    tool = find_tool(build.command[0])
    if tool is None:
        if all(path.is_file() for path in programs.values()):
            steps.emit("build", "cached", detail=f"{build.command[0]} not installed; using the programs built before")
            return programs
        raise SetupError(f"{build.command[0]} is missing: install it to build {tree.relative_to(REPO_ROOT)}")
    steps.run("build", [tool, *build.command[1:]], cwd=tree, detail=str(tree.relative_to(REPO_ROOT)))
    missing = [str(path) for path in programs.values() if not path.is_file()]
    if missing:
        raise SetupError(f"SUT {sut.name}: `{' '.join(build.command)}` succeeded but {', '.join(missing)} is missing")
    return programs


def given_binaries(sut: Sut, given: Sequence[str]) -> dict[str, Path]:
    """`--binary FILE` (the one program every role runs) or `--binary NAME=FILE` (NAME a role or a program)."""
    programs = sut.programs
    roles = {role.value: spec.command[0] for role, spec in sut.roles.items()}
    chosen: dict[str, Path] = {}
    for item in given:
        name, sep, file = item.partition("=")
        if not sep:
            if len(programs) != 1:
                raise BadInput(
                    f"SUT {sut.name!r} runs {len(programs)} programs ({', '.join(programs)}): "
                    "give --binary NAME=FILE for each (NAME a role or a program)"
                )
            name, file = programs[0], item
        program = roles.get(name, name)
        if program not in programs:
            known = ", ".join([*roles, *programs])
            raise BadInput(f"--binary {item}: SUT {sut.name!r} has no role or program {name!r} (known: {known})")
        chosen[program] = Path(file).expanduser()
    missing = [p for p in programs if p not in chosen]
    if missing:
        raise BadInput(f"SUT {sut.name!r} also runs {', '.join(missing)}: give --binary NAME=FILE for it")
    for path in chosen.values():
        check_binary(path)
    return chosen


def check_binary(path: Path, machine: str | None = None) -> None:
    """An executable ELF for this machine that the base image's glibc can run; else one line saying so."""
    machine = machine or os.uname().machine
    try:
        data = path.read_bytes()
    except OSError as error:
        raise BadInput(f"--binary {path}: cannot read it: {error.strerror or error}") from None
    if data[:4] != b"\x7fELF":
        raise BadInput(f"--binary {path}: not an ELF executable (a script or another file?)")
    if data[4] != 2:
        raise BadInput(f"--binary {path}: a 32-bit binary; build it for {machine}")
    found = int.from_bytes(data[18:20], "little" if data[5] == 1 else "big")
    wanted = ELF_MACHINES.get(machine)
    if wanted is not None and found != wanted:
        other = next((m for m, number in ELF_MACHINES.items() if number == found), f"ELF machine {found}")
        raise BadInput(f"--binary {path}: built for {other}, this lab runs {machine}: build it for {machine}")
    needed = max(((int(a), int(b)) for a, b in _GLIBC.findall(data)), default=None)
    if needed is not None and needed > BASE_GLIBC:
        have = ".".join(map(str, BASE_GLIBC))
        raise BadInput(
            f"--binary {path}: needs glibc {needed[0]}.{needed[1]}, the lab's Debian 12 image has {have}: "
            "build it on Debian 12 (bookworm) or older"
        )


def sha256s(programs: Mapping[str, Path]) -> dict[str, str]:
    return {name: file_digest(path) for name, path in programs.items()}
