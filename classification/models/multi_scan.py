"""Parts shared by the LocalVim and LocalVMamba mixers: the scan of all directions, the channel attention, the
merge of the K directions (plain sum, fused into the scan's call, or the softmax-weighted sum of a search supernet),
and the gradient layout of their parameters (:class:`GradLayoutHooks`).

The mixers call :func:`scan_all_directions` from functions that are opaque to ``torch.fx`` (``torch.fx.wrap`` for
``symbolic_trace``, timm's ``register_notrace_function`` for its feature extraction): a trace records each as one
call.
"""
from __future__ import annotations

from functools import partial
from typing import Any, NoReturn, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from localmamba_ssm import attention_merge_fn, multi_scan_attention_merge_fn, multi_scan_inner_fn
from localmamba_ssm.ops.reference import multi_scan_inner_composed

from .directions import CANDIDATES, validate_candidates
from .flop_count import traced_causal_conv1d, traced_selective_scan
from .scan_maps import parse_direction

# Every search layer is a mixer's ``multi_scan`` (:class:`MultiScan`); this ends its parameter's state-dict name.
SEARCH_WEIGHT_SUFFIX = 'multi_scan.weights'


def scan_all_directions(tokens: torch.Tensor, index: torch.Tensor, x_proj_weight: torch.Tensor,
                        dt_proj_weight: torch.Tensor, dt_proj_bias: torch.Tensor, A_log: torch.Tensor,
                        D: torch.Tensor, conv_weight: Optional[torch.Tensor] = None,
                        conv_bias: Optional[torch.Tensor] = None, gate: bool = False,
                        traced: bool = False, attention: Optional[Sequence[torch.Tensor]] = None,
                        eps: float = 1e-5) -> torch.Tensor:
    """``multi_scan_inner_fn`` (same arguments, (B, K, T, E) result) for both mixers; with ``attention`` (a
    :class:`ChannelAttention`'s ``merge_weights()`` and its LayerNorm ``eps``) the directions are attended and summed
    in the same call, ``multi_scan_attention_merge_fn`` -> (B, T, E).

    ``traced`` (a mixer's ``trace_scan``, set while counting FLOPs, see ``flop_count``) runs the plain-op composition
    with the conv and the scan as single ops that fvcore's trace can charge.
    """
    args = (tokens, index, x_proj_weight, dt_proj_weight, dt_proj_bias, A_log, D, conv_weight, conv_bias, gate)
    if traced:
        outputs = multi_scan_inner_composed(*args, traced_causal_conv1d, traced_selective_scan)
        return outputs if attention is None else attention_merge_fn(outputs, *attention, eps)
    if attention is None:
        return multi_scan_inner_fn(*args)
    return multi_scan_attention_merge_fn(*args, attention_weights=attention, eps=eps)


def grad_in_strides_of(param: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """``grad`` laid out in the strides of ``param`` (a copy only when they differ).

    A tensor with a size-1 dimension is contiguous under several strides: the depthwise conv of SS2D, which runs on a
    channels-last view, gives its (E, 1, k, k) weight a gradient whose size-1 dimension has stride 1 (and a dt_proj
    weight of rank 1, (E, 1), gets one in transposed strides), and DDP, which compares strides one by one with its
    bucket's view of the parameter, then warns 'Grad strides do not match bucket view strides' once per process."""
    if grad.stride() == param.stride():
        return grad
    return torch.empty_strided(grad.shape, param.stride(), dtype=grad.dtype, device=grad.device).copy_(grad)


class GradLayoutHooks(nn.Module):
    """Base of both mixers: :func:`grad_in_strides_of` hooked onto each parameter with a size-1 dimension, by
    :meth:`hook_grad_layouts` at the end of the mixer's build and again wherever torch gives the mixer new parameter
    objects, which carry no hooks (``copy.deepcopy``, pickling and ``torch.save`` of the model, ``to_empty`` from the
    'meta' device, ``load_state_dict(assign=True)``)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_load_state_dict_post_hook(GradLayoutHooks._hook_grad_layouts_after_load)

    def hook_grad_layouts(self) -> None:
        """Hook each parameter with a size-1 dimension that requires a gradient and lacks the hook."""
        for param in self.parameters():
            hooks = (param._backward_hooks or {}).values()
            if 1 in param.shape and param.requires_grad and not any(
                    getattr(hook, 'func', None) is grad_in_strides_of for hook in hooks):
                param.register_hook(partial(grad_in_strides_of, param))

    def _hook_grad_layouts_after_load(self, incompatible_keys: Any) -> None:
        self.hook_grad_layouts()

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self.hook_grad_layouts()

    def _apply(self, fn: Any, recurse: bool = True) -> GradLayoutHooks:
        module = super()._apply(fn, recurse)
        self.hook_grad_layouts()
        return module


class ChannelAttention(nn.Module):
    """Channel attention applied to each direction's output (shared by all directions of a layer; the original's
    ``BiAttn``, kept under the checkpoint key ``attn``).

    The gate comes from the token mean of LayerNorm(x) through a bottleneck MLP; it multiplies the un-normalised x.
    x: (..., L, C) -> (..., L, C).
    """

    def __init__(self, channels: int, act_ratio: float = 0.125):
        super().__init__()
        reduced = int(channels * act_ratio)
        self.norm = nn.LayerNorm(channels)
        self.global_reduce = nn.Linear(channels, reduced)
        self.act = nn.GELU()
        self.channel_select = nn.Linear(reduced, channels)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        summary = self.norm(x).mean(dim=-2, keepdim=True)
        return x * self.gate(self.channel_select(self.act(self.global_reduce(summary))))

    def merge_weights(self) -> tuple[torch.Tensor, ...]:
        """The weights in the order ``attention_merge_fn`` takes them (the fused per-direction attention + sum)."""
        return (self.norm.weight, self.norm.bias, self.global_reduce.weight, self.global_reduce.bias,
                self.channel_select.weight, self.channel_select.bias)


def search_probabilities(weights: torch.Tensor) -> torch.Tensor:
    """Softmax over one search layer's weights (K, 1, 1, 1) in float32, (K,) in candidate order."""
    return torch.softmax(weights.detach().view(-1).float(), dim=0)


