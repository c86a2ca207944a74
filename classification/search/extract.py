"""Turn a trained supernet checkpoint into searched directions: printout, directions.yaml and a heat map.

The printout is the original `tools/vis_search_prob.py`'s: every layer's probability tensor, then one Python list
literal per layer (the top-k candidates in canonical order) followed by a comma. The candidates are the supernet's
(`candidates=` of its run, recorded in a training checkpoint's config; the original 8 when it records none), or given.
"""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import textwrap
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Optional, Sequence

import timm
import torch

from ..common.checkpoint_io import CheckpointError, load_checkpoint, saved_epoch_position, state_dict_from
from ..common.plots import pyplot, save_figure
from ..common.suggest import did_you_mean
from ..models.directions import CANDIDATES, checkpoint_candidates, load_directions, save_directions
from ..models.factory import SUPERNET_FINAL_MODELS
from ..models.multi_scan import SEARCH_WEIGHT_SUFFIX
from ..models.scan_maps import parse_direction
from .probs import chosen_directions, layer_probabilities, search_weight_entries

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

logger = logging.getLogger("localmamba")


def _is_known_direction(name: str) -> bool:
    """Whether ``name`` is a built-in or registered direction here (modules in LOCALMAMBA_DIRECTION_MODULES
    imported)."""
    try:
        parse_direction(name)
    except ValueError:
        return False
    return True


def _candidates_of(ckpt: Mapping[str, Any], given: Optional[Sequence[str]], path: str) -> tuple[str, ...]:
    """``given`` candidates, else the checkpoint's, else CANDIDATES; given ones that differ from the checkpoint's
    record are refused."""
    recorded = checkpoint_candidates(ckpt)
    if given is None:
        return recorded or CANDIDATES
    given = tuple(given)
    if len(given) < 2 or len(set(given)) != len(given) or not all(isinstance(n, str) and n for n in given):
        raise ValueError(f"candidates must be at least 2 distinct direction names, got {list(given)}")
    if recorded is not None and recorded != given:
        raise CheckpointError(f"{path}: its supernet searched over {', '.join(recorded)}, not the candidates given "
                              f"({', '.join(given)})")
    unknown = [name for name in given if not _is_known_direction(name)]
    if unknown:   # extraction needs no tables; the run that trains the searched directions will
        logger.warning(f"candidates {', '.join(unknown)} are not directions known here (a typo, or a direction of your "
                       f"own: the run that trains the result must register it, LOCALMAMBA_DIRECTION_MODULES)")
    return given


def _architecture_name(name: str) -> str:
    """A model name as registered: the original's ``timm_`` prefix and a pretrained tag (``.untrained``) left aside,
    as training and the directions-file checks name the supernet."""
    return timm.models.split_model_name_tag(name.removeprefix("timm_"))[0]


@functools.lru_cache(maxsize=None)
def _search_weight_names(name: str) -> Optional[tuple[str, ...]]:
    """The state-dict names of registered model ``name``'s search weights (``name`` as :func:`_architecture_name`
    gives it), in layer order; None for a name not registered here."""
    if name not in timm.list_models():
        return None
    with torch.device("meta"):
        return tuple(key for key, _ in search_weight_entries(timm.create_model(name).state_dict()))


def _supernet_of_layout(found: Sequence[str]) -> Optional[str]:
    """The registered search supernet whose search weights (as built by its name) are named ``found``, for a file
    that names none (the original's checkpoints): its family and stage depths are then the file's, which the checks
    of a directions file read from its ``supernet``. None when no supernet has that layout."""
    return next((name for name in SUPERNET_FINAL_MODELS if _search_weight_names(name) == tuple(found)), None)


