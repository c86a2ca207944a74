"""ONNX export of a model and its weights (``tools/export_onnx.py``), checked by onnxruntime against the model.

The graph takes any batch size: it is exported with a dynamic batch from an example batch of 2, since
``torch.export`` specialises a batch of 1 (the ONNX model would then fail at other sizes). The ops record their
plain-PyTorch reference during an export, the scan as O(log L) paired steps.
"""
from __future__ import annotations

import importlib.util
import os
import tempfile
import time
from argparse import Namespace
from typing import Any, Optional

import torch
import torch.nn as nn

from ..common.checkpoint_io import load_checkpoint, state_dict_from
from ..data.defaults import resolve_dataset_defaults
from ..models.factory import input_channels
from .checkpoint import classifier_name, load_evaluated_weights
from .config import ConfigError
from .model_builder import build_model, canonical_model_name, check_model_flags

EXPORTERS = ("dynamo", "torchscript")
CHECK_BATCH = 3     # another size than the example's: the batch dim must be dynamic


def onnx_files(path: str) -> list[str]:
    """The files an export to ``path`` writes: the model, and the weights' external-data file beside it."""
    return [path, path + ".data"]


def check_export_options(exporter: str, example_batch: int, check: bool, optimize: bool = False) -> None:
    """Refuse an unknown exporter, an example batch below 2, --optimize without the dynamo exporter, or a missing
    package, naming the fix."""
    if exporter not in EXPORTERS:
        raise ConfigError(f"--exporter must be one of {', '.join(EXPORTERS)}, got {exporter!r}")
    if optimize and exporter != "dynamo":
        raise ConfigError(f"--optimize optimises the dynamo export, not the {exporter} one: drop it, or give "
                          f"--exporter dynamo")
    if example_batch < 2:
        raise ConfigError(f"--example-batch must be 2 or more (torch.export fixes a batch of 1), got {example_batch}")
    if exporter == "dynamo" and (importlib.util.find_spec("onnxscript") is None or torch.__version__ < "2.8"):
        raise ConfigError("the dynamo exporter needs torch >= 2.8 and onnxscript (pip install onnxscript): install "
                          "them or give --exporter torchscript")
    if check and importlib.util.find_spec("onnxruntime") is None:
        raise ConfigError("the check runs onnxruntime, which is not installed: pip install onnxruntime, or give "
                          "--no-check")


def export_model(model: nn.Module, path: str, img_size: int, exporter: str = "dynamo", example_batch: int = 2,
                 optimize: bool = False) -> None:
    """Write ``model`` (eval mode, on the CPU) to ``path`` for (batch, channels, img_size, img_size) images (the
    model's input channels, :func:`input_channels`), batch dynamic.

    ``exporter``: 'dynamo' (``torch.export``-based, torch >= 2.8 and onnxscript) or 'torchscript'; ``optimize``:
    onnxscript's graph optimisation of the dynamo export (minutes for a full-size model).
    """
    check_export_options(exporter, example_batch, check=False)
    image = torch.randn(example_batch, input_channels(model), img_size, img_size)
    with torch.no_grad():
        if exporter == "dynamo":
            torch.onnx.export(model, (image,), path, dynamo=True, dynamic_shapes=({0: "batch"},), optimize=optimize,
                              input_names=["image"], output_names=["logits"], verbose=False)
        else:
            torch.onnx.export(model, (image,), path, dynamo=False, input_names=["image"], output_names=["logits"],
                              dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})


def check_export_inputs(cfg: Namespace) -> None:
    """Refuse an unknown model, model flags it does not take and a ``--resume`` checkpoint that cannot be read, before
    the export says what it exports."""
    check_model_flags(cfg)
    if cfg.resume:
        load_checkpoint(cfg.resume, trust=cfg.trust_checkpoint, mmap=True)


def resolve_export_size(cfg: Namespace) -> Optional[str]:
    """Set ``cfg.img_size`` when neither the command nor its config gives one: the size the ``--resume`` checkpoint's
    run was trained at (its recorded config), else the dataset's default, as ``tools/test.py`` would evaluate at.
    Returns where the size came from (None when it was given)."""
    if cfg.img_size is not None:
        return None
    if cfg.resume:
        saved = (load_checkpoint(cfg.resume, trust=cfg.trust_checkpoint, mmap=True).get("config") or {}).get("img_size")
        if isinstance(saved, int):
            cfg.img_size = saved
            return "the size its run was trained at"
    resolve_dataset_defaults(cfg)
    return f"--dataset {cfg.dataset}'s default size"


