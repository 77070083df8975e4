"""PNG chart of images/s per variant (`--plot`): horizontal bars on a log axis.

A log axis because the input comparison spans two to three orders of magnitude; the value is
printed at the end of every bar so the chart reads without the table.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

# (row key, legend label) of the bars drawn per mode.
_SERIES = {
    "convert": (("median", "images/s"),),
    "input": (("first", "first epoch"), ("steady", "steady state")),
    "train": (("real", "real pipeline"), ("synthetic", "synthetic in-memory batch")),
}


def plot_mode(mode: str, rows: Sequence[dict[str, Any]], path: str | os.PathLike,
              title: str = "") -> Path:
    """Writes the chart for one mode's table rows; returns the PNG path."""
    import matplotlib  # pylint: disable=import-outside-toplevel

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

    series = _SERIES[mode]
    names = [row["variant"] for row in rows]
    height = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(8.5, 1.2 + 0.42 * len(rows) * len(series)), dpi=90)
    for k, (key, label) in enumerate(series):
        values = [row.get(key) or 0.0 for row in rows]
        positions = [i + (k - (len(series) - 1) / 2) * height for i in range(len(rows))]
        # The synthetic-input ceiling in grey beside the real pipeline's bar.
        color = "0.65" if key == "synthetic" else f"C{k}"
        bars = ax.barh(positions, values, height=height * 0.95, label=label, color=color)
        for bar, value in zip(bars, values):
            if value > 0:
                ax.text(bar.get_width() * 1.03, bar.get_y() + bar.get_height() / 2,
                        f"{value:,.0f}" if value >= 10 else f"{value:.2f}",
                        va="center", fontsize=7)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(names, fontsize=8)
    ax.invert_yaxis()
    positive = [row.get(key) for row in rows for key, _ in series if (row.get(key) or 0) > 0]
    if positive and max(positive) / min(positive) > 20:
        ax.set_xscale("log")
    if positive:
        ax.set_xlim(right=max(positive) * (4 if ax.get_xscale() == "log" else 1.2))
    ax.set_xlabel("images/s (median over repeats)")
    ax.set_title(title or mode, fontsize=9)
    if len(series) > 1:
        ax.legend(fontsize=7, loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
