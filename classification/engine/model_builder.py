"""Build a registered model from the resolved config (name with or without `timm_`, classes, kwargs, directions)."""
from __future__ import annotations

import inspect
import logging
import os
import traceback
from argparse import Namespace
from typing import Any, Callable, Mapping, Optional

import timm
import torch.nn as nn
from timm.models._builder import build_model_with_cfg
from timm.models._registry import model_entrypoint

from ..common.checkpoint_io import CheckpointError, load_checkpoint
from ..common.suggest import did_you_mean
from ..data.defaults import NORMALIZATION_FLAGS
from ..data.image_decoding import IMAGE_MODES, channels_name
from ..models.directions import directions_source_warnings, load_directions, model_family, validate_directions
from ..models.factory import SUPERNET_FINAL_MODELS, input_channels, supernet_directions_error
from .checkpoint import LAST
from .config import ConfigError

logger = logging.getLogger("localmamba")

# Keywords timm's create_model / build_model_with_cfg consume themselves, for any model.
FRAMEWORK_KWARGS = frozenset(
    [p for p in inspect.signature(timm.create_model).parameters if p != "kwargs"]
    + [p for p in inspect.signature(build_model_with_cfg).parameters if p != "kwargs"]
    + ["features_only", "out_indices", "feature_cls", "flatten_sequential"])


def canonical_model_name(name: str) -> str:
    """Strip the original's `timm_` prefix."""
    return name[len("timm_"):] if name.startswith("timm_") else name


class UnknownModelError(ConfigError):
    """A model name timm does not know."""


def resolve_model_name(name: str) -> str:
    """The registered name (the original's `timm_` prefix stripped); unknown names raise with close matches."""
    import classification  # noqa: F401  (registers the LocalMamba models in timm)

    canonical = canonical_model_name(name)
    known = timm.list_models()
    if canonical in known:
        return canonical
    local = timm.list_models('local_v*')
    hint = (did_you_mean(canonical, local, n=5, cutoff=0.5) or did_you_mean(canonical, known, n=5)
            or f"; LocalMamba models: {', '.join(local)}")
    raise UnknownModelError(f'unknown model {name!r}{hint}')


def _model_class(entrypoint: Callable, depth: int = 3) -> Optional[type]:
    """The nn.Module class an entrypoint builds: found among the names its code (and the helpers it calls) uses,
    the one whose constructor takes `num_classes`; None when there is no single such class."""
    found: list[type] = []
    seen: set[int] = set()

    def visit(fn: Callable, level: int) -> None:
        code = getattr(fn, "__code__", None)
        if code is None or id(code) in seen or level > depth:
            return
        seen.add(id(code))
        for name in code.co_names:
            obj = getattr(fn, "__globals__", {}).get(name)
            if inspect.isclass(obj) and issubclass(obj, nn.Module):
                if "num_classes" in inspect.signature(obj.__init__).parameters and obj not in found:
                    found.append(obj)
            elif inspect.isfunction(obj):
                visit(obj, level + 1)

    visit(entrypoint, 0)
    return found[0] if len(found) == 1 else None


def accepted_kwargs(name: str) -> Optional[frozenset[str]]:
    """Keyword arguments `timm.create_model(name, ...)` accepts, read from the signatures of the entrypoint and of
    the model class it builds; None when that class takes any keyword (`**kwargs`) or cannot be told."""
    entrypoint = model_entrypoint(resolve_model_name(name))
    cls = _model_class(entrypoint)
    if cls is None:
        return None
    own = inspect.signature(cls.__init__).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in own):
        return None
    names = [p.name for p in own] + [p.name for p in inspect.signature(entrypoint).parameters.values()
                                     if p.kind is not p.VAR_KEYWORD]
    return frozenset(names) | FRAMEWORK_KWARGS


def takes_img_size(name: str) -> bool:
    """Whether model `name` is built for one input size (`img_size`: position tables, fixed windows), such as
    LocalVim, DeiT and Swin; LocalVMamba takes any size as it is."""
    accepted = accepted_kwargs(resolve_model_name(name))
    return accepted is not None and "img_size" in accepted


def create_model_at_size(name: str, img_size: int, **kwargs: Any) -> nn.Module:
    """`timm.create_model` for `img_size` inputs: the size goes to the models that take one (`takes_img_size`)."""
    name = resolve_model_name(name)
    if takes_img_size(name):
        kwargs["img_size"] = img_size
    return timm.create_model(name, **kwargs)