class MultiScan(nn.Module):
    """The direction set of one layer and how their outputs are merged.

    With fixed ``directions`` the merge is a plain sum. With ``directions=None`` the layer is a search-supernet layer:
    it scans all ``candidates`` (default :data:`CANDIDATES`) and merges them as
    ``sum_k softmax(weights)_k * LayerNorm(a_k)`` where ``weights`` (K, 1, 1, 1) are the architecture parameters;
    :meth:`probabilities` is that softmax, as the search reads it.
    """

    def __init__(self, channels: int, directions: Optional[Sequence[str]] = None,
                 candidates: Optional[Sequence[str]] = None):
        super().__init__()
        self.search = directions is None
        if self.search:
            self.directions = CANDIDATES if candidates is None else validate_candidates(candidates)
            self.weights = nn.Parameter(1e-3 * torch.randn(len(self.directions), 1, 1, 1))
        else:
            if candidates is not None:
                raise ValueError('candidates are the directions of a search layer (directions=None); a layer with '
                                 'fixed directions takes none')
            self.directions = tuple(directions)
            for name in self.directions:
                parse_direction(name)
        self.channels = channels

    def probabilities(self) -> torch.Tensor:
        """Softmax over the search weights in float32, (K,) in candidate order (search layers only)."""
        if not self.search:
            raise RuntimeError('probabilities() is only defined for search-supernet layers (directions=None)')
        return search_probabilities(self.weights)

    def merge(self, outputs: torch.Tensor) -> torch.Tensor:
        """Merge per-direction outputs (B, K, L, C) into (B, L, C)."""
        if not self.search:
            return outputs.sum(dim=1)
        normed = F.layer_norm(outputs, (self.channels,))
        probs = torch.softmax(self.weights, dim=0).view(1, -1, 1, 1).to(normed.dtype)
        return (normed * probs).sum(dim=1)

    def fused_attention(self, attn: ChannelAttention) -> Optional[tuple[torch.Tensor, ...]]:
        """``attn``'s weights for a scan that attends and sums its directions in the same call (the plain merge),
        None for a search layer, whose merge is :meth:`attend_and_merge`."""
        return None if self.search else attn.merge_weights()

    def attend_and_merge(self, outputs: torch.Tensor, attn: ChannelAttention) -> torch.Tensor:
        """``merge(attn(outputs))``: (B, K, L, C) -> (B, L, C)."""
        return self.merge(attn(outputs))

    def extra_repr(self) -> str:
        return ('search over ' if self.search else '') + ', '.join(self.directions)

    def __prepare_scriptable__(self) -> NoReturn:
        """``torch.jit.script`` calls this on every submodule before compiling: every LocalMamba mixer holds a
        MultiScan, so scripting a model (or a layer) stops here with the reason, not deep inside the ops."""
        raise RuntimeError('torch.jit.script cannot compile LocalMamba models: their scan ops choose a backend (cuda, '
                           'triton, cpu or reference) in Python at each call; use torch.compile or torch.export '
                           '(or torch.fx.symbolic_trace) instead')


class MultiScanAttn(MultiScan):
    """:class:`MultiScan` that owns the shared channel attention (LocalVMamba keeps it here: keys ``attn.*``)."""

    def __init__(self, channels: int, directions: Optional[Sequence[str]] = None,
                 candidates: Optional[Sequence[str]] = None):
        super().__init__(channels, directions, candidates)
        self.attn = ChannelAttention(channels)


def search_layers(model: nn.Module) -> list[MultiScan]:
    """The search-supernet layers of a model, in layer order (empty for a model with fixed directions)."""
    return [module for module in model.modules() if isinstance(module, MultiScan) and module.search]


def search_candidates(model: nn.Module) -> tuple[str, ...]:
    """The candidates a supernet searches over, in the order of its search weights (ValueError for a model without
    search layers, or whose layers search over different candidates)."""
    found = {layer.directions for layer in search_layers(model)}
    if not found:
        raise ValueError('not a search supernet: the model has no search layers')
    if len(found) > 1:
        raise ValueError(f'the search layers search over different candidates: {sorted(found)}')
    return found.pop()