def onnxruntime_difference(model: nn.Module, path: str, img_size: int, batch: int = CHECK_BATCH) -> float:
    """Largest absolute difference between onnxruntime's outputs of the ONNX model at ``path`` and ``model``'s, on
    ``batch`` random images."""
    import onnxruntime

    image = torch.randn(batch, input_channels(model), img_size, img_size)
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: its optimiser's notes on nodes it cannot fold are no fault
    session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: image.numpy()})
    with torch.no_grad():
        expected = model(image)
    return (torch.from_numpy(out) - expected).abs().max().item()


def _saved_classes(model: nn.Module, weights: dict[str, torch.Tensor]) -> int | None:
    """The number of classes of the classifier in ``weights`` (None if it has none under the model's name for it)."""
    classifier = classifier_name(model) or "head"
    bias = weights.get(f"{classifier}.bias")
    return None if bias is None else bias.shape[0]


def load_model(cfg: Namespace, ema: bool) -> nn.Module:
    """``cfg.model`` built as ``tools/test.py`` builds it, with the weights of ``cfg.resume`` (its EMA's if ``ema``)
    when given, in eval mode on the CPU. Without ``--num-classes`` the classifier takes the checkpoint's size; weights
    that do not fit name the model kwargs their run built the model with, when the command gives others."""
    model = build_model(cfg)
    if cfg.resume:
        ckpt = load_checkpoint(cfg.resume, trust=cfg.trust_checkpoint)
        weights = state_dict_from(ckpt, "ema_model" if ema else None, source=cfg.resume)
        classes = _saved_classes(model, weights)
        if cfg.num_classes is None and classes is not None and classes != getattr(model, "num_classes", classes):
            cfg.num_classes = classes
            model = build_model(cfg)
        load_evaluated_weights(model, canonical_model_name(cfg.model), cfg.model_kwargs, ckpt, weights, cfg.resume)
    elif ema:
        raise ConfigError("--ema needs --resume CHECKPOINT (the EMA weights are in a training checkpoint)")
    return model.eval()


def check_onnx_path(path: str, overwrite: bool) -> str:
    """Refuse an ONNX file name that does not end in .onnx, files of an earlier export there (unless ``overwrite``),
    or a folder that cannot be made because a file stands in its way or cannot be written; returns the folder (made
    when written)."""
    if not path.endswith(".onnx"):
        raise ConfigError(f"the ONNX file's name must end in .onnx, got {path!r}")
    present = [name for name in onnx_files(path) if os.path.exists(name)]
    if present and not overwrite:
        raise ConfigError(f"{present[0]} exists: give --overwrite to replace it, or another path")
    folder = os.path.dirname(os.path.abspath(path))
    above = folder
    while not os.path.exists(above):
        above = os.path.dirname(above)
    if not os.path.isdir(above):
        raise ConfigError(f"cannot write {path}: {above} is a file, not a folder")
    if not os.access(above, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write {path}: {above} is not writable")
    return folder


def export(cfg: Namespace, path: str, exporter: str, example_batch: int, check: bool, overwrite: bool,
           ema: bool, optimize: bool = False) -> dict[str, Any]:
    """Export ``cfg.model`` (with ``cfg.resume``'s weights) to ``path``; returns the facts to report: seconds, the
    files written (``path``, and the weights' file ``path``.data the dynamo exporter writes beside it) and their bytes,
    and with ``check`` onnxruntime's largest difference from the model at batch ``CHECK_BATCH``.

    The files are written in a staging folder beside ``path`` and moved there when complete (an interrupted or
    failed export leaves an existing file as it was); the weights' file keeps its name, which the model refers to.
    Missing folders of ``path`` are made."""
    check_export_options(exporter, example_batch, check, optimize)
    folder = check_onnx_path(path, overwrite)
    model = load_model(cfg, ema)
    try:
        os.makedirs(folder, exist_ok=True)
        staging_folder = tempfile.TemporaryDirectory(dir=folder, prefix=".onnx-export-")
    except OSError as err:   # named by its own folder, not by the staging folder the user never gave
        raise ConfigError(f"cannot write {path}: {err.strerror}") from err
    with staging_folder as staging:
        staged = os.path.join(staging, os.path.basename(path))
        start = time.perf_counter()
        export_model(model, staged, cfg.img_size, exporter, example_batch, optimize)
        report: dict[str, Any] = dict(seconds=time.perf_counter() - start)
        if check:
            report["max_abs_difference"] = onnxruntime_difference(model, staged, cfg.img_size)
        written = [name for name in onnx_files(staged) if os.path.exists(name)]
        report["bytes"] = sum(os.path.getsize(name) for name in written)
        report["files"] = [os.path.join(os.path.dirname(path), os.path.basename(name)) for name in written]
        for name in onnx_files(path):   # an earlier export's files (--overwrite), its weights' file too
            if os.path.exists(name):
                os.remove(name)
        for name in written:
            os.replace(name, os.path.join(folder, os.path.basename(name)))
    return report
