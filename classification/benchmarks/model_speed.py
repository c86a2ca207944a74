"""Whole-model throughput: images per second for inference (eval mode, inference_mode) and for a training step
(forward, cross-entropy, backward, AdamW step), interleaved medians, and the ratio to a timm baseline timed in the
same process on the same random images."""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import torch
from localmamba_kernel_runtime.settings import SETTING_ERRORS
from torch import nn

from ..engine.config import ConfigError
from ..engine.model_builder import (check_directions_file, check_kwargs_taken, create_model_at_size, model_build_error,
                                    resolve_model_name)
from ..models.factory import input_channels
from .tables import render_table
from .timing import DTYPES, median_seconds

DEFAULT_BASELINES = {"local_vim": "deit_tiny_patch16_224", "local_vssm": "swin_tiny_patch4_window7_224"}


def default_baseline(model: str) -> str:
    """The timm model a LocalMamba model is compared with: DeiT-T for the plain family, Swin-T for the other."""
    for prefix, baseline in DEFAULT_BASELINES.items():
        if model.startswith(prefix):
            return baseline
    raise ValueError(f"no default baseline for {model!r}: pass --baseline")


def build_model(name: str, img_size: int = 224, device: Union[str, torch.device] = "cpu",
                num_classes: Optional[int] = None, model_kwargs: Optional[Mapping[str, Any]] = None,
                directions: Optional[str] = None) -> nn.Module:
    """A registered model (LocalMamba or timm) at ``img_size`` on ``device``, in eval mode, with its own classifier
    size unless ``num_classes`` is given, built with ``model_kwargs`` (an ``img_size`` there wins, as in training) and
    a ``directions`` file, as a training run's config gives them. Unknown names raise ``UnknownModelError`` with
    close matches; a bad directions file, a keyword the model does not take (with close matches) or keyword
    arguments the model refuses raise ``ConfigError``."""
    check_kwargs_taken(name, model_kwargs or {})
    kwargs = dict(model_kwargs or {})
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if directions:
        check_directions_file(directions)
        kwargs["directions"] = directions
    size = kwargs.pop("img_size", img_size)
    try:
        model = create_model_at_size(name, size, **kwargs)
    except (TypeError, ValueError) as err:  # a keyword the model does not take, directions of another depth
        if not model_kwargs and not directions:
            raise
        given = {**(model_kwargs or {}), **({"directions": directions} if directions else {})}
        raise model_build_error(resolve_model_name(name), given, err) from err
    return model.to(device).eval()


def square_side(img_size: Any) -> int:
    """The side of a square input size given as a number or as a pair of one number (as model_kwargs' ``img_size``
    may be); ``ConfigError`` for any other value (the images timed and counted are square) and for a side below 1."""
    given = img_size
    if isinstance(img_size, (list, tuple)) and len(img_size) == 2 and img_size[0] == img_size[1]:
        img_size = img_size[0]
    if not isinstance(img_size, int) or isinstance(img_size, bool):
        raise ConfigError(f"model_kwargs img_size={given!r}: the images timed and counted are square: give one "
                          f"size")
    if img_size < 1:
        raise ConfigError(f"model_kwargs img_size={given!r}: an image side must be at least 1 pixel")
    return img_size


def check_image_size(model: nn.Module, name: str, img_size: int, flag: str = "--img-size") -> None:
    """Run ``model`` on one ``img_size`` image; ``ConfigError`` in one line, naming the ``flag`` that gave the size,
    when it cannot take that size (smaller than a patch or a window) or a kernel setting cannot run it (a kernel that
    does not build under ``LOCALMAMBA_CPU_KERNEL=require``: its error whole), before any timing or FLOP count."""
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            model(torch.zeros(1, input_channels(model), img_size, img_size, device=device))
    except SETTING_ERRORS as err:  # a kernel setting these inputs cannot run, whatever their size
        raise ConfigError(str(err)) from err
    except (ValueError, RuntimeError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"{flag} {img_size}: model {name} cannot take {img_size}x{img_size} images "
                          f"({reason})") from err


