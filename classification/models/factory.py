"""What both model families register with timm: the pretrained_cfg of a variant (with the URL of its released
checkpoint, if any), the check of timm's input-size options, the head ``reset_classifier`` builds, and the one build
path through timm's ``build_model_with_cfg``."""
from __future__ import annotations

import contextlib
import os
import sys
import warnings
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg
from torch import nn

from ..common.checkpoint_io import CheckpointError, UnsafeCheckpointError, load_checkpoint
from .directions import checkpoint_candidates, directions_difference

# Assets of the original's v1.0.0 GitHub release (each a ``{'state_dict': ...}`` file with a ``log_*.txt`` beside it).
RELEASE_URL = 'https://github.com/hunto/LocalMamba/releases/download/v1.0.0/'
RELEASED_FILES = {
    'local_vim_tiny': 'local_vim_tiny.ckpt',
    'local_vim_tiny_middle_cls_token': 'local_vim_tiny_middle_cls_token.ckpt',
    # The original README links LocalVim-S to local_vssm_small.ckpt, a typo (its log is log_local_vim_small.txt):
    # the release names each checkpoint after its model and log, so LocalVim-S's file is local_vim_small.ckpt.
    'local_vim_small': 'local_vim_small.ckpt',
    'local_vssm_small': 'local_vssm_small.ckpt',
}

