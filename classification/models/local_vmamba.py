"""LocalVMamba: the hierarchical (VMamba-style) LocalMamba family, its SS2D mixer, and its timm registrations.

Layout (as the original): a 4x4 patch embedding, four stages of ``VSSBlock`` (pre-LayerNorm -> SS2D -> DropPath,
no MLP) joined by ``PatchMerging2D``, channel-last (B, H, W, C) throughout, then LayerNorm, average pool and the
linear head. Each SS2D scans its input along the block's own directions, runs all directions as one grouped
selective scan, reverses, applies a shared channel attention per direction and sums (or, in the search supernets,
softmax-weights) them, then normalises and gates by SiLU(z).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Optional, Sequence, Union

import torch
import torch.fx
import torch.nn.functional as F
from timm.layers import DropPath, calculate_drop_path_rates, register_notrace_function
from timm.models import checkpoint_seq, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from torch import nn

from ..common import state_dict_from
from .directions import (CANDIDATES, LOCAL_VSSM_SMALL_DIRECTIONS, LOCAL_VSSM_TINY_DIRECTIONS, DirectionsArg,
                         DirectionTable, resolve_candidates, resolve_directions)
from .factory import (build_local_mamba, check_input_size_options, classifier_head, input_channels, model_cfg,
                      supernet_of)
from .flop_count import count_flops
from .multi_scan import GradLayoutHooks, MultiScanAttn, scan_all_directions
from .scan_maps import sequence_index
from .ssm_init import a_log_init, dt_bias_init, dt_rank_of, dt_weight_init, trunc_normal_init

__all__ = ['SS2D', 'VSSBlock', 'PatchMerging2D', 'VSSM', 'checkpoint_filter_fn']


@register_notrace_function
@torch.fx.wrap
def ss2d_scan(x: torch.Tensor, directions: tuple[str, ...], x_proj_weight: torch.Tensor,
              dt_projs_weight: torch.Tensor, dt_projs_bias: torch.Tensor, A_logs: torch.Tensor, Ds: torch.Tensor,
              traced: bool = False, attention: Optional[tuple[torch.Tensor, ...]] = None,
              eps: float = 1e-5) -> torch.Tensor:
    """The scan of an SS2D block: the map x (B, E, H, W) as token rows in the weights' dtype (fp32 under autocast),
    the block's index table, and :func:`scan_all_directions` with its stacked parameters (``A_logs`` (K*E, N) and
    ``Ds`` (K*E) viewed per direction) -> (B, K, H*W, E), or with ``attention`` (the channel attention's weights and
    eps) attended and summed -> (B, H*W, E). One call in a torch.fx trace. An empty batch is refused (ValueError),
    since the scan kernels need at least one sequence."""
    if x.shape[0] == 0:
        raise ValueError('LocalVMamba: empty batch (batch size 0)')
    num_dirs, inner = len(directions), x.shape[1]
    tokens = x.permute(0, 2, 3, 1).flatten(1, 2).to(x_proj_weight.dtype)   # fp32 under autocast, as the weights
    index = sequence_index(directions, (x.shape[2], x.shape[3]), None, x.device)
    return scan_all_directions(tokens, index, x_proj_weight, dt_projs_weight, dt_projs_bias,
                               A_logs.view(num_dirs, inner, -1), Ds.view(num_dirs, inner), traced=traced,
                               attention=attention, eps=eps)


@register_notrace_function
@torch.fx.wrap
def checked_images(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """``images`` if they are (B, C, H, W) with H, W >= ``patch_size`` (the patch embedding needs one whole patch;
    it drops any remainder, and later stages pad odd maps, so every larger size runs), else ValueError. One call in
    a torch.fx trace."""
    if images.dim() != 4 or images.shape[-2] < patch_size or images.shape[-1] < patch_size:
        raise ValueError(f'LocalVMamba: images must be (B, C, H, W) with H, W >= {patch_size} (the patch size), '
                         f'got shape {tuple(images.shape)}')
    return images


@register_notrace_function
@torch.fx.wrap
def pad_to_even(x: torch.Tensor) -> torch.Tensor:
    """Zero-pad a map (B, H, W, C) at the bottom/right to even H and W (one call in a torch.fx trace)."""
    height, width = x.shape[1], x.shape[2]
    return F.pad(x, (0, 0, 0, width % 2, 0, height % 2)) if height % 2 or width % 2 else x


class SS2D(GradLayoutHooks):
    """LocalVMamba mixer: selective scan of a 2-D map along several directions. (B, H, W, C) -> (B, H, W, C).

    Parameters keep the original names and layouts: per-direction projections stacked along a leading K axis
    (``x_proj_weight`` (K, R + 2N, E), ``dt_projs_weight`` (K, E, R), ``dt_projs_bias`` (K, E)) and the scan
    parameters of all directions concatenated along channels (``A_logs`` (K*E, N), row k*E + c; ``Ds`` (K*E)).
    ``directions=None`` builds a search-supernet block over ``candidates`` (default the original's 8).
    ``trace_scan`` (set while counting FLOPs, see ``flop_count``) runs the scan as an op that fvcore's trace can
    charge.
    """

    trace_scan = False

    def __init__(self, d_model: int, directions: Optional[Sequence[str]] = None, d_state: int = 16,
                 ssm_ratio: float = 2.0, dt_rank: Union[int, str] = 'auto', d_conv: int = 3, conv_bias: bool = True,
                 dropout: float = 0., bias: bool = False, dt_min: float = 0.001, dt_max: float = 0.1,
                 dt_scale: float = 1.0, dt_init_floor: float = 1e-4, candidates: Optional[Sequence[str]] = None):
        super().__init__()
        if d_conv < 3 or d_conv % 2 == 0:
            raise ValueError(f'd_conv must be an odd kernel size >= 3 (the original\'s no-conv variant, d_conv < 2, '
                             f'is not provided), got {d_conv}')
        self.d_model = d_model
        self.d_inner = inner = int(ssm_ratio * d_model)
        self.d_state = d_state
        self.dt_rank = dt_rank_of(d_model, dt_rank)
        searched = CANDIDATES if candidates is None else candidates
        num_dirs = len(searched if directions is None else directions)

        self.out_norm = nn.LayerNorm(inner)
        self.in_proj = nn.Linear(d_model, 2 * inner, bias=bias)
        self.act = nn.SiLU()
        self.conv2d = nn.Conv2d(inner, inner, d_conv, padding=(d_conv - 1) // 2, groups=inner, bias=conv_bias)
        bound = inner ** -0.5                                  # nn.Linear's default init of each direction
        self.x_proj_weight = nn.Parameter(torch.empty(num_dirs, self.dt_rank + 2 * d_state, inner).uniform_(
            -bound, bound))
        self.dt_projs_weight = nn.Parameter(torch.empty(num_dirs, inner, self.dt_rank))
        dt_weight_init(self.dt_projs_weight, self.dt_rank, dt_scale)
        self.dt_projs_bias = nn.Parameter(dt_bias_init((num_dirs, inner), dt_min, dt_max, dt_init_floor))
        self.A_logs = nn.Parameter(a_log_init(inner, d_state, copies=num_dirs))
        self.Ds = nn.Parameter(torch.ones(num_dirs * inner))
        self.opt_in_no_weight_decay = ('A_logs', 'Ds')
        self.out_proj = nn.Linear(inner, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout) if dropout > 0. else nn.Identity()
        self.multi_scan = MultiScanAttn(inner, directions, candidates)
        self.hook_grad_layouts()

    @property
    def directions(self) -> tuple[str, ...]:
        return self.multi_scan.directions

    def forward_core(self, x: torch.Tensor) -> torch.Tensor:
        """The scan of all directions, as the original names it: (B, E, H, W) conv output -> normalised merged scan
        (B, H, W, E).

        Per direction: scan the map, project, selective scan (in fp32), reverse, then the shared channel attention
        per direction and the merge: with fixed directions all of it is one ``multi_scan_attention_merge_fn`` call on
        the map's token rows, which reads the sequences through the block's index table (a search block: one
        ``multi_scan_inner_fn`` call, then its weighted merge). Then ``out_norm``. The token rows take the
        dtype of the block's weights: fp32 under autocast, the model's own when it is cast to half, bfloat16 or double.
        """
        attn = self.multi_scan.attn
        attention = self.multi_scan.fused_attention(attn)
        ys = ss2d_scan(x, self.directions, self.x_proj_weight, self.dt_projs_weight, self.dt_projs_bias, self.A_logs,
                       self.Ds, self.trace_scan, attention, attn.norm.eps)     # (B, H*W, E), search: (B, K, H*W, E)
        merged = ys if attention is not None else self.multi_scan.attend_and_merge(ys, attn)        # (B, H*W, E)
        return self.out_norm(merged).unflatten(1, (x.shape[2], x.shape[3])).to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, z = self.in_proj(x).chunk(2, dim=-1)
        x = self.act(self.conv2d(x.permute(0, 3, 1, 2)))
        y = self.forward_core(x) * self.act(z)
        return self.dropout(self.out_proj(y))


class VSSBlock(nn.Module):
    """``x + DropPath(SS2D(LayerNorm(x)))`` on (B, H, W, C); no MLP."""

    def __init__(self, dim: int, directions: Optional[Sequence[str]] = None, drop_path: float = 0.,
                 **ssm_kwargs: Any):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.op = SS2D(dim, directions, **ssm_kwargs)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.op(self.norm(x)))


class PatchMerging2D(nn.Module):
    """Swin-style 2x2 merge: (B, H, W, C) -> (B, ceil(H/2), ceil(W/2), out_dim); odd H/W zero-padded first."""

    def __init__(self, dim: int, out_dim: int = -1):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim if out_dim < 0 else out_dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = pad_to_even(x)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x))


class Permute(nn.Module):
    """Permute the axes of a tensor (index 1 of the original patch embedding: NCHW -> NHWC)."""

    def __init__(self, *dims: int):
        super().__init__()
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(*self.dims)


def global_avg_pool(x: torch.Tensor) -> torch.Tensor:
    """(B, H, W, C) -> (B, C), by the op the original uses (so that fvcore counts it the same way)."""
    return F.adaptive_avg_pool2d(x.permute(0, 3, 1, 2), 1).flatten(1)


class Classifier(nn.Module):
    """The original's classifier module, holding the final LayerNorm and the linear head (keys ``classifier.norm.*``,
    ``classifier.head.*``); :class:`VSSM` applies the norm in ``forward_features``, the pool and head in
    ``forward_head``."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()


