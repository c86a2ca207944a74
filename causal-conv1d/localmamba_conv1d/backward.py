"""What the ``cpu`` and ``triton`` backends' custom ops share for their backward: the weight gradient's shifted sums
in PyTorch, and the autograd of a forward op (x, weight, bias, silu) through its backward op."""
from __future__ import annotations

import torch

from localmamba_kernel_runtime.derivatives import refuse_second_derivative


def weight_grad(grad: torch.Tensor, x: torch.Tensor, width: int) -> torch.Tensor:
    """dweight (D, W) of the causal conv from the gradient of its pre-activation ``grad`` and its input ``x``, both
    (B, D, L): ``dweight[d, k] = sum_{b, t} grad[b, d, t] * x[b, d, t - (W - 1 - k)]`` (in their dtypes)."""
    seqlen = x.shape[2]
    return torch.stack([(grad[..., width - 1 - k:] * x[..., :max(seqlen - (width - 1 - k), 0)]).sum(dim=(0, 2))
                        for k in range(width)], dim=1)


def register_autograd(fwd_op, bwd_op, cast_param_grads: bool) -> None:
    """Autograd of the custom op ``fwd_op`` (x, weight, bias, silu) through ``bwd_op`` (dout, x, weight, bias, silu)
    -> (dx, dweight, dbias): the inputs are saved, dout made contiguous, bias's gradient is None without a bias, and
    (``cast_param_grads``, for a backward op that returns them in fp32) the weight and bias gradients are cast to
    their parameters' dtypes. A second derivative through ``bwd_op`` is refused in one line."""
    def setup_context(ctx, inputs, output):
        x, weight, bias, silu = inputs
        ctx.save_for_backward(x, weight, bias)
        ctx.silu = silu

    def backward(ctx, dout):
        x, weight, bias = ctx.saved_tensors
        dx, dweight, dbias = bwd_op(dout.contiguous(), x, weight, bias, ctx.silu)
        if cast_param_grads:
            dweight = dweight.to(weight.dtype)
            dbias = dbias if bias is None else dbias.to(bias.dtype)
        return dx, dweight, None if bias is None else dbias, None

    fwd_op.register_autograd(backward, setup_context=setup_context)
    refuse_second_derivative(bwd_op)
