"""Figures drawn with matplotlib (object API, no global pyplot state, so threads and servers are safe).

* :func:`training_curves`: training and validation loss per epoch, with a score (e.g. validation PQ) on a right
  axis, as a PNG written atomically;
* :func:`histogram_svg`: a histogram as inline SVG for HTML reports (vector graphics, axes and labels).
"""

from __future__ import annotations

import io
import math
import os
from typing import Sequence

import numpy as np


def _figure(width_in: float, height_in: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width_in, height_in), dpi=100, layout="constrained")


def _finite(v) -> bool:
    return v is not None and isinstance(v, (int, float)) and math.isfinite(v)


def training_curves(history: Sequence[dict], path: str | os.PathLike, title: str = "training",
                    losses: Sequence[tuple[str, str]] = (("train_loss", "train loss"), ("val_loss", "validation loss")),
                    score: tuple[str, str] | None = ("val_pq", "validation PQ"), x: str = "epoch") -> None:
    """Loss curves (left axis) and a score in [0, 1] (right axis) against ``x``, saved as a PNG atomically.

    Parameters
    ----------
    history : list of dict
        One row per epoch (or step): ``x`` and the named columns; missing or non-finite values are skipped.
    path : path
        The PNG to write.
    losses : list of (column, label)
    score : (column, label), optional
    """
    from pathgen.io.atomic import atomic_path

    fig = _figure(8, 4.8)
    ax = fig.add_subplot()
    ax.set_title(title)
    ax.set_xlabel(x)
    ax.set_ylabel("loss")
    ax.grid(True, color="0.9")
    handles = []
    for column, label in losses:
        pts = [(r[x], r[column]) for r in history if _finite(r.get(column))]
        if pts:
            xs, ys = zip(*pts)
            handles += ax.plot(xs, ys, marker="o", markersize=3, label=label)
    if score is not None:
        pts = [(r[x], r[score[0]]) for r in history if _finite(r.get(score[0]))]
        if pts:
            right = ax.twinx()
            right.set_ylim(0, 1)
            right.set_ylabel(score[1])
            xs, ys = zip(*pts)
            handles += right.plot(xs, ys, marker="s", markersize=3, color="tab:green", label=f"{score[1]} (right)")
    if not handles:
        ax.text(0.5, 0.5, "nothing logged yet", ha="center", va="center", transform=ax.transAxes)
    else:
        ax.legend(handles=handles, loc="best")
        ax.set_ylim(bottom=0)
        ax.xaxis.get_major_locator().set_params(integer=True)
    with atomic_path(path, overwrite=True) as tmp:
        fig.savefig(tmp, format="png")


def histogram_svg(values: np.ndarray, xlabel: str, bins: int = 30, range_: tuple[float, float] | None = None,
                  ylabel: str = "tiles", size_in: tuple[float, float] = (4.8, 2.4)) -> str:
    """A histogram of ``values`` as an inline ``<svg>`` element (axes, units and labels included)."""
    values = np.asarray(values, float)
    values = values[np.isfinite(values)]
    fig = _figure(*size_in)
    ax = fig.add_subplot()
    if values.size:
        ax.hist(values, bins=bins, range=range_, color="#5c3c8c")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.yaxis.get_major_locator().set_params(integer=True)
    buf = io.StringIO()
    fig.savefig(buf, format="svg")
    text = buf.getvalue()
    return text[text.index("<svg"):]