def variant_text(model_kwargs: Optional[Mapping[str, Any]] = None, directions: Optional[str] = None) -> str:
    """How a benchmarked model is built beyond its name, as a settings line shows it: `` model_kwargs=k=v,...``
    and `` directions=FILE``, or nothing."""
    kwargs = ",".join(f"{key}={value}" for key, value in (model_kwargs or {}).items())
    return (f" model_kwargs={kwargs}" if kwargs else "") + (f" directions={directions}" if directions else "")


def settings_line(model: str, baseline: str, device: Union[str, torch.device], dtype: str, sizes: str,
                  repeats: int, variant: str = "") -> str:
    """The first line a model benchmark prints: what is compared, where, at which ``sizes`` (e.g. ``img=224``), and
    the model's ``variant`` (:func:`variant_text`)."""
    return (f"model={model}{variant} baseline={baseline} device={torch.device(device).type} dtype={dtype} {sizes} "
            f"threads={torch.get_num_threads()} repeats={repeats} (medians, interleaved)")


def build_compared(model: str, baseline: str, img_size: int, device: Union[str, torch.device],
                   model_kwargs: Optional[Mapping[str, Any]] = None, directions: Optional[str] = None,
                   flag: str = "--img-size") -> Dict[str, nn.Module]:
    """``model`` (built with ``model_kwargs`` and ``directions``) and ``baseline`` (as registered) at ``img_size``,
    each checked on one image of that size (:func:`check_image_size`, naming ``flag``)."""
    models = {model: build_model(model, img_size, device, model_kwargs=model_kwargs, directions=directions),
              baseline: build_model(baseline, img_size, device)}
    for name, built in models.items():
        check_image_size(built, name, img_size, flag)
    return models


def backends_line(device: Union[str, torch.device]) -> str:
    """The kernel backend each op runs on ``device`` (and the CPU kernels' instruction set), in one line."""
    from localmamba_ssm import backend_summary

    return "backends: " + ", ".join(f"{op}={b}" for op, b in backend_summary(device).items())


def _print_now(line: str) -> None:
    print(line, flush=True)


def inference_step(model: nn.Module, images: torch.Tensor, dtype: torch.dtype) -> Callable[[], None]:
    """A call that runs one forward of ``images`` (B, C, H, W) in inference mode, under autocast for a 16-bit
    ``dtype``."""

    def step() -> None:
        with torch.inference_mode(), torch.autocast(images.device.type, dtype=dtype, enabled=dtype != torch.float32):
            model(images)

    return step


