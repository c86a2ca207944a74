"""The kernels' backwards are not differentiable themselves: a second derivative through one (``create_graph=True``
and a backward of the gradient, as a gradient penalty does) is refused in one line that says how to get it, the
references being plain PyTorch ops. torch's own errors named neither the op nor a way out (a custom op's asked for an
autograd formula to be registered)."""
from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Tuple

import torch

SECOND_DERIVATIVE_ADVICE = ("the kernels' backward is not differentiable: for second derivatives run the references "
                            "(LOCALMAMBA_BACKEND=reference, or torch.func transforms, which pick them)")
Grads = Tuple[Optional[torch.Tensor], ...]


def second_derivative_error(op: str) -> RuntimeError:
    """The error of a second derivative through the kernel backward of ``op`` (a custom op's name)."""
    return RuntimeError(f"a second derivative through {op}: {SECOND_DERIVATIVE_ADVICE}")


def refuse_second_derivative(backward_op: Any) -> None:
    """Give the custom op ``backward_op`` (a kernel backward) an autograd formula that raises
    :func:`second_derivative_error` when its outputs are differentiated (only under ``create_graph=True``: a plain
    backward runs it without autograd)."""
    name = backward_op._qualname

    def backward(ctx: Any, *grads: Optional[torch.Tensor]) -> Tuple[None, ...]:
        raise second_derivative_error(name)

    backward_op.register_autograd(backward, setup_context=lambda ctx, inputs, output: None)


class _Refused(torch.autograd.Function):
    """Views of tensors whose backward raises :func:`second_derivative_error` for the op named first."""

    @staticmethod
    def forward(op: str, *tensors: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        return tuple(t.view_as(t) for t in tensors)

    @staticmethod
    def setup_context(ctx: Any, inputs: Tuple[Any, ...], output: Any) -> None:
        ctx.op = inputs[0]

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> None:
        raise second_derivative_error(ctx.op)


def first_derivative_only(op: str) -> Callable[[Callable[..., Grads]], Callable[..., Grads]]:
    """Decorator of an ``autograd.Function``'s kernel backward ``backward(ctx, *grads)``, as ``once_differentiable``:
    it runs without autograd; under ``create_graph=True`` its gradients are tensors whose differentiation raises
    :func:`second_derivative_error` for ``op`` (once_differentiable's error names neither the op nor a way out)."""
    def decorate(backward: Callable[..., Grads]) -> Callable[..., Grads]:
        @functools.wraps(backward)
        def wrapped(ctx: Any, *grads: torch.Tensor) -> Grads:
            with torch.no_grad():
                result = backward(ctx, *grads)
            if not torch.is_grad_enabled():
                return result
            present = [i for i, g in enumerate(result) if g is not None]
            refused = _Refused.apply(op, *(result[i].detach().requires_grad_() for i in present))
            out = list(result)
            for i, g in zip(present, refused):
                out[i] = g
            return tuple(out)
        return wrapped
    return decorate
