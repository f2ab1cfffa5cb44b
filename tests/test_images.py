"""Offline images: recipes, content-hash tags, Dockerfile rules, failure messages. No Docker: builds are e2e."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from harness import images
from harness.errors import BadInput, SetupError
from harness.images import ContextFile, ImageKind

DOCKERFILES = sorted(images.IMAGES_DIR.glob("*/Dockerfile"))


def test_base_package_list_has_what_the_lab_needs() -> None:
    packages = images.base_packages()
    for needed in ("iproute2", "nftables", "iptables", "conntrack", "procps", "tcpdump", "openssh-server", "python3"):
        assert needed in packages
    assert len(packages) == len(set(packages))
    assert all(re.fullmatch(r"[a-z0-9][a-z0-9+.-]+", p) for p in packages)


def test_base_digest_is_stable_and_follows_the_package_list(monkeypatch: pytest.MonkeyPatch) -> None:
    first = images.base_inputs_digest()
    assert first == images.base_inputs_digest()
    monkeypatch.setattr(images, "base_packages", lambda: ["iproute2"])
    assert images.base_inputs_digest() != first


def test_tags_are_short_content_hashes() -> None:
    digest = "ab" * 32
    assert images.tag_for("router", digest) == "dcutr-lab/router:abababababababab"


def test_context_digest_covers_bytes_modes_names_and_parent(tmp_path: Path) -> None:
    a = tmp_path / "a"
    a.write_text("one")
    files = [ContextFile("Dockerfile", a), ContextFile("tool", a, 0o755)]
    base = images.context_digest("router", "dcutr-lab/base:1", files)
    assert base == images.context_digest("router", "dcutr-lab/base:1", list(reversed(files)))
    assert base != images.context_digest("router", "dcutr-lab/base:2", files)
    assert base != images.context_digest("peer", "dcutr-lab/base:1", files)
    assert base != images.context_digest("router", "dcutr-lab/base:1", [files[0], ContextFile("tool", a, 0o644)])
    assert base != images.context_digest("router", "dcutr-lab/base:1", [files[0], ContextFile("tool2", a, 0o755)])
    a.write_text("two")
    assert base != images.context_digest("router", "dcutr-lab/base:1", files)


def test_router_context_bakes_in_the_probe_agent_and_the_wire() -> None:
    files = {f.name: f for f in images.context_files(ImageKind.router)}
    assert set(files) == {"Dockerfile", "dcutr-probe", "dcutr-wire"}
    assert files["dcutr-wire"].mode == 0o755
    assert files["dcutr-probe"].source == images.PROBE_AGENT and files["dcutr-probe"].mode == 0o755
    assert files["dcutr-probe"].source.read_text().startswith("#!/usr/bin/env python3\n")


def test_peer_context_has_the_three_binaries_and_the_entry_script() -> None:
    names = {f.name for f in images.context_files(ImageKind.peer)}
    assert names == {"Dockerfile", "peer-entry", *images.PEER_BINARIES}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_dockerfiles_are_from_the_local_base_and_copy_only(dockerfile: Path) -> None:
    lines = [line.strip() for line in dockerfile.read_text().splitlines()]
    assert not any(line.lower().startswith("# syntax") for line in lines)
    instructions = [line.split()[0].upper() for line in lines if line and not line.startswith("#")]
    assert instructions[:2] == ["ARG", "FROM"]
    assert "ARG BASE_IMAGE" in lines and "FROM ${BASE_IMAGE}" in lines
    assert set(instructions) <= {"ARG", "FROM", "COPY", "LABEL", "ENV", "CMD", "ENTRYPOINT", "WORKDIR"}
    assert not any("--chmod" in line or "--link" in line for line in lines)  # BuildKit-only flags


def test_every_copied_file_is_in_the_context() -> None:
    for kind in (ImageKind.router, ImageKind.peer):
        names = {f.name for f in images.context_files(kind)}
        dockerfile = images.IMAGES_DIR / kind.value / "Dockerfile"
        for line in dockerfile.read_text().splitlines():
            if line.startswith("COPY "):
                sources = line.split()[1:-1]
                assert set(sources) <= names, line


def test_unknown_kind_is_bad_input() -> None:
    with pytest.raises(BadInput, match="known: base, router, peer"):
        images.ensure_image("probe")


def test_peer_without_cargo_workspace_is_a_setup_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(images, "PEERS_DIR", tmp_path / "peers")
    monkeypatch.setattr(images, "REPO_ROOT", tmp_path)
    with pytest.raises(SetupError, match=r"peers/Cargo.toml does not exist yet"):
        images.build_peer_binaries(images._Steps("peer", None))


def test_missing_mmdebstrap_is_a_setup_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(images.shutil, "which", lambda name: None)
    with pytest.raises(SetupError, match="apt-get install mmdebstrap"):
        images._build_base(None, "dcutr-lab/base:x", "x", images._Steps("base", None))


def test_not_root_is_a_setup_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(images.shutil, "which", lambda name: "/usr/bin/mmdebstrap")
    monkeypatch.setattr(images.os, "geteuid", lambda: 1000)
    with pytest.raises(SetupError, match="run this as root"):
        images._build_base(None, "dcutr-lab/base:x", "x", images._Steps("base", None))


def test_missing_docker_daemon_is_a_setup_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    with pytest.raises(SetupError, match="cannot reach the Docker daemon"):
        images.ensure_image("base")


def test_failing_step_names_the_step_the_command_and_the_log(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DCUTR_LAB_CACHE", str(tmp_path))
    events = []
    steps = images._Steps("base", events.append)
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
    entry = images.IMAGES_DIR / "peer" / "peer-entry"
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
            assert filters == {"label": images.LABEL_IMAGE}
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
    monkeypatch.setattr(images, "_docker", lambda: fake)
    monkeypatch.setattr(
        images, "current_tags", lambda: {"base": "dcutr-lab/base:new", "router": "dcutr-lab/router:new"}
    )
    removed, busy = images.prune_images()
    assert removed == ["dcutr-lab/router:old"]
    assert busy == ["dcutr-lab/router:busy"]
