"""The reports' charts, drawn from report JSON records (PNG for the markdown, SVG beside it).

- `timeline`: one scenario's checkpoints on a time axis, one lane per node: when each fact happened (PNG).
- `heatmap`: the NAT matrix's direct rate per cell (server by client), each cell annotated with its attempts
  and its punch latency (p50 / p95).

Charts are drawn from the JSON, so `dcutr-lab report` redraws them with the markdown; matplotlib's Agg backend
needs no display.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure: Any, directory: Path, stem: str, *, svg: bool = True) -> list[Path]:
    paths = [directory / f"{stem}.png", *([directory / f"{stem}.svg"] if svg else [])]
    for path in paths:
        figure.savefig(path, dpi=110, bbox_inches="tight", metadata={"Date": None} if path.suffix == ".svg" else {})
    _pyplot().close(figure)
    return paths


def timeline(record: Mapping[str, Any], directory: Path) -> list[Path]:
    """`timeline.png/.svg` of a scenario record's met checkpoints; nothing when none was met."""
    met = [c for c in record.get("checkpoints", []) if c.get("status") == "met" and c.get("t") is not None]
    if not met:
        return []
    plt = _pyplot()
    lanes = list(dict.fromkeys(c["node"] for c in met))
    figure, axes = plt.subplots(figsize=(9, 0.6 + 0.5 * len(lanes)))
    for c in met:
        y = lanes.index(c["node"])
        axes.plot([c["t"]], [y], marker="o", color="#2b8a3e")
        axes.annotate(c["name"].split(".", 1)[-1], (c["t"], y), xytext=(3, 6), textcoords="offset points", fontsize=7)
    missed = next((c for c in record.get("checkpoints", []) if c.get("status") == "missed"), None)
    if missed is not None:
        axes.axvline(max(c["t"] for c in met), color="#c92a2a", linestyle=":", label=f"missed: {missed['name']}")
        axes.legend(loc="lower right", fontsize=7)
    axes.set_yticks(range(len(lanes)), lanes)
    axes.set_ylim(-0.5, len(lanes) - 0.5)
    axes.set_xlabel("seconds since the scenario started")
    axes.set_title(f"{record.get('scenario', '')}: {record.get('verdict', '')}", fontsize=9)
    axes.grid(axis="x", alpha=0.3)
    return _save(figure, directory, "timeline", svg=False)  # one per attempt: the PNG is enough


def percentiles(values: Sequence[float]) -> tuple[float | None, float | None]:
    """(p50, p95) of a sample; None when empty. p95 of a small sample is its nearest-rank value."""
    if not values:
        return None, None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(0.95 * len(ordered) + 0.5) - 1))
    return statistics.median(ordered), ordered[rank]


def heatmap(matrix: Mapping[str, Any], directory: Path) -> list[Path]:
    """`matrix.png/.svg`: direct rate per cell; grey where a cell was not run."""
    servers, clients = matrix.get("servers", []), matrix.get("clients", [])
    if not servers or not clients:
        return []
    plt = _pyplot()
    import numpy as np

    rates = np.full((len(servers), len(clients)), np.nan)
    labels = [["" for _ in clients] for _ in servers]
    for row in matrix.get("cells", []):
        for cell in row:
            i, j = servers.index(cell["server"]), clients.index(cell["client"])
            trials = cell.get("trials") or 0
            if trials:
                rates[i, j] = cell["direct"] / trials
                p50 = cell.get("punch_p50_s")
                latency = f"\n{p50:.1f}s/{cell.get('punch_p95_s'):.1f}s" if p50 is not None else ""
                mark = "" if cell.get("as_expected") is not False else " ✗"
                labels[i][j] = f"{cell['direct']}/{trials}{mark}{latency}"
    figure, axes = plt.subplots(figsize=(1.2 + 1.1 * len(clients), 0.9 + 0.7 * len(servers)))
    cmap = plt.get_cmap("RdYlGn").with_extremes(bad="#dddddd")
    image = axes.imshow(np.ma.masked_invalid(rates), cmap=cmap, vmin=0.0, vmax=1.0)
    for i in range(len(servers)):
        for j in range(len(clients)):
            axes.text(j, i, labels[i][j], ha="center", va="center", fontsize=7)
    axes.set_xticks(range(len(clients)), clients, rotation=35, ha="right", fontsize=8)
    axes.set_yticks(range(len(servers)), servers, fontsize=8)
    axes.set_xlabel("client behind")
    axes.set_ylabel("server behind")
    axes.set_title("direct rate per NAT pair (attempts; punch p50/p95)", fontsize=9)
    figure.colorbar(image, ax=axes, fraction=0.04, label="direct attempts / attempts")
    return _save(figure, directory, "matrix")
