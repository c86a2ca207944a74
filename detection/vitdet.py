"""The ViTDet pieces the LocalVim detection configs use: ``LN2d``, ``SimpleFPN``, ``LayerDecayOptimizerConstructor``
and ``Fp16CompresssionHook`` (sic, the name the configs use). mmdet 3.3.0 keeps these in its ``projects/`` folder,
which its package does not install, so they are provided here and registered in mmdet's registries."""
from __future__ import annotations

import json
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from mmcv.cnn import ConvModule, build_norm_layer
from mmengine.dist import get_dist_info
from mmengine.hooks import Hook
from mmengine.logging import MMLogger
from mmengine.model import BaseModule
from mmengine.optim import DefaultOptimWrapperConstructor
from timm.layers import LayerNorm2d
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from mmdet.registry import HOOKS, MODELS, OPTIM_WRAPPER_CONSTRUCTORS

__all__ = ['LN2d', 'SimpleFPN', 'LayerDecayOptimizerConstructor', 'Fp16CompresssionHook']


@MODELS.register_module()
class LN2d(LayerNorm2d):
    """LayerNorm over the channels of an NCHW map: timm's ``LayerNorm2d`` under the name the configs'
    ``norm_cfg=dict(type='LN2d')`` give. mmcv's ``build_norm_layer`` builds it with eps 1e-5, as it built the
    original's (whose own default, 1e-6, that call overrides). ``_abbr_`` keeps the attribute name mmcv's
    ``build_norm_layer`` gives the layer, so its state_dict keys, those of ViTDet's own LN2d (``norm_layer``, not
    ``ln``)."""

    _abbr_ = 'norm_layer'


