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
) -> Figure:
    """Line plot of accuracy vs rejection fraction, one line per named curve.

    `curves` maps a name to (fractions, accuracies), e.g. `probdml.metrics.rejection_curve`'s
    output for several uncertainty scores; the oracle curve (errors rejected first) is
    `rejection_curve(~correct, correct)`. Drawn with the Agg canvas (no display needed); saved
    to `path` when given (format from the extension). Returns the figure.
    """
    if not curves:
        raise ValueError("curves is empty; pass {name: (fractions, accuracies)}")
    fig = Figure(figsize=(5.0, 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name, (fractions, acc) in curves.items():
        fractions, acc = np.asarray(fractions, float), np.asarray(acc, float)
        if fractions.shape != acc.shape or fractions.ndim != 1:
            raise ValueError(f"curve {name!r}: fractions and accuracies must be 1-D of equal length")
        ax.plot(fractions, acc, marker="o", markersize=3, label=name)
    ax.set_xlabel("fraction of queries rejected (most uncertain first)")
    ax.set_ylabel(ylabel)
    ax.set_xlim(0.0, 1.0)
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    if path is not None:
        fig.savefig(path, dpi=150)
    return fig
