"""LocalVim and LocalVMamba as dense-prediction backbones, shared by the mmdet and mmseg plugins.

The classes subclass the classification models, so their ``state_dict`` keys are the classification keys (minus the
classifier) plus one LayerNorm per output, named as the original det/seg code names them: ``outnorm_{j}`` for
LocalVim (j = position in ``out_indices``) and ``outnorm{i}`` for LocalVMamba (i = stage index). This module needs
torch, timm and mmengine (for logging), not mmdet or mmseg; :func:`register` puts the classes in a framework's
registry.
"""
from __future__ import annotations

import os
import pickle
from typing import Any, Mapping, Optional, Sequence, Union

import torch
from mmengine.logging import print_log
from torch import nn

from classification.models.directions import DirectionsArg
from classification.models.loading import extract_state_dict
from classification.models.local_vim import VisionMamba, checkpoint_filter_fn
from classification.models.local_vmamba import VSSM

__all__ = ['MM_LocalVim', 'MM_LocalVSSM', 'read_checkpoint', 'register']


def read_checkpoint(path: str) -> Mapping[str, Any]:
    """Load a checkpoint file or http(s) URL on the CPU.

    Tensor-only files load with ``weights_only=True``; training checkpoints that also pickle other objects (RNG
    states, configs) are loaded in full, which executes pickled code: only load files you trust.
    """
    if path.startswith(('http://', 'https://')):
        return torch.hub.load_state_dict_from_url(path, map_location='cpu', weights_only=False)
    if not os.path.isfile(path):
        raise FileNotFoundError(f'pretrained checkpoint not found: {path} (point the backbone\'s pretrained / '
                                'pretrained_ckpt at a classification checkpoint, or set it to None)')
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError:
        print_log(f'{path} holds more than tensors; loading it with weights_only=False', logger='current')
        return torch.load(path, map_location='cpu', weights_only=False)


class _PretrainedBackbone:
    """Loading of a classification checkpoint into a backbone, in ``init_weights`` (as mmdet/mmseg backbones do)."""

    pretrained: Optional[str]
    pretrained_key: Optional[str]

    def _set_pretrained(self, pretrained: Optional[str], pretrained_ckpt: Optional[str],
                        pretrained_key: Optional[str]) -> None:
        if pretrained and pretrained_ckpt and pretrained != pretrained_ckpt:
            raise ValueError(f'pass one of pretrained={pretrained!r} and pretrained_ckpt={pretrained_ckpt!r}')
        self.pretrained = pretrained or pretrained_ckpt
        self.pretrained_key = pretrained_key
        self.load_result: Optional[Any] = None

    def adapt_state_dict(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Turn classification weights into weights for this backbone (identity by default)."""
        return state_dict

    def load_pretrained(self, path: str, key: Optional[str] = None) -> Any:
        """Load classification weights from ``path`` (``key``: container entry, e.g. 'ema_model'; default: the first
        of 'state_dict', 'model', 'ema_model'). Missing and unexpected keys are logged by name and returned."""
        weights = self.adapt_state_dict(extract_state_dict(read_checkpoint(path), key))
        result = self.load_state_dict(weights, strict=False)
        print_log(f'{type(self).__name__}: loaded {len(weights) - len(result.unexpected_keys)} tensors from {path}',
                  logger='current')
        if result.missing_keys:
            print_log(f'missing keys (left as initialised): {result.missing_keys}', logger='current')
        if result.unexpected_keys:
            print_log(f'unexpected keys (ignored): {result.unexpected_keys}', logger='current')
        self.load_result = result
        return result

    def init_weights(self) -> None:
        """Called by the mmengine Runner before training: load ``pretrained`` if set; the weights are otherwise
        those set at construction."""
        if self.pretrained:
            self.load_pretrained(self.pretrained, self.pretrained_key)
        self.is_init = True


def _require_directions(directions: DirectionsArg, name: str) -> DirectionsArg:
    if directions is None:
        raise ValueError(f'{name} needs directions= (one list per layer/block, or a directions file)')
    return directions


class MM_LocalVim(_PretrainedBackbone, VisionMamba):
    """LocalVim backbone: LayerNorm'd mixer outputs of the layers in ``out_indices``, all at stride 16.

    Returns one NCHW map (B, embed_dim, ceil(H/16), ceil(W/16)) when ``out_indices`` has one entry (what SimpleFPN
    takes), else a list. Other keyword arguments are those of
    :class:`~classification.models.local_vim.VisionMamba`; the classifier and final norm are removed. Position
    tables are resized to the input's token grid on the fly, so any input size works.
    """

    def __init__(self, out_indices: Sequence[int] = (4, 9, 14, 19), pretrained_ckpt: Optional[str] = None,
                 pretrained: Optional[str] = None, pretrained_key: Optional[str] = None,
                 directions: DirectionsArg = None, **kwargs: Any):
        super().__init__(num_classes=0, directions=_require_directions(directions, 'MM_LocalVim'), **kwargs)
        del self.head, self.norm_f
        self.out_indices = [int(i) for i in out_indices]
        for j in range(len(self.out_indices)):
            self.add_module(f'outnorm_{j}', nn.LayerNorm(self.embed_dim))
        self._set_pretrained(pretrained, pretrained_ckpt, pretrained_key)

    def adapt_state_dict(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Resize ``pos_embed`` and the RoPE tables of a 14x14 (or any square) checkpoint to this model's grid."""
        return checkpoint_filter_fn(state_dict, self)

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, list[torch.Tensor]]:
        grid = self.token_grid(*x.shape[-2:])
        feats = self.forward_intermediates(x, self.out_indices, output_fmt='NLC', intermediates_only=True)
        outs = [getattr(self, f'outnorm_{j}')(f).transpose(1, 2).reshape(f.shape[0], -1, *grid).contiguous()
                for j, f in enumerate(feats)]
        return outs[0] if len(outs) == 1 else outs


