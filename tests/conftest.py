"""Property tests draw the same examples on every run, so a CI verdict never depends on the draw.
`HYPOTHESIS_PROFILE=explore pytest tests` draws fresh examples each run: do that by hand to look for new
counterexamples, and add each one found to the corpus or the test."""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
