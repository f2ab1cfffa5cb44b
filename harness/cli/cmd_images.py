"""`dcutr-lab images build|list`: the offline lab images (see harness.images)."""

from __future__ import annotations

import time
from typing import Annotated

import typer
from rich.table import Table

from harness.cli import app
from harness.console import console

images_app = typer.Typer(name="images", help="Build and list the lab's offline images.", no_args_is_help=True)
app.add_typer(images_app)


def rich_progress(event) -> None:
    """Print build steps as they happen: `base  mmdebstrap  bookworm, 11 packages` then `done 17.2s`."""
    head = f"[step]{event.kind:<6}[/] {event.step}"
    if event.status == "start":
        console.print(f"  {head} [muted]{event.detail}[/]")
    elif event.status == "done":
        console.print(f"  {head} [ok]done[/] {event.elapsed:.1f}s")
    elif event.status == "cached":
        console.print(f"  {head} [muted]up to date {event.detail}[/]")
    else:
        console.print(f"  {head} [error]failed[/] after {event.elapsed:.1f}s")


@images_app.command("build")
def build(
    kinds: Annotated[
        list[str] | None, typer.Argument(help="Image kinds to build: base, router, peer (default: all).")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Rebuild even when the tag already exists.")] = False,
) -> None:
    """Build the images whose inputs changed (a no-op otherwise) and print their tags."""
    from harness.images import ImageKind, ensure_image

    selected = kinds or [kind.value for kind in ImageKind]
    tags: dict[str, str] = {}
    for kind in selected:
        started = time.monotonic()
        tags[kind] = ensure_image(kind, progress=rich_progress, force=force)
        console.print(f"[ok]{kind}[/] {tags[kind]} [muted]({time.monotonic() - started:.1f}s)[/]")


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
