"""Training checkpoints of a run: the top-k manager, strict weight loading with named errors, conversion.

A training checkpoint holds `epoch`, `model`, `ema_model`, `optimizer`, `scaler` (as the original) plus `scheduler`,
`rng` (one entry per rank), `checkpoints` (the kept top-k list, file names relative to the run's folder),
`left_alone` (only in a run that continues one of the original code: its checkpoint files that are not ranked),
`model_name`, `directions` (the scan directions per layer, see `scan_directions`), `candidates` (a search supernet's,
else None), `classes` (the class folders' names, else None), `train_images`, `epoch_seed` (the --seed that drew
`epoch`'s order and augmentation), `steps_per_epoch` (batches an epoch trains) and `config` for exact resume, and
`run_id` (the run that wrote it: kept by `--resume`, new for `--branch`); `state_dict_ema` is `ema_model` again (one
object, so stored once) under the name timm's `load_checkpoint(use_ema=True)` reads. A run stopped by a signal in the
middle of an epoch writes `last.pth.tar` alone, marked by `step` (the batches done in `epoch`, the epoch in progress)
and holding `train_loss_sums` (each rank's running [loss sum, sample count]); in an epoch-end checkpoint both are None
(absent in older files) and `epoch` is the epoch it finished. Every value is a tensor or a plain Python value, so the
file loads with `torch.load(weights_only=True)`. The released form is `{'state_dict': weights}`
(tools/convert_ckpt.py). Reading, writing and weight lookup live in `classification.common.checkpoint_io`.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
from typing import Any, Iterable, Mapping, Optional, Sequence

import torch
import torch.nn as nn
from timm.models import adapt_input_conv

from ..common.checkpoint_io import (EMA_KEYS, CheckpointError, atomic_copy, atomic_save, is_weights_alone,
                                    load_checkpoint, saved_epoch_position, state_dict_from)
from ..data.image_decoding import channels_name
from ..models.directions import (CANDIDATES, checkpoint_candidates, directions_difference, load_directions,
                                 scan_directions)

logger = logging.getLogger("localmamba")

LAST, BEST = "last.pth.tar", "best.pth.tar"
EPOCH_FILE = re.compile(r"checkpoint-(\d+)\.pth\.tar$")
POSITION_TABLES = ("pos_embed", "rope.freqs_cos", "rope.freqs_sin")  # sized for the image size a model is built for


def _epoch_files(names: Iterable[str], before_epoch: Optional[int] = None) -> list[tuple[int, str]]:
    """(epoch, name) of each `checkpoint-<epoch>.pth.tar` file name among `names`, in their order; only those of
    epochs before `before_epoch` when it is given."""
    found = [(int(match.group(1)), name) for name in names if (match := EPOCH_FILE.match(name))]
    return [(epoch, name) for epoch, name in found if before_epoch is None or epoch < before_epoch]


def classifier_name(model: nn.Module) -> Optional[str]:
    """The name of `model`'s classifier module (timm's `pretrained_cfg['classifier']`, e.g. 'head'), or None when its
    config names one module by no single string."""
    classifier = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")
    return classifier if isinstance(classifier, str) else None


def first_conv_weights(model: nn.Module) -> list[str]:
    """The weight keys of `model`'s first convolutions (timm's `pretrained_cfg['first_conv']`, one name or several):
    the layers whose input channels are the image's."""
    first_conv = (getattr(model, "pretrained_cfg", None) or {}).get("first_conv")
    return [f"{name}.weight" for name in ((first_conv,) if isinstance(first_conv, str) else first_conv or ())]


def _other_input_channels(own: torch.Tensor, saved: torch.Tensor) -> bool:
    """Whether a saved first-convolution weight (out, in, kh, kw) differs from the model's `own` in its input
    channels only."""
    return saved.dim() == 4 == own.dim() and saved.shape[1] != own.shape[1] and (
        saved.shape[0], *saved.shape[2:]) == (own.shape[0], *own.shape[2:])