# Where timm and this package live: frames there are not the user's (`_stacklevel_of_caller`).
_LIBRARY_DIRS = (os.path.dirname(timm.__file__), os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# timm's pretrained_filter_fn: (checkpoint state_dict, model) -> the state_dict to load.
CheckpointFilter = Callable[[dict, nn.Module], dict]

# Each search supernet, and the model that trains the directions searched with it (filled by `supernet_of`).
SUPERNET_FINAL_MODELS: dict[str, str] = {}
EntryPoint = Callable[..., nn.Module]


def supernet_of(final_model: str) -> Callable[[EntryPoint], EntryPoint]:
    """Declare the decorated entrypoint (under ``@register_model``) a search supernet whose searched directions
    ``final_model`` trains: the tools then give it ``candidates`` from a config and refuse ``directions`` for it."""
    def declare(entrypoint: EntryPoint) -> EntryPoint:
        SUPERNET_FINAL_MODELS[entrypoint.__name__] = final_model
        return entrypoint
    return declare


def check_input_size_options(family: str, dynamic_img_size: bool, dynamic_img_pad: bool, *, any_size_because: str,
                             pads: bool, pad_refusal: str) -> None:
    """Refuse (ValueError) timm's input options asking a model ``family`` for what it does not do: a fixed input size
    (``dynamic_img_size=False``; both families take any size, ``any_size_because``), or the other treatment of an
    image's remainder past a multiple of the patch size (``dynamic_img_pad`` other than ``pads``: zero-padded if True,
    dropped if False), refused with the family's ``pad_refusal``."""
    if not dynamic_img_size:
        raise ValueError(f'{family} takes any input size ({any_size_because}): dynamic_img_size=False, a fixed input '
                         f'size, is not supported')
    if bool(dynamic_img_pad) != pads:
        raise ValueError(pad_refusal)


def supernet_directions_error(variant: str) -> str:
    """Why a search supernet takes no ``directions``, and which model does."""
    return (f'{variant} is a search supernet (every layer weighs all candidate directions) and takes no directions; '
            f'train searched directions with {SUPERNET_FINAL_MODELS[variant]}')


def model_cfg(model_name: str, first_conv: str, classifier: str, pool_size: Optional[tuple[int, int]] = None,
              **kwargs: Any) -> dict:
    """timm pretrained_cfg of a LocalMamba variant at 224: ImageNet normalisation, bicubic 0.875 crops, and the
    release URL when the original released weights for ``model_name`` (else no URL)."""
    released = RELEASED_FILES.get(model_name)
    return {
        'url': RELEASE_URL + released if released else '', 'num_classes': 1000, 'input_size': (3, 224, 224),
        'pool_size': pool_size, 'crop_pct': 0.875, 'interpolation': 'bicubic', 'fixed_input_size': False,
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD, 'first_conv': first_conv,
        'classifier': classifier, 'license': 'apache-2.0', 'paper_ids': 'arXiv:2403.09338', **kwargs,
    }


def input_channels(model: nn.Module) -> int:
    """Channels of the images ``model`` takes: the input channels of its first convolution (the module its timm
    ``pretrained_cfg['first_conv']`` names, else the first ``Conv2d``); 3 for a model without a convolution."""
    first_conv = (getattr(model, 'pretrained_cfg', None) or {}).get('first_conv')
    if isinstance(first_conv, str):
        with contextlib.suppress(AttributeError):
            named = model.get_submodule(first_conv)
            if isinstance(named, nn.Conv2d):
                return named.in_channels
    return next((module.in_channels for module in model.modules() if isinstance(module, nn.Conv2d)), 3)


def classifier_head(in_features: int, num_classes: int, model: nn.Module) -> nn.Module:
    """A new classifier (B, in_features) -> (B, num_classes), ``nn.Identity`` for 0 classes, on the device and in the
    dtype of ``model``'s parameters, as timm's models build the head of ``reset_classifier``."""
    if num_classes <= 0:
        return nn.Identity()
    like = next(model.parameters(), None)
    return nn.Linear(in_features, num_classes, device=getattr(like, 'device', None), dtype=getattr(like, 'dtype', None))


def keeping_a_fitting_head(checkpoint_filter_fn: CheckpointFilter, features_only: bool = False,
                           strict: bool = True) -> CheckpointFilter:
    """``checkpoint_filter_fn`` that also keeps a checkpoint's classifier when it has the model's class count.

    timm drops the classifier whenever the model's ``num_classes`` differs from the pretrained_cfg's (1000, the
    release's), so a user's own 10-class checkpoint (``pretrained_cfg_overlay=dict(file=...)``) lost its trained head
    in a 10-class model. When the head fits, the pretrained_cfg that timm is loading with (the model's own) takes the
    model's class count, which is then the truth about the weights loaded. A head of another class count than the
    model's, where timm would load strictly (the model keeps the pretrained_cfg's count), is refused in one line
    naming both counts (ValueError; torch's size mismatch before). The trunk (all but the classifier) must fit
    (`check_trunk_fits`), whether timm drops the classifier and loads the rest non-strictly (another class count, a
    ``features_only`` model) or loads strictly: a file of another model (LocalVMamba-S's for LocalVim-S, as the
    original README links it) is one ValueError, not layers left random nor torch's list of every key; with timm's
    ``pretrained_strict=False`` (``strict``), the user's own partial load, it is not checked."""
    def filter_fn(state_dict: dict, model: nn.Module) -> dict:
        state_dict = checkpoint_filter_fn(state_dict, model)
        cfg = getattr(model, 'pretrained_cfg', None) or {}
        if features_only:
            if strict:
                check_trunk_fits(state_dict, model, cfg.get('classifier'), cfg.get('first_conv'))
            return state_dict
        head = state_dict.get(f"{cfg.get('classifier')}.weight")
        num_classes = getattr(model, 'num_classes', None)
        if head is not None and head.dim() == 2 and head.shape[0] == num_classes != cfg.get('num_classes'):
            cfg['num_classes'] = num_classes
        elif head is not None and head.dim() == 2 and head.shape[0] != num_classes == cfg.get('num_classes'):
            raise ValueError(f'{type(model).__name__}: the pretrained classifier has {head.shape[0]} classes and this '
                             f'model {num_classes}: pass num_classes={head.shape[0]} to keep it, or the number of '
                             f'your classes to train a new one on the pretrained trunk')
        if strict:
            check_trunk_fits(state_dict, model, cfg.get('classifier'), cfg.get('first_conv'))
        return state_dict
    return filter_fn


def check_trunk_fits(state_dict: dict, model: nn.Module, classifier: Union[None, str, Sequence[str]],
                     first_conv: Union[None, str, Sequence[str]] = None) -> None:
    """Refuse (ValueError) pretrained weights that do not fit ``model`` apart from its ``classifier`` module(s): timm
    loads them with ``strict=False`` when the class counts differ, which left a checkpoint of another model or size
    silently unloaded (random weights) where a same-class-count load stops. A ``first_conv`` weight of another
    input-channel count is left to timm, which adapts it to the model's ``in_chans`` after this check."""
    heads = (classifier,) if isinstance(classifier, str) else tuple(classifier or ())
    input_convs = {f'{conv}.weight' for conv in ((first_conv,) if isinstance(first_conv, str) else first_conv or ())}

    def trunk(names):
        return [name for name in names if not any(name.startswith(f'{head}.') for head in heads)]

    def other_shape(name: str) -> bool:
        saved, wanted = state_dict[name].shape, own[name].shape
        if name in input_convs and len(saved) == len(wanted) > 1:   # (out, in, ...): timm adapts ``in``
            return saved[:1] + saved[2:] != wanted[:1] + wanted[2:]
        return saved != wanted

    own = model.state_dict()
    missing = trunk(name for name in own if name not in state_dict)
    unexpected = trunk(name for name in state_dict if name not in own)
    resized = trunk(name for name in own if name in state_dict and other_shape(name))
    problems = [f'{what} {", ".join(names[:3])}{", ..." if len(names) > 3 else ""} ({len(names)})'
                for what, names in (('missing', missing), ('unexpected', unexpected), ('other shapes', resized))
                if names]
    if problems:
        raise ValueError(f'{type(model).__name__}: the pretrained weights do not fit this model apart from its '
                         f'classifier: {"; ".join(problems)}: a checkpoint of another model or size (build the model '
                         f'as the checkpoint\'s was built)')


def _pretrained_file(kwargs: Mapping[str, Any]) -> Optional[str]:
    """The local file named by timm's ``pretrained_cfg_overlay`` or ``pretrained_cfg`` (``file``), if any; not the
    folder of a ``'local-dir:PATH'`` model (``source`` 'local-dir': a ``save_for_hf`` export, which timm reads)."""
    for cfg in (kwargs.get('pretrained_cfg_overlay'), kwargs.get('pretrained_cfg')):
        path = _cfg_field(cfg, 'file')
        if path and _cfg_field(cfg, 'source') != 'local-dir':
            return os.fspath(path)
    return None


def _cfg_field(cfg: Any, name: str) -> Any:
    """A field of a timm pretrained_cfg given as a dict or a ``PretrainedCfg`` (None when absent)."""
    return cfg.get(name) if isinstance(cfg, Mapping) else getattr(cfg, name, None)


def read_pretrained_file(variant: str, kwargs: Mapping[str, Any]) -> Optional[tuple[str, dict[str, Any]]]:
    """The local pretrained file of a ``create_model`` call (``kwargs``) and its checkpoint dict (tensors
    memory-mapped), read before timm reads it so that a missing, unreadable or foreign file ends in one
    :class:`CheckpointError` naming it; None without such a file, for a ``.safetensors`` file (tensors only, which
    timm reads), or when the file needs pickle (timm reads it as it can)."""
    path = _pretrained_file(kwargs)
    if path is None or (path.endswith('.safetensors') and os.path.isfile(path)):
        return None
    try:
        return path, load_checkpoint(path, mmap=True)
    except UnsafeCheckpointError:
        return None
    except CheckpointError as err:
        raise CheckpointError(f'{variant}: pretrained file: {err}') from None


def _stacklevel_of_caller() -> int:
    """``warnings.warn``'s stacklevel for the caller's first frame outside timm and this package: the line of the
    user's code that built the model."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(_LIBRARY_DIRS):
        frame, level = frame.f_back, level + 1
    return level


def warn_of_other_directions(model: nn.Module, checkpoint: Mapping[str, Any], path: str) -> None:
    """Warn when the file the model's weights came from (a training checkpoint) records other scan directions than
    the model's, or a search supernet's other candidates (as many): the weights load (same keys and shapes) and
    compute something else. A file that records none (released weights) is not checked."""
    other = directions_difference(model, checkpoint)
    if other is not None:
        warnings.warn(f'{path} was trained with other scan directions ({other}): build the model with the '
                      f'directions= of its run (its --directions file) to compute what it learned',
                      stacklevel=_stacklevel_of_caller())
    searched, own = checkpoint_candidates(checkpoint), getattr(model, 'candidates', None)
    if searched is not None and own is not None and tuple(searched) != tuple(own):
        warnings.warn(f'{path} is a search over other candidates ({", ".join(searched)} vs {", ".join(own)} here): '
                      f'build the model with the candidates= of its run, {list(searched)}',
                      stacklevel=_stacklevel_of_caller())


def warning_of_other_directions(filter_fn: CheckpointFilter, checkpoint: Mapping[str, Any],
                                path: str) -> CheckpointFilter:
    """``filter_fn`` that first calls :func:`warn_of_other_directions` with the model it loads into: the model
    itself, whose directions a ``features_only`` wrapper built after the load no longer shows."""
    def filter_fn_warning(state_dict: dict, model: nn.Module) -> dict:
        warn_of_other_directions(model, checkpoint, path)
        return filter_fn(state_dict, model)
    return filter_fn_warning


def checked_out_indices(name: str, out_indices: Sequence[int], count: int, unit: str) -> list[int]:
    """``out_indices`` as sorted non-negative indices below ``count`` (negative ones count from the end); a
    ValueError naming the model says which index does not exist or repeats."""
    absolute = [int(i) + count if int(i) < 0 else int(i) for i in out_indices]
    if not absolute:
        raise ValueError(f'{name}: out_indices is empty: name at least one of its {count} {unit}s')
    wrong = [i for i, a in zip(out_indices, absolute) if not 0 <= a < count]
    if wrong:
        raise ValueError(f'{name}: out_indices {tuple(out_indices)}: {wrong} out of range for its {count} {unit}s '
                         f'(0 to {count - 1}, or -1 to -{count} from the end)')
    if len(set(absolute)) != len(absolute):
        raise ValueError(f'{name}: out_indices {tuple(out_indices)} names a {unit} twice')
    return sorted(absolute)


def build_local_mamba(model_cls: type[nn.Module], variant: str, pretrained: bool,
                      checkpoint_filter_fn: CheckpointFilter, default_out_indices: Sequence[int],
                      feature_count: int, feature_unit: str, **kwargs: Any) -> nn.Module:
    """``build_model_with_cfg`` for a LocalMamba variant: pretrained weights (released ``{'state_dict': ...}`` files
    included) pass through ``checkpoint_filter_fn``; ``features_only`` uses ``forward_intermediates`` and takes
    ``default_out_indices`` unless ``out_indices`` is given (a list of ``feature_count`` layers or stages, the
    ``feature_unit``: checked and sorted by :func:`checked_out_indices`; the maps are not normalised; timm's
    ``feature_cls`` 'fx' and 'hook' work too; 'dict' and 'list' are refused, as for timm's ViT). A search supernet
    refuses ``directions``; a training checkpoint of other directions (or candidates) than the model's is loaded
    with a warning (`warn_of_other_directions`); a missing or unreadable local file is one `CheckpointError`. timm's
    ``device`` builds the model there (``'meta'``: no memory, no initialisation), ``dtype`` casts it once built."""
    if variant in SUPERNET_FINAL_MODELS and kwargs.get('directions') is not None:
        raise ValueError(supernet_directions_error(variant))
    if kwargs.get('features_only') and kwargs.get('feature_cls') in ('dict', 'list'):
        raise ValueError(f"{variant}: features_only with feature_cls={kwargs['feature_cls']!r} needs the feature "
                         f"layers as top-level children, which these models nest; use the default (forward_"
                         f"intermediates: NCHW maps, not normalised), or feature_cls='fx' / 'hook' (the layers' raw "
                         f"outputs)")
    if kwargs.get('features_only') and isinstance(kwargs.get('out_indices'), Sequence):
        kwargs['out_indices'] = tuple(checked_out_indices(variant, kwargs['out_indices'], feature_count, feature_unit))
    device, dtype = kwargs.pop('device', None), kwargs.pop('dtype', None)
    if pretrained and device is not None and torch.device(device).type == 'meta':
        raise ValueError(f"{variant}: pretrained weights cannot load into a model on the 'meta' device, which holds no "
                         f"values; build it on another device, or without pretrained=True")
    filter_fn = keeping_a_fitting_head(checkpoint_filter_fn, bool(kwargs.get('features_only')),
                                       kwargs.get('pretrained_strict', True))
    pretrained_file = read_pretrained_file(variant, kwargs) if pretrained else None
    if pretrained_file is not None:
        filter_fn = warning_of_other_directions(filter_fn, pretrained_file[1], pretrained_file[0])
    with torch.device(device) if device is not None else contextlib.nullcontext():
        model = build_model_with_cfg(
            model_cls, variant, pretrained, pretrained_filter_fn=filter_fn,
            feature_cfg=dict(feature_cls='getter', out_indices=tuple(default_out_indices)),
            **kwargs)
    return model if dtype is None else model.to(dtype)
