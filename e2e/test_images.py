"""Image builds on a real Docker daemon: a second build does no work; the peer path end to end."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness import images


@pytest.mark.docker
def test_second_build_does_no_work() -> None:
    images.ensure_image("router")  # builds what is missing (the first time only)
    events: list[images.BuildEvent] = []
    tags = {kind: images.ensure_image(kind, progress=events.append) for kind in ("base", "router")}
    assert [(e.kind, e.status) for e in events] == [("base", "cached"), ("base", "cached"), ("router", "cached")]
    assert tags["base"].startswith("dcutr-lab/base:") and tags["router"].startswith("dcutr-lab/router:")
    current = images.current_tags()
    assert (current["base"], current["router"]) == (tags["base"], tags["router"])
    client = images._docker()
    router = client.images.get(tags["router"])
    assert router.labels[images.LABEL_IMAGE] == "router"
    assert router.labels[images.LABEL_INPUTS].startswith(tags["router"].rsplit(":", 1)[1])


@pytest.mark.docker
def test_peer_image_from_a_stand_in_workspace(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The peer path end to end (cargo step, context, docker build, entry script) with stand-in binaries."""
    from harness.labels import new_run_id, run_labels

    peers = tmp_path / "peers"
    release = peers / "target" / "release"
    release.mkdir(parents=True)
    (peers / "Cargo.toml").write_text("[workspace]\n")
    for name in images.PEER_BINARIES:
        (release / name).write_text(f'#!/bin/sh\necho "{name} $*"\n')
    cargo = tmp_path / "cargo"
    cargo.write_text(f'#!/bin/sh\necho "$PWD $*" >> {tmp_path}/cargo.calls\n')
    cargo.chmod(0o755)
    monkeypatch.setattr(images, "PEERS_DIR", peers)
    monkeypatch.setattr(images, "REPO_ROOT", tmp_path)
    monkeypatch.setattr(images, "_cargo", lambda: str(cargo))
    monkeypatch.delenv("CARGO_TARGET_DIR", raising=False)

    events: list[images.BuildEvent] = []
    tag = images.ensure_image("peer", progress=events.append)
    built = [tag]
    client = images._docker()
    try:
        assert (tmp_path / "cargo.calls").read_text() == f"{peers} build --release\n"
        assert ("peer", "cargo build", "done") in [(e.kind, e.step, e.status) for e in events]
        output = client.containers.run(
            tag,
            ["kaspa_p2p_relay", "--listen", "x"],
            network_mode="none",
            remove=True,
            labels=run_labels(new_run_id(), role="test"),
        )
        assert output.decode() == "kaspa_p2p_relay --listen x\n"
        assert images.ensure_image("peer") == tag  # nothing changed: same tag, no build
        (release / "kaspa_p2p_client").write_text("#!/bin/sh\necho changed\n")
        built.append(images.ensure_image("peer"))
        assert built[1] != tag  # new binary bytes: new tag
    finally:
        for stand_in in built:  # stand-in images must not pose as real peers
            client.images.remove(stand_in, force=True)