def load_weights(model: nn.Module, state_dict: Mapping[str, torch.Tensor], path: str) -> None:
    """Strictly load `state_dict` into `model`; a mismatch raises naming the file and the first differing keys."""
    if not state_dict:
        raise CheckpointError(f"{path} holds no weights")
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k}: {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
            if items:
                parts.append(f"{label} ({len(items)}): {', '.join(items[:5])}{', ...' if len(items) > 5 else ''}")
        differing = {key.split(":")[0] for key in shapes}
        classifier = classifier_name(model) or "head"
        if not missing and not unexpected and differing <= set(POSITION_TABLES) and all(
                state_dict[key].shape[-1] == own[key].shape[-1] for key in differing):   # more tokens, same width
            parts.append("its position tables are of another image size: give the --img-size it was trained at "
                         "(or --model-kwargs img_size=N)")
        elif not missing and not unexpected and differing <= {f"{classifier}.weight", f"{classifier}.bias"}:
            classes = state_dict[next(iter(differing))].shape[0]   # the weight's rows or the bias's length
            parts.append(f"its classifier has {classes} classes: give --num-classes {classes} (or use the data set "
                         f"it was trained on)")
        elif not missing and not unexpected and differing <= set(first_conv_weights(model)) and all(
                _other_input_channels(own[key], state_dict[key]) for key in differing):
            saved, wanted = state_dict[next(iter(differing))].shape[1], own[next(iter(differing))].shape[1]
            parts.append(f"it takes {channels_name(saved)} images, this model {channels_name(wanted)} ones: give "
                         f"--model-kwargs in_chans={saved}")
        raise CheckpointError(f"{path} does not fit this model (another model?): " + "; ".join(parts))
    model.load_state_dict(state_dict, strict=True)


def saved_search_candidates(model: nn.Module) -> Optional[list[str]]:
    """The candidate directions a search supernet weighs, in the order of its search weights; None for a model with
    fixed directions or another family. Saved in training checkpoints: two candidate lists of one length give weights
    of the same keys and shapes."""
    candidates = getattr(model, "candidates", None)
    return None if candidates is None else list(candidates)


def checkpoint_folder(path: str) -> str:
    """The folder that holds checkpoint `path`: that of the file it names, through symbolic links (a link elsewhere
    to a run's last.pth.tar names that run's folder)."""
    return os.path.dirname(os.path.realpath(path))


def run_config_beside(path: str) -> Optional[str]:
    """The `args.yaml` of the run whose folder holds checkpoint `path`, or None when there is none."""
    run_config = os.path.join(checkpoint_folder(path), "args.yaml")
    return run_config if os.path.isfile(run_config) else None


def check_same_model(model: nn.Module, model_name: str, ckpt: Mapping[str, Any], path: str) -> None:
    """Refuse a training checkpoint of another model than `model_name`, of other scan directions than the model's, or
    of a search over other candidates: the weights would load (same keys and shapes) and compute something else.
    Released weights and checkpoints written before these entries were saved carry no record: they are not checked."""
    saved_name = ckpt.get("model_name")
    if saved_name is not None and saved_name != model_name:
        raise CheckpointError(f"{path} is a checkpoint of {saved_name}, not of {model_name}: give --model {saved_name}")
    saved_candidates, own_candidates = checkpoint_candidates(ckpt), saved_search_candidates(model)
    if saved_candidates is None and "directions" in ckpt and ckpt["directions"] is None:
        saved_candidates = CANDIDATES   # a supernet's checkpoint that records no candidates searched the original 8
    if saved_candidates is not None and own_candidates is not None and list(saved_candidates) != own_candidates:
        raise CheckpointError(f"{path} is a search over the candidates {' '.join(saved_candidates)}, this model "
                              f"searches over {' '.join(own_candidates)}: give --model-kwargs "
                              f"\"candidates=[{', '.join(saved_candidates)}]\", as its run did")
    where = directions_difference(model, ckpt)
    if where is None:
        return
    run_config = run_config_beside(path)
    whole = f" (or -c {run_config}, its run's whole config)" if run_config else ""
    saved, own = ckpt["directions"], scan_directions(model)
    used = (ckpt.get("config") or {}).get("directions")
    if saved is not None and own is not None and len(saved) != len(own):
        kwargs = (ckpt.get("config") or {}).get("model_kwargs") or {}
        given = " ".join(f"{key}={value}" for key, value in kwargs.items())
        flags = " ".join([*([f"--model-kwargs {given}"] if given else []), *([f"--directions {used}"] if used else [])])
        build = f"give {flags}, as its run did" if flags else "build the model as its run did"
        raise CheckpointError(f"{path} holds a model of {len(saved)} layers, this model has {len(own)}: "
                              f"{build}{whole}")
    if used and saved is not None and _directions_in(used) != saved:
        state = "is gone" if not os.path.exists(used) else "now holds other directions"
        also = f", with -c {run_config} if you like" if run_config else ""
        raise CheckpointError(f"{path} was trained with other scan directions ({where}); the file its run was given, "
                              f"{used}, {state}: give --directions {path} (the checkpoint holds its own){also}")
    hint = f"--directions {used}, as its run did" if used else "no --directions (its run used the model's own)"
    raise CheckpointError(f"{path} was trained with other scan directions ({where}); give {hint}{whole}")


def flag_value(value: Any) -> str:
    """`value` as --model-kwargs reads it back: a list without spaces (`[8,16]`), anything else as str."""
    return f"[{','.join(map(flag_value, value))}]" if isinstance(value, (list, tuple)) else str(value)


def _built_otherwise(ckpt: Mapping[str, Any], model_kwargs: Mapping[str, Any], path: str) -> str:
    """What to add to the error of weights from `path` that do not fit the model: the `model_kwargs` its run built the
    model with (its recorded config), when they are not the command's; '' otherwise, and for weights that record no
    run (the released form)."""
    config = ckpt.get("config")
    saved = (config.get("model_kwargs") or {}) if isinstance(config, dict) else None
    if not isinstance(saved, dict) or saved == dict(model_kwargs):
        return ""
    given = " ".join(f"{key}={flag_value(value)}" for key, value in saved.items())
    run_config = run_config_beside(path)
    whole = f" (or -c {run_config}, its run's whole config)" if run_config else ""
    built = f"with --model-kwargs {given}: give them" if saved else "with no --model-kwargs: leave them out"
    return f"; its run built the model {built}{whole}"


def _directions_in(path: str) -> Optional[list[list[str]]]:
    """The directions the file at `path` holds now; None when it cannot be read."""
    try:
        return load_directions(path)
    except (OSError, ValueError):
        return None


def fit_to_model(model: nn.Module, weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`weights` through the `checkpoint_filter_fn` of the model's module (timm's convention; LocalVim's resizes its
    position tables to the model's token grid, so weights of one image size load into a model built for another).
    Weights of another model that the filter fails on (a timm ViT's position table without its class token, say) are
    returned as they are: the load then names what does not fit. A ValueError (a filter's own refusal) goes through."""
    filter_fn = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
    if filter_fn is None:
        return dict(weights)
    try:
        fitted = filter_fn(dict(weights), model)
    except (RuntimeError, IndexError, KeyError, AssertionError) as err:
        logger.info(f"checkpoint weights left as they are: {type(model).__name__}'s checkpoint_filter_fn cannot fit "
                    f"them ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})")
        return dict(weights)
    resized = [f"{key} {tuple(weights[key].shape)} -> {tuple(value.shape)}" for key, value in fitted.items()
               if key in weights and tuple(weights[key].shape) != tuple(value.shape)]
    if resized:
        logger.info(f"checkpoint weights resized to the model's token grid at this image size: {', '.join(resized)}")
    return fitted


def load_at_model_size(model: nn.Module, weights: Mapping[str, torch.Tensor], path: str) -> None:
    """Load `weights` (read from `path`) into `model`, built for the image size at hand: LocalVim's position tables
    are resized to its token grid (`fit_to_model`), every other weight must fit."""
    load_weights(model, fit_to_model(model, weights), path)


def load_evaluated_weights(model: nn.Module, model_name: str, model_kwargs: Mapping[str, Any], ckpt: Mapping[str, Any],
                           weights: Mapping[str, torch.Tensor], path: str) -> None:
    """Load `weights` of `ckpt` (read from `path`) into `model` (`model_name` built with `model_kwargs`), as
    tools/test.py and tools/export_onnx.py do: the model check (`check_same_model`), then `load_at_model_size`;
    weights that do not fit name the model kwargs their run built the model with, when the command gives others."""
    check_same_model(model, model_name, ckpt, path)
    try:
        load_at_model_size(model, weights, path)
    except CheckpointError as err:
        raise CheckpointError(f"{err}{_built_otherwise(ckpt, model_kwargs, path)}") from None


def adapt_input_convs(model: nn.Module, weights: dict[str, torch.Tensor], path: str) -> None:
    """Fit the first convolution's weight (`pretrained_cfg['first_conv']`, (out, in, kh, kw)) of `weights` (read from
    `path`) in place to the model's input channels, as timm's pretrained loading does (`adapt_input_conv`): 3-channel
    (RGB) filters summed over their channels for a 1-channel model. A weight timm cannot adapt is left to the load,
    which names it."""
    own = model.state_dict()
    for key in first_conv_weights(model):
        saved, wanted = weights.get(key), own.get(key)
        if saved is None or wanted is None or not _other_input_channels(wanted, saved):
            continue
        with contextlib.suppress(NotImplementedError, AssertionError):
            weights[key] = adapt_input_conv(wanted.shape[1], saved)
            logger.info(f"{path}: {key} of {saved.shape[1]} input channels adapted to the model's "
                        f"{wanted.shape[1]} (timm's adapt_input_conv)")


def load_finetune_weights(model: nn.Module, ckpt: Mapping[str, Any], path: str,
                          model_name: Optional[str] = None) -> list[str]:
    """Initialise `model` (`model_name`) from the weights of `ckpt` (training or released form) for fine-tuning: they
    pass through `fit_to_model`, the first convolution is fitted to the model's input channels (`adapt_input_convs`:
    RGB weights for a gray model), the classifier (`pretrained_cfg['classifier']`) keeps its initialisation where its
    shape differs (another class count), and every other weight must fit (`load_weights`; the error names the model of
    a training checkpoint when it is another). Returns the classifier keys left at their initialisation."""
    weights = fit_to_model(model, state_dict_from(ckpt, source=path))
    adapt_input_convs(model, weights, path)
    own = model.state_dict()
    classifier = classifier_name(model)
    head = [f"{classifier}.weight", f"{classifier}.bias"] if classifier else []
    kept = [key for key in head if key in own and key in weights and weights[key].shape != own[key].shape]
    weights.update({key: own[key] for key in kept})
    try:
        load_weights(model, weights, path)
    except CheckpointError as err:
        saved_name = ckpt.get("model_name")
        if saved_name is None or model_name is None or saved_name == model_name:
            raise
        raise CheckpointError(f"{err}; it holds {saved_name}'s weights, this model is {model_name}") from None
    return kept


class CheckpointManager:
    """Keeps the `keep_num` best `checkpoint-<epoch>.pth.tar` of a run plus `last.pth.tar` and `best.pth.tar`.

    Ranking is by the score (top-1; the EMA's when EMA is on), ties keep the earlier epoch first, as the original.
    The kept list holds file names relative to `save_dir`, so a run resumes from any working directory.
    `last.pth.tar` is written last: it is the commit point of an epoch (everything the epoch wrote before it is
    rewound or repaired by `reconcile` on resume), or of a stop in the middle of one (`save_last`). Only the main
    rank writes.
    """

    def __init__(self, save_dir: str, keep_num: int = 10, enabled: bool = True):
        self.save_dir, self.keep_num, self.enabled = save_dir, keep_num, enabled
        self.ckpts: list[list] = []  # [[file name, score], ...] best first
        self.left_alone: set[str] = set()  # checkpoint files of the original code's run that `adopt` did not rank
        # (epoch, step) of the last.pth.tar this run wrote, on every rank: one on a node that does not share the main
        # rank's disk has no copy of the file to read
        self.saved: Optional[tuple[int, Optional[int]]] = None

    def path(self, name: str) -> str:
        return os.path.join(self.save_dir, name)

    def state_dict(self) -> list[list]:
        return [list(item) for item in self.ckpts]

    def load_state_dict(self, ckpts: list[list], left_alone: Sequence[str] = (),
                        keep_missing: bool = False) -> list[str]:
        """Adopt a resumed run's list (names; full paths of earlier versions are reduced to their file names) and the
        original code's files it leaves alone (`adopt`). Entries whose files are not in the folder are dropped (a
        branch's new folder, a rewind past evictions), unless `keep_missing` (the run continued in its own folder,
        whose files a user deleted to free space): they keep their ranks, so `best.pth.tar`, the copy of the best
        one, is neither removed nor replaced by a worse epoch. Returns the files of the folder ranked past `keep_num`
        (a lowered --keep-num), which `reconcile` deletes."""
        entries = [[os.path.basename(str(name)), float(score)] for name, score in ckpts]
        if not keep_missing:
            entries = [item for item in entries if os.path.isfile(self.path(item[0]))]
        self.ckpts, past = entries[: self.keep_num], entries[self.keep_num:]
        self.left_alone = set(left_alone)
        return [name for name, _ in past if os.path.isfile(self.path(name))]

    def _record(self, payload: dict[str, Any]) -> None:
        """Put the kept list (and the original code's files left alone, if any) into a checkpoint's `payload`."""
        payload["checkpoints"] = self.state_dict()
        if self.left_alone:
            payload["left_alone"] = sorted(self.left_alone)

    def _note_saved(self, payload: Mapping[str, Any]) -> None:
        """Record where the `payload` just written as last.pth.tar (a training checkpoint's) stands (`saved`)."""
        if "epoch" in payload:
            self.saved = (payload["epoch"], payload.get("step"))

    def latest(self, before_epoch: int) -> Optional[tuple[int, str]]:
        """The kept `checkpoint-<epoch>.pth.tar` of the latest epoch before `before_epoch`, as (epoch, path); None
        when none is kept."""
        epochs = _epoch_files((name for name, _ in self.ckpts if os.path.isfile(self.path(name))), before_epoch)
        if not epochs:
            return None
        epoch, name = max(epochs)
        return epoch, self.path(name)

    def adopt(self, before_epoch: int, scores: Mapping[int, float]) -> list[list]:
        """Rank the `checkpoint-<epoch>.pth.tar` files that a run of the original code (whose checkpoints hold no kept
        list) left in the folder, for epochs before `before_epoch`, by their `scores` (its metrics.csv's top-1, the
        score it ranked them by). Those of these epochs without a score or past `keep_num` are left alone: never
        ranked or deleted (the list travels in this run's checkpoints); those of later epochs go as a rewind's do.
        Returns the kept list."""
        names = sorted(os.listdir(self.save_dir)) if os.path.isdir(self.save_dir) else []
        earlier = _epoch_files(names, before_epoch)
        ranked = sorted((-scores[epoch], epoch, name) for epoch, name in earlier if epoch in scores)[: self.keep_num]
        self.ckpts = [[name, -negative] for negative, _, name in ranked]
        self.left_alone = {name for _, name in earlier} - {name for name, _ in self.ckpts}
        return self.ckpts

    def reconcile(self) -> None:
        """Make the folder match the resumed list: drop `checkpoint-N` files it does not hold (written or not yet
        evicted when the run stopped) and copy the best of the list to `best.pth.tar` (removed when the list is empty:
        a run resumed in the middle of its first epoch; left as it is when the best's own file was deleted)."""
        if not self.enabled or not os.path.isdir(self.save_dir):
            return
        kept = {name for name, _ in self.ckpts}
        for _, name in _epoch_files(os.listdir(self.save_dir)):
            if name not in kept and name not in self.left_alone:
                os.remove(self.path(name))
        if self.ckpts:
            if os.path.isfile(self.path(self.ckpts[0][0])):
                atomic_copy(self.path(self.ckpts[0][0]), self.path(BEST))
        elif os.path.exists(self.path(BEST)):
            os.remove(self.path(BEST))

    def save_last(self, payload: dict[str, Any]) -> None:
        """Write `payload` as `last.pth.tar` only, with the kept list unchanged (a stop in the middle of an epoch, or
        an epoch that does not enter the top k)."""
        self._record(payload)
        if self.enabled:
            atomic_save(payload, self.path(LAST))
        self._note_saved(payload)

    def update(self, epoch: int, score: float, payload: dict[str, Any]) -> list[list]:
        """Record `score` for `epoch` and write the checkpoint files; returns the kept list."""
        rank = sum(1 for _, s in self.ckpts if score <= s)
        if rank >= self.keep_num:
            self.save_last(payload)
            return self.ckpts
        name = f"checkpoint-{epoch}.pth.tar"
        self.ckpts.insert(rank, [name, score])
        evicted = self.ckpts[self.keep_num:]
        self.ckpts = self.ckpts[: self.keep_num]
        self._record(payload)
        if self.enabled:
            atomic_save(payload, self.path(name))
            if rank == 0:
                atomic_copy(self.path(name), self.path(BEST))
            atomic_copy(self.path(name), self.path(LAST))
            for old, _ in evicted:
                if os.path.exists(self.path(old)):
                    os.remove(self.path(old))
        self._note_saved(payload)
        return self.ckpts


# The input transform a run validated with, as the flags name it (tools/test.py compares them with its own).
INPUT_FLAGS = ("img_size", "crop_pct", "interpolation", "image_mean", "image_std")
# What a released file written by `convert_checkpoint` keeps of its run besides the weights: what `check_same_model`
# and `tools/test.py` check (the model, its scan directions or search candidates, the class folders) and, of the
# run's config, what builds the model and its inputs (not its paths).
RELEASED_RECORD = ("model_name", "directions", "candidates", "classes")
RELEASED_CONFIG = ("model", "model_kwargs", "directions", "num_classes", *INPUT_FLAGS)


def convert_checkpoint(src: str, dst: str, key: str = "model", trust: bool = False,
                       overwrite: bool = False) -> tuple[int, Optional[str]]:
    """Write the released form `{'state_dict': ckpt[key]}` (prefixes `module.` stripped), with the run's record
    (`RELEASED_RECORD`, `RELEASED_CONFIG`) beside it; returns the tensor count and, for a checkpoint a stopped run
    saved in the middle of an epoch, a note saying so (None otherwise).

    A file of the weights alone (`torch.save(model.state_dict())`, a safetensors file) is the `model` key's weights.
    A checkpoint without tensors under `key`, or already in the released form, is refused rather than written; an
    existing `dst` is replaced only with `overwrite`, and never when it is `src` (the training state would be lost);
    a folder is refused.
    """
    if os.path.isdir(dst):
        raise IsADirectoryError(f"{dst} is a folder: give the output file's path, e.g. "
                                f"{os.path.join(dst, 'released.ckpt')}")
    if os.path.exists(dst):
        if os.path.exists(src) and os.path.samefile(src, dst):
            raise CheckpointError(f"{dst} is the checkpoint being converted: writing it would replace its training "
                                  f"state with the weights alone; give another output file")
        if not overwrite:
            raise CheckpointError(f"{dst} exists; give another output file, or --overwrite to replace it")
    ckpt = load_checkpoint(src, trust=trust)
    if "state_dict" in ckpt and not any(name in ckpt for name in (EMA_KEYS if key == "ema_model" else (key,))):
        raise CheckpointError(f"{src} is in the released form already ({{'state_dict': weights}}): it loads as it is "
                              f"(tools/test.py --resume, --finetune, timm's pretrained_cfg_overlay)")
    weights_alone = key == "model" and bool(ckpt) and is_weights_alone(ckpt)
    weights = state_dict_from(ckpt, None if weights_alone else key, source=src)
    tensors = sum(isinstance(v, torch.Tensor) for v in weights.values())
    if tensors == 0:
        raise CheckpointError(f"{src}: {key!r} holds no tensors; nothing to convert")
    record = {name: ckpt[name] for name in RELEASED_RECORD if name in ckpt}
    config = {name: value for name, value in (ckpt.get("config") or {}).items() if name in RELEASED_CONFIG}
    atomic_save({"state_dict": weights, **record, **({"config": config} if config else {})}, dst)
    step, steps = ckpt.get("step"), ckpt.get("steps_per_epoch")
    partial = step is not None and step != steps and isinstance(ckpt.get("epoch"), int)
    return tensors, (f"{src} was saved in the middle of epoch {ckpt['epoch']}, after its "
                     f"{saved_epoch_position(ckpt)}: the weights are of a part of that epoch" if partial else None)