class VSSM(nn.Module):
    """LocalVMamba backbone + classifier. Images (B, C, H, W); any H, W >= patch_size (the patch conv drops a
    remainder, odd maps are padded at each merge), square or not. Features are channel-last (``output_fmt``)."""

    output_fmt = 'NHWC'
    dynamic_img_size = True     # timm's flag of a model that takes any input size

    def __init__(
            self,
            patch_size: int = 4,
            in_chans: int = 3,
            num_classes: int = 1000,
            depths: Sequence[int] = (2, 2, 9, 2),
            dims: Union[int, Sequence[int]] = (96, 192, 384, 768),
            ssm_d_state: int = 16,
            ssm_ratio: float = 2.0,
            ssm_dt_rank: Union[int, str] = 'auto',
            ssm_conv: int = 3,
            ssm_conv_bias: bool = True,
            ssm_drop_rate: float = 0.,
            drop_rate: float = 0.,
            drop_path_rate: float = 0.1,
            global_pool: str = 'avg',
            patch_norm: bool = True,
            use_checkpoint: bool = False,
            directions: DirectionsArg = None,
            default_directions: Optional[DirectionTable] = None,
            candidates: Optional[Sequence[str]] = None,
            dynamic_img_size: bool = True,
            dynamic_img_pad: bool = False,
    ):
        """``directions``: one list per block over all stages, or a directions-file path; None uses
        ``default_directions``, and if that is None too the model is a search supernet, every block searching over
        ``candidates`` (default the original's 8, ``CANDIDATES``; kept as ``model.candidates``, None with fixed
        directions). ``drop_rate`` is a dropout before the head (absent from the original, 0 by default);
        ``global_pool`` is 'avg' (the original) or '' (no pooling: the head sees the (B, H, W, C) map);
        ``use_checkpoint`` turns on gradient checkpointing of the blocks (per block, as the original).
        ``dynamic_img_size`` and ``dynamic_img_pad`` are timm's names of what the model always does (any input size;
        the pixels past a multiple of the patch size dropped, not padded); the opposite values are refused."""
        super().__init__()
        check_input_size_options('LocalVMamba', dynamic_img_size, dynamic_img_pad, pads=False,
                                 any_size_because='no parameter depends on it',
                                 pad_refusal="LocalVMamba's patch embedding drops the remainder of an image past a "
                                             "multiple of the patch size, as the original: dynamic_img_pad=True "
                                             "(zero-padding instead) is not supported")
        depths = tuple(depths)
        dims = [dims * 2 ** i for i in range(len(depths))] if isinstance(dims, int) else list(dims)
        if len(dims) != len(depths):
            raise ValueError(f'dims {dims} and depths {depths} must have one entry per stage')
        self.in_chans = in_chans            # timm reads it as the model's input channels
        self.num_classes = num_classes
        self.global_pool = _check_global_pool(global_pool)
        self.dims = dims
        self.depths = depths
        self.num_features = self.head_hidden_size = dims[-1]
        self.patch_size = patch_size
        self.grad_checkpointing = use_checkpoint
        self.directions = resolve_directions(directions, default_directions, sum(depths))
        self.is_search = self.directions is None
        self.candidates = resolve_candidates(candidates, self.is_search)

        self.patch_embed = nn.Sequential(
            nn.Conv2d(in_chans, dims[0], kernel_size=patch_size, stride=patch_size),
            Permute(0, 2, 3, 1),
            nn.LayerNorm(dims[0]) if patch_norm else nn.Identity())
        ssm_kwargs = dict(d_state=ssm_d_state, ssm_ratio=ssm_ratio, dt_rank=ssm_dt_rank, d_conv=ssm_conv,
                          conv_bias=ssm_conv_bias, dropout=ssm_drop_rate)
        rates = calculate_drop_path_rates(drop_path_rate, sum(depths))
        self.layers = nn.ModuleList()
        for i, depth in enumerate(depths):
            first = sum(depths[:i])
            blocks = nn.Sequential(*[
                VSSBlock(dims[i], None if self.is_search else self.directions[first + j], rates[first + j],
                         **ssm_kwargs, candidates=self.candidates)
                for j in range(depth)])
            downsample = PatchMerging2D(dims[i], dims[i + 1]) if i < len(depths) - 1 else nn.Identity()
            self.layers.append(nn.Sequential(OrderedDict(blocks=blocks, downsample=downsample)))
        self.classifier = Classifier(dims[-1], num_classes)
        self.head_drop = nn.Dropout(drop_rate)
        self.feature_info = [dict(num_chs=dims[i], reduction=patch_size * 2 ** i, module=f'layers.{i}.blocks')
                             for i in range(len(depths))]
        self.apply(trunc_normal_init)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Empty, as the original (``A_logs``/``Ds`` carry ``_no_weight_decay`` for an opt-in optimiser rule)."""
        return set()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """Parameter groups for timm's layer-wise decay: the patch embedding, then one group per stage (``coarse``)
        or per block, a stage's downsampling and the final norm joining the block before them; the head, unmatched,
        comes last."""
        final_norm = (r'^classifier\.norm', (99999,))
        if coarse:
            return dict(stem=r'^patch_embed', blocks=[(r'^layers\.(\d+)', None), final_norm])
        return dict(stem=r'^patch_embed', blocks=[(r'^layers\.(\d+)\.blocks\.(\d+)', None),
                                                  (r'^layers\.(\d+)\.downsample', (99999,)), final_norm])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def get_classifier(self) -> nn.Module:
        return self.classifier.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """Replace the head; ``global_pool`` 'avg' or '' (no pooling), None keeps the current one."""
        if global_pool is not None:
            self.global_pool = _check_global_pool(global_pool)
        self.num_classes = num_classes
        self.classifier.head = classifier_head(self.num_features, num_classes, self)

    def _blocks(self, stage: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(stage.blocks, x)
        return stage.blocks(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> normalised last-stage map (B, h, w, C) (channel-last; h = floor(H / patch_size)
        halved with ceil at each merge, 7 for 224-pixel images)."""
        x = self.patch_embed(checked_images(x, self.patch_size))
        for stage in self.layers:
            x = stage.downsample(self._blocks(stage, x))
        return self.classifier.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Average-pool (B, H, W, C) -> (B, C) (unless ``global_pool`` is ''), then the head."""
        if self.global_pool == 'avg':
            x = global_avg_pool(x)
        x = self.head_drop(x)
        return x if pre_logits else self.classifier.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, Sequence[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[list[torch.Tensor], tuple[torch.Tensor, list[torch.Tensor]]]:
        """Stage outputs before their downsampling (as the original det/seg backbone takes them).

        ``indices``: last n stages if int, all if None, else the listed stages. Stage i gives (B, dims[i], h_i, w_i)
        in NCHW, or channel-last with 'NHWC' (h_0 = floor(H / patch_size), each next one ceil(h_i / 2)). ``norm``
        applies the final norm to the last stage's output, the only one it is sized for. The returned features are
        the output of the last stage run (channel-last, without the downsampling that feeds the next stage),
        normalised only when it is the model's last stage (not after ``stop_early`` before it, nor in a model pruned
        to fewer stages).
        """
        if output_fmt not in ('NCHW', 'NHWC'):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        take, last = feature_take_indices(len(self.layers), indices)
        stages = self.layers[:last + 1] if stop_early or intermediates_only else self.layers
        x = self.patch_embed(checked_images(x, self.patch_size))
        intermediates = []
        for i, stage in enumerate(stages):
            x = self._blocks(stage, x)
            if i in take:
                y = self.classifier.norm(x) if norm and i == len(self.dims) - 1 else x
                intermediates.append(y.permute(0, 3, 1, 2).contiguous() if output_fmt == 'NCHW' else y)
            if i + 1 < len(stages):
                x = stage.downsample(x)
        if intermediates_only:
            return intermediates
        return (self.classifier.norm(x) if len(stages) == len(self.dims) else x), intermediates

    def prune_intermediate_layers(self, indices: Union[int, Sequence[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop stages after the last wanted one and its downsampling (timm API); returns the kept indices. The final
        norm goes with the last stage (it is sized for it), or on request. ``prune_head`` leaves no classifier and no
        pooling (``reset_classifier(0, '')``, as timm's models): the model gives the last kept stage's map."""
        take, last = feature_take_indices(len(self.layers), indices)
        self.layers = self.layers[:last + 1]
        self.layers[-1].downsample = nn.Identity()
        self.num_features = self.head_hidden_size = self.dims[last]
        if prune_norm or last < len(self.dims) - 1:
            self.classifier.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, '')
        return take

    def flops(self, input_shape: Optional[tuple[int, int, int]] = None) -> int:
        """FLOPs as the original's ``VSSM.flops`` counts them for one ``input_shape`` (C, H, W) image (default: the
        model's channels at 224 x 224): fvcore (one multiply-add = one FLOP) with the scan charged
        ``9*B*L*D*N + B*D*L`` per grouped call (L the padded length, D = K*E). Runs on the model's device."""
        return count_flops(self, input_shape or (input_channels(self), 224, 224))