@MODELS.register_module()
class SimpleFPN(BaseModule):
    """ViTDet's pyramid from one stride-16 map: strides 4, 8, 16 and 32 from two deconvolutions, the map itself and a
    max-pool, each through a 1x1 lateral and a 3x3 output conv; extra levels by stride-2 subsampling of the last.

    ``backbone_channel`` C is the input width; ``in_channels`` must be [C/4, C/2, C, C].
    """

    def __init__(self, backbone_channel: int, in_channels: Sequence[int], out_channels: int, num_outs: int,
                 conv_cfg: Optional[dict] = None, norm_cfg: Optional[dict] = None, act_cfg: Optional[dict] = None,
                 init_cfg: Optional[Any] = None):
        super().__init__(init_cfg=init_cfg)
        width = backbone_channel
        expected = [width // 4, width // 2, width, width]
        if list(in_channels) != expected:
            raise ValueError(f'SimpleFPN: in_channels must be {expected} for backbone_channel={width}, '
                             f'got {list(in_channels)}')
        self.backbone_channel = width
        self.in_channels = list(in_channels)
        self.out_channels = out_channels
        self.num_ins = len(in_channels)
        self.num_outs = num_outs
        self.fpn1 = nn.Sequential(
            nn.ConvTranspose2d(width, width // 2, 2, 2),
            build_norm_layer(norm_cfg, width // 2)[1],
            nn.GELU(),
            nn.ConvTranspose2d(width // 2, width // 4, 2, 2))
        self.fpn2 = nn.Sequential(nn.ConvTranspose2d(width, width // 2, 2, 2))
        self.fpn3 = nn.Sequential(nn.Identity())
        self.fpn4 = nn.Sequential(nn.MaxPool2d(kernel_size=2, stride=2))
        conv_args = dict(conv_cfg=conv_cfg, norm_cfg=norm_cfg, act_cfg=act_cfg, inplace=False)
        self.lateral_convs = nn.ModuleList(ConvModule(c, out_channels, 1, **conv_args) for c in in_channels)
        self.fpn_convs = nn.ModuleList(ConvModule(out_channels, out_channels, 3, padding=1, **conv_args)
                                       for _ in in_channels)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        levels = [self.fpn1(x), self.fpn2(x), self.fpn3(x), self.fpn4(x)]
        outs = [out_conv(lateral(level))
                for level, lateral, out_conv in zip(levels, self.lateral_convs, self.fpn_convs)]
        while len(outs) < self.num_outs:
            outs.append(F.max_pool2d(outs[-1], 1, stride=2))
        return tuple(outs)


def layer_id(name: str, num_layers: int, layer_key: str = 'blocks') -> int:
    """Layer index for layer-wise lr decay: 0 for the backbone's patch/position embeddings, i + 1 for
    ``backbone.<layer_key>.<i>.*``, ``num_layers + 1`` for everything else (neck and heads included)."""
    if name.startswith('backbone.'):
        if 'patch_embed' in name or 'pos_embed' in name:
            return 0
        prefix = f'backbone.{layer_key}.'
        if name.startswith(prefix):
            return int(name[len(prefix):].split('.')[0]) + 1
    return num_layers + 1


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class LayerDecayOptimizerConstructor(DefaultOptimWrapperConstructor):
    """Layer-wise learning-rate decay: a parameter of layer id ``k`` gets ``lr * decay_rate ** (num_layers + 1 - k)``.

    ``paramwise_cfg``: ``num_layers``, ``decay_rate``, ``decay_type`` ('layer_wise', the only one), ``layer_key``.
    Weight decay is 0 for ``pos_embed`` and for norm parameters under ``backbone.<layer_key>``. Groups are named as
    the original's: ``layer_<id>_decay``, ``layer_<id>_no_decay`` (norms), ``layer_<id>_no_decay_pos_embed``.

    The default ``layer_key='blocks'`` is the rule of the original LocalVim configs (ViT naming). LocalVim names its
    layers ``layers``, so with it every backbone layer, the neck and the heads get scale 1 and only the patch and
    position embeddings get ``decay_rate ** (num_layers + 1)``, and only ``pos_embed`` escapes weight decay; this
    reproduces the original's training. Set ``layer_key='layers'`` and ``num_layers=<depth>`` for a real per-layer
    decay of LocalVim.
    """

    def add_params(self, params: list[dict], module: nn.Module, **kwargs: Any) -> None:
        cfg = dict(self.paramwise_cfg)
        num_layers = cfg.pop('num_layers')
        decay_rate = cfg.pop('decay_rate')
        layer_key = cfg.pop('layer_key', 'blocks')
        decay_type = cfg.pop('decay_type', 'layer_wise')
        if decay_type != 'layer_wise' or cfg:
            raise ValueError(f"LayerDecayOptimizerConstructor supports decay_type='layer_wise' and the keys "
                             f"num_layers, decay_rate, layer_key; got {self.paramwise_cfg}")
        groups: dict[str, dict] = {}
        for name, param in module.named_parameters():
            if not param.requires_grad:
                continue
            if name.startswith(f'backbone.{layer_key}') and 'norm' in name:
                kind = 'no_decay'
            elif 'pos_embed' in name:
                kind = 'no_decay_pos_embed'
            else:
                kind = 'decay'
            lid = layer_id(name, num_layers, layer_key)
            group_name = f'layer_{lid}_{kind}'
            if group_name not in groups:
                scale = decay_rate ** (num_layers + 1 - lid)
                groups[group_name] = dict(params=[], param_names=[], lr_scale=scale, group_name=group_name,
                                          lr=scale * self.base_lr, weight_decay=self.base_wd if kind == 'decay' else 0.)
            groups[group_name]['params'].append(param)
            groups[group_name]['param_names'].append(name)
        if get_dist_info()[0] == 0:
            summary = {k: {f: v[f] for f in ('lr_scale', 'lr', 'weight_decay', 'param_names')}
                       for k, v in groups.items()}
            MMLogger.get_current_instance().info(f'layer-decay parameter groups: {json.dumps(summary, indent=1)}')
        params.extend(groups.values())


@HOOKS.register_module()
class Fp16CompresssionHook(Hook):
    """Compress DDP gradient all-reduce to fp16 when the model is wrapped in DistributedDataParallel (mmengine's
    ``MMDistributedDataParallel``, the default, or one a ``model_wrapper_cfg`` asks for, e.g. to set
    ``find_unused_parameters``), as the original hook does; other wrappers (FSDP, ...) are left alone."""

    def before_train(self, runner: Any) -> None:
        if runner.distributed and isinstance(runner.model, DistributedDataParallel):
            from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import fp16_compress_hook
            runner.model.register_comm_hook(state=None, hook=fp16_compress_hook)
            runner.logger.info('DDP gradients are all-reduced in fp16')
