"""LocalVim and LocalVMamba as dense-prediction backbones, built on the classification models' public API.

A backbone builds its classification model (the *trunk*) with the public constructor, drops the classifier and the
final norm with timm's ``prune_intermediate_layers``, and takes its features from ``forward_intermediates``; it adds
one LayerNorm per output, named as the original det/seg code names them: ``outnorm_{j}`` for LocalVim (j = position in
``out_indices``) and ``outnorm{i}`` for LocalVMamba (i = stage index). The backbone owns the trunk's parts (the very
modules and parameters the trunk runs) under their own names rather than under a ``trunk.`` prefix, so its
``state_dict`` keys and parameter names are those of the original backbones and det/seg checkpoints load unchanged.

Pretrained classification weights are read safely (``weights_only``; a file that needs pickle is refused unless
``trust_checkpoint=True``) and loaded in ``init_weights``, as mmdet/mmseg backbones do; a URL is downloaded once per
node of a distributed run. Needs torch and timm; log lines go to mmengine's current logger when mmengine is
installed.
"""
from __future__ import annotations

import contextlib
import inspect
import logging
import os
import re
from collections import Counter
from typing import Any, Iterable, Iterator, Mapping, NamedTuple, Optional, Sequence, Union

import torch
from torch import nn

from ..common import CheckpointError, UnsafeCheckpointError, load_checkpoint_on_all_ranks, state_dict_from
from ..common.suggest import did_you_mean
from ..models.directions import DirectionsArg, directions_difference, directions_source_warnings
from ..models.factory import checked_out_indices
from ..models.local_vim import VisionMamba, checkpoint_filter_fn
from ..models.local_vmamba import VSSM

__all__ = ['MM_LocalVim', 'MM_LocalVSSM', 'BackboneSettingError', 'register']

logger = logging.getLogger(__name__)


def _log(message: str, level: int = logging.INFO) -> None:
    """A line in mmengine's current log (the Runner's) when mmengine is installed, else in this module's logger."""
    try:
        from mmengine.logging import print_log
    except ImportError:
        logger.log(level, message)
        return
    print_log(message, logger='current', level=level)


class BackboneSettingError(ValueError):
    """A setting a backbone cannot be built with (a directions table or file that does not fit, out_indices out of
    range, ...), named in the message; the det/seg tools report it in one line."""


@contextlib.contextmanager
def _settings_checked() -> Iterator[None]:
    """Turn the ValueError or FileNotFoundError of a setting refused while a backbone is built into a
    :class:`BackboneSettingError` of the same message."""
    try:
        yield
    except (ValueError, FileNotFoundError) as err:
        raise BackboneSettingError(str(err)) from err


def _refuse_unknown_settings(backbone: type, trunk: type, settings: Mapping[str, Any]) -> None:
    """Refuse the ``settings`` (the keyword arguments a backbone passes on to its classification model) that neither
    the backbone nor the model takes, a misspelt key of the config's ``model.backbone``, naming the close matches;
    the model's TypeError was a traceback."""
    taken = sorted({name for cls in (backbone, trunk)
                    for name, param in inspect.signature(cls.__init__).parameters.items()
                    if name != 'self' and param.kind not in (param.VAR_KEYWORD, param.VAR_POSITIONAL)})
    for key in settings:
        if key not in taken:
            raise ValueError(f'{backbone.__name__} does not take {key!r}{did_you_mean(key, taken)}')


def _index_list(out_indices: Union[int, Sequence[int]]) -> Sequence[int]:
    """``out_indices`` as a sequence: one index may be given as an int, as OpenMMLab's backbones take it (not timm's
    'the last n')."""
    return [out_indices] if isinstance(out_indices, int) else out_indices


def _require_directions(directions: DirectionsArg, name: str) -> DirectionsArg:
    if directions is None:
        raise ValueError(f'{name} needs directions= (one list per layer/block, or a directions file)')
    return directions