def check_directions_file(path: str, checkpoint: Optional[str] = None) -> None:
    """Read and check a directions file before any model is built; errors name the file. A file that is gone (moved
    or deleted since training) is refused naming ``checkpoint``, the one resumed or evaluated, when that records the
    directions it was trained with."""
    try:
        table = load_directions(path)
        validate_directions(table, len(table), source=path)
    except FileNotFoundError as err:
        if checkpoint is not None and _records_directions(checkpoint):
            raise ConfigError(f"{err}; {checkpoint} records the directions it was trained with: give --directions "
                              f"{checkpoint}") from err
        raise
    except ValueError as err:
        message = str(err)
        raise ConfigError(message if path in message else f"{path}: {message}") from err


def _records_directions(checkpoint: str) -> bool:
    """Whether the file ``checkpoint`` is a checkpoint that records its scan directions (a training checkpoint of a
    model with fixed directions, or its conversion), which ``--directions`` reads."""
    if not os.path.isfile(checkpoint):
        return False
    try:
        return isinstance(load_checkpoint(checkpoint, mmap=True).get("directions"), list)
    except (CheckpointError, OSError):
        return False


def _resumed_checkpoint(cfg: Namespace) -> Optional[str]:
    """The checkpoint `--resume` names (`auto`: the run folder's last.pth.tar), None without one."""
    resume = getattr(cfg, "resume", None)
    if resume == "auto":
        return os.path.join(cfg.output, cfg.experiment, LAST)
    return resume or None


def model_kwargs(cfg: Namespace) -> dict[str, Any]:
    """Keyword arguments for `timm.create_model` besides the name: a model built for one input size is built for
    `--img-size` (as DeiT and Vim do), unless `model_kwargs` gives its `img_size`."""
    kwargs: dict[str, Any] = dict(num_classes=cfg.num_classes, drop_path_rate=cfg.drop_path_rate)
    if cfg.drop > 0:
        kwargs["drop_rate"] = cfg.drop
    if takes_img_size(cfg.model):
        kwargs["img_size"] = cfg.img_size
    kwargs.update(cfg.model_kwargs)
    if cfg.directions:
        check_directions_file(cfg.directions, _resumed_checkpoint(cfg))
        kwargs["directions"] = cfg.directions
    return kwargs


def _note_directions_source(path: str, name: str, model: nn.Module) -> None:
    """Warn when what a directions file says of its search does not match model `name` (built as `model`): see
    :func:`~classification.models.directions.directions_source_warnings`."""
    for message in directions_source_warnings(path, name, model_family(name), getattr(model, "depths", None)):
        logger.warning(message)


def config_kwargs_taken(name: str, kwargs: Mapping[str, Any], warn: bool = True) -> dict[str, Any]:
    """A config file's `model_kwargs` without the keys model `name` does not take, each dropped with a warning (when
    `warn`): a config written for one family still runs with another `--model`, in training and in speed_test. A
    search run's `candidates` is dropped for a model that is not a search supernet (its class takes the keyword but
    refuses it with fixed directions), so the searched model trains from the search's args.yaml."""
    accepted = accepted_kwargs(name)
    dropped = [] if accepted is None else [key for key in kwargs if key not in accepted]
    if "candidates" in kwargs and name not in SUPERNET_FINAL_MODELS:
        dropped.append("candidates")
    for key in dropped if warn else ():
        logger.warning("model %s does not take %r from the config's model_kwargs; ignored", name, key)
    return {key: value for key, value in kwargs.items() if key not in dropped}


