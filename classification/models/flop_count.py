"""FLOPs of a model by fvcore's tracer, the selective scan included as one counted op.

fvcore counts one multiply-add as one FLOP and knows nothing of the selective scan, whose implementation depends on
the backend. While counting, models route their scans through :class:`TracedSelectiveScan`, an opaque autograd
node that the trace records as ``prim::PythonOp.TracedSelectiveScan``; its handle charges the original's formula
``9 * B * L * D * N`` plus ``B * D * L`` for the D skip, as the original ``VSSM.flops`` did (its handle passed
``with_Z=False``: a z gate inside the scan is an element-wise multiply, free here as it is outside the scan).
Causal depthwise convs (LocalVim) run as :func:`traced_causal_conv1d`, one ``aten::_convolution`` that fvcore charges
``B * D * W * (L + W - 1)``, as it charges the original's ``nn.Conv1d(padding=W - 1)``.
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn

from localmamba_ssm import selective_scan_fn

if TYPE_CHECKING:
    from fvcore.nn import FlopCountAnalysis

SCAN_OP = 'prim::PythonOp.TracedSelectiveScan'

# Ops that cost nothing in fvcore's convention (element-wise, data movement, shape arithmetic): given no handle so
# that ``unsupported_ops()`` lists only what a model does that is neither counted nor known to be free.
FREE_OPS = ('aten::silu', 'aten::neg', 'aten::exp', 'aten::flip', 'aten::softplus', 'aten::gelu', 'aten::sigmoid',
            'aten::mean', 'aten::mul', 'aten::add', 'aten::sum', 'aten::softmax', 'aten::gather', 'aten::pad',
            'aten::constant_pad_nd', 'aten::index_select', 'aten::numel', 'aten::lt', 'aten::scatter',
            'aten::expand_as', 'aten::sub', 'aten::unflatten', 'aten::square', 'aten::rsqrt', 'aten::rsub')


class TracedSelectiveScan(torch.autograd.Function):
    """``selective_scan_fn`` as a single node of a jit trace. Forward only: it exists for counting.

    A trace keeps only tensor inputs, so an absent D, z or delta_bias is passed as an empty tensor (and the
    positions of the inputs stay fixed for :func:`scan_flop_handle`).
    """

    @staticmethod
    def forward(ctx: Any, u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                D: torch.Tensor, z: torch.Tensor, delta_bias: torch.Tensor, delta_softplus: bool) -> torch.Tensor:
        return selective_scan_fn(u, delta, A, B, C, _absent_as_none(D), _absent_as_none(z),
                                 _absent_as_none(delta_bias), delta_softplus)

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> None:
        raise RuntimeError('TracedSelectiveScan is for FLOP counting only; it has no backward')


def _absent_as_none(t: torch.Tensor) -> Optional[torch.Tensor]:
    return None if t.numel() == 0 else t


def traced_selective_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                          D: Optional[torch.Tensor] = None, z: Optional[torch.Tensor] = None,
                          delta_bias: Optional[torch.Tensor] = None, delta_softplus: bool = False) -> torch.Tensor:
    """Same arguments and result as ``selective_scan_fn`` (no last state); one node in a trace."""
    absent = u.new_empty(0)
    return TracedSelectiveScan.apply(u, delta, A, B, C, absent if D is None else D, absent if z is None else z,
                                     absent if delta_bias is None else delta_bias, delta_softplus)


def traced_causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                         activation: Optional[str] = None) -> torch.Tensor:
    """``causal_conv1d_fn`` as the original Mamba computes it (``nn.Conv1d`` padded by W - 1 both sides, cut to L):
    one convolution node in a trace. x (B, D, L), weight (D, W)."""
    length, width = x.shape[-1], int(weight.shape[-1])   # (torch 2.4 traces a size as a tensor: conv1d needs an int)
    out = F.conv1d(x, weight.unsqueeze(1).to(x.dtype), None if bias is None else bias.to(x.dtype),
                   padding=width - 1, groups=x.shape[1])[..., :length]
    return F.silu(out) if activation in ('silu', 'swish') else out


def selective_scan_flops(batch: int, length: int, channels: int, d_state: int, with_d: bool = True,
                         with_z: bool = False) -> int:
    """The original's count of one selective scan: ``9*B*L*D*N`` (+ ``B*D*L`` for D, + ``B*D*L`` for z)."""
    return 9 * batch * length * channels * d_state + (with_d + with_z) * batch * channels * length


def _present(value: Any) -> bool:
    return list(value.type().sizes()) != [0]


def scan_flop_handle(inputs: list, outputs: list) -> int:
    """fvcore handle for :data:`SCAN_OP`: inputs are the tensors (u, delta, A, B, C, D, z, delta_bias); a z gate is
    not charged (see the module notes)."""
    batch, channels, length = inputs[0].type().sizes()
    d_state = inputs[2].type().sizes()[1]
    return selective_scan_flops(batch, length, channels, d_state, _present(inputs[5]), with_z=False)


@contextmanager
def scans_as_single_ops(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, every module of ``model`` that has a ``trace_scan`` flag runs its scan as one traced op."""
    flagged = [m for m in model.modules() if hasattr(m, 'trace_scan')]
    for module in flagged:
        module.trace_scan = True
    try:
        yield model
    finally:
        for module in flagged:
            module.trace_scan = False


def flop_analysis(model: nn.Module, input_shape: tuple[int, ...] = (3, 224, 224),
                  batch: int = 1) -> FlopCountAnalysis:
    """fvcore's analysis of one forward of ``model`` on a random ``(batch, *input_shape)`` input, in eval mode, on the
    model's device, already traced (so ``total()``, ``by_module()``, ``unsupported_ops()`` are ready); the scan is
    charged by :func:`scan_flop_handle`. fvcore counts one multiply-add as one FLOP."""
    with warnings.catch_warnings():  # fvcore.nn scripts its focal loss at import, which torch now deprecates
        warnings.filterwarnings('ignore', message='`torch.jit.script` is deprecated', category=FutureWarning)
        from fvcore.nn import FlopCountAnalysis

    parameter = next(model.parameters())
    image = torch.randn(batch, *input_shape, device=parameter.device, dtype=parameter.dtype)
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        with scans_as_single_ops(model), torch.no_grad():
            analysis = FlopCountAnalysis(model, (image,))
            analysis.set_op_handle(**{SCAN_OP: scan_flop_handle}, **{op: None for op in FREE_OPS})
            analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            analysis.total()
    finally:
        for module, training in modes.items():
            module.training = training
    return analysis


def count_flops(model: nn.Module, input_shape: tuple[int, ...] = (3, 224, 224), batch: int = 1) -> int:
    """Total FLOPs of :func:`flop_analysis`."""
    return int(flop_analysis(model, input_shape, batch).total())