def _note_directions_source(directions: DirectionsArg, name: str, family: str, trunk: nn.Module) -> None:
    """Log a warning for each thing a directions file (``directions=`` a path) says of its search that does not fit
    the backbone (another family's supernet, another LocalVMamba stage split, an unfinished search), as training
    the classification model with ``--directions`` does."""
    if isinstance(directions, (str, os.PathLike)):
        for message in directions_source_warnings(directions, name, family, getattr(trunk, 'depths', None)):
            _log(message, logging.WARNING)


def missing_pretrained_message(backbone: str, path: str, key: str) -> Optional[str]:
    """The error for a backbone's pretrained file that does not exist (None when it does, or is a URL); ``key``
    names the setting that holds ``path``, e.g. 'model.backbone.pretrained'."""
    if path.startswith(('http://', 'https://')) or os.path.isfile(path):
        return None
    return (f'{backbone}: pretrained checkpoint not found: {path} (set {key} to your file, or to None to start from '
            f'random weights)')


# The keys of mmengine's ``init_cfg=dict(type='Pretrained', ...)`` a backbone takes (map_location: the file is always
# read to the CPU, and the Runner moves the model).
PRETRAINED_INIT_KEYS = ('type', 'checkpoint', 'prefix', 'map_location')


def init_cfg_message(backbone: str, init_cfg: Any, where: str = '') -> Optional[str]:
    """The error for an ``init_cfg`` other than mmengine's ``dict(type='Pretrained', checkpoint=FILE)`` (with
    ``prefix`` / ``map_location`` if wanted; ``checkpoint=None``: no file, as ``pretrained=None``), None for that one
    or None; ``where`` goes before the name."""
    if init_cfg is None or (isinstance(init_cfg, Mapping) and init_cfg.get('type') == 'Pretrained'
                            and 'checkpoint' in init_cfg and set(init_cfg) <= set(PRETRAINED_INIT_KEYS)):
        return None
    return (f"{backbone}: {where}init_cfg={init_cfg!r}: the backbone starts from its classification model's "
            f"initialisation, and the one init_cfg it takes is dict(type='Pretrained', checkpoint=FILE) (with prefix= "
            f"and map_location= if wanted); or give pretrained=FILE")


def pretrained_files(settings: Mapping[str, Any]) -> dict[str, str]:
    """The pretrained files a backbone's settings (its keyword arguments) name, by setting: mmengine's
    ``pretrained``, the original's ``pretrained_ckpt`` and ``init_cfg.checkpoint``; unset ones left out."""
    init_cfg = settings.get('init_cfg')
    files = {'pretrained': settings.get('pretrained'), 'pretrained_ckpt': settings.get('pretrained_ckpt'),
             'init_cfg.checkpoint': init_cfg.get('checkpoint') if isinstance(init_cfg, Mapping) else None}
    return {setting: path for setting, path in files.items() if path}


def two_pretrained_message(backbone: str, files: Mapping[str, str], where: str = '') -> Optional[str]:
    """The error for a backbone given different files by two of its settings (``pretrained_files``; None
    otherwise); ``where`` goes before each setting's name, e.g. 'model.backbone.'."""
    if len(set(files.values())) < 2:
        return None
    named = ' and '.join(f'{where}{setting}={path!r}' for setting, path in files.items())
    return f'{backbone}: pass one of {named} (set the other{"s" if len(files) > 2 else ""} to None)'


# The layer (LocalVim) or stage and block (LocalVMamba) a trunk weight belongs to.
_BLOCK_KEY = re.compile(r'^layers\.(\d+)(?:\.blocks\.(\d+))?\.')


