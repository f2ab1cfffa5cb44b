"""The one place that makes Docker labels and names, so a sweep by label finds everything a run made."""

from __future__ import annotations

import os
import secrets

LABEL_RUN = "dcutr-lab.run"
LABEL_WORKER = "dcutr-lab.worker"
LABEL_ROLE = "dcutr-lab.role"
LABEL_IMAGE = "dcutr-lab.image"


def new_run_id() -> str:
    """Short, unique, sortable enough for humans: 8 hex chars."""
    return secrets.token_hex(4)


def worker_id() -> str:
    """pytest-xdist worker (gw0, gw1, ...) or 'main' outside xdist."""
    return os.environ.get("PYTEST_XDIST_WORKER", "main")


def run_labels(run_id: str, role: str | None = None) -> dict[str, str]:
    labels = {LABEL_RUN: run_id, LABEL_WORKER: worker_id()}
    if role:
        labels[LABEL_ROLE] = role
    return labels


def object_name(run_id: str, what: str) -> str:
    """Docker object names are global: prefix with the run id so parallel labs never collide."""
    return f"dcutr-{run_id}-{what}"
