"""Build a registered model from the resolved config (name with or without `timm_`, classes, kwargs, directions)."""
from __future__ import annotations

import difflib
import logging
import re
from argparse import Namespace
from typing import Any

import timm
import torch.nn as nn

from ..models.directions import load_directions, validate_directions
from .config import ConfigError

logger = logging.getLogger("localmamba")

_UNEXPECTED = re.compile(r"unexpected keyword argument '(\w+)'")


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
    close = difflib.get_close_matches(canonical, local, n=5, cutoff=0.5) or \
        difflib.get_close_matches(canonical, known, n=5, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; LocalMamba models: {', '.join(local)}"
    raise UnknownModelError(f'unknown model {name!r}{hint}')


def create_model_at_size(name: str, img_size: int, **kwargs: Any) -> nn.Module:
    """`timm.create_model` for `img_size` inputs: the size goes to models that take one (position tables, fixed
    windows) and is left out for the others (LocalVMamba takes any size as it is)."""
    name = resolve_model_name(name)
    try:
        return timm.create_model(name, img_size=img_size, **kwargs)
    except TypeError as err:
        if 'img_size' not in str(err):
            raise
        return timm.create_model(name, **kwargs)


def check_directions_file(path: str) -> None:
    """Read and check a directions file before any model is built; errors name the file."""
    try:
        table = load_directions(path)
        validate_directions(table, len(table), source=path)
    except ValueError as err:
        message = str(err)
        raise ConfigError(message if path in message else f"{path}: {message}") from err


def model_kwargs(cfg: Namespace) -> dict[str, Any]:
    """Keyword arguments for `timm.create_model` besides the name."""
    kwargs: dict[str, Any] = dict(num_classes=cfg.num_classes, drop_path_rate=cfg.drop_path_rate)
    if cfg.drop > 0:
        kwargs["drop_rate"] = cfg.drop
    kwargs.update(cfg.model_kwargs)
    if cfg.directions:
        check_directions_file(cfg.directions)
        kwargs["directions"] = cfg.directions
    return kwargs


def build_model(cfg: Namespace) -> nn.Module:
    """`timm.create_model` for `cfg.model`.

    Keys of `model_kwargs` that came from the YAML file (not from `--model-kwargs`) and that the chosen model does not
    take are dropped with a warning, so a config written for one model family still runs with another `--model`.
    """
    name = resolve_model_name(cfg.model)
    kwargs = model_kwargs(cfg)
    optional = set(cfg.model_kwargs) - set(getattr(cfg, "cli_model_kwargs", ()))
    while True:
        try:
            return timm.create_model(name, **kwargs)
        except ValueError as err:
            if cfg.directions and cfg.directions in str(err):  # e.g. a file for another depth
                raise ConfigError(str(err)) from err
            raise
        except TypeError as err:
            match = _UNEXPECTED.search(str(err))
            if not match or match.group(1) not in optional:
                raise
            key = match.group(1)
            logger.warning("model %s does not take %r from the config's model_kwargs; ignored", name, key)
            optional.discard(key)
            kwargs.pop(key)
