"""The lab's images present locally: listing them, and pruning the tags today's inputs no longer produce."""

from __future__ import annotations

from dataclasses import dataclass

from harness.images.build import docker_client
from harness.images.recipe import REPOSITORY, base_inputs_digest, context_digest, router_context, tag_for
from harness.images.sut import kind_of, recorded_image
from harness.labels import LABEL_IMAGE
from harness.sut import get_sut, sut_names


@dataclass(frozen=True)
class LocalImage:
    kind: str
    tag: str
    size: int  # bytes
    created: str  # ISO 8601, seconds


def current_tags() -> dict[str, str]:
    """The tags today's inputs give, without building anything: base, router, and each SUT's recorded image."""
    tags = {"base": tag_for("base", base_inputs_digest())}
    tags["router"] = tag_for("router", context_digest("router", tags["base"], router_context()))
    for name in sut_names():
        sut = get_sut(name)
        image = recorded_image(sut)
        if image is not None:
            tags[kind_of(sut)] = image.tag
    return tags


def local_images() -> list[LocalImage]:
    """The lab's images present locally, newest first."""
    found = []
    for image in docker_client().images.list(filters={"label": LABEL_IMAGE}):
        for tag in image.tags:
            if tag.startswith(f"{REPOSITORY}/"):
                kind = image.labels.get(LABEL_IMAGE, "?")
                size = int(image.attrs.get("Size", 0))
                found.append(LocalImage(kind, tag, size, str(image.attrs.get("Created", ""))[:19]))
    return sorted(found, key=lambda i: i.created, reverse=True)


def prune_images() -> tuple[list[str], list[str]]:
    """Remove lab images that the current inputs no longer produce. Returns (removed, kept-because-in-use)."""
    import docker.errors

    client = docker_client()
    current = current_tags()
    keep = set(current.values())
    removed: list[str] = []
    busy: list[str] = []
    for image in client.images.list(filters={"label": LABEL_IMAGE}):
        for tag in image.tags:
            kind = tag.removeprefix(f"{REPOSITORY}/").partition(":")[0]
            # a kind whose current tag is unknown (a SUT never recorded) keeps every image
            if not tag.startswith(f"{REPOSITORY}/") or tag in keep or kind not in current:
                continue
            try:
                client.images.remove(tag)
                removed.append(tag)
            except docker.errors.APIError:  # a container still uses it, or a child image does
                busy.append(tag)
    return removed, busy
