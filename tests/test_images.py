"""Offline images: recipes, content-hash tags, Dockerfile rules, failure messages. No Docker: builds are e2e."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from harness.errors import BadInput, SetupError
from harness.images import build, inventory, recipe, source, sut
from harness.images.recipe import ContextFile
from harness.labels import LABEL_IMAGE

DOCKERFILES = sorted(recipe.IMAGES_DIR.glob("*/Dockerfile"))


def test_base_package_list_has_what_the_lab_needs() -> None:
    packages = recipe.base_packages()
    for needed in ("iproute2", "nftables", "iptables", "conntrack", "procps", "tcpdump", "openssh-server", "python3"):
        assert needed in packages
    assert len(packages) == len(set(packages))
    assert all(re.fullmatch(r"[a-z0-9][a-z0-9+.-]+", p) for p in packages)


def test_base_digest_is_stable_and_follows_the_package_list(monkeypatch: pytest.MonkeyPatch) -> None:
    first = recipe.base_inputs_digest()
    assert first == recipe.base_inputs_digest()
    monkeypatch.setattr(recipe, "base_packages", lambda: ["iproute2"])
    assert recipe.base_inputs_digest() != first


def test_tags_are_short_content_hashes() -> None:
    digest = "ab" * 32
    assert recipe.tag_for("router", digest) == "dcutr-lab/router:abababababababab"


def test_context_digest_covers_bytes_modes_names_and_parent(tmp_path: Path) -> None:
    a = tmp_path / "a"
    a.write_text("one")
    files = [ContextFile("Dockerfile", a), ContextFile("tool", a, 0o755)]
    base = recipe.context_digest("router", "dcutr-lab/base:1", files)
    assert base == recipe.context_digest("router", "dcutr-lab/base:1", list(reversed(files)))
    assert base != recipe.context_digest("router", "dcutr-lab/base:2", files)
    assert base != recipe.context_digest("peer", "dcutr-lab/base:1", files)
    assert base != recipe.context_digest("router", "dcutr-lab/base:1", [files[0], ContextFile("tool", a, 0o644)])
    assert base != recipe.context_digest("router", "dcutr-lab/base:1", [files[0], ContextFile("tool2", a, 0o755)])
    a.write_text("two")
    assert base != recipe.context_digest("router", "dcutr-lab/base:1", files)


def test_router_context_bakes_in_the_probe_agent_and_the_wire() -> None:
    files = {f.name: f for f in recipe.router_context()}
    assert set(files) == {"Dockerfile", "dcutr-probe", "dcutr-wire"}
    assert files["dcutr-wire"].mode == 0o755
    assert files["dcutr-probe"].source == recipe.PROBE_AGENT and files["dcutr-probe"].mode == 0o755
    assert files["dcutr-probe"].source.read_text().startswith("#!/usr/bin/env python3\n")


def test_sut_context_holds_the_programs_their_libraries_and_the_entry_script(tmp_path: Path) -> None:
    program = tmp_path / "kaspad"
    program.write_text("x")
    names = {f.name: f.mode for f in sut._context({"kaspad": program}, {"libfoo.so.1": program})}
    assert names == {
        "Dockerfile": 0o644,
        "bin/peer-entry": 0o755,
        "lib/README": 0o644,
        "bin/kaspad": 0o755,
        "lib/libfoo.so.1": 0o644,
    }


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_dockerfiles_are_from_the_local_base_and_copy_only(dockerfile: Path) -> None:
    lines = [line.strip() for line in dockerfile.read_text().splitlines()]
    assert not any(line.lower().startswith("# syntax") for line in lines)
    instructions = [line.split()[0].upper() for line in lines if line and not line.startswith("#")]
    assert instructions[:2] == ["ARG", "FROM"]
    assert "ARG BASE_IMAGE" in lines and "FROM ${BASE_IMAGE}" in lines
    assert set(instructions) <= {"ARG", "FROM", "COPY", "LABEL", "ENV", "CMD", "ENTRYPOINT", "WORKDIR"}
    assert not any("--chmod" in line or "--link" in line for line in lines)  # BuildKit-only flags


def test_every_copied_file_is_in_the_context(tmp_path: Path) -> None:
    contexts = {"router": recipe.router_context(), "sut": sut._context({"p": tmp_path}, {})}
    for kind, files in contexts.items():
        names = {f.name.split("/", 1)[0] + ("/" if "/" in f.name else "") for f in files}
        for line in (recipe.IMAGES_DIR / kind / "Dockerfile").read_text().splitlines():
            if line.startswith("COPY "):
                assert set(line.split()[1:-1]) <= names, line


def test_unknown_kind_is_bad_input() -> None:
    with pytest.raises(BadInput, match="known: base, router; SUT images: --sut NAME"):
        build.ensure_image("probe")


def test_missing_mmdebstrap_is_a_setup_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(build.shutil, "which", lambda name: None)
    with pytest.raises(SetupError, match="apt-get install mmdebstrap"):
        build.build_base(None, "dcutr-lab/base:x", "x", build.Steps("base", None))


def test_not_root_is_a_setup_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(build.shutil, "which", lambda name: "/usr/bin/mmdebstrap")
    monkeypatch.setattr(build.os, "geteuid", lambda: 1000)
    with pytest.raises(SetupError, match="run this as root"):
        build.build_base(None, "dcutr-lab/base:x", "x", build.Steps("base", None))


def test_missing_docker_daemon_is_a_setup_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    with pytest.raises(SetupError, match="cannot reach the Docker daemon"):
        build.ensure_image("base")


def test_failing_step_names_the_step_the_command_and_the_log(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DCUTR_LAB_CACHE", str(tmp_path))
    events = []
    steps = build.Steps("base", events.append)
    with pytest.raises(SetupError) as caught:
        steps.run("mmdebstrap", ["sh", "-c", "echo resolving; echo E: no such package >&2; exit 3"])
    message = str(caught.value)
    assert "\n" not in message
    assert "step mmdebstrap failed" in message and "exited 3" in message and "echo resolving" in message
    log = Path(message.rsplit("details: ", 1)[1].rstrip(")"))
    assert log.parent == tmp_path / "logs"
    assert "E: no such package" in log.read_text()
    assert [e.status for e in events] == ["start", "failed"]


def test_peer_entry_sets_the_route_only_when_asked(tmp_path: Path) -> None:
    entry = recipe.IMAGES_DIR / "sut" / "peer-entry"
    assert os.access(entry, os.X_OK)
    env = {k: v for k, v in os.environ.items() if k != "DEFAULT_ROUTE"}
    done = subprocess.run([str(entry), "echo", "started"], capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0 and done.stdout == "started\n"
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "ip").write_text('#!/bin/sh\necho "ip $*"\n')
    (fake_bin / "ip").chmod(0o755)
    env = {**env, "PATH": f"{fake_bin}:{env['PATH']}", "DEFAULT_ROUTE": "192.168.1.1"}
    done = subprocess.run([str(entry), "echo", "started"], capture_output=True, text=True, env=env, check=False)
    assert done.stdout == "ip route replace default via 192.168.1.1\nstarted\n"
    (fake_bin / "ip").write_text("#!/bin/sh\nexit 2\n")
    done = subprocess.run([str(entry), "echo", "started"], capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 70 and "NET_ADMIN" in done.stderr


def test_prune_keeps_current_tags_and_kinds_it_cannot_judge(monkeypatch: pytest.MonkeyPatch) -> None:
    import docker.errors

    class FakeImage:
        def __init__(self, *tags: str) -> None:
            self.tags = list(tags)

    class FakeImages:
        def __init__(self) -> None:
            self.removed: list[str] = []

        def list(self, filters: dict) -> list[FakeImage]:
            assert filters == {"label": LABEL_IMAGE}
            return [
                FakeImage("dcutr-lab/base:new"),
                FakeImage("dcutr-lab/router:old", "dcutr-lab/router:new"),
                FakeImage("dcutr-lab/router:busy"),
                FakeImage("dcutr-lab/peer:someone-elses"),
                FakeImage("other/thing:1"),
            ]

        def remove(self, tag: str) -> None:
            if tag.endswith(":busy"):
                raise docker.errors.APIError("conflict: image is being used by a container")
            self.removed.append(tag)

    fake = type("FakeClient", (), {"images": FakeImages()})()
    monkeypatch.setattr(inventory, "docker_client", lambda: fake)
    monkeypatch.setattr(
        inventory, "current_tags", lambda: {"base": "dcutr-lab/base:new", "router": "dcutr-lab/router:new"}
    )
    removed, busy = inventory.prune_images()
    assert removed == ["dcutr-lab/router:old"]
    assert busy == ["dcutr-lab/router:busy"]


# -- a SUT's programs: from source, or the user's own binaries --------------------------------------------------


def _elf(path: Path, machine: int = 62, glibc: bytes = b"GLIBC_2.34") -> Path:
    header = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9) + (2).to_bytes(2, "little") + machine.to_bytes(2, "little")
    path.write_bytes(header + bytes(64) + glibc + b"\x00")
    return path


def _kaspad():
    from harness.sut import get_sut

    return get_sut("kaspad-bridge")


def test_a_binary_for_every_role_or_one_per_program(tmp_path: Path) -> None:
    kaspad = _elf(tmp_path / "kaspad")
    assert source.given_binaries(_kaspad(), [str(kaspad)]) == {"kaspad": kaspad}
    assert source.given_binaries(_kaspad(), [f"relay={kaspad}"]) == {"kaspad": kaspad}
    with pytest.raises(BadInput, match="no role or program 'seeder'"):
        source.given_binaries(_kaspad(), [f"seeder={kaspad}"])


def test_a_sut_of_several_programs_needs_each_named(tmp_path: Path) -> None:
    from harness.sut import get_sut

    relay = _elf(tmp_path / "kaspa_p2p_relay")
    with pytest.raises(BadInput, match=r"runs 3 programs .*give --binary NAME=FILE"):
        source.given_binaries(get_sut("reference"), [str(relay)])
    with pytest.raises(BadInput, match="also runs kaspa_p2p_server, kaspa_p2p_client"):
        source.given_binaries(get_sut("reference"), [f"relay={relay}"])


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.write_text("#!/bin/sh\n"), "not an ELF executable"),
        (lambda p: _elf(p, machine=183), "built for aarch64, this lab runs x86_64"),
        (lambda p: _elf(p, glibc=b"GLIBC_2.39"), "needs glibc 2.39, the lab's Debian 12 image has 2.36"),
    ],
)
def test_a_wrong_binary_is_one_line_saying_what_to_do(tmp_path: Path, make, message: str) -> None:
    path = tmp_path / "kaspad"
    make(path)
    with pytest.raises(BadInput, match=message) as caught:
        source.check_binary(path, machine="x86_64")
    assert "\n" not in str(caught.value) and caught.value.exit_code == 2


def test_missing_build_packages_name_the_apt_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(source, "_installed", lambda package: package != "clang")
    with pytest.raises(BadInput, match="needs Debian packages clang: apt-get install clang"):
        source.check_build_needs(_kaspad(), _kaspad().build)


def test_a_second_build_of_the_same_source_runs_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The build runs once per content hash of the source; a changed file means a new build."""
    import tarfile

    monkeypatch.setenv("DCUTR_LAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(source, "check_build_needs", lambda sut, build: None)
    calls = tmp_path / "calls"
    cargo = tmp_path / "cargo"
    cargo.write_text(
        f'#!/bin/sh\necho "$PWD" >> {calls}\nmkdir -p "$CARGO_TARGET_DIR/release"\n'
        'cp kaspad.src "$CARGO_TARGET_DIR/release/kaspad"\n'
    )
    cargo.chmod(0o755)
    monkeypatch.setattr(source, "find_tool", lambda name: str(cargo))
    tree = tmp_path / "rusty-kaspa"
    tree.mkdir()
    (tree / "kaspad.src").write_text("one")
    tarball = tmp_path / "src.tar.gz"
    with tarfile.open(tarball, "w:gz") as archive:
        archive.add(tree, arcname="rusty-kaspa")
    first = source.build_from_source(_kaspad(), tarball)
    assert first["kaspad"].read_text() == "one"
    assert source.build_from_source(_kaspad(), tarball) == first
    assert len(calls.read_text().splitlines()) == 1  # the second build ran nothing
    assert calls.read_text().strip().endswith("/rusty-kaspa")
    (tree / "kaspad.src").write_text("two")  # a checkout, changed: built again
    assert source.build_from_source(_kaspad(), tree)["kaspad"].read_text() == "two"
    assert len(calls.read_text().splitlines()) == 2


def test_a_failed_source_build_is_one_line_with_its_log(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DCUTR_LAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(source, "check_build_needs", lambda sut, build: None)
    monkeypatch.setattr(source, "find_tool", lambda name: "false")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "Cargo.toml").write_text("[workspace]\n")
    with pytest.raises(SetupError, match=r"step build failed: `false build --release --bin kaspad` exited 1") as caught:
        source.build_from_source(_kaspad(), tmp_path / "src")
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "cache" / "builds" / "kaspad-bridge").exists() or not any(
        (tmp_path / "cache" / "builds" / "kaspad-bridge").rglob("kaspad")
    )


def test_a_sut_without_an_image_says_how_to_build_one(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DCUTR_LAB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(BadInput, match="dcutr-lab images build --sut kaspad-bridge --source PATH"):
        sut.sut_image(_kaspad())
