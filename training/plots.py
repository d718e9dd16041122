"""Training curves as PNG (matplotlib, Agg backend: no display needed) from a ``log.jsonl``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_log(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


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
    fig.tight_layout()
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return png_path
