"""Turn a trained supernet checkpoint into searched directions: printout, directions.yaml and a heat map.

The printout is the original `tools/vis_search_prob.py`'s: every layer's probability tensor, then one Python list
literal per layer (the top-k candidates in canonical order) followed by a comma.
"""
from __future__ import annotations

import os
from typing import Optional

import torch

from ..common.checkpoint_io import CheckpointError, load_checkpoint, state_dict_from
from ..models.directions import CANDIDATES, load_directions, save_directions
from ..models.multi_scan import SEARCH_WEIGHT_SUFFIX
from .probs import chosen_directions, layer_probabilities


def original_printout(probs: list[torch.Tensor], chosen: list[list[str]]) -> str:
    """The text the original prints: the probability tensors, then `['h', ...],` lines."""
    return "\n".join([str(p) for p in probs] + [str(c) + "," for c in chosen])


def plot_heatmap(probs: list[torch.Tensor], chosen: list[list[str]], path: str, title: str = "") -> None:
    """Layers x candidates image of the probabilities, each cell annotated, chosen cells outlined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    grid = torch.stack(probs).numpy()
    fig, ax = plt.subplots(figsize=(1.0 * len(CANDIDATES) + 2, 0.45 * len(probs) + 1.5))
    image = ax.imshow(grid, cmap="viridis", aspect="auto")
    for layer, names in enumerate(chosen):
        for j, name in enumerate(CANDIDATES):
            value = grid[layer, j]
            ax.text(j, layer, f"{value:.3f}", ha="center", va="center", fontsize=7,
                    color="black" if value > grid.mean() else "white",
                    fontweight="bold" if name in names else "normal")
            if name in names:
                ax.add_patch(Rectangle((j - 0.5, layer - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
    ax.set_xticks(range(len(CANDIDATES)), CANDIDATES)
    ax.set_yticks(range(len(probs)), [str(i) for i in range(len(probs))])
    ax.set(xlabel="candidate direction", ylabel="layer", title=title or "search probabilities (chosen: red)")
    fig.colorbar(image, ax=ax, fraction=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _check_replaceable(directions_file: str, chosen: list[list[str]], overwrite: bool) -> None:
    """Refuse to replace a directions file that holds other directions (a searched model may have been trained
    with it), unless ``overwrite``."""
    if overwrite or not os.path.isfile(directions_file):
        return
    try:
        held = load_directions(directions_file)
    except ValueError:
        held = None
    if held != chosen:
        raise FileExistsError(f"{directions_file} already holds other directions (a model trained with "
                              f"--directions reads them): give another --out, or --overwrite to replace it")


def extract(ckpt_path: str, topk: int = 4, out_dir: Optional[str] = None, ema: bool = False,
            supernet: Optional[str] = None, trust: bool = False, overwrite: bool = False) -> dict:
    """Read a supernet checkpoint, choose the top-k directions per layer, write directions.yaml and the heat map.
    An existing directions.yaml with other directions is replaced only with ``overwrite`` (FileExistsError).

    Returns {'probs', 'directions', 'printout', 'directions_file', 'heatmap'}.
    """
    if not 1 <= topk <= len(CANDIDATES):
        raise ValueError(f"--topk must be between 1 and {len(CANDIDATES)}, got {topk}")
    ckpt = load_checkpoint(ckpt_path, trust=trust)
    weights = state_dict_from(ckpt, "ema_model" if ema else None, source=ckpt_path)
    try:
        probs = layer_probabilities(weights)
    except ValueError as err:
        raise CheckpointError(f"{ckpt_path}: {err}") from None
    if not probs:
        raise CheckpointError(f"{ckpt_path}: no '*{SEARCH_WEIGHT_SUFFIX}' entries: not a search supernet checkpoint")
    chosen = chosen_directions(probs, topk)
    out_dir = out_dir or os.path.dirname(os.path.abspath(ckpt_path))
    os.makedirs(out_dir, exist_ok=True)
    name = supernet or ckpt.get("model_name")
    directions_file = os.path.join(out_dir, "directions.yaml")
    _check_replaceable(directions_file, chosen, overwrite)
    save_directions(directions_file, chosen, supernet=name, topk=topk)
    heatmap = os.path.join(out_dir, "search_probs.png")
    plot_heatmap(probs, chosen, heatmap, title=f"{name or 'supernet'}: top-{topk} per layer (red)")
    return {"probs": probs, "directions": chosen, "printout": original_printout(probs, chosen),
            "directions_file": directions_file, "heatmap": heatmap}
