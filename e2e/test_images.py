"""Image builds on a real Docker daemon: a second build does no work; the peer path end to end."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness import images
from harness.images import recipe
from harness.labels import LABEL_IMAGE


@pytest.mark.docker
def test_second_build_does_no_work() -> None:
    images.ensure_image("router")  # builds what is missing (the first time only)
    events: list[images.BuildEvent] = []
    tags = {kind: images.ensure_image(kind, progress=events.append) for kind in ("base", "router")}
    assert [(e.kind, e.status) for e in events] == [("base", "cached"), ("base", "cached"), ("router", "cached")]
    assert tags["base"].startswith("dcutr-lab/base:") and tags["router"].startswith("dcutr-lab/router:")
    current = images.current_tags()
    assert (current["base"], current["router"]) == (tags["base"], tags["router"])
    client = images.build.docker_client()
    router = client.images.get(tags["router"])
    assert router.labels[LABEL_IMAGE] == "router"
    assert router.labels[recipe.LABEL_INPUTS].startswith(tags["router"].rsplit(":", 1)[1])


def _stand_in(name: str, command: list[str], outputs: list[str], source: str | None = None):
    from harness.models import Sut

    return Sut.model_validate(
        {
            "name": name,
            "format": "json",
            "roles": {"relay": {"command": [command[0]]}, "client": {"command": [command[-1]]}},
            "checkpoints": {"up": {"event": "up"}},
            "build": {"command": ["cargo", "build", "--release"], "outputs": outputs, "source": source},
        }
    )


@pytest.mark.docker
def test_sut_image_from_a_source_built_in_place(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The in-place path end to end (build step, context, docker build, entry script, record) with a stand-in
    cargo; a rebuild with nothing changed gives the same tag, new program bytes a new one."""
    from harness.images import recorded_image, source, sut
    from harness.images.build import docker_client
    from harness.labels import new_run_id, run_labels

    monkeypatch.setenv("DCUTR_LAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CARGO_TARGET_DIR", raising=False)
    tree = tmp_path / "repo" / "peers"
    release = tree / "target" / "release"
    release.mkdir(parents=True)
    for name in ("standin_relay", "standin_client"):
        (release / name).write_text(f'#!/bin/sh\necho "{name} $*"\n')
    cargo = tmp_path / "cargo"
    cargo.write_text(f'#!/bin/sh\necho "$PWD $*" >> {tmp_path}/cargo.calls\n')
    cargo.chmod(0o755)
    monkeypatch.setattr(source, "REPO_ROOT", tmp_path / "repo")
    monkeypatch.setattr(source, "find_tool", lambda name: str(cargo))
    standin = _stand_in(
        "standin",
        ["standin_relay", "standin_client"],
        ["target/release/standin_relay", "target/release/standin_client"],
        source="peers",
    )

    events: list[images.BuildEvent] = []
    first = sut.sut_image(standin, progress=events.append)
    built = [first.tag]
    client = docker_client()
    try:
        assert (tmp_path / "cargo.calls").read_text() == f"{tree} build --release\n"
        assert ("sut-standin", "build", "done") in [(e.kind, e.step, e.status) for e in events]
        assert first.tag.startswith("dcutr-lab/sut-standin:")
        output = client.containers.run(
            first.tag,
            ["standin_relay", "--listen", "x"],
            network_mode="none",
            remove=True,
            labels=run_labels(new_run_id(), role="test"),
        )
        assert output.decode() == "standin_relay --listen x\n"
        assert sut.sut_image(standin).tag == first.tag  # nothing changed: same tag, no image build
        recorded = recorded_image(standin)
        assert recorded is not None and recorded.tag == first.tag
        (release / "standin_client").write_text("#!/bin/sh\necho changed\n")
        built.append(sut.sut_image(standin).tag)
        assert built[1] != first.tag  # new program bytes: new tag
    finally:
        for stand_in in built:  # stand-in images must not pose as real SUTs
            client.images.remove(stand_in, force=True)


@pytest.mark.docker
def test_a_library_the_base_image_lacks_goes_into_the_image(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A real ELF linking zlib (not in the minbase image): the link check finds it missing, the host's copy goes
    in, and the program runs in the image. Without the copy it would exit 127."""
    import subprocess

    from harness.images import build_sut_image, given_binaries
    from harness.images.build import docker_client
    from harness.labels import new_run_id, run_labels

    monkeypatch.setenv("DCUTR_LAB_CACHE", str(tmp_path / "cache"))
    program = tmp_path / "zprog"
    (tmp_path / "z.c").write_text(
        "#include <zlib.h>\n#include <stdio.h>\nint main(void){puts(zlibVersion());return 0;}\n"
    )
    subprocess.run(["gcc", "-O1", "-o", str(program), str(tmp_path / "z.c"), "-lz"], check=True)
    standin = _stand_in("zstandin", ["zprog"], ["target/release/zprog"])
    image = build_sut_image(standin, given_binaries(standin, [str(program)]), source="test")
    client = docker_client()
    try:
        output = client.containers.run(
            image.tag, ["zprog"], network_mode="none", remove=True, labels=run_labels(new_run_id(), role="test")
        )
        assert output.decode().strip().startswith("1.")
    finally:
        client.images.remove(image.tag, force=True)
