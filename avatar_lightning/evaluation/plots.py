"""Figures of the comparison (PNG through matplotlib's file-only backend, written atomically): one bar per row,
one curve per row along the held-out frames.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from avatar_lightning.cache.files import atomic_write
from avatar_lightning.evaluation.tables import BEST_NEAR_ONE, HIGHER_IS_BETTER, Row, format_number


def save_figure(figure: Any, path: Path) -> None:
    """``figure`` as a PNG at ``path``, written atomically; the figure is closed either way."""
    import matplotlib.pyplot as plt

    try:
        atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))
    finally:
        plt.close(figure)


def pyplot() -> Any:
    """pyplot on the file-only backend, imported late so ``--help`` stays fast and no display is needed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def bar_chart(rows: Sequence[Row], metric: str, path: Path) -> bool:
    """One horizontal bar per row with a value (baselines grey); False when no row has one."""
    shown = [r for r in rows if r.metrics.get(metric) is not None]
    if not shown:
        return False
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(8, max(2.0, 0.4 * len(shown) + 1.0)))
    values = [r.metrics[metric] for r in shown]
    colors = ["0.65" if r.kind == "baseline" else "C0" for r in shown]
    bars = axes.barh(range(len(shown)), values, color=colors)
    axes.set_yticks(range(len(shown)), [r.label for r in shown])
    axes.invert_yaxis()  # table order, top to bottom
    axes.bar_label(bars, labels=[format_number(v) for v in values], padding=3, fontsize=8)
    axes.margins(x=0.15)
    if metric in BEST_NEAR_ONE:
        axes.axvline(1.0, color="k", linestyle=":", linewidth=1)
        axes.set_xlabel(f"{metric} (best near 1.0)")
    else:
        axes.set_xlabel(f"{metric} ({'higher' if metric in HIGHER_IS_BETTER else 'lower'} is better)")
    save_figure(figure, path)
    return True


def _spans_decades(curves: Sequence[Sequence[float]], decades: float = 2.0) -> bool:
    positive = [v for curve in curves for v in curve if math.isfinite(v) and v > 0]
    return bool(positive) and max(positive) / min(positive) > 10**decades


def per_frame_plot(rows: Sequence[Row], metric: str, path: Path) -> bool:
    """One line per row along the held-out frames (baselines dashed); False when no row has per-frame data."""
    shown = [r for r in rows if r.per_frame.get(metric)]
    if not shown:
        return False
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(10, 4.5))
    for row in shown:
        style = {"linestyle": "--", "linewidth": 1.0} if row.kind == "baseline" else {"linewidth": 1.2}
        axes.plot(range(len(row.per_frame[metric])), row.per_frame[metric], label=row.label, **style)
    if _spans_decades([r.per_frame[metric] for r in shown]):
        axes.set_yscale("log")
    axes.set_xlabel("held-out frame")
    axes.set_ylabel(metric)
    axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    save_figure(figure, path)
    return True
