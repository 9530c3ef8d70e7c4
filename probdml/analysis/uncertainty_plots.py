"""Plots of uncertainty evaluations: recall@1 of the retained queries vs rejection fraction."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def plot_rejection_curves(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    *,
    path: str | os.PathLike | None = None,
    title: str | None = None,
    ylabel: str = "recall@1 of retained queries",
    caption: str | None = None,
) -> Figure:
    """Line plot of accuracy vs rejection fraction, one line per named curve.

    `curves` maps a name (the uncertainty score and its definition, e.g. "IDML ||u||^2") to
    (fractions, accuracies), e.g. `probdml.metrics.rejection_curve`'s output for several
    uncertainty scores (higher = less certain; the most uncertain queries are rejected first);
    the oracle curve (errors rejected first) is `rejection_curve(~correct, correct)`. `caption`
    is a line under the axes (default: how to read the plot). Drawn with the Agg canvas (no display
    needed); saved to `path` when given (format from the extension). Returns the figure.
    """
    if not curves:
        raise ValueError("curves is empty; pass {name: (fractions, accuracies)}")
    fig = Figure(figsize=(5.6, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name, (fractions, acc) in curves.items():
        fractions, acc = np.asarray(fractions, float), np.asarray(acc, float)
        if fractions.shape != acc.shape or fractions.ndim != 1:
            raise ValueError(f"curve {name!r}: fractions and accuracies must be 1-D of equal length")
        ax.plot(fractions, acc, marker="o", markersize=3, label=name)
    ax.set_xlabel("fraction of queries rejected, most uncertain first")
    ax.set_ylabel(ylabel)
    ax.set_xlim(0.0, 1.0)
    ax.grid(alpha=0.3)
    ax.legend(title="uncertainty score (higher = less certain)", fontsize=8, title_fontsize=8)
    if title:
        ax.set_title(title)
    if caption is None:
        caption = ("A score that predicts retrieval errors makes its curve rise; a useless one stays flat "
                   "at the value with nothing rejected.")
    fig.supxlabel(caption, fontsize=8)
    if path is not None:
        fig.savefig(path, dpi=150)
    return fig