def _check_finite(weights: Mapping[str, torch.Tensor], probs: list[torch.Tensor], candidates: Sequence[str],
                  path: str) -> None:
    """Refuse search weights whose probabilities are not finite (a weight that is NaN or +inf, from a diverged
    search): their top-k would be chosen among NaN, as if they ranked the candidates."""
    bad = [(name, layer) for (name, layer), p in zip(search_weight_entries(weights), probs)
           if not torch.isfinite(p).all()]
    if not bad:
        return
    name, layer = bad[0]
    values = ", ".join(f"{candidate}={value:g}" for candidate, value in zip(candidates, layer.view(-1).tolist())
                       if not math.isfinite(value))
    more = f" (and {len(bad) - 1} more search layer{'s' if len(bad) > 2 else ''})" if len(bad) > 1 else ""
    raise CheckpointError(f"{path}: {name} holds search weights that are not finite ({values}){more}: the search "
                          f"diverged before this checkpoint; extract from an earlier one (checkpoint-N.pth.tar)")


def original_printout(probs: list[torch.Tensor], chosen: list[list[str]]) -> str:
    """The text the original prints: the probability tensors, then `['h', ...],` lines."""
    return "\n".join([str(p) for p in probs] + [str(c) + "," for c in chosen])


def plot_heatmap(probs: list[torch.Tensor], chosen: list[list[str]], path: str, title: str = "",
                 candidates: Sequence[str] = CANDIDATES) -> None:
    """Layers x candidates image of the probabilities (columns: ``candidates``, in the probabilities' order), each
    cell annotated to 4 decimals (a search's probabilities stay near 1/K, where 3 would show a chosen and a dropped
    cell alike), chosen cells outlined."""
    plt = pyplot()
    from matplotlib.patches import Rectangle

    grid = torch.stack(probs).numpy()
    fig, ax = plt.subplots(figsize=(1.0 * len(candidates) + 2, 0.45 * len(probs) + 1.5))
    image = ax.imshow(grid, cmap="viridis", aspect="auto")
    for layer, names in enumerate(chosen):
        for j, name in enumerate(candidates):
            value = grid[layer, j]
            ax.text(j, layer, f"{value:.4f}", ha="center", va="center", fontsize=7,
                    color="black" if value > grid.mean() else "white",
                    fontweight="bold" if name in names else "normal")
            if name in names:
                ax.add_patch(Rectangle((j - 0.5, layer - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
    ax.set_xticks(range(len(candidates)), candidates)
    ax.set_yticks(range(len(probs)), [str(i) for i in range(len(probs))])
    ax.set(xlabel="candidate direction", ylabel="layer", title=title or "search probabilities (chosen: red)")
    fig.colorbar(image, ax=ax, fraction=0.04)
    fig.tight_layout()
    if _wrap_title_to_figure(fig, ax):
        fig.tight_layout()
    save_figure(fig, path, dpi=100)
    plt.close(fig)


def _wrap_title_to_figure(fig: Figure, ax: Axes) -> bool:
    """Wrap the lines of ``ax``'s title where they would run past the figure's edges (the figure of a supernet of
    few candidates is narrower than an unfinished search's note); True when it did."""
    renderer = getattr(fig.canvas, "get_renderer", None)  # Agg's (pyplot() sets it); other canvases: left as is
    if renderer is None:
        return False
    title = ax.title
    box = title.get_window_extent(renderer())
    centre = (box.x0 + box.x1) / 2
    room = 0.9 * 2 * min(centre, fig.bbox.width - centre)  # the title is centred over the axes
    if box.width <= room:
        return False
    lines = title.get_text().splitlines()
    width = max(8, int(max(map(len, lines)) * room / box.width))
    title.set_text("\n".join(textwrap.fill(line, width) for line in lines))
    return True


@contextlib.contextmanager
def _writing(path: str, advice: str) -> Iterator[None]:
    """A write of ``path`` that fails raises its OSError naming ``path`` (not the temporary file the write goes
    through, which never exists for the reader), followed by ``advice``."""
    try:
        yield
    except OSError as err:
        raise type(err)(err.errno, f"cannot write {path}: {err.strerror or err}{advice}") from err


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


def unfinished_search(ckpt: Mapping[str, Any]) -> Optional[str]:
    """Why a training checkpoint does not hold the end of its search run (saved in the middle of an epoch, or with
    epochs of the run still to come, as an interrupted run's last.pth.tar or an early best.pth.tar); None when it
    does, or when it does not say (released weights)."""
    epoch, step = ckpt.get("epoch"), ckpt.get("step")
    epochs = (ckpt.get("config") or {}).get("epochs")
    if not isinstance(epoch, int):
        return None
    of_run = f" of epochs 0-{epochs - 1}" if isinstance(epochs, int) else ""
    if step and step != ckpt.get("steps_per_epoch"):  # all steps done: the epoch trained, its validation failed
        return f"saved in the middle of epoch {epoch}{of_run}, after its {saved_epoch_position(ckpt, False)}"
    if isinstance(epochs, int) and epoch + 1 < epochs:
        return f"saved after epoch {epoch}{of_run}"
    return None


def _is_url(path: str) -> bool:
    """Whether a checkpoint is given by its http(s) URL (``load_checkpoint`` downloads it), not by a local path."""
    return path.startswith(("http://", "https://"))


def search_record(ckpt_path: str, ckpt: Mapping[str, Any], ema: bool, unfinished: Optional[str]) -> dict:
    """What a directions file keeps of the search its directions come from (`searched_from`): the checkpoint (absolute
    path, or its URL) and its weights, its epoch and the run's epochs, whether the search had finished
    (`unfinished_search`'s note if not; left out when the checkpoint does not say, as the original code's do not), and
    the supernet run's `model_kwargs` (its depth or width when they differ from the name's)."""
    config = ckpt.get("config") or {}
    where = ckpt_path if _is_url(ckpt_path) else os.path.abspath(ckpt_path)
    record: dict[str, Any] = {"checkpoint": where, "weights": "ema_model" if ema else "model"}
    if isinstance(ckpt.get("epoch"), int):
        record["epoch"] = ckpt["epoch"]
        if isinstance(config.get("epochs"), int):
            record["epochs"] = config["epochs"]
        if unfinished:
            record.update(finished=False, unfinished=unfinished)
        elif isinstance(config.get("epochs"), int):  # the original code's checkpoint does not say how long its run was
            record["finished"] = True
    model_kwargs = config.get("model_kwargs")
    if isinstance(model_kwargs, Mapping) and model_kwargs:
        record["model_kwargs"] = json.loads(json.dumps(model_kwargs, default=str))  # plain YAML values
    return record


def _check_out_dir(out_dir: str) -> None:
    """Refuse an ``--out`` that names a file (an existing one, or a new .yaml / .png name) instead of a folder."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise NotADirectoryError(f"--out {out_dir}: is a file; --out names the folder that gets directions.yaml and "
                                 f"search_probs.png")
    if not os.path.exists(out_dir) and os.path.splitext(out_dir)[1].lower() in (".yaml", ".yml", ".png"):
        raise NotADirectoryError(f"--out {out_dir}: names a file; --out is the folder that gets directions.yaml and "
                                 f"search_probs.png (e.g. --out {os.path.dirname(out_dir) or '.'})")


def extract(ckpt_path: str, topk: int = 4, out_dir: Optional[str] = None, ema: bool = False,
            supernet: Optional[str] = None, trust: bool = False, overwrite: bool = False,
            candidates: Optional[Sequence[str]] = None) -> dict:
    """Read a supernet checkpoint, choose the top-k directions per layer, write directions.yaml and the heat map.
    ``out_dir`` defaults to the checkpoint's folder (the current one for a checkpoint given by URL). An existing
    directions.yaml with other directions is replaced only with ``overwrite`` (FileExistsError). ``candidates``
    names the supernet's candidates for a file that does not record them (see module doc); the names need not be
    registered in this process. ``supernet`` names the supernet of a file that does not record it: a registered one
    whose search weights are not the file's (the other family, another depth) is refused, one not registered here is
    kept with a warning; without it, such a file (the original's checkpoints) is taken for the registered supernet
    whose search layers it has.

    Returns {'probs', 'candidates', 'directions', 'printout', 'directions_file', 'heatmap', 'unfinished'};
    'unfinished' is :func:`unfinished_search`'s note (None for the end of a search run).
    """
    if topk < 1:
        raise ValueError(f"--topk must be at least 1, got {topk}")
    if out_dir:
        _check_out_dir(out_dir)
    ckpt = load_checkpoint(ckpt_path, trust=trust)
    recorded = ckpt.get("model_name")
    architecture = _architecture_name(supernet) if supernet else None
    if architecture and recorded and architecture != recorded:
        raise CheckpointError(f"{ckpt_path} is a checkpoint of {recorded}, not of {supernet}: leave out --supernet "
                              f"(it names the supernet of a file that does not record it)")
    weights = state_dict_from(ckpt, "ema_model" if ema else None, source=ckpt_path)
    candidates = _candidates_of(ckpt, candidates, ckpt_path)
    try:
        probs = layer_probabilities(weights, candidates)
    except ValueError as err:
        raise CheckpointError(f"{ckpt_path}: {err}") from None
    if not probs:
        raise CheckpointError(f"{ckpt_path}: no '*{SEARCH_WEIGHT_SUFFIX}' entries: not a search supernet checkpoint")
    _check_finite(weights, probs, candidates, ckpt_path)
    found = tuple(key for key, _ in search_weight_entries(weights))
    if not supernet and not recorded:
        architecture = _supernet_of_layout(found)
    elif supernet and not recorded:
        expected = _search_weight_names(architecture)
        if expected == ():
            raise CheckpointError(f"--supernet {supernet}: not a search supernet (its layers have fixed directions): "
                                  f"give the supernet {ckpt_path} was trained as ({', '.join(SUPERNET_FINAL_MODELS)}),"
                                  f" or leave out --supernet")
        if expected is None:
            logger.warning(f"--supernet {supernet}: not a model registered here, recorded in directions.yaml as "
                           f"given (the model trained with the file is not checked against its family and depths)"
                           f"{did_you_mean(architecture, SUPERNET_FINAL_MODELS, n=1)}")
        elif found != expected:
            raise CheckpointError(f"{ckpt_path}: its {len(found)} search layers ({found[0]} ... {found[-1]}) are not "
                                  f"those of {supernet} ({len(expected)}: {expected[0]} ...): give the supernet it "
                                  f"was trained as, or leave out --supernet")
    if topk > len(candidates):
        raise CheckpointError(f"{ckpt_path}: its supernet has {len(candidates)} candidates ({', '.join(candidates)}): "
                              f"--topk must be between 1 and {len(candidates)}, got {topk}")
    chosen = chosen_directions(probs, topk, candidates)
    given_out = bool(out_dir)
    out_dir = out_dir or (os.getcwd() if _is_url(ckpt_path) else os.path.dirname(os.path.abspath(ckpt_path)))
    os.makedirs(out_dir, exist_ok=True)
    name = architecture or recorded
    directions_file = os.path.join(out_dir, "directions.yaml")
    _check_replaceable(directions_file, chosen, overwrite)
    unfinished = unfinished_search(ckpt)
    advice = "" if given_out else "; give --out a folder you can write"
    with _writing(directions_file, advice):
        save_directions(directions_file, chosen, supernet=name, topk=topk, check_names=False,
                        searched_from=search_record(ckpt_path, ckpt, ema, unfinished))
    heatmap = os.path.join(out_dir, "search_probs.png")
    title = f"{name or 'supernet'}{' (EMA weights)' if ema else ''}: top-{topk} per layer (red)"
    if unfinished:
        title += f"\nunfinished search: {unfinished}"
    with _writing(heatmap, advice):
        plot_heatmap(probs, chosen, heatmap, title=title, candidates=candidates)
    return {"probs": probs, "candidates": candidates, "directions": chosen,
            "printout": original_printout(probs, chosen),
            "directions_file": directions_file, "heatmap": heatmap, "unfinished": unfinished}
