"""Training curves (from a ``log.jsonl``) and the experiment's paired differences, as PNG
(matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from simulators.jsonl import read_jsonl


def read_log(path: str | Path) -> list[dict]:
    return read_jsonl(path)


def plot_curves(log_path: str | Path, png_path: str | Path, keys: Sequence[str] = ("loss", "accuracy"),
                title: str = "") -> Path:
    """One panel per metric: the training value per optimiser step and, when logged, the
    ``eval_<metric>`` points."""
    records = read_log(log_path)
    keys = [k for k in keys if any(k in r or f"eval_{k}" in r for r in records)] or ["loss"]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.4), squeeze=False)
    for ax, key in zip(axes[0], keys):
        train = [(r["step"], r[key]) for r in records if key in r]
        held_out = [(r["step"], r[f"eval_{key}"]) for r in records if f"eval_{key}" in r]
        if train:
            ax.plot(*zip(*train), label="train", linewidth=1.2)
        if held_out:
            ax.plot(*zip(*held_out), "o-", label="eval", markersize=3)
        ax.set_xlabel("optimiser step")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return save_figure(fig, png_path)


def plot_paired_differences(panels: Sequence[tuple[str, Sequence[tuple[str, float, float, float]]]],
                            png_path: str | Path, title: str = "") -> Path:
    """Forest plot: one panel per (title, rows); each row (label, mean, low, high) is a method's
    paired difference from the baseline with its CI, against a line at 0 (no difference)."""
    panels = [(name, rows) for name, rows in panels if rows]
    columns, most_rows = max(len(panels), 1), max((len(rows) for _, rows in panels), default=1)
    fig, axes = plt.subplots(1, columns, figsize=(4.8 * columns, 1.8 + 0.45 * most_rows), squeeze=False)
    if not panels:
        axes[0][0].text(0.5, 0.5, "nothing to compare yet", ha="center", va="center")
        axes[0][0].set_axis_off()
    for ax, (name, rows) in zip(axes[0], panels):
        positions = list(range(len(rows)))[::-1]  # first row on top
        means = [mean for _, mean, _, _ in rows]
        errors = [[mean - low for _, mean, low, _ in rows], [high - mean for _, mean, _, high in rows]]
        ax.errorbar(means, positions, xerr=errors, fmt="o", capsize=3, markersize=4)
        ax.axvline(0.0, color="grey", linewidth=0.8, linestyle="--")
        ax.set_yticks(positions, [label for label, *_ in rows], fontsize=8)
        ax.set_ylim(-0.7, len(rows) - 0.3)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("difference (95% CI)")
        ax.grid(axis="x", alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, png_path)


def save_figure(fig, png_path: str | Path) -> Path:
    fig.tight_layout()
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return png_path