def train_step(model: nn.Module, images: torch.Tensor, dtype: torch.dtype) -> Callable[[], None]:
    """A call that runs one training step on ``images``: forward (autocast for a 16-bit ``dtype``), cross-entropy
    against fixed random labels (drawn at the first call, below the model's output count), backward, AdamW step."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    targets: Optional[torch.Tensor] = None

    def step() -> None:
        nonlocal targets
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(images.device.type, dtype=dtype, enabled=dtype != torch.float32):
            logits = model(images).float()
        if targets is None:
            targets = torch.randint(0, logits.shape[-1], (images.shape[0],),
                                    generator=torch.Generator().manual_seed(0)).to(images.device)
        loss = torch.nn.functional.cross_entropy(logits, targets)
        loss.backward()
        optimizer.step()

    return step


# untimed calls a compiled model needs before its timing: torch.compile compiles in the first, and mode
# "reduce-overhead" records its CUDA graphs in the second
COMPILE_WARMUP = 2


def images_per_second(models: Mapping[str, nn.Module], batch: int, img_size: int = 224, train: bool = False,
                      dtype: str = "fp32", repeats: int = 5, warmup: int = 2,
                      compile_mode: Optional[str] = None,
                      progress: Optional[Callable[[int, int], None]] = None) -> Dict[str, float]:
    """Images per second of each model on the same random (batch, C, img_size, img_size) images (C: the model's
    channels, :func:`input_channels`), timed interleaved:
    inference, or a training step when ``train`` (:func:`train_step`; the models are left in that mode). Inference
    runs under ``torch.compile(mode=compile_mode)`` when given (the compilation happens in the warmup: at least
    ``COMPILE_WARMUP`` calls, or a ValueError).
    ``progress``: as :func:`median_seconds` takes it."""
    device = next(next(iter(models.values())).parameters()).device
    channels = {name: input_channels(model) for name, model in models.items()}
    images = {count: torch.randn(batch, count, img_size, img_size, generator=torch.Generator().manual_seed(0))
              .to(device) for count in set(channels.values())}
    make_step = train_step if train else inference_step
    for model in models.values():
        model.train(train)
    if compile_mode is not None and not train:
        if warmup < COMPILE_WARMUP:
            raise ValueError(f"torch.compile compiles in the warmup calls: {warmup} would time the compilation; give "
                             f"{COMPILE_WARMUP} or more")
        models = {name: torch.compile(model, mode=compile_mode) for name, model in models.items()}
    steps = {name: make_step(model, images[channels[name]], DTYPES[dtype]) for name, model in models.items()}
    return {name: batch / seconds for name, seconds in median_seconds(steps, repeats, warmup, device, progress).items()}


def benchmark_models(model: str, baseline: Optional[str] = None, batch_sizes: Sequence[int] = (1, 8),
                     train_batch: int = 8, img_size: int = 224, device: str = "cpu", dtype: str = "fp32",
                     repeats: int = 5, warmup: int = 2, log: Optional[Callable[[str], None]] = None,
                     compile_mode: Optional[str] = None,
                     finished: Optional[List[Dict[str, object]]] = None,
                     model_kwargs: Optional[Mapping[str, Any]] = None,
                     directions: Optional[str] = None) -> List[Dict[str, object]]:
    """Images/s of ``model`` and its baseline (by family unless given) for inference at each batch size and, unless
    ``train_batch`` is 0, a training step; ``log`` (default: print) gets a header line and one line per measurement
    as they come. ``compile_mode``: inference under ``torch.compile`` in that mode (training steps stay eager).
    ``finished``: a list each row is also appended to as it ends, which keeps them where a later one fails or is
    interrupted. ``model_kwargs`` and ``directions`` build ``model`` (as a training run's config does), not the
    baseline."""
    log = log or _print_now

    baseline = baseline or default_baseline(model)
    models = build_compared(model, baseline, img_size, device, model_kwargs, directions)
    variant = variant_text(model_kwargs, directions)
    log(settings_line(model, baseline, device, dtype, f"img={img_size}", repeats, variant)
        + ("" if compile_mode is None else f" compile={compile_mode} (inference)") + f"\n{backends_line(device)}")
    plans = [(f"inference b{b}", b, False) for b in batch_sizes]
    if train_batch > 0:
        plans.append((f"train step b{train_batch}", train_batch, True))
    rows = []
    for metric, batch, train in plans:
        ips = images_per_second(models, batch, img_size, train, dtype, repeats, warmup, compile_mode)
        rows.append({"metric": metric, "model": model, "baseline": baseline, "device": torch.device(device).type,
                     "dtype": dtype, "threads": torch.get_num_threads(), "model_img_s": ips[model],
                     "baseline_img_s": ips[baseline], "ratio": ips[model] / ips[baseline]})
        if finished is not None:
            finished.append(rows[-1])
        log(f"  {metric}: {ips[model]:.2f} vs {ips[baseline]:.2f} img/s")
    return rows


def format_model_table(rows: List[Dict[str, object]]) -> str:
    """The rows of :func:`benchmark_models` as a text table."""
    header = ["metric", f"{rows[0]['model']} img/s", f"{rows[0]['baseline']} img/s", "ratio"]
    return render_table([header] + [[str(r["metric"]), f"{r['model_img_s']:.2f}", f"{r['baseline_img_s']:.2f}",
                                     f"{r['ratio']:.3f}x"] for r in rows])
