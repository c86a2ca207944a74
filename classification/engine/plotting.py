"""Curves of a run (loss, learning rate, accuracy) drawn from its metrics.csv and lr.csv into a PNG."""
from __future__ import annotations

import csv
import os
from typing import Optional

from .config import ConfigError


def read_csv(path: str) -> dict[str, list[float]]:
    """Columns of a numeric CSV file with a header row."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"file not found: {path}")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ConfigError(f"{path} has no data rows")
    return {key: [float(r[key]) for r in rows] for key in rows[0]}


def plot_run(metrics_path: str, out: Optional[str] = None) -> str:
    """Write a 3-panel figure (loss, LR, top-1/top-5) and return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = read_csv(metrics_path)
    lr_path = os.path.join(os.path.dirname(metrics_path), "lr.csv")
    lr = read_csv(lr_path) if os.path.isfile(lr_path) else None
    out = out or os.path.join(os.path.dirname(metrics_path) or ".", "curves.png")
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    axes[0].plot(m["epoch"], m["train_loss"], label="train")
    axes[0].plot(m["epoch"], m["test_loss"], label="test")
    axes[0].set(title="loss", xlabel="epoch")
    axes[0].legend()
    if lr is not None:
        axes[1].plot(lr["step"], lr["lr"])
        axes[1].set(title="learning rate", xlabel="iteration")
    else:
        axes[1].set(title="learning rate (no lr.csv)")
    axes[2].plot(m["epoch"], m["top1"], label="top-1")
    axes[2].plot(m["epoch"], m["top5"], label="top-5")
    axes[2].set(title="accuracy (%)", xlabel="epoch")
    axes[2].legend()
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