def _layer_layout(keys: Iterable[str]) -> str:
    """The depth that the weight names ``keys`` describe: ``depth 12`` (layers), or ``depths (2, 2, 9, 2)`` (blocks
    per stage)."""
    found = {(int(m.group(1)), m.group(2)) for m in map(_BLOCK_KEY.match, keys) if m}
    blocks = Counter(stage for stage, block in found if block is not None)
    if not blocks:
        return f'depth {len(found)}'
    return f'depths {tuple(blocks[stage] for stage in range(max(stage for stage, _ in found) + 1))}'


def _prefix_of_own_keys(weights: Mapping[str, Any], own: Mapping[str, Any]) -> Optional[str]:
    """The first part of the weights' names (with its dot, e.g. 'backbone.' of a det/seg checkpoint) under which some
    are ``own`` names; None when there is none."""
    for prefix in dict.fromkeys(name.split('.', 1)[0] + '.' for name in weights if '.' in name):
        if any(name.startswith(prefix) and name[len(prefix):] in own for name in weights):
            return prefix
    return None


def _pretrained_source(backbone: str, pretrained: Optional[str], pretrained_ckpt: Optional[str],
                       init_cfg: Optional[Mapping[str, Any]]) -> tuple[Optional[str], str, str]:
    """The classification weights a config names (by mmengine's ``pretrained``, the original's ``pretrained_ckpt`` or
    ``init_cfg=dict(type='Pretrained', checkpoint=...)``), the setting that names them and the key prefix of the
    tensors to take (``init_cfg``'s ``prefix``, ending in a dot as mmengine makes it; '' for all); another
    ``init_cfg`` and two different files are refused (ValueError)."""
    files = pretrained_files(dict(pretrained=pretrained, pretrained_ckpt=pretrained_ckpt, init_cfg=init_cfg))
    problem = init_cfg_message(backbone, init_cfg) or two_pretrained_message(backbone, files)
    if problem:
        raise ValueError(problem)
    setting, path = next(iter(files.items()), ('pretrained', None))
    prefix = (init_cfg or {}).get('prefix') or ''
    return path, setting, prefix if not prefix or prefix.endswith('.') else f'{prefix}.'


def _freeze_unused(backbone: str, unit: str, last: int, unused: Iterable[nn.Module]) -> None:
    """Set ``requires_grad=False`` on the parameters of the ``unused`` modules: those after the last output (layer or
    stage ``last``), which the forward never runs. They stay in the state_dict (checkpoints of every ``out_indices``
    load alike), but DistributedDataParallel, which mmengine builds with ``find_unused_parameters=False``, would stop
    on the second iteration on parameters that got no gradient in the first."""
    params = [p for module in unused for p in module.parameters()]
    for param in params:
        param.requires_grad_(False)
    if params:
        _log(f'{backbone}: the parts after {unit} {last} (the last of out_indices) are not run: their '
             f'{sum(p.numel() for p in params)} parameters are frozen (requires_grad=False)')


class BackboneMaps(NamedTuple):
    """The maps a backbone config gives: the ``unit`` ('layer' or 'stage') indices they come from, in the order the
    backbone returns them, their channels, and their strides (input pixels per map pixel; None where the patch size
    is not an int, which the backbone refuses when it is built)."""
    indices: list[int]
    channels: list[int]
    unit: str
    strides: Optional[list[int]] = None


def _default(cls: type, name: str) -> Any:
    """The default of ``cls``'s constructor argument ``name``."""
    return inspect.signature(cls.__init__).parameters[name].default


