"""LocalVim: the plain (ViT-like) LocalMamba family, its mixer, and its timm registrations.

Layout of a layer (as the original, Vim style): ``residual += DropPath(hidden); hidden = Mixer(Norm(residual))`` with
RoPE applied to both streams before every layer; the mixer scans x and z together along each of the layer's
directions, runs the Mamba inner function per direction (all directions in one fused op), reverses, applies a
shared channel attention per direction and sums (or, in the search supernet, softmax-weights) the directions.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Any, Optional, Sequence, Union

import torch
import torch.fx
import torch.utils.checkpoint
from timm.layers import (DropPath, PatchEmbed, calculate_drop_path_rates, register_notrace_function, to_2tuple,
                         trunc_normal_)
from timm.models import generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from torch import nn

from localmamba_ssm import RMSNorm, layer_norm_fn, rms_norm_fn

from ..common import state_dict_from
from .directions import (LOCAL_VIM_TINY_DIRECTIONS, UNIFORM_W2_DIRECTIONS, DirectionsArg, DirectionTable,
                         resolve_candidates, resolve_directions)
from .factory import (build_local_mamba, check_input_size_options, classifier_head, input_channels, model_cfg,
                      supernet_of)
from .multi_scan import ChannelAttention, GradLayoutHooks, MultiScan, scan_all_directions
from .rope import VisionRotaryEmbedding, apply_rotary, resize_grid_table
from .scan_maps import sequence_index
from .ssm_init import a_log_init, dt_bias_init, dt_rank_of, dt_weight_init, trunc_normal_init

try:
    from timm.models._input import update_model_input_size
except ImportError:     # a timm that keeps no record of a model's input size
    update_model_input_size = None

__all__ = ['MultiMamba', 'VisionMamba', 'checkpoint_filter_fn', 'position_table']

# The fused add + norm kernels are single calls in a torch.fx trace.
torch.fx.wrap('rms_norm_fn')
torch.fx.wrap('layer_norm_fn')
register_notrace_function(rms_norm_fn)
register_notrace_function(layer_norm_fn)


_POOL_TYPES = ('mean', 'none', 'max', 'all')
_TIMM_POOL_NAMES = {'avg': 'mean', '': 'all'}


def _check_pool_type(pool: str) -> str:
    """A pooling name as ``final_pool_type`` stores it: one of _POOL_TYPES, or timm's 'avg' (mean) or '' (no
    pooling: 'all', the head sees all tokens); anything else is refused (ValueError)."""
    pool = _TIMM_POOL_NAMES.get(pool, pool)
    if pool not in _POOL_TYPES:
        raise ValueError(f"final_pool_type must be one of {', '.join(map(repr, _POOL_TYPES))} (or timm's 'avg', ''), "
                         f"got {pool!r}")
    return pool


def _timm_pool_type(global_pool: str, has_cls_token: bool) -> str:
    """``final_pool_type`` for timm's ``global_pool``. A class-token model takes 'token' (its middle class token, stored
    as the original's default 'mean', which such a model never uses) or '' (every token), and refuses any pooling of
    its tokens (ValueError); a model without one takes every pooling but 'token'."""
    if has_cls_token and global_pool == 'token':
        return 'mean'
    if has_cls_token and global_pool != '':
        raise ValueError(f"global_pool={global_pool!r}: a model with a class token classifies its middle class token "
                         f"and pools no tokens (global_pool='token' takes the class token, '' keeps every token)")
    if global_pool == 'token':
        raise ValueError("global_pool='token': this model has no class token (build it with if_cls_token=True, "
                         "use_middle_cls_token=True, or pool with 'avg', 'max' or '')")
    return _check_pool_type(global_pool)


def token_grid(height: int, width: int, patch_size: int) -> tuple[int, int]:
    """Token grid of an image: ceil(H / patch), ceil(W / patch) (the patch embedding zero-pads the remainder)."""
    return math.ceil(height / patch_size), math.ceil(width / patch_size)


@register_notrace_function
@torch.fx.wrap
def token_grid_of(images: torch.Tensor, patch_size: int) -> tuple[int, int]:
    """:func:`token_grid` of a batch of images (B, C, H, W), as one call in a torch.fx trace. Refused (ValueError):
    an empty batch, since the scan kernels need at least one sequence, and anything but a 4-d input with H, W >= 1
    (any smaller image is zero-padded to one patch)."""
    if images.dim() != 4 or images.shape[-2] < 1 or images.shape[-1] < 1:
        raise ValueError(f'LocalVim: images must be (B, C, H, W) with H, W >= 1 (smaller sides are zero-padded to '
                         f'the {patch_size}-pixel patch), got shape {tuple(images.shape)}')
    if images.shape[0] == 0:
        raise ValueError(f'LocalVim: empty batch (input of shape {tuple(images.shape)})')
    return token_grid(images.shape[-2], images.shape[-1], patch_size)


@register_notrace_function
@torch.fx.wrap
def position_table(table: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int],
                   middle_cls_token: bool = False) -> torch.Tensor:
    """A position table (1, H*W [+1], C) of ``old_grid`` for ``new_grid``: the grid part resized bicubically, a middle
    class token (at index H*W // 2) kept and moved to the middle of the new grid; the table itself if the grids
    agree."""
    if not middle_cls_token or tuple(old_grid) == tuple(new_grid):
        return resize_grid_table(table, old_grid, new_grid)
    old_middle, new_middle = old_grid[0] * old_grid[1] // 2, new_grid[0] * new_grid[1] // 2
    spatial = resize_grid_table(torch.cat([table[:, :old_middle], table[:, old_middle + 1:]], dim=1),
                                old_grid, new_grid)
    return torch.cat([spatial[:, :new_middle], table[:, old_middle:old_middle + 1], spatial[:, new_middle:]], dim=1)


@register_notrace_function
@torch.fx.wrap
def multi_mamba_scan(xz: torch.Tensor, directions: tuple[str, ...], grid: tuple[int, int],
                     cls_position: Optional[int], x_proj: list[torch.Tensor], dt_proj_weight: list[torch.Tensor],
                     dt_proj_bias: list[torch.Tensor], A_log: list[torch.Tensor], D: list[torch.Tensor],
                     conv_weight: list[torch.Tensor], conv_bias: list[Optional[torch.Tensor]],
                     traced: bool = False, attention: Optional[tuple[torch.Tensor, ...]] = None,
                     eps: float = 1e-5) -> torch.Tensor:
    """The scan of a LocalVim layer: the per-direction parameters (lists, one entry per direction) stacked along K,
    the layer's index table for ``grid``, and :func:`scan_all_directions` on the in_proj output xz (B, L, 2E)
    with the SiLU(z) gate -> (B, K, L, E), or with ``attention`` (the channel attention's weights and eps) attended
    and summed -> (B, L, E). One call in a torch.fx trace."""
    stacked_bias = None if conv_bias[0] is None else torch.stack(conv_bias)
    return scan_all_directions(xz, sequence_index(directions, grid, cls_position, xz.device), torch.stack(x_proj),
                               torch.stack(dt_proj_weight), torch.stack(dt_proj_bias), torch.stack(A_log),
                               torch.stack(D), torch.stack(conv_weight), stacked_bias, True, traced, attention, eps)


class MultiMamba(GradLayoutHooks):
    """LocalVim mixer: Mamba with several scan directions. (B, L, C) -> (B, L, C).

    Parameters keep the original names so released checkpoints load unchanged: ``in_proj``, per direction k
    ``A_log_k``, ``D_k``, ``conv1d_k``, ``x_proj_k``, ``dt_proj_k``, then ``out_proj`` and the shared ``attn``
    (a :class:`ChannelAttention`). ``directions=None`` builds a search-supernet layer over ``candidates`` (default
    the original's 8).
    ``trace_scan`` (set while counting FLOPs, see ``flop_count``) runs the conv and the scan as ops that fvcore's
    trace can charge.
    """

    trace_scan = False

    def __init__(self, d_model: int, directions: Optional[Sequence[str]] = None, d_state: int = 16, d_conv: int = 4,
                 expand: int = 2, dt_rank: Union[int, str] = 'auto', dt_min: float = 0.001, dt_max: float = 0.1,
                 dt_scale: float = 1.0, dt_init_floor: float = 1e-4, conv_bias: bool = True, bias: bool = False,
                 candidates: Optional[Sequence[str]] = None):
        super().__init__()
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.d_inner = expand * d_model
        self.dt_rank = dt_rank_of(d_model, dt_rank)
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias)
        self.multi_scan = MultiScan(self.d_inner, directions, candidates)
        for k in range(self.num_directions):
            self.register_parameter(f'A_log_{k}', nn.Parameter(a_log_init(self.d_inner, d_state)))
            self.register_parameter(f'D_{k}', nn.Parameter(torch.ones(self.d_inner)))
            self.add_module(f'conv1d_{k}', nn.Conv1d(self.d_inner, self.d_inner, d_conv, groups=self.d_inner,
                                                     padding=d_conv - 1, bias=conv_bias))
            self.add_module(f'x_proj_{k}', nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False))
            dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
            dt_weight_init(dt_proj.weight, self.dt_rank, dt_scale)
            with torch.no_grad():
                dt_proj.bias.copy_(dt_bias_init((self.d_inner,), dt_min, dt_max, dt_init_floor))
            dt_proj.bias._no_reinit = True
            self.add_module(f'dt_proj_{k}', dt_proj)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)
        self.attn = ChannelAttention(self.d_inner)
        self.opt_in_no_weight_decay = tuple(f'{name}_{k}' for k in range(self.num_directions)
                                            for name in ('A_log', 'D'))
        self.hook_grad_layouts()

    @property
    def directions(self) -> tuple[str, ...]:
        return self.multi_scan.directions

    @property
    def num_directions(self) -> int:
        return len(self.multi_scan.directions)

    def _per_direction(self, name: str, attr: Optional[str] = None) -> list[Optional[torch.Tensor]]:
        """Direction k's ``{name}_{k}`` (or its ``attr``), for k = 0..K-1."""
        tensors = [getattr(self, f'{name}_{k}') for k in range(self.num_directions)]
        return tensors if attr is None else [getattr(t, attr) for t in tensors]

    def forward(self, hidden: torch.Tensor, grid: tuple[int, int], cls_position: Optional[int] = None) -> torch.Tensor:
        """hidden: (B, L, C) with L = H*W (+1 with a middle class token at ``cls_position``).

        Per direction this is the original's ``mamba_inner_fn_no_out_proj`` on the scanned x and z (the class token
        inserted at sequence position ``cls_position``), reversed to token order, then the shared channel attention
        per direction and the merge: with fixed directions all of it is one ``multi_scan_attention_merge_fn`` call on
        the in_proj output, which reads the sequences through the layer's index table (a search layer: one
        ``multi_scan_inner_fn`` call, then its weighted merge). Then out_proj.
        """
        xz = self.in_proj(hidden)                                                    # (B, L, 2E)
        attention = self.multi_scan.fused_attention(self.attn)
        y = multi_mamba_scan(xz, self.directions, grid, cls_position, self._per_direction('x_proj', 'weight'),
                             self._per_direction('dt_proj', 'weight'), self._per_direction('dt_proj', 'bias'),
                             self._per_direction('A_log'), self._per_direction('D'),
                             self._per_direction('conv1d', 'weight'), self._per_direction('conv1d', 'bias'),
                             self.trace_scan, attention, self.attn.norm.eps)       # (B, L, E), search: (B, K, L, E)
        return self.out_proj(y if attention is not None else self.multi_scan.attend_and_merge(y, self.attn))


class Block(nn.Module):
    """Add -> Norm -> Mixer. Takes and returns (hidden, residual); residual is kept in fp32 if asked."""

    def __init__(self, dim: int, directions: Optional[Sequence[str]], ssm_cfg: dict, norm_layer: type,
                 norm_epsilon: float, residual_in_fp32: bool, drop_path: float,
                 candidates: Optional[Sequence[str]] = None):
        super().__init__()
        self.residual_in_fp32 = residual_in_fp32
        self.mixer = MultiMamba(dim, directions, **ssm_cfg, candidates=candidates)
        self.norm = norm_layer(dim, eps=norm_epsilon)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, hidden: torch.Tensor, residual: Optional[torch.Tensor], grid: tuple[int, int],
                cls_position: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
        hidden, residual = add_norm(self.norm, self.drop_path(hidden) if residual is not None else hidden, residual,
                                    prenorm=True, residual_in_fp32=self.residual_in_fp32)
        return self.mixer(hidden, grid, cls_position), residual


def add_norm(norm: nn.Module, x: torch.Tensor, residual: Optional[torch.Tensor], prenorm: bool,
             residual_in_fp32: bool) -> Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """Fused ``residual + x`` then RMSNorm/LayerNorm with ``norm``'s weights (returns (out, residual) if prenorm);
    an ``nn.Identity`` norm (a final norm removed by ``prune_intermediate_layers``) gives the plain sum."""
    if isinstance(norm, nn.Identity):
        total = x if residual is None else residual + x
        return (total, total) if prenorm else total
    fn = rms_norm_fn if isinstance(norm, RMSNorm) else layer_norm_fn
    return fn(x, norm.weight, norm.bias, residual=residual, prenorm=prenorm, residual_in_fp32=residual_in_fp32,
              eps=norm.eps)


def _mamba_init(module: nn.Module, n_layer: int) -> None:
    """The original's second pass: zero Linear biases (unless marked) and rescale each mixer's out_proj."""
    if isinstance(module, nn.Linear) and module.bias is not None and not getattr(module.bias, '_no_reinit', False):
        nn.init.zeros_(module.bias)
    if isinstance(module, MultiMamba):
        nn.init.kaiming_uniform_(module.out_proj.weight, a=math.sqrt(5))
        with torch.no_grad():
            module.out_proj.weight /= math.sqrt(n_layer)


class VisionMamba(nn.Module):
    """LocalVim backbone + classifier. Images (B, C, H, W) of any size: H and W are zero-padded to multiples of the
    patch size, and position tables are resized bicubically when the token grid differs from the built one (the
    built grid is ``ceil(img_size / patch_size)``, the grid of an ``img_size`` input, so that input needs none)."""

    dynamic_img_size = True     # timm's flag of a model that takes any input size

    def __init__(
            self,
            img_size: Union[int, tuple[int, int]] = 224,
            patch_size: int = 16,
            depth: int = 20,
            embed_dim: int = 192,
            in_chans: int = 3,
            num_classes: int = 1000,
            ssm_cfg: Optional[dict] = None,
            drop_rate: float = 0.,
            drop_path_rate: float = 0.1,
            norm_epsilon: float = 1e-5,
            rms_norm: bool = True,
            fused_add_norm: bool = True,
            residual_in_fp32: bool = True,
            final_pool_type: str = 'mean',
            if_abs_pos_embed: bool = True,
            if_rope: bool = False,
            if_rope_residual: bool = False,
            if_cls_token: bool = False,
            use_middle_cls_token: bool = False,
            directions: DirectionsArg = None,
            default_directions: Optional[DirectionTable] = None,
            candidates: Optional[Sequence[str]] = None,
            pt_hw_seq_len: int = 14,
            bimamba_type: str = 'v2',
            keep_dt_init: bool = False,
            channels: Optional[int] = None,
            global_pool: Optional[str] = None,
            dynamic_img_size: bool = True,
            dynamic_img_pad: bool = True,
    ):
        """``directions``: one list per layer, or a directions-file path; None uses ``default_directions``, and if
        that is None too the model is a search supernet, every layer searching over ``candidates`` (default the
        original's 8, ``CANDIDATES``; kept as ``model.candidates``, None with fixed directions). ``fused_add_norm``
        and ``bimamba_type`` are accepted for config compatibility (the add + norm is always fused; the mixer is
        always MultiMamba). ``if_*`` and
        ``use_middle_cls_token`` keep the original's names, as its entrypoints and configs pass them. ``keep_dt_init``
        keeps Mamba's dt initialisation instead of the original's overwrite of it (opt-in). ``channels`` is the
        original's name of ``in_chans``; ``global_pool`` is timm's name of ``final_pool_type`` and wins over it.
        ``dynamic_img_size`` and ``dynamic_img_pad`` are timm's names of what the model always does (any input size,
        zero-padded to a multiple of the patch); False is refused."""
        super().__init__()
        check_input_size_options('LocalVim', dynamic_img_size, dynamic_img_pad, pads=True,
                                 any_size_because="its position tables follow the input's token grid",
                                 pad_refusal='LocalVim zero-pads images to a multiple of the patch size, as the '
                                             'original: dynamic_img_pad=False is not supported')
        final_pool_type = (_check_pool_type(final_pool_type) if global_pool is None
                           else _timm_pool_type(global_pool, if_cls_token))
        if if_cls_token and not use_middle_cls_token:
            raise ValueError('only the middle class token is supported (if_cls_token=True needs use_middle_cls_token)')
        if if_cls_token and if_rope:
            raise ValueError('RoPE with a class token is not supported (the original never combines them)')
        del fused_add_norm, bimamba_type
        in_chans = channels if channels is not None else in_chans
        self.in_chans = in_chans            # timm reads it as the model's input channels
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.depth = depth
        self.patch_size = patch_size
        self.final_pool_type = final_pool_type
        self.residual_in_fp32 = residual_in_fp32
        self.rope_residual = if_rope_residual
        self.has_cls_token = if_cls_token
        self.num_prefix_tokens = 1 if if_cls_token else 0
        self.grad_checkpointing = False
        self.directions = resolve_directions(directions, default_directions, depth)
        self.is_search = self.directions is None
        self.candidates = resolve_candidates(candidates, self.is_search)

        self.patch_embed = PatchEmbed(img_size=img_size, patch_size=patch_size, in_chans=in_chans,
                                      embed_dim=embed_dim, strict_img_size=False, dynamic_img_pad=True)
        self.grid = token_grid(*to_2tuple(img_size), patch_size)
        # timm floors its grid even when it pads the remainder; say the padded grid the layers see
        self.patch_embed.grid_size, self.patch_embed.num_patches = self.grid, self.grid[0] * self.grid[1]
        num_patches = self.grid[0] * self.grid[1]
        if if_cls_token:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = None
        if if_abs_pos_embed:
            self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + self.num_prefix_tokens, embed_dim))
            self.pos_drop = nn.Dropout(p=drop_rate)
        self.rope = None
        if if_rope:
            if self.grid[0] != self.grid[1]:
                raise ValueError(f'RoPE needs a square build grid (img_size), got {self.grid}')
            if embed_dim % 4:
                raise ValueError(f'RoPE rotates pairs of channels in each half of embed_dim: embed_dim must be a '
                                 f'multiple of 4, got {embed_dim}')
            self.rope = VisionRotaryEmbedding(dim=embed_dim // 2, pt_seq_len=pt_hw_seq_len, ft_seq_len=self.grid[0])
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()

        block_rates = [0.0] + calculate_drop_path_rates(drop_path_rate, depth)
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0. else nn.Identity()
        norm_layer = RMSNorm if rms_norm else nn.LayerNorm
        self.layers = nn.ModuleList([
            Block(embed_dim, None if self.is_search else self.directions[i], dict(ssm_cfg or {}), norm_layer,
                  norm_epsilon, residual_in_fp32, block_rates[i], self.candidates)
            for i in range(depth)])
        self.norm_f = norm_layer(embed_dim, eps=norm_epsilon)
        self.feature_info = [dict(num_chs=embed_dim, reduction=patch_size, module=f'layers.{i}.mixer')
                             for i in range(depth)]

        dt_state = None
        if keep_dt_init:
            dt_state = {n: p.detach().clone() for n, p in self.named_parameters() if '.dt_proj_' in n}
        self.apply(trunc_normal_init)
        if self.pos_embed is not None:
            trunc_normal_(self.pos_embed, std=.02)
        self.apply(partial(_mamba_init, n_layer=depth))
        if dt_state is not None:
            self.load_state_dict(dt_state, strict=False)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {'pos_embed', 'cls_token'}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """Parameter groups for timm's layer-wise decay: the embeddings, then one group per layer (``norm_f`` joins
        the last); the head, unmatched, comes last."""
        return dict(stem=r'^cls_token|^pos_embed|^patch_embed',
                    blocks=[(r'^layers\.(\d+)', None), (r'^norm_f', (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each layer in the backward pass instead of keeping its activations (timm API)."""
        self.grad_checkpointing = enable

    @property
    def global_pool(self) -> str:
        """timm's name of the pooling ``forward_head`` applies now (``final_pool_type``): 'token' (the middle class
        token), 'avg', 'max', '' (every token) or the original's 'none' (the last token); what timm's
        ``save_for_hf`` records to build the model again."""
        if self.has_cls_token and self.final_pool_type != 'all':
            return 'token'
        return {'mean': 'avg', 'all': ''}.get(self.final_pool_type, self.final_pool_type)

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            self.final_pool_type = _timm_pool_type(global_pool, self.has_cls_token)
        self.head = classifier_head(self.embed_dim, num_classes, self)

    @torch.jit.ignore
    def set_input_size(self, img_size: Optional[Union[int, tuple[int, int]]] = None,
                       patch_size: Optional[Union[int, tuple[int, int]]] = None) -> None:
        """Build the model for another ``img_size`` (timm API): its position tables (``pos_embed``, RoPE's) resized
        bicubically to that image's token grid, as the forward resizes them for such an image and
        ``checkpoint_filter_fn`` for a checkpoint, so the outputs at that size stay the same. Refused (ValueError):
        another patch size, and an oblong grid with RoPE (it needs a square build grid)."""
        if patch_size is not None and to_2tuple(patch_size) != to_2tuple(self.patch_size):
            raise ValueError(f'set_input_size: another patch size ({patch_size}) is not supported, only the '
                             f'{self.patch_size} the model was built with')
        if img_size is None:
            return
        grid = self.token_grid(*to_2tuple(img_size))
        if self.rope is not None and grid[0] != grid[1]:
            raise ValueError(f'RoPE needs a square build grid (img_size), got {grid}')
        with torch.no_grad():
            if self.pos_embed is not None:
                self.pos_embed = nn.Parameter(position_table(self.pos_embed, self.grid, grid, self.has_cls_token),
                                              requires_grad=self.pos_embed.requires_grad)
            if self.rope is not None:
                self.rope.freqs_cos, self.rope.freqs_sin = self.rope.tables(grid)
                self.rope.grid = grid
        self.grid = grid
        self.patch_embed.img_size = to_2tuple(img_size)
        self.patch_embed.grid_size, self.patch_embed.num_patches = grid, grid[0] * grid[1]
        if update_model_input_size is not None:
            update_model_input_size(self, img_size)

    def token_grid(self, height: int, width: int) -> tuple[int, int]:
        """Token grid of an image: ceil(H / patch), ceil(W / patch)."""
        return token_grid(height, width, self.patch_size)

    def cls_position(self, grid: tuple[int, int]) -> Optional[int]:
        """Index of the middle class token in the token sequence (None without one)."""
        return grid[0] * grid[1] // 2 if self.has_cls_token else None

    def _pos_embed(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Insert the middle class token and add the (resized) position table: (B, H*W, C) -> (B, L, C)."""
        position = self.cls_position(grid)
        if position is not None:
            x = torch.cat([x[:, :position], self.cls_token.expand(x.shape[0], -1, -1), x[:, position:]], dim=1)
        if self.pos_embed is None:
            return x
        return self.pos_drop(x + position_table(self.pos_embed, self.grid, grid, self.has_cls_token))

    def _layers(self, x: torch.Tensor, take: Sequence[int] = (), stop: Optional[int] = None):
        """Run the layers on embedded tokens; returns (hidden, residual, grid, {index: mixer output})."""
        grid = token_grid_of(x, self.patch_size)
        x = self._pos_embed(self.patch_embed(x), grid)
        position = self.cls_position(grid)
        rope_tables = self.rope.tables(grid) if self.rope is not None else None
        taken = {}
        hidden, residual = x, None
        for i, layer in enumerate(self.layers[:stop]):
            if rope_tables is not None:
                hidden = apply_rotary(hidden, *rope_tables)
                if residual is not None and self.rope_residual:
                    residual = apply_rotary(residual, *rope_tables)
            if self.grad_checkpointing and not torch.jit.is_scripting():
                hidden, residual = torch.utils.checkpoint.checkpoint(layer, hidden, residual, grid, position,
                                                                     use_reentrant=False)
            else:
                hidden, residual = layer(hidden, residual, grid, position)
            if i in take:
                taken[i] = hidden
        return hidden, residual, grid, taken

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> normalised tokens (B, L, C)."""
        hidden, residual, _, _ = self._layers(x)
        return add_norm(self.norm_f, self.drop_path(hidden), residual, prenorm=False,
                        residual_in_fp32=self.residual_in_fp32)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens (B, L, C) -> (B, C): the middle class token, else the mean / max / last token ('none', the
        original's name for it); pooling 'all' (timm's '') keeps every token (B, L, C), class token or not, as timm's
        unpooled models do."""
        if self.final_pool_type == 'all':
            return x
        if self.has_cls_token:
            return x[:, (x.shape[1] - 1) // 2]
        if self.final_pool_type == 'mean':
            return x.mean(dim=1)
        if self.final_pool_type == 'max':
            return x.max(dim=1).values
        return x[:, -1]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool tokens (B, L, C) (see ``pool``), then the classifier."""
        x = self.pool(x)
        return x if pre_logits else self.head(x)

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
            return_prefix_tokens: bool = False,
    ) -> Union[list, tuple[torch.Tensor, list]]:
        """Mixer outputs of the chosen layers (as the original det/seg backbone takes them).

        ``indices``: last n layers if int, all if None, else the listed layers, returned in layer order (as timm's
        ViT). NCHW maps are (B, C, ceil(H / patch_size), ceil(W / patch_size)); a middle class token is dropped from
        them, and with ``return_prefix_tokens`` each intermediate is the pair (map, the class token (B, 1, C), or
        (B, 0, C) without one), as timm's ViT gives it. ``norm`` applies ``norm_f`` to each.
        """
        if output_fmt not in ('NCHW', 'NLC'):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take, last = feature_take_indices(self.depth, indices)
        hidden, residual, grid, taken = self._layers(x, take, last + 1 if stop_early or intermediates_only else None)
        position = self.cls_position(grid)
        intermediates = []
        for i in sorted(taken):
            y = self.norm_f(taken[i]) if norm else taken[i]
            prefix = y[:, :0]
            if position is not None:
                prefix = y[:, position:position + 1]
                y = torch.cat([y[:, :position], y[:, position + 1:]], dim=1)
            if output_fmt == 'NCHW':
                y = y.transpose(1, 2).unflatten(2, grid)
            intermediates.append((y, prefix) if return_prefix_tokens else y)
        if intermediates_only:
            return intermediates
        features = add_norm(self.norm_f, self.drop_path(hidden), residual, prenorm=False,
                            residual_in_fp32=self.residual_in_fp32)
        return features, intermediates

    def flops(self, input_shape: Optional[tuple[int, int, int]] = None) -> int:
        """Multiply-accumulates as the original counts them (its analytic ``VisionMamba.flops``), for one
        ``input_shape`` (C, H, W) image (default: the model's channels at 224 x 224).

        Per layer: in_proj, conv, x_proj and dt_proj once (not per direction), the scan ``5*E*L*N + 2*E*L`` per
        direction, the attention's two small linears once (no L factor), out_proj and one ``L*C`` norm term; plus
        the patch embedding and the head. Gives 1.482 G for LocalVim-T and 4.771 G for LocalVim-S at 224.
        """
        input_shape = input_shape or (input_channels(self), 224, 224)
        grid = self.token_grid(*input_shape[1:])
        patches = grid[0] * grid[1]
        tokens = patches + self.num_prefix_tokens
        total = input_shape[0] * self.patch_size ** 2 * self.embed_dim * patches
        for layer in self.layers:
            mixer = layer.mixer
            inner, state, rank = mixer.d_inner, mixer.d_state, mixer.dt_rank
            total += self.embed_dim * 2 * inner * tokens
            total += (tokens + mixer.d_conv - 1) * inner * mixer.d_conv
            total += tokens * inner * (rank + 2 * state) + tokens * rank * inner
            total += mixer.num_directions * (5 * inner * tokens * state + 2 * inner * tokens)
            total += 2 * inner * mixer.attn.global_reduce.out_features
            total += tokens * inner * self.embed_dim + tokens * self.embed_dim
        return total + self.embed_dim * self.num_classes

    def prune_intermediate_layers(self, indices: Union[int, Sequence[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop layers after the last wanted intermediate (timm API); returns the kept indices. ``prune_head`` leaves
        no classifier and no pooling (``reset_classifier(0, '')``, as timm's models): the model gives every token."""
        take, last = feature_take_indices(self.depth, indices)
        self.layers = self.layers[:last + 1]
        self.depth = len(self.layers)
        if prune_norm:
            self.norm_f = nn.Identity()
        if prune_head:
            self.reset_classifier(0, '')
        return take


def checkpoint_filter_fn(state_dict: dict, model: VisionMamba) -> dict:
    """Adapt an original or own checkpoint to ``model``: unwrap ``state_dict``/``model``, strip ``module.`` and resize
    position tables (``pos_embed``, RoPE ``freqs_cos``/``freqs_sin``) of another size to the model's token grid. A
    table is taken as a square grid, as every released and ``tools/train.py`` checkpoint's is (the file does not
    record its grid): one of a square token count is resized for a model of an oblong grid even when that grid holds
    as many tokens (the 14 x 14 release for a 7 x 28 grid); one of another count and the model's shape is kept."""
    state_dict = state_dict_from(state_dict)
    targets = model.state_dict()
    other_class_token = ('cls_token' in state_dict) != model.has_cls_token
    out = {}
    for key, value in state_dict.items():
        if key in ('pos_embed', 'rope.freqs_cos', 'rope.freqs_sin') and key in targets:   # else the load names it
            if value.shape != targets[key].shape:
                value = _resize_checkpoint_table(value, model, key, other_class_token)
            elif _square_grid_side(value, model, key) is not None:
                value = _resize_checkpoint_table(value, model, key)
        out[key] = value
    return out


def _square_grid_side(value: torch.Tensor, model: VisionMamba, key: str) -> Optional[int]:
    """The side of the square grid that a checkpoint table of the model's shape holds where the model's grid is
    oblong (as many tokens, other rows and columns); None when the model's grid is square or the count no square."""
    if model.grid[0] == model.grid[1]:
        return None
    tokens = value.shape[-2] - (model.num_prefix_tokens if key == 'pos_embed' else 0)
    side = math.isqrt(tokens)
    return side if side * side == tokens else None


def _resize_checkpoint_table(value: torch.Tensor, model: VisionMamba, key: str,
                             other_class_token: bool = False) -> torch.Tensor:
    """Resize a square per-token table from a checkpoint to the model's grid (class token kept in the middle). A table
    of no square grid from a checkpoint with a class token where the model has none, or the other way round, is kept
    as it is: the load then names ``cls_token`` and the table."""
    extra = model.num_prefix_tokens if key == 'pos_embed' else 0
    tokens = value.shape[-2] - extra
    side = int(round(math.sqrt(tokens)))
    if side * side != tokens:
        if other_class_token:
            return value
        raise ValueError(f'{key}: the checkpoint\'s table {tuple(value.shape)} holds {tokens} tokens, not a square '
                         f'grid, and only square tables are resized: build the model at the checkpoint\'s img_size')
    if value.dim() == 2:
        return position_table(value.unsqueeze(0), (side, side), model.grid, bool(extra))[0]
    return position_table(value, (side, side), model.grid, bool(extra))


def _cfg(name: str) -> dict:
    return model_cfg(name, first_conv='patch_embed.proj', classifier='head')


default_cfgs = generate_default_cfgs({
    'local_vim_tiny.in1k': _cfg('local_vim_tiny'),
    'local_vim_tiny_middle_cls_token.in1k': _cfg('local_vim_tiny_middle_cls_token'),
    'local_vim_small.in1k': _cfg('local_vim_small'),
    'local_vim_small_searched.untrained': _cfg('local_vim_small_searched'),
    'local_vim_tiny_wo_search.untrained': _cfg('local_vim_tiny_wo_search'),
    'local_vim_tiny_search.untrained': _cfg('local_vim_tiny_search'),
})


def quarter_ends(depth: int) -> tuple[int, ...]:
    """The last layer of each quarter of the trunk: ``features_only``'s default layers ((4, 9, 14, 19) at depth 20,
    the original's detection/segmentation choice)."""
    return tuple(sorted({max(depth * q // 4 - 1, 0) for q in range(1, 5)}))


def _create_local_vim(variant: str, pretrained: bool = False, **kwargs: Any) -> VisionMamba:
    """``channels`` (the original's name) goes in as ``in_chans``, the name timm reads to adapt pretrained weights."""
    if kwargs.get('channels') is not None:
        kwargs['in_chans'] = kwargs.pop('channels')
    return build_local_mamba(VisionMamba, variant, pretrained, checkpoint_filter_fn, quarter_ends(kwargs['depth']),
                             kwargs['depth'], 'layer', **kwargs)


_LOCAL_VIM_BASE = dict(patch_size=16, depth=20, rms_norm=True, residual_in_fp32=True, final_pool_type='mean',
                       if_abs_pos_embed=True)
_ROPE = dict(if_rope=True, if_rope_residual=True)


def _uniform(directions: tuple[str, ...], kwargs: dict) -> DirectionTable:
    """The same directions in every layer, for the depth the caller asked for."""
    return tuple(directions for _ in range(kwargs.get('depth', _LOCAL_VIM_BASE['depth'])))


@register_model
@supernet_of('local_vim_tiny')
def local_vim_tiny_search(pretrained: bool = False, **kwargs: Any) -> VisionMamba:
    """LocalVim-T search supernet (width 128, every layer weighs all candidates: ``candidates=``, default the
    original's 8)."""
    args = dict(_LOCAL_VIM_BASE, **_ROPE, embed_dim=128, default_directions=None)
    return _create_local_vim('local_vim_tiny_search', pretrained, **dict(args, **kwargs))


@register_model
def local_vim_tiny(pretrained: bool = False, **kwargs: Any) -> VisionMamba:
    """LocalVim-T (searched directions), 76.2% ImageNet top-1 in the original."""
    args = dict(_LOCAL_VIM_BASE, **_ROPE, embed_dim=192, default_directions=LOCAL_VIM_TINY_DIRECTIONS)
    return _create_local_vim('local_vim_tiny', pretrained, **dict(args, **kwargs))


@register_model
def local_vim_tiny_middle_cls_token(pretrained: bool = False, **kwargs: Any) -> VisionMamba:
    """LocalVim-T with a middle class token and no RoPE, 77.8% in the original."""
    args = dict(_LOCAL_VIM_BASE, embed_dim=192, if_cls_token=True, use_middle_cls_token=True,
                default_directions=LOCAL_VIM_TINY_DIRECTIONS)
    return _create_local_vim('local_vim_tiny_middle_cls_token', pretrained, **dict(args, **kwargs))


@register_model
def local_vim_small_searched(pretrained: bool = False, **kwargs: Any) -> VisionMamba:
    """LocalVim-S with the searched LocalVim-T directions (the original's first, shadowed `local_vim_small`)."""
    args = dict(_LOCAL_VIM_BASE, **_ROPE, embed_dim=384, default_directions=LOCAL_VIM_TINY_DIRECTIONS)
    return _create_local_vim('local_vim_small_searched', pretrained, **dict(args, **kwargs))


@register_model
def local_vim_tiny_wo_search(pretrained: bool = False, **kwargs: Any) -> VisionMamba:
    """LocalVim-T with the un-searched (h, h_flip, w2, w2_flip) set in every layer."""
    args = dict(_LOCAL_VIM_BASE, **_ROPE, embed_dim=192, default_directions=_uniform(UNIFORM_W2_DIRECTIONS, kwargs))
    return _create_local_vim('local_vim_tiny_wo_search', pretrained, **dict(args, **kwargs))


@register_model
def local_vim_small(pretrained: bool = False, **kwargs: Any) -> VisionMamba:
    """LocalVim-S as the original registers it (its second definition): (h, h_flip, w2, w2_flip) in every layer."""
    args = dict(_LOCAL_VIM_BASE, **_ROPE, embed_dim=384, default_directions=_uniform(UNIFORM_W2_DIRECTIONS, kwargs))
    return _create_local_vim('local_vim_small', pretrained, **dict(args, **kwargs))
