"""The README's figures, drawn from the code itself (`tools/draw_assets.py` writes them into `assets/`).

- scan orders: every candidate direction on a grid, each cell numbered with its position in the scanned sequence,
  read from `models.scan_maps.scan_index` (the table the mixers use), so the picture cannot drift from the code;
- an example search heat map: `search.extract.plot_heatmap` of a supernet's probabilities (seeded random weights);
- the speed chart: the whole-model table of the README's "Speed" section (measured by `tools/benchmark.py`).
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

from .common.plots import pyplot, save_figure
from .models.directions import CANDIDATES
from .models.multi_scan import search_layers
from .models.scan_maps import scan_index
from .search.extract import plot_heatmap
from .search.probs import chosen_directions, layer_probabilities

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["scan_order_grid", "draw_scan_orders", "draw_example_search_probs", "read_speed_table",
           "draw_speed_chart"]


def scan_order_grid(name: str, grid: tuple[int, int]) -> np.ndarray:
    """(H, W) int array: the position in the scanned sequence (window padding counted) of each token."""
    height, width = grid
    positions = np.full(height * width, -1, dtype=np.int64)
    for position, token in enumerate(scan_index(name, grid).tolist()):
        if token < height * width:  # the value H*W marks a padding zero, which has no cell
            positions[token] = position
    return positions.reshape(height, width)


def draw_scan_orders(path: str, names: Sequence[str] = CANDIDATES, grid: tuple[int, int] = (14, 14),
                     columns: int = 4) -> Figure:
    """One panel per direction: cells coloured and numbered by scan position, the path drawn through them.
    Returns the matplotlib figure (already saved to `path`)."""
    plt = pyplot()
    height, width = grid
    rows = -(-len(names) // columns)
    cell = 0.32 if max(grid) > 8 else 0.5
    fig, axes = plt.subplots(rows, columns, figsize=(columns * width * cell, rows * (height * cell + 0.5)),
                             squeeze=False)
    font = 5.5 if max(grid) > 8 else 9
    for ax, name in zip(axes.flat, names):
        order = scan_order_grid(name, grid)
        ax.imshow(order, cmap="viridis", alpha=0.55)
        for (i, j), position in np.ndenumerate(order):
            ax.text(j, i, str(position), ha="center", va="center", fontsize=font)
        visits = sorted((position, i, j) for (i, j), position in np.ndenumerate(order))
        ax.plot([j for _, _, j in visits], [i for _, i, _ in visits], color="crimson", linewidth=0.8, alpha=0.7)
        ax.plot(visits[0][2], visits[0][1], marker="o", color="crimson", markersize=4)
        ax.set_title(name, fontsize=11)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle(f"scan order of each direction on a {height}x{width} token grid (number: position in the sequence;"
                 " dot: first token)", fontsize=11)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    plt.close(fig)
    return fig


def draw_example_search_probs(path: str, model_name: str = "local_vim_tiny_search", seed: int = 0,
                              topk: int = 4, **model_kwargs: Any) -> list[list[str]]:
    """The search heat map of `model_name` (built with `model_kwargs`) with its search weights drawn from N(0, 1)
    under `seed` (an illustration of `tools/vis_search_prob.py`'s output, not a trained search). Returns the top-k
    directions per layer."""
    import timm

    model = timm.create_model(model_name, **model_kwargs)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in search_layers(model):
            layer.weights.copy_(torch.randn(layer.weights.shape, generator=generator))
    probs = layer_probabilities(model)
    chosen = chosen_directions(probs, topk)
    plot_heatmap(probs, chosen, path, title=f"example: {model_name}, random search weights (seed {seed}), "
                                            f"top-{topk} per layer (red)")
    return chosen


_SPEED_ROW = re.compile(r"^\| `(?P<model>[\w]+)` \| `(?P<baseline>[\w]+)` \|(?P<cells>.*)\|\s*$")
_SPEED_CELL = re.compile(r"(?P<ratio>[\d.]+)× \((?P<rate>[\d.]+) img/s\)")


def read_speed_table(readme: str) -> tuple[list[str], list[dict]]:
    """The README's whole-model speed table: its setting columns and, per model, `model`, `baseline`, and per
    setting (ratio to the baseline, images per second)."""
    lines = readme.splitlines()
    header_at = next(i for i, line in enumerate(lines) if line.startswith("| model | baseline |"))
    settings = [c.strip() for c in lines[header_at].strip("|").split("|")[2:]]
    rows = []
    for line in lines[header_at + 2:]:
        match = _SPEED_ROW.match(line)
        if not match:
            break
        cells = [_SPEED_CELL.search(c) for c in match["cells"].split("|")]
        rows.append({"model": match["model"], "baseline": match["baseline"],
                     **{s: (float(c["ratio"]), float(c["rate"])) for s, c in zip(settings, cells)}})
    if not rows:
        raise ValueError("no whole-model speed rows found after the '| model | baseline |' header")
    return settings, rows


def draw_speed_chart(path: str, settings: Sequence[str], rows: Sequence[dict], caption: str = "") -> None:
    """Grouped bars: each model's speed as a multiple of its timm baseline, per setting, images/s on the bars."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 0.9 * len(rows) + 1.6))
    height = 0.8 / len(settings)
    for k, setting in enumerate(settings):
        ys = [i + (k - (len(settings) - 1) / 2) * height for i in range(len(rows))]
        ratios = [row[setting][0] for row in rows]
        bars = ax.barh(ys, ratios, height=height * 0.95, label=setting)
        for bar, row in zip(bars, rows):
            ax.text(bar.get_width() + 0.005, bar.get_y() + bar.get_height() / 2, f"{row[setting][1]:g} img/s",
                    va="center", fontsize=8)
    ax.set_yticks(range(len(rows)), [f"{r['model']}\nvs {r['baseline']}" for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.axvline(1.0, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xlim(0, max(1.05, max(r[s][0] for r in rows for s in settings) * 1.35))
    ax.set_xlabel("throughput as a multiple of the baseline (1.0 = as fast)")
    ax.set_title(caption or "whole models against timm baselines")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)