def _accepted_model_kwargs(cfg: Namespace, name: str, kwargs: dict[str, Any], warn: bool) -> dict[str, Any]:
    """`kwargs` without the keys model `name` does not take: YAML `model_kwargs` keys are dropped (with a warning
    when `warn`), unless the config names this model and the key is a near miss of one it takes (a typo: refused);
    flags left at 0 silently; any other key raises `ConfigError` naming it and close matches."""
    accepted = accepted_kwargs(name)
    if accepted is None:
        return kwargs
    from_yaml = set(cfg.model_kwargs) - set(getattr(cfg, "cli_model_kwargs", ()))
    if getattr(cfg, "config_model", None) is not None:  # the config names this model: a near miss is a typo
        for key in sorted(key for key in from_yaml if key not in accepted):
            hint = did_you_mean(key, accepted)
            if hint:
                raise ConfigError(f"{cfg.config}: model_kwargs: model {name} (the config's model) does not take "
                                  f"{key!r}{hint}")
    taken = config_kwargs_taken(name, {key: value for key, value in kwargs.items() if key in from_yaml}, warn)
    kept = {key: value for key, value in kwargs.items() if key not in from_yaml or key in taken}
    for key in [k for k in kept if k not in accepted]:
        if key not in cfg.model_kwargs and not kept[key]:  # a flag left at 0 for a model without it
            kept.pop(key)
        else:
            flag = "--model-kwargs" if key in cfg.model_kwargs else f"--{key.replace('_', '-')}"
            raise not_taken_error(name, key, accepted, flag)
    return kept


def not_taken_error(name: str, key: str, accepted: frozenset[str], flag: str = "--model-kwargs") -> ConfigError:
    """The one-line error of a keyword `key` (given by `flag`) that model `name`, taking `accepted`, does not take;
    naming the close matches."""
    return ConfigError(f"{flag}: model {name} does not take {key!r}{did_you_mean(key, accepted)}")


def check_kwargs_taken(name: str, model_kwargs: Mapping[str, Any], flag: str = "--model-kwargs") -> None:
    """``ConfigError`` naming the first of ``model_kwargs`` (given by ``flag``) that model ``name`` does not take, with
    close matches (a model taking any keyword takes them all)."""
    accepted = accepted_kwargs(name)
    not_taken = [key for key in model_kwargs if accepted is not None and key not in accepted]
    if not_taken:
        raise not_taken_error(resolve_model_name(name), not_taken[0], accepted, flag)


def model_build_error(name: str, given: Mapping[str, Any], err: Exception, hint: str = "") -> ConfigError:
    """The one-line error of a model that `given` keyword arguments (model_kwargs, a directions file) could not
    build: `model NAME with KEY=VALUE ...: <the model's error><hint>`."""
    settings = " ".join(f"{key}={value}" for key, value in given.items())
    return ConfigError(f"model {name} with {settings}: {err}{hint}")


def _assertion_hint(err: AssertionError) -> str:
    """What to add to a model's failed assertion: where it failed, when its message says nothing."""
    if str(err):
        return ""
    frame = traceback.extract_tb(err.__traceback__)[-1]
    return (f"the model's constructor refused them (assert at {os.path.basename(frame.filename)}:{frame.lineno}: "
            f"{frame.line})")


def check_model_flags(cfg: Namespace) -> None:
    """Refuse an unknown model, a keyword it does not take, a bad directions file, directions for a search
    supernet, or input channels the data pipeline does not give (`image_channels`), before anything is built."""
    name = resolve_model_name(cfg.model)
    _accepted_model_kwargs(cfg, name, model_kwargs(cfg), warn=False)
    if cfg.directions and name in SUPERNET_FINAL_MODELS:
        raise ConfigError(f"--directions: {supernet_directions_error(name)}")
    image_channels(cfg)


def image_channels(cfg: Namespace) -> int:
    """The channels of the images the data pipeline decodes for `cfg.model`: its `model_kwargs`' `in_chans`
    (LocalVim's `channels`, the original's name, wins over it as in the model), 3 without. 1 decodes gray images and 3
    RGB ones; any other count is refused (ConfigError), and so is a `--image-mean` / `--image-std` of another number
    of values that the dataset did not fill (a 1-channel model's default is the mean of the dataset's RGB values)."""
    kwargs = _accepted_model_kwargs(cfg, resolve_model_name(cfg.model), dict(cfg.model_kwargs), warn=False)
    channels = kwargs["channels"] if kwargs.get("channels") is not None else kwargs.get("in_chans", 3)
    if type(channels) is not int or channels not in IMAGE_MODES:  # true and 1.0 would pass as 1
        raise ConfigError(f"model {cfg.model}: in_chans={channels!r} is not supported: the data pipeline decodes "
                          f"images as gray for in_chans=1 or as RGB for in_chans=3 (the default)")
    filled = getattr(cfg, "filled_from_dataset", ())
    for key in NORMALIZATION_FLAGS:
        values = getattr(cfg, key, None)
        if values is not None and len(values) != channels and key not in filled:
            flag = "--" + key.replace("_", "-")
            raise ConfigError(f"{flag} {' '.join(map(str, values))}: {len(values)} value(s) for a model of "
                              f"{channels_name(channels)} images (in_chans={channels}): give {channels}, or leave "
                              f"{flag} unset for the dataset's default")
    return channels


