"""The ``cpu`` backend of ``causal_conv1d_fn``: a C kernel (conv + bias + SiLU fused, forward and backward).

Wrapped as torch.library custom ops ``localmamba::causal_conv1d_cpu_fwd`` / ``_bwd`` with fake implementations
and autograd, parallel over (batch, channel) rows. Without a working compiler (or with ``LOCALMAMBA_CPU_KERNEL=0``)
the ops compute the same in PyTorch; fp64 inputs use the reference formula (autograd).
"""
from __future__ import annotations

import ctypes
from typing import Optional, Tuple

import torch

from . import ckernel
from .precision import autocast_off
from .reference import causal_conv1d_ref
from .vector_math import PRELUDE

MIN_ROWS_PER_TASK = 64

SOURCE = PRELUDE + r"""
typedef struct {
    long batch, dim, seqlen, width, silu;
    const float *x, *weight, *bias;      /* bias may be NULL */
    float *out;
    const float *dout;
    float *dx, *dweight, *dbias;         /* this task's accumulators: (dim, width) and (dim) */
} ConvArgs;

/* a[t] = bias + sum_k w[k] x[t - (W-1) + k], zero history on the left. */
static void preact_row(const float *restrict x, const float *restrict w, float bias, long L, long W,
                       float *restrict a) {
    for (long t = 0; t < L; t++) a[t] = bias;
    for (long k = 0; k < W; k++) {
        long shift = W - 1 - k;
        float wk = w[k];
        for (long t = shift; t < L; t++) a[t] += wk * x[t - shift];
    }
}

INLINE float dot(const float *a, const float *b, long n) {
    vf acc = splat(0.0f);
    long t = 0;
    for (; t + VW <= n; t += VW) acc += load(a + t) * load(b + t);
    return hsum(acc + load_part(a + t, n - t) * load_part(b + t, n - t));
}

void conv_fwd(const ConvArgs *c, long start, long end) {
    long L = c->seqlen, W = c->width;
    for (long r = start; r < end; r++) {
        long d = r % c->dim;
        float *o = c->out + r * L;
        preact_row(c->x + r * L, c->weight + d * W, c->bias ? c->bias[d] : 0.0f, L, W, o);
        if (c->silu)
            for (long t = 0; t < L; t += VW) {
                long n = L - t < VW ? L - t : VW;
                vf a = load_part(o + t, n);
                store_part(o + t, a * sigmoid_v(a), n);
            }
    }
}

void conv_bwd(const ConvArgs *c, long start, long end) {
    long L = c->seqlen, W = c->width;
    float *g = (float *)malloc(L * sizeof(float));
    for (long r = start; r < end; r++) {
        long d = r % c->dim;
        const float *x = c->x + r * L, *w = c->weight + d * W, *dout = c->dout + r * L;
        float *dx = c->dx + r * L;
        preact_row(x, w, c->bias ? c->bias[d] : 0.0f, L, W, g);
        for (long t = 0; t < L; t += VW) {
            long n = L - t < VW ? L - t : VW;
            vf go = load_part(dout + t, n);
            if (c->silu) {
                vf a = load_part(g + t, n), s = sigmoid_v(a);
                go = go * s * (splat(1.0f) + a * (splat(1.0f) - s));
            }
            store_part(g + t, go, n);
        }
        memset(dx, 0, L * sizeof(float));
        float gsum = 0.0f;
        for (long k = 0; k < W; k++) {
            long shift = W - 1 - k;
            float wk = w[k];
            for (long s = 0; s + shift < L; s++) dx[s] += wk * g[s + shift];
            if (shift < L) c->dweight[d * W + k] += dot(g + shift, x, L - shift);
        }
        for (long t = 0; t < L; t++) gsum += g[t];
        c->dbias[d] += gsum;
    }
    free(g);
}
"""


class ConvArgs(ctypes.Structure):
    """Mirror of the C ``ConvArgs`` struct."""

    _fields_ = ([(name, ctypes.c_long) for name in ("batch", "dim", "seqlen", "width", "silu")]
                + [(name, ctypes.c_void_p) for name in
                   ("x", "weight", "bias", "out", "dout", "dx", "dweight", "dbias")])


_SIGNATURE = (ctypes.POINTER(ConvArgs), ctypes.c_long, ctypes.c_long)


def load_kernel():
    """The compiled conv1d kernel (built on first use), or None when unavailable or disabled."""
    return ckernel.load_library("causal_conv1d", SOURCE, {"conv_fwd": _SIGNATURE, "conv_bwd": _SIGNATURE})