class MM_LocalVSSM(_PretrainedBackbone, VSSM):
    """LocalVMamba backbone: LayerNorm'd outputs of the stages in ``out_indices`` (before their downsampling).

    Stage i gives (B, dims[i], H/4/2^i, W/4/2^i) (strides 4/8/16/32). Other keyword arguments are those of
    :class:`~classification.models.local_vmamba.VSSM`; ``mlp_ratio``, ``downsample_version`` and
    ``patchembed_version`` are accepted for the original configs and must keep the only values it supports.
    """

    def __init__(self, out_indices: Sequence[int] = (0, 1, 2, 3), pretrained: Optional[str] = None,
                 pretrained_ckpt: Optional[str] = None, pretrained_key: Optional[str] = None,
                 directions: DirectionsArg = None, mlp_ratio: float = 0.0, downsample_version: str = 'v1',
                 patchembed_version: str = 'v1', **kwargs: Any):
        if mlp_ratio != 0.0 or downsample_version != 'v1' or patchembed_version != 'v1':
            raise ValueError('LocalVMamba has no MLP and v1 patch embedding/merging: mlp_ratio must be 0.0 and the '
                             f"versions 'v1', got {mlp_ratio}, {downsample_version!r}, {patchembed_version!r}")
        super().__init__(num_classes=0, directions=_require_directions(directions, 'MM_LocalVSSM'), **kwargs)
        del self.classifier, self.head_drop
        self.out_indices = sorted(int(i) for i in out_indices)
        for i in self.out_indices:
            self.add_module(f'outnorm{i}', nn.LayerNorm(self.dims[i]))
        self._set_pretrained(pretrained, pretrained_ckpt, pretrained_key)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = self.forward_intermediates(x, self.out_indices, output_fmt='NHWC', intermediates_only=True)
        return [getattr(self, f'outnorm{i}')(f).permute(0, 3, 1, 2).contiguous()
                for i, f in zip(self.out_indices, feats)]


def register(registry: Any) -> None:
    """Register both backbones in an mmengine ``Registry`` (mmdet's or mmseg's ``MODELS``)."""
    for cls in (MM_LocalVim, MM_LocalVSSM):
        registry.register_module(module=cls)