def backbone_maps(backbone: str, settings: Mapping[str, Any]) -> Optional[BackboneMaps]:
    """The maps that the backbone ``backbone`` ('MM_LocalVim' or 'MM_LocalVSSM') built with ``settings`` (its config)
    gives, found without building it; None for settings it refuses (it names them when it is built)."""
    if backbone == 'MM_LocalVim':
        cls, unit = MM_LocalVim, 'layer'
        count = settings.get('depth', _default(VisionMamba, 'depth'))
        width = settings.get('embed_dim', _default(VisionMamba, 'embed_dim'))
        widths = [width] * count if isinstance(count, int) else []
        patch = settings.get('patch_size', _default(VisionMamba, 'patch_size'))
        strides = [patch] * len(widths)     # every layer on the patch grid
    elif backbone == 'MM_LocalVSSM':
        cls, unit = MM_LocalVSSM, 'stage'
        depths = settings.get('depths', _default(VSSM, 'depths'))
        dims = settings.get('dims', _default(VSSM, 'dims'))
        count = len(depths) if isinstance(depths, Sequence) else 0
        widths = [dims * 2 ** i for i in range(count)] if isinstance(dims, int) else list(dims)
        patch = settings.get('patch_size', _default(VSSM, 'patch_size'))
        strides = [patch * 2 ** i for i in range(count)] if isinstance(patch, int) else []   # each merge halves
    else:
        return None
    if not widths or len(widths) != count or not all(isinstance(w, int) for w in widths):
        return None
    try:
        indices = checked_out_indices(backbone, _index_list(settings.get('out_indices', _default(cls, 'out_indices'))),
                                      count, unit)
    except (TypeError, ValueError):
        return None
    known_strides = isinstance(patch, int) and not isinstance(patch, bool) and patch > 0
    return BackboneMaps(indices, [widths[i] for i in indices], unit,
                        [strides[i] for i in indices] if known_strides else None)


