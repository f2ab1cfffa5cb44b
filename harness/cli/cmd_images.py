"""`dcutr-lab images build|list`: the offline lab images (see harness.images)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.status import Status
from rich.table import Table

from harness.cli import app
from harness.console import console
from harness.errors import BadInput
from harness.images.build import BuildEvent

images_app = typer.Typer(name="images", help="Build and list the lab's offline images.", no_args_is_help=True)
app.add_typer(images_app)


class BuildProgress:
    """Build steps as they happen (`base  mmdebstrap  bookworm, 11 packages` then `done 17.2s`); a long step's
    output lines keep a status line moving (`build  [412] Compiling kaspa-consensus ...`) instead of flooding."""

    def __init__(self) -> None:
        self.status: Status | None = None
        self.lines = 0

    def __call__(self, event: BuildEvent) -> None:
        head = f"[step]{event.kind:<6}[/] {event.step}"
        if event.status == "output":
            self.lines += 1
            text = f"{head} [muted][{self.lines}] {escape(event.detail[:100])}[/]"
            if self.status is None:
                self.status = console.status(text, spinner="dots")
                self.status.start()
            else:
                self.status.update(text)
            return
        self._stop()
        if event.status == "start":
            console.print(f"  {head} [muted]{escape(event.detail)}[/]")
        elif event.status == "done":
            console.print(f"  {head} [ok]done[/] {event.elapsed:.1f}s")
        elif event.status == "cached":
            console.print(f"  {head} [muted]up to date {escape(event.detail)}[/]")
        else:
            console.print(f"  {head} [error]failed[/] after {event.elapsed:.1f}s")

    def _stop(self) -> None:
        if self.status is not None:
            self.status.stop()
            self.status = None
            self.lines = 0


@images_app.command("build")
def build(
    kinds: Annotated[
        list[str] | None, typer.Argument(help="Image kinds: base, router (default: both, plus in-repo SUTs).")
    ] = None,
    sut: Annotated[str | None, typer.Option("--sut", help="Build the image of this SUT.")] = None,
    sut_file: Annotated[Path | None, typer.Option("--sut-file", help="A SUT definition YAML of your own.")] = None,
    source: Annotated[
        Path | None, typer.Option("--source", help="--sut: build from this checkout or tarball (cached by content).")
    ] = None,
    binary: Annotated[
        list[str] | None,
        typer.Option("--binary", help="--sut: your own build, FILE (every role) or NAME=FILE (a role or program)."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Rebuild base/router even when the tag exists.")] = False,
) -> None:
    """Build the images whose inputs changed (a no-op otherwise) and print their tags."""
    from harness.images import build_from_source, build_sut_image, ensure_image, given_binaries
    from harness.images.recipe import ImageKind
    from harness.sut import get_sut, load_sut_file, register_sut, sut_names

    if sut_file is not None:
        register_sut(load_sut_file(sut_file))
    if (source is not None or binary) and sut is None:
        raise BadInput("--source and --binary build a SUT's image: give --sut NAME")
    if source is not None and binary:
        raise BadInput("give --source or --binary, not both")
    progress = BuildProgress()
    started = time.monotonic()
    if sut is not None:
        chosen = get_sut(sut)
        if binary:
            programs, origin = given_binaries(chosen, binary), "given binaries"
        else:
            programs = build_from_source(chosen, source, progress)
            origin = str(source) if source else (chosen.build.source if chosen.build else "")
        image = build_sut_image(chosen, programs, source=Path(origin).name or origin, progress=progress)
        progress._stop()
        console.print(f"[ok]sut {chosen.name}[/] {image.tag} [muted]({time.monotonic() - started:.1f}s)[/]")
        return
    for kind in kinds or [k.value for k in ImageKind]:
        began = time.monotonic()
        tag = ensure_image(kind, progress=progress, force=force)
        console.print(f"[ok]{kind}[/] {tag} [muted]({time.monotonic() - began:.1f}s)[/]")
    if not kinds:  # every SUT this repository builds itself (the reference peers)
        for name in sut_names():
            definition = get_sut(name)
            if definition.build is not None and definition.build.source is not None:
                began = time.monotonic()
                image = build_sut_image(
                    definition,
                    build_from_source(definition, None, progress),
                    source=definition.build.source,
                    progress=progress,
                )
                progress._stop()
                console.print(f"[ok]sut {name}[/] {image.tag} [muted]({time.monotonic() - began:.1f}s)[/]")


@images_app.command("list")
def list_images() -> None:
    """The lab images present locally, newest first, with their sizes."""
    from harness.images import local_images

    table = Table("kind", "tag", "size", "created")
    for image in local_images():
        table.add_row(image.kind, image.tag, f"{image.size / 1e6:.0f} MB", image.created)
    console.print(table)


@images_app.command("prune")
def prune() -> None:
    """Remove lab images that today's inputs no longer produce (old router, peer and base tags)."""
    from harness.images import prune_images

    removed, busy = prune_images()
    for tag in removed:
        console.print(f"[muted]removed {tag}[/]")
    for tag in busy:
        console.print(f"[warn]kept {tag}[/]: in use")
    console.print(f"[ok]pruned[/] {len(removed)} image tag(s)")