def _check_global_pool(global_pool: str) -> str:
    if global_pool not in ('avg', ''):
        raise ValueError(f"global_pool must be 'avg' or '' (no pooling), got {global_pool!r}")
    return global_pool


def checkpoint_filter_fn(state_dict: dict, model: VSSM) -> dict:
    """Weights of an original or own checkpoint (``state_dict``/``model``/EMA containers, ``module.`` stripped)."""
    return state_dict_from(state_dict)


def _cfg(name: str) -> dict:
    return model_cfg(name, first_conv='patch_embed.0', classifier='classifier.head', pool_size=(7, 7))


default_cfgs = generate_default_cfgs({
    'local_vssm_tiny.untrained': _cfg('local_vssm_tiny'),
    'local_vssm_small.in1k': _cfg('local_vssm_small'),
    'local_vssm_tiny_search.untrained': _cfg('local_vssm_tiny_search'),
    'local_vssm_small_search.untrained': _cfg('local_vssm_small_search'),
})


def _create_local_vssm(variant: str, pretrained: bool = False, **kwargs: Any) -> VSSM:
    """``features_only`` takes every stage by default (four for the registered variants)."""
    stages = tuple(range(len(kwargs['depths'])))
    return build_local_mamba(VSSM, variant, pretrained, checkpoint_filter_fn, stages, len(stages), 'stage', **kwargs)


