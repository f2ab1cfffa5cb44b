"""Lab images, built offline and tagged by the hash of their inputs.

| module | job |
| --- | --- |
| `recipe` | what each image is made of; content hashes and tags |
| `build` | building on the local daemon: steps, logs, locks; the `base` and `router` images |
| `source` | a SUT's programs, from its source (cached by content hash) or the user's own binaries |
| `sut` | SUT images (base + programs + what they link) and which image serves a SUT |
| `inventory` | the images present locally: list, prune |

- `base`: a Debian root filesystem made by `mmdebstrap --variant=minbase` (images/base/packages.txt), imported.
- `router`: base + the NAT probe agent and the WAN wire; also the image of node host containers.
- `sut-<name>`: base + a SUT's programs (the reference peers built in place from images/peers, or kaspad from
  a user's source or binary) + the entry script.
"""

from harness.images.build import BuildEvent, ProgressFn, ensure_image
from harness.images.inventory import LocalImage, current_tags, local_images, prune_images
from harness.images.source import build_from_source, given_binaries
from harness.images.sut import SutImage, build_sut_image, recorded_image, sut_image, sut_programs

__all__ = [
    "BuildEvent",
    "LocalImage",
    "ProgressFn",
    "SutImage",
    "build_from_source",
    "build_sut_image",
    "current_tags",
    "ensure_image",
    "given_binaries",
    "local_images",
    "prune_images",
    "recorded_image",
    "sut_image",
    "sut_programs",
]