def check_input_size(model: nn.Module, cfg: Namespace) -> None:
    """Refuse an `--img-size` that `model` cannot take: a timm model whose patch embedding is strict about its size
    (ViT, DeiT, Swin), built for another one by `model_kwargs`' `img_size`, failed its first forward in a traceback."""
    patch_embed = getattr(model, "patch_embed", None)
    built_for = getattr(patch_embed, "img_size", None)
    if not getattr(patch_embed, "strict_img_size", False) or built_for is None:
        return
    if tuple(built_for) != (cfg.img_size, cfg.img_size):
        raise ConfigError(f"--img-size {cfg.img_size}: model {cfg.model} is built for {built_for[0]}x{built_for[1]} "
                          f"inputs (model_kwargs img_size) and takes no other size: give both the same size "
                          f"(--img-size {built_for[0]}, or --model-kwargs img_size={cfg.img_size})")


def build_model(cfg: Namespace) -> nn.Module:
    """`timm.create_model` for `cfg.model`.

    Keys of `model_kwargs` that came from the YAML file (not from `--model-kwargs`) and that the chosen model does not
    take are dropped with a warning, so a config written for one model family still runs with another `--model`.
    A key given on the command line that the model does not take is refused (`ConfigError`) with the ones it takes,
    and so are an `--img-size` smaller than one patch of the model and input channels other than the data's
    (`image_channels`: 1 for gray images, 3 for RGB; either would fail in its first forward).
    """
    channels = image_channels(cfg)
    name = resolve_model_name(cfg.model)
    kwargs = _accepted_model_kwargs(cfg, name, model_kwargs(cfg), warn=True)
    try:
        model = timm.create_model(name, **kwargs)
    except ValueError as err:
        if cfg.directions and cfg.directions in str(err):  # e.g. a file for another depth
            raise ConfigError(str(err)) from err
        if cfg.model_kwargs:  # e.g. depth=2 for a model whose searched directions have 20 layers
            hint = ("; give --directions FILE with one list of directions per layer (tools/vis_search_prob.py "
                    "writes one)" if "default directions" in str(err) and not cfg.directions else "")
            raise model_build_error(name, cfg.model_kwargs, err, hint) from err
        raise
    except TypeError as err:  # an unknown keyword handed down by **kwargs, or a value of the wrong type
        if "unexpected keyword argument" in str(err):
            raise ConfigError(f"--model-kwargs: model {name}: {err}") from err
        if not cfg.model_kwargs:
            raise
        texts = [key for key, value in cfg.model_kwargs.items() if isinstance(value, str) and "," in value]
        hint = (f" ({', '.join(texts)}: a list is written in brackets, e.g. {texts[0]}=[1,1])" if texts else
                " (a value of the wrong type?)")
        raise model_build_error(name, cfg.model_kwargs, err, hint) from err
    except AssertionError as err:  # timm's own models check some kwargs with assert (a bare one, often)
        if not cfg.model_kwargs:
            raise
        raise model_build_error(name, cfg.model_kwargs, err, _assertion_hint(err)) from err
    if input_channels(model) != channels:  # a model whose own default is not 3
        raise ConfigError(f"model {cfg.model} takes {input_channels(model)}-channel images, but the data pipeline "
                          f"decodes {channels}-channel ones for it: give --model-kwargs in_chans=1 (gray images) or "
                          f"in_chans=3 (RGB)")
    patch_size = getattr(model, "patch_size", None)  # LocalVim's and LocalVMamba's patch embedding
    if isinstance(patch_size, int) and getattr(cfg, "img_size", None) is not None and cfg.img_size < patch_size:
        raise ConfigError(f"--img-size {cfg.img_size} is smaller than one patch of {cfg.model} ({patch_size} pixels)")
    if cfg.directions:
        _note_directions_source(cfg.directions, name, model)
    return model