_FINAL = dict(dims=(96, 192, 384, 768), drop_path_rate=0.2)
_SUPERNET = dict(dims=(32, 64, 128, 256), drop_path_rate=0.1, default_directions=None)


@register_model
@supernet_of('local_vssm_tiny')
def local_vssm_tiny_search(pretrained: bool = False, **kwargs: Any) -> VSSM:
    """LocalVMamba-T search supernet (dims 32..256, every block weighs all candidates: ``candidates=``, default the
    original's 8)."""
    args = dict(_SUPERNET, depths=(2, 2, 9, 2))
    return _create_local_vssm('local_vssm_tiny_search', pretrained, **dict(args, **kwargs))


@register_model
def local_vssm_tiny(pretrained: bool = False, **kwargs: Any) -> VSSM:
    """LocalVMamba-T (searched directions), 82.7% ImageNet top-1 in the original README."""
    args = dict(_FINAL, depths=(2, 2, 9, 2), default_directions=LOCAL_VSSM_TINY_DIRECTIONS)
    return _create_local_vssm('local_vssm_tiny', pretrained, **dict(args, **kwargs))


@register_model
@supernet_of('local_vssm_small')
def local_vssm_small_search(pretrained: bool = False, **kwargs: Any) -> VSSM:
    """LocalVMamba-S search supernet (dims 32..256, every block weighs all candidates: ``candidates=``, default the
    original's 8)."""
    args = dict(_SUPERNET, depths=(2, 2, 27, 2))
    return _create_local_vssm('local_vssm_small_search', pretrained, **dict(args, **kwargs))


@register_model
def local_vssm_small(pretrained: bool = False, **kwargs: Any) -> VSSM:
    """LocalVMamba-S (searched directions), 83.7% ImageNet top-1 in the original README."""
    args = dict(_FINAL, depths=(2, 2, 27, 2), default_directions=LOCAL_VSSM_SMALL_DIRECTIONS)
    return _create_local_vssm('local_vssm_small', pretrained, **dict(args, **kwargs))