class DenseBackbone(nn.Module):
    """A classification trunk without its classifier and final norm, whose parts this module owns under their own
    names, plus the loading of pretrained classification weights in ``init_weights``.

    Subclasses add their output norms and a ``forward`` on ``self.trunk.forward_intermediates``.
    """

    def __init__(self, trunk: nn.Module, pretrained: Optional[str], pretrained_arg: str,
                 pretrained_key: Optional[str], trust_checkpoint: bool, pretrained_prefix: str = ''):
        super().__init__()
        trunk.prune_intermediate_layers(prune_norm=True, prune_head=True)   # default indices keep every layer
        for name, module in trunk.named_children():
            self.add_module(name, module)
        for name, param in trunk.named_parameters(recurse=False):
            self.register_parameter(name, param)
        for name, buffer in trunk.named_buffers(recurse=False):
            self.register_buffer(name, buffer)
        self._trunk = (trunk,)      # not a child: its parts are registered above, so they are not saved twice
        self._trunk_tensors = [name for name, _ in trunk.named_parameters(recurse=False)] + [
            name for name, _ in trunk.named_buffers(recurse=False)]
        self.pretrained = pretrained
        self.pretrained_arg = pretrained_arg     # the argument that named it, for errors
        self.pretrained_key = pretrained_key
        self.pretrained_prefix = pretrained_prefix   # take only the tensors under it (init_cfg's prefix)
        self.trust_checkpoint = trust_checkpoint
        self.load_result: Optional[Any] = None

    @property
    def trunk(self) -> nn.Module:
        """The classification model whose parts this backbone owns, its own parameters and buffers (LocalVim's
        ``pos_embed``) set to the backbone's current ones: ``load_state_dict(assign=True)``, ``to_empty`` and
        conversions that make new tensors replace them on the backbone only."""
        trunk = self._trunk[0]
        for name in self._trunk_tensors:
            current = getattr(self, name)
            if getattr(trunk, name) is not current:
                setattr(trunk, name, current)
        return trunk

    def adapt_state_dict(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Turn classification weights into weights for this backbone (the trunk's ``checkpoint_filter_fn``); a
        ValueError names what keeps them from this backbone (the file's name is put before it)."""
        return state_dict

    def load_pretrained(self, path: str, key: Optional[str] = None) -> Any:
        """Load classification weights from a file or URL (``key``: container entry, e.g. 'ema_model'; default: the
        first of 'state_dict', 'model', 'ema_model'); with ``pretrained_prefix``, its tensors under that prefix, which
        is cut off (e.g. 'backbone.' of a det/seg checkpoint). Missing and unexpected keys are logged by name and
        returned. In a distributed run every process calls it (as ``init_weights`` runs on all of them), and a URL
        is downloaded once per node."""
        name = type(self).__name__
        missing = missing_pretrained_message(name, path, f"the backbone's {self.pretrained_arg}")
        if missing:
            raise CheckpointError(missing)
        try:
            checkpoint = load_checkpoint_on_all_ranks(path, trust=self.trust_checkpoint)
        except UnsafeCheckpointError:
            raise UnsafeCheckpointError(
                f'{path} holds pickled objects beyond tensors and plain containers, and loading it could run code; if '
                f'you trust its source, pass --trust-checkpoint to the det/seg tools (for that command only) or build '
                f'the backbone with trust_checkpoint=True') from None
        weights = state_dict_from(checkpoint, key, source=path)
        if self.pretrained_prefix:
            weights = {name[len(self.pretrained_prefix):]: value for name, value in weights.items()
                       if name.startswith(self.pretrained_prefix)}
            if not weights:
                raise CheckpointError(f'{path}: none of its tensors is under the init_cfg prefix '
                                      f'{self.pretrained_prefix!r}')
        try:
            weights = self.adapt_state_dict(weights)
        except ValueError as err:   # weights of a model this backbone is not built as
            raise CheckpointError(f'{path}: {err}') from None
        self.check_fit(weights, path)
        result = self.load_state_dict(weights, strict=False)
        _log(f'{name}: loaded {len(weights) - len(result.unexpected_keys)} tensors from {path}')
        other = directions_difference(self.trunk, checkpoint)
        if other is not None:
            _log(f"{name}: {path} was trained with other scan directions ({other}): its weights fine-tune this "
                 f"backbone's directions (set the backbone's directions= to its run's directions.yaml to keep "
                 f"them)", logging.WARNING)
        if result.missing_keys:
            _log(f'missing keys (left as initialised): {result.missing_keys}')
        if result.unexpected_keys:
            _log(f'unexpected keys (ignored): {result.unexpected_keys}')
        self.load_result = result
        return result

    def check_fit(self, weights: dict[str, torch.Tensor], path: str) -> None:
        """Refuse (:class:`CheckpointError`) weights of another model: none of their names is one of this backbone's,
        they hold another number of layers or blocks (the rest would stay initialised, or be dropped), or some tensor
        has another shape than here (torch would stop with a long RuntimeError)."""
        name = type(self).__name__
        own = self.state_dict()
        common = [k for k in weights if k in own]
        if not common:
            shown = f' ({", ".join(list(weights)[:3])}, ...)' if weights else ''
            prefix = _prefix_of_own_keys(weights, own)
            hint = (f"its tensors under {prefix!r} are {name}'s: take them with init_cfg=dict(type='Pretrained', "
                    f"checkpoint=..., prefix={prefix!r})" if prefix else 'a checkpoint of another model family?')
            raise CheckpointError(f'{path}: none of its {len(weights)} tensors{shown} belongs to {name}: {hint}')
        theirs, ours = _layer_layout(weights), _layer_layout(own)
        if theirs != ours:
            raise CheckpointError(f'{path} holds a model of {theirs}, {name} has {ours}: build the backbone as the '
                                  f'checkpoint\'s model was built (its depth / depths)')
        resized = [k for k in common if weights[k].shape != own[k].shape]
        if resized:
            shown = '; '.join(f'{k}: checkpoint {tuple(weights[k].shape)}, backbone {tuple(own[k].shape)}'
                              for k in resized[:3])
            more = f' and {len(resized) - 3} more' if len(resized) > 3 else ''
            raise CheckpointError(f'{path}: {len(resized)} tensors do not fit {name}\'s shapes ({shown}{more}); build '
                                  f'the backbone as the checkpoint\'s model was built (patch_size, embed_dim, depth, '
                                  f'dims, ...)')

    def init_weights(self) -> None:
        """Called by the mmengine Runner before training: load ``pretrained`` if set; the weights are otherwise
        those set at construction."""
        if self.pretrained:
            self.load_pretrained(self.pretrained, self.pretrained_key)
        self.is_init = True


class MM_LocalVim(DenseBackbone):
    """LocalVim backbone: LayerNorm'd mixer outputs of the layers in ``out_indices`` (a list, or one index as an
    int), all at stride 16.

    Returns one NCHW map (B, embed_dim, ceil(H/16), ceil(W/16)) when ``out_indices`` has one entry (what SimpleFPN
    takes) and ``bare_single_map`` (mmdet's registration), else a list (mmseg's: its heads pick their input from a
    list by ``in_index``, and would index a bare map's batch). Other keyword arguments are those of
    :class:`~classification.models.local_vim.VisionMamba`. Position tables are resized to the input's token grid on
    the fly, so any input size works. ``use_checkpoint`` recomputes each layer in the backward instead of keeping its
    activations (as ``MM_LocalVSSM``'s does per block): less memory for ViTDet's 1024x1024 inputs, more time.
    """

    bare_single_map = True

    def __init__(self, out_indices: Union[int, Sequence[int]] = (4, 9, 14, 19), pretrained_ckpt: Optional[str] = None,
                 pretrained: Optional[str] = None, pretrained_key: Optional[str] = None,
                 directions: DirectionsArg = None, trust_checkpoint: bool = False, use_checkpoint: bool = False,
                 init_cfg: Optional[Mapping[str, Any]] = None, **kwargs: Any):
        with _settings_checked():
            _refuse_unknown_settings(MM_LocalVim, VisionMamba, kwargs)
            weights, weights_arg, prefix = _pretrained_source('MM_LocalVim', pretrained, pretrained_ckpt, init_cfg)
            trunk = VisionMamba(num_classes=0, directions=_require_directions(directions, 'MM_LocalVim'), **kwargs)
            _note_directions_source(directions, 'MM_LocalVim', 'LocalVim', trunk)
            trunk.set_grad_checkpointing(use_checkpoint)
            # In layer order, as the original collects them (outnorm_j belongs to the j-th chosen layer from the
            # input).
            checked_indices = checked_out_indices('MM_LocalVim', _index_list(out_indices), trunk.depth,
                                                  'layer')
        super().__init__(trunk, weights, weights_arg, pretrained_key, trust_checkpoint, prefix)
        self.out_indices = checked_indices
        _freeze_unused('MM_LocalVim', 'layer', max(checked_indices), self.layers[max(checked_indices) + 1:])
        for j in range(len(self.out_indices)):
            self.add_module(f'outnorm_{j}', nn.LayerNorm(trunk.embed_dim))

    def adapt_state_dict(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Resize ``pos_embed`` and the RoPE tables of a 14x14 (or any square) checkpoint to this model's grid;
        weights of a model with a middle class token for a backbone without one, or the other way round, are refused
        (their position tables hold another number of tokens)."""
        if 'patch_embed.proj.weight' not in state_dict:   # not a LocalVim's weights: check_fit names them
            return checkpoint_filter_fn(state_dict, self.trunk)
        has_cls_token = 'cls_token' in state_dict
        if has_cls_token and not self.trunk.has_cls_token:
            raise ValueError("its model has a middle class token (cls_token) and MM_LocalVim has none: build the "
                             "backbone as the checkpoint's model was built (if_cls_token=True, "
                             "use_middle_cls_token=True, if_rope=False)")
        if self.trunk.has_cls_token and not has_cls_token:
            raise ValueError("its model has no class token and MM_LocalVim has one: build the backbone as the "
                             "checkpoint's model was built (if_cls_token=False)")
        return checkpoint_filter_fn(state_dict, self.trunk)

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, list[torch.Tensor]]:
        grid = self.trunk.token_grid(*x.shape[-2:])
        feats = self.trunk.forward_intermediates(x, self.out_indices, output_fmt='NLC', intermediates_only=True)
        outs = [getattr(self, f'outnorm_{j}')(f).transpose(1, 2).unflatten(2, grid).contiguous()
                for j, f in enumerate(feats)]
        return outs[0] if len(outs) == 1 and self.bare_single_map else outs


class MM_LocalVSSM(DenseBackbone):
    """LocalVMamba backbone: LayerNorm'd outputs of the stages in ``out_indices`` (a list, or one index as an int),
    before their downsampling.

    Stage i gives (B, dims[i], h_i, w_i) (strides 4/8/16/32): h_0 = floor(H / 4), each later stage ceil(h_{i-1} / 2)
    (the same for w). Other keyword arguments are those of
    :class:`~classification.models.local_vmamba.VSSM`; ``mlp_ratio``, ``downsample_version`` and
    ``patchembed_version`` are accepted for the original configs and must keep the only values it supports.
    """

    def __init__(self, out_indices: Union[int, Sequence[int]] = (0, 1, 2, 3), pretrained: Optional[str] = None,
                 pretrained_ckpt: Optional[str] = None, pretrained_key: Optional[str] = None,
                 directions: DirectionsArg = None, mlp_ratio: float = 0.0, downsample_version: str = 'v1',
                 patchembed_version: str = 'v1', trust_checkpoint: bool = False,
                 init_cfg: Optional[Mapping[str, Any]] = None, **kwargs: Any):
        with _settings_checked():
            _refuse_unknown_settings(MM_LocalVSSM, VSSM, kwargs)
            if mlp_ratio != 0.0 or downsample_version != 'v1' or patchembed_version != 'v1':
                raise ValueError('LocalVMamba has no MLP and v1 patch embedding/merging: mlp_ratio must be 0.0 and '
                                 f"the versions 'v1', got {mlp_ratio}, {downsample_version!r}, {patchembed_version!r}")
            weights, weights_arg, prefix = _pretrained_source('MM_LocalVSSM', pretrained, pretrained_ckpt, init_cfg)
            trunk = VSSM(num_classes=0, directions=_require_directions(directions, 'MM_LocalVSSM'), **kwargs)
            _note_directions_source(directions, 'MM_LocalVSSM', 'LocalVMamba', trunk)
            checked_indices = checked_out_indices('MM_LocalVSSM', _index_list(out_indices), len(trunk.dims),
                                                  'stage')
        super().__init__(trunk, weights, weights_arg, pretrained_key, trust_checkpoint, prefix)
        self.out_indices = checked_indices
        last = max(checked_indices)
        _freeze_unused('MM_LocalVSSM', 'stage', last, [self.layers[last].downsample, *self.layers[last + 1:]])
        for i in self.out_indices:
            self.add_module(f'outnorm{i}', nn.LayerNorm(trunk.dims[i]))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = self.trunk.forward_intermediates(x, self.out_indices, output_fmt='NHWC', intermediates_only=True)
        return [getattr(self, f'outnorm{i}')(f).permute(0, 3, 1, 2).contiguous()
                for i, f in zip(self.out_indices, feats)]


class MM_LocalVimMapList(MM_LocalVim):
    """``MM_LocalVim`` whose one ``out_indices`` entry still gives a list of one map: mmseg's, under that name."""
    bare_single_map = False


def register(registry: Any, bare_single_map: bool = True) -> None:
    """Register both backbones in an mmengine ``Registry``: mmdet's ``MODELS``, or mmseg's with not
    ``bare_single_map`` (``MM_LocalVim`` is then :class:`MM_LocalVimMapList`)."""
    registry.register_module(name='MM_LocalVim', module=MM_LocalVim if bare_single_map else MM_LocalVimMapList)
    registry.register_module(module=MM_LocalVSSM)