def _args(x, weight, bias, silu) -> ConvArgs:
    return ConvArgs(batch=x.shape[0], dim=x.shape[1], seqlen=x.shape[2], width=weight.shape[1], silu=int(silu),
                    x=x.data_ptr(), weight=weight.data_ptr(), bias=None if bias is None else bias.data_ptr())


@torch.library.custom_op("localmamba::causal_conv1d_cpu_fwd", mutates_args=(), device_types="cpu")
def causal_conv1d_cpu_fwd(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                          silu: bool) -> torch.Tensor:
    """Contiguous fp32 x (B, D, L), weight (D, W), bias (D,) -> out (B, D, L)."""
    lib = load_kernel()
    if lib is None or x.numel() == 0:
        return causal_conv1d_ref(x, weight, bias, "silu" if silu else None)
    out = torch.empty_like(x)
    rows = x.shape[0] * x.shape[1]
    args = []
    for _ in range(ckernel.num_tasks(rows, MIN_ROWS_PER_TASK)):
        a = _args(x, weight, bias, silu)
        a.out = out.data_ptr()
        args.append(a)
    ckernel.run_parallel(lib.conv_fwd, args, rows)
    return out


@causal_conv1d_cpu_fwd.register_fake
def _fwd_fake(x, weight, bias, silu):
    return x.new_empty(x.shape)


@torch.library.custom_op("localmamba::causal_conv1d_cpu_bwd", mutates_args=(), device_types="cpu")
def causal_conv1d_cpu_bwd(dout: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                          silu: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward of the forward op -> dx (B, D, L), dweight (D, W), dbias (D,)."""
    lib = load_kernel()
    if lib is None or x.numel() == 0:
        return _bwd_torch(dout, x, weight, bias, silu)
    rows = x.shape[0] * x.shape[1]
    tasks = ckernel.num_tasks(rows, MIN_ROWS_PER_TASK)
    dx = torch.empty_like(x)
    dweight = weight.new_zeros((tasks,) + weight.shape)
    dbias = x.new_zeros(tasks, x.shape[1])
    args = []
    for i in range(tasks):
        a = _args(x, weight, bias, silu)
        a.dout, a.dx, a.dweight, a.dbias = dout.data_ptr(), dx.data_ptr(), dweight[i].data_ptr(), dbias[i].data_ptr()
        args.append(a)
    ckernel.run_parallel(lib.conv_bwd, args, rows)
    return dx, dweight.sum(0), dbias.sum(0)


def _bwd_torch(dout, x, weight, bias, silu):
    """The backward in PyTorch: gradient of the pre-activation, then shifted sums."""
    seqlen, width = x.shape[2], weight.shape[1]
    grad = dout
    if silu:
        pre = causal_conv1d_ref(x, weight, bias, None)
        s = torch.sigmoid(pre)
        grad = dout * s * (1 + pre * (1 - s))
    padded = torch.nn.functional.pad(grad, (0, width - 1))
    dx = sum(weight[:, k, None] * padded[..., width - 1 - k:width - 1 - k + seqlen] for k in range(width))
    dweight = torch.stack([(grad[..., width - 1 - k:] * x[..., :max(seqlen - (width - 1 - k), 0)]).sum(dim=(0, 2))
                           for k in range(width)], dim=1)
    return dx, dweight, grad.sum(dim=(0, 2))


@causal_conv1d_cpu_bwd.register_fake
def _bwd_fake(dout, x, weight, bias, silu):
    return x.new_empty(x.shape), weight.new_empty(weight.shape), x.new_empty(x.shape[1])


def _setup_context(ctx, inputs, output):
    x, weight, bias, silu = inputs
    ctx.save_for_backward(x, weight, bias)
    ctx.silu = silu


def _backward(ctx, dout):
    x, weight, bias = ctx.saved_tensors
    dx, dweight, dbias = causal_conv1d_cpu_bwd(dout.contiguous(), x, weight, bias, ctx.silu)
    return dx, dweight, None if bias is None else dbias, None


causal_conv1d_cpu_fwd.register_autograd(_backward, setup_context=_setup_context)


def causal_conv1d_cpu(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                      activation: Optional[str]) -> torch.Tensor:
    """cpu backend of ``causal_conv1d_fn`` (validated inputs; weight (D, W)); fp32 compute, output in x's dtype."""
    if x.dtype == torch.float64 or weight.dtype == torch.float64:
        return causal_conv1d_ref(x, weight, bias, activation)
    with autocast_off(x.device.type):
        out = torch.ops.localmamba.causal_conv1d_cpu_fwd(
            x.float().contiguous(), weight.float().contiguous(), None if bias is None else bias.float().contiguous(),
            activation is not None)
    return out.to(x.dtype)
