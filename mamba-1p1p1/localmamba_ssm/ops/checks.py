"""Argument validation for the selective-scan and multi-direction ops: clear ValueErrors naming the argument and the
expected shape."""
from __future__ import annotations

import weakref
from typing import Dict, Optional, Sequence, Tuple

import torch

from localmamba_kernel_runtime.validation import check_tensor_types, shape_str


def _check_bc(name: str, M: torch.Tensor, batch: int, dim: int, dstate: int, seqlen: int) -> None:
    shape = tuple(M.shape)
    if M.dim() == 2 and shape == (dim, dstate):
        return
    if M.dim() == 3 and shape == (batch, dstate, seqlen):
        return
    if M.dim() == 4 and shape[0] == batch and shape[2:] == (dstate, seqlen) and shape[1] > 0 and dim % shape[1] == 0:
        return
    raise ValueError(
        f"selective_scan: {name} must have shape (Dm, N)=({dim}, {dstate}), (Bt, N, L)=({batch}, {dstate}, {seqlen}) "
        f"or (Bt, G, N, L)=({batch}, G, {dstate}, {seqlen}) with Dm % G == 0; got {shape_str(M)}")


def check_scan_args(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                    D: Optional[torch.Tensor], z: Optional[torch.Tensor], delta_bias: Optional[torch.Tensor],
                    delta_softplus: bool = False, return_last_state: bool = False) -> None:
    """Validate selective-scan inputs; raise NotImplementedError for complex A, ValueError for a wrong shape or a
    ``delta_softplus`` / ``return_last_state`` that is neither a bool nor the integer 0 or 1 (the official kernel
    takes 0 and 1 as its C++ bool).

    Shapes are skipped while ``torch.jit`` traces (ONNX export), where they are traced values. An argument that is
    not a tensor (None where one is required) is a TypeError.
    """
    check_tensor_types("selective_scan", dict(u=u, delta=delta, A=A, B=B, C=C),
                       dict(D=D, z=z, delta_bias=delta_bias))
    if A.is_complex():
        raise NotImplementedError("selective_scan: complex A is not supported (A must be real, of shape (Dm, N))")
    for name, flag in (("delta_softplus", delta_softplus), ("return_last_state", return_last_state)):
        if not (isinstance(flag, int) and flag in (0, 1)):  # bool is an int
            raise ValueError(f"selective_scan: {name} must be a bool (or 0 / 1), got {flag!r}")
    if torch.jit.is_tracing():
        return
    if u.dim() != 3:
        raise ValueError(f"selective_scan: u must have shape (Bt, Dm, L), got {shape_str(u)}")
    batch, dim, seqlen = u.shape
    if seqlen < 1:
        raise ValueError(f"selective_scan: u needs at least one step (L >= 1), got {shape_str(u)}")
    if tuple(delta.shape) != tuple(u.shape):
        raise ValueError(f"selective_scan: delta must have shape (Bt, Dm, L)={tuple(u.shape)}, got {shape_str(delta)}")
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"selective_scan: A must have shape (Dm, N) with Dm={dim}, got {shape_str(A)}")
    dstate = A.shape[1]
    if dstate < 1:
        raise ValueError(f"selective_scan: A needs at least one state (N >= 1), got {shape_str(A)}")
    _check_bc("B", B, batch, dim, dstate, seqlen)
    _check_bc("C", C, batch, dim, dstate, seqlen)
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and tuple(t.shape) != (dim,):
            raise ValueError(f"selective_scan: {name} must have shape (Dm,)=({dim},), got {shape_str(t)}")
    if z is not None and tuple(z.shape) != tuple(u.shape):
        raise ValueError(f"selective_scan: z must have shape (Bt, Dm, L)={tuple(u.shape)}, got {shape_str(z)}")
    for name, t in (("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C), ("D", D), ("z", z),
                    ("delta_bias", delta_bias)):
        if t is not None and not t.is_floating_point():
            raise ValueError(f"selective_scan: {name} must be a floating-point tensor, got {t.dtype}")
        if t is not None and t.device != u.device:
            raise ValueError(f"selective_scan: {name} is on {t.device} but u is on {u.device}")


STATE_UPDATE = "selective_state_update"


def check_state_update_args(state: torch.Tensor, x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor,
                            B: torch.Tensor, C: torch.Tensor, D: Optional[torch.Tensor], z: Optional[torch.Tensor],
                            dt_bias: Optional[torch.Tensor], dt_softplus: bool) -> None:
    """Validate ``selective_state_update`` inputs (the shapes mamba_ssm 1.1.1 asserts): state (Bt, Dm, N); x, dt, z
    (Bt, Dm); A (Dm, N); B, C (Bt, N); D, dt_bias (Dm,). One ValueError naming the argument (TypeError for one that
    is not a tensor, NotImplementedError for a complex A); then, being inference only, a RuntimeError for an input
    that requires grad while grad mode is on."""
    op = STATE_UPDATE
    check_tensor_types(op, dict(state=state, x=x, dt=dt, A=A, B=B, C=C), dict(D=D, z=z, dt_bias=dt_bias))
    if A.is_complex():
        raise NotImplementedError(f"{op}: complex A is not supported (A must be real, of shape (Dm, N))")
    if not (isinstance(dt_softplus, int) and dt_softplus in (0, 1)):  # bool is an int
        raise ValueError(f"{op}: dt_softplus must be a bool (or 0 / 1), got {dt_softplus!r}")
    if state.dim() != 3:
        raise ValueError(f"{op}: state must have shape (Bt, Dm, N), got {shape_str(state)}")
    batch, dim, dstate = state.shape
    if dstate < 1:
        raise ValueError(f"{op}: state needs at least one state (N >= 1), got {shape_str(state)}")
    expected = dict(x=(batch, dim), dt=(batch, dim), z=(batch, dim), A=(dim, dstate), B=(batch, dstate),
                    C=(batch, dstate), D=(dim,), dt_bias=(dim,))
    named = dict(x=x, dt=dt, z=z, A=A, B=B, C=C, D=D, dt_bias=dt_bias)
    letters = dict(x="(Bt, Dm)", dt="(Bt, Dm)", z="(Bt, Dm)", A="(Dm, N)", B="(Bt, N)", C="(Bt, N)", D="(Dm,)",
                   dt_bias="(Dm,)")
    for name, t in named.items():
        if t is not None and tuple(t.shape) != expected[name]:
            raise ValueError(f"{op}: {name} must have shape {letters[name]}={expected[name]} for a state of shape "
                             f"{shape_str(state)}, got {shape_str(t)}")
    for name, t in dict(state=state, **named).items():
        if t is not None and not t.is_floating_point():
            raise ValueError(f"{op}: {name} must be a floating-point tensor, got {t.dtype}")
    _check_devices(op, "state is", state.device, **named)
    if torch.is_grad_enabled():
        for name, t in dict(state=state, **named).items():
            if t is not None and t.requires_grad:
                raise RuntimeError(f"{op}: {name} requires grad, but this op is inference only (no backward; the "
                                   f"state is overwritten): call it under torch.no_grad() or torch.inference_mode()")


def check_inner_args(xz: torch.Tensor, conv1d_weight: torch.Tensor, conv1d_bias: Optional[torch.Tensor],
                     x_proj_weight: torch.Tensor, delta_proj_weight: torch.Tensor, A: torch.Tensor,
                     B: Optional[torch.Tensor], C: Optional[torch.Tensor], B_proj_bias: Optional[torch.Tensor] = None,
                     C_proj_bias: Optional[torch.Tensor] = None, out_proj_weight: Optional[torch.Tensor] = None,
                     out_proj_bias: Optional[torch.Tensor] = None, D: Optional[torch.Tensor] = None,
                     delta_bias: Optional[torch.Tensor] = None, A_b: Optional[torch.Tensor] = None) -> None:
    """Validate the arguments of the Mamba inner functions by name: shapes, devices, and outside autocast the
    projection weights' dtypes against ``xz``'s (the conv weights may be of any float dtype, as the official kernel
    takes them; the scan checks given B and C). An argument that is not a tensor (None where one is required) is a
    TypeError, a complex A (or A_b, the backward A of Vim's bimamba) a NotImplementedError."""
    check_tensor_types("mamba_inner", dict(xz=xz, conv1d_weight=conv1d_weight, x_proj_weight=x_proj_weight,
                                           delta_proj_weight=delta_proj_weight, A=A),
                       dict(conv1d_bias=conv1d_bias, B=B, C=C, D=D, delta_bias=delta_bias, B_proj_bias=B_proj_bias,
                            C_proj_bias=C_proj_bias, out_proj_weight=out_proj_weight, out_proj_bias=out_proj_bias,
                            A_b=A_b))
    for name, t in (("A", A), ("A_b", A_b)):
        if t is not None and t.is_complex():
            raise NotImplementedError(f"mamba_inner: complex {name} is not supported ({name} must be real, of shape "
                                      f"(E, N))")
    if torch.jit.is_tracing():
        return
    if xz.dim() != 3 or xz.shape[1] % 2:
        raise ValueError(f"mamba_inner: xz must have shape (Bt, 2E, L), got {shape_str(xz)}")
    if not xz.is_floating_point():
        raise ValueError(f"mamba_inner: xz must be a floating-point tensor, got {xz.dtype}")
    dim = xz.shape[1] // 2
    if not (conv1d_weight.dim() == 2 or (conv1d_weight.dim() == 3 and conv1d_weight.shape[1] == 1)) \
            or conv1d_weight.shape[0] != dim or conv1d_weight.shape[-1] < 1:
        raise ValueError(f"mamba_inner: conv1d_weight must have shape (E, W) or (E, 1, W) with E={dim} and W >= 1, "
                         f"got {shape_str(conv1d_weight)}")
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"mamba_inner: A must have shape (E, N) with E={dim}, got {shape_str(A)}")
    if A_b is not None and A_b.shape != A.shape:
        raise ValueError(f"mamba_inner: A_b must have A's shape (E, N)={tuple(A.shape)}, got {shape_str(A_b)}")
    if delta_proj_weight.dim() != 2 or delta_proj_weight.shape[0] != dim:
        raise ValueError(f"mamba_inner: delta_proj_weight must have shape (E, R) with E={dim}, "
                         f"got {shape_str(delta_proj_weight)}")
    rows = delta_proj_weight.shape[1] + A.shape[1] * ((B is None) + (C is None))
    if x_proj_weight.dim() != 2 or x_proj_weight.shape[1] != dim or x_proj_weight.shape[0] < rows:
        raise ValueError(f"mamba_inner: x_proj_weight must have shape (R + N*(B is None) + N*(C is None), E)="
                         f"({rows}, {dim}), got {shape_str(x_proj_weight)}")
    for name, t in (("B_proj_bias", B_proj_bias), ("C_proj_bias", C_proj_bias)):
        if t is not None and tuple(t.shape) != (A.shape[1],):
            raise ValueError(f"mamba_inner: {name} must have shape (N,)=({A.shape[1]},), got {shape_str(t)}")
    for name, t in (("conv1d_bias", conv1d_bias), ("D", D), ("delta_bias", delta_bias)):
        if t is not None and tuple(t.shape) != (dim,):
            raise ValueError(f"mamba_inner: {name} must have shape (E,)=({dim},), got {shape_str(t)}")
    for name, t in (("conv1d_weight", conv1d_weight), ("conv1d_bias", conv1d_bias), ("A", A), ("A_b", A_b), ("D", D),
                    ("delta_bias", delta_bias)):
        if t is not None and not t.is_floating_point():
            raise ValueError(f"mamba_inner: {name} must be a floating-point tensor, got {t.dtype}")
    if out_proj_weight is not None and (out_proj_weight.dim() != 2 or out_proj_weight.shape[1] != dim):
        raise ValueError(f"mamba_inner: out_proj_weight must have shape (C, E) with E={dim}, "
                         f"got {shape_str(out_proj_weight)}")
    if out_proj_bias is not None and tuple(out_proj_bias.shape) != (out_proj_weight.shape[0],):
        raise ValueError(f"mamba_inner: out_proj_bias must have shape (C,)=({out_proj_weight.shape[0]},), "
                         f"got {shape_str(out_proj_bias)}")
    projections = dict(x_proj_weight=x_proj_weight, delta_proj_weight=delta_proj_weight,
                       out_proj_weight=out_proj_weight, out_proj_bias=out_proj_bias)
    _check_devices("mamba_inner", "xz is", xz.device, A=A, A_b=A_b, B=B, C=C, D=D, delta_bias=delta_bias,
                   B_proj_bias=B_proj_bias, C_proj_bias=C_proj_bias, conv1d_weight=conv1d_weight,
                   conv1d_bias=conv1d_bias, **projections)
    # the conv takes weights of any float dtype (as the official kernel does), the scan fp32 parameters: only the
    # matmul weights must be xz's dtype
    _check_dtypes("mamba_inner", "xz is", xz, **projections)


def check_index_table(index: torch.Tensor, num_tokens: int) -> None:
    """Refuse an index table (K, L) the multi-direction kernels cannot read: values outside [0, T], or a direction
    that does not list every token in [0, T) exactly once (its output would be left unwritten)."""
    if index.numel() and (int(index.min()) < 0 or int(index.max()) > num_tokens):
        raise ValueError(f"index values must lie in [0, {num_tokens}] (the token count marks padding)")
    counts = index.new_zeros(index.shape[0], num_tokens + 1).scatter_add_(1, index, torch.ones_like(index))
    if not bool((counts[:, :num_tokens] == 1).all()):
        raise ValueError(f"index: every direction must list every token in [0, {num_tokens}) exactly once")


# id(index) -> (weak reference to it, its version counter, T) of the tables already found valid
_VALID_TABLES: Dict[int, Tuple[weakref.ref, int, int]] = {}


def check_index_table_once(index: torch.Tensor, num_tokens: int) -> None:
    """:func:`check_index_table`, skipped for a table already found valid for T tokens and not modified in place
    since (a model passes the same cached table at every call: no host sync per call on a GPU). An inference-mode
    tensor keeps no version counter, so it is checked at every call."""
    if index.is_inference():
        check_index_table(index, num_tokens)
        return
    key = id(index)
    seen = _VALID_TABLES.get(key)
    if seen is not None and seen[0]() is index and seen[1:] == (index._version, num_tokens):
        return
    check_index_table(index, num_tokens)
    _VALID_TABLES[key] = (weakref.ref(index, lambda _: _VALID_TABLES.pop(key, None)), index._version, num_tokens)


def _expect(name: str, t: Optional[torch.Tensor], shape: tuple) -> None:
    if t is not None and tuple(t.shape) != shape:
        raise ValueError(f"multi_scan_inner: {name} must have shape {shape}, got {shape_str(t)}")


def _check_devices(op: str, what: str, device: torch.device, **tensors: Optional[torch.Tensor]) -> None:
    """Refuse a tensor on another device than ``device`` by name: the cpu kernels would read its memory as the
    host's."""
    for name, t in tensors.items():
        if t is not None and t.device != device:
            raise ValueError(f"{op}: {name} is on {t.device} but {what} on {device}")


def _check_dtypes(op: str, what: str, anchor: torch.Tensor, **tensors: Optional[torch.Tensor]) -> None:
    """Outside autocast, refuse a weight whose dtype is not ``anchor``'s by name: the weights that multiply the
    activations (a matmul, a convolution, a norm), where the plain-op backends fail and the fused kernels, which
    compute in fp32, would not."""
    device_type = anchor.device.type
    if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
        return
    for name, t in tensors.items():
        if t is not None and t.dtype != anchor.dtype:
            raise ValueError(f"{op}: {name} is {t.dtype} but {what} {anchor.dtype}: cast them to one dtype, or run "
                             f"under torch.autocast")


def _check_direction_count(num_dirs: int, **weights: Optional[torch.Tensor]) -> None:
    """Refuse per-direction weights for another number of directions than the index table's rows, saying both."""
    for name, t in weights.items():
        if t is not None and t.dim() >= 1 and t.shape[0] != num_dirs:
            raise ValueError(f"multi_scan_inner: the index has {num_dirs} directions but {name} has weights for "
                             f"{t.shape[0]} (shape {shape_str(t)})")


def check_multi_scan_args(tokens: torch.Tensor, index: torch.Tensor, x_proj_weight: torch.Tensor,
                          dt_proj_weight: torch.Tensor, dt_proj_bias: torch.Tensor, A_log: torch.Tensor,
                          D: Optional[torch.Tensor], conv_weight: Optional[torch.Tensor],
                          conv_bias: Optional[torch.Tensor], gate: bool) -> None:
    """Validate ``multi_scan_inner_fn`` inputs: shapes, dtypes and devices by name, and the index table (once per
    table). Skipped while ``torch.jit`` traces."""
    if torch.jit.is_tracing():
        return
    if tokens.dim() != 3:
        raise ValueError(f"multi_scan_inner: tokens must have shape (Bt, T, C), got {shape_str(tokens)}")
    if not tokens.is_floating_point():
        raise ValueError(f"multi_scan_inner: tokens must be a floating-point tensor, got {tokens.dtype}")
    if index.dim() != 2 or index.dtype != torch.long:
        raise ValueError(f"multi_scan_inner: index must be an int64 (K, L) table, got {index.dtype} {shape_str(index)}")
    if x_proj_weight.dim() != 3:
        raise ValueError(f"multi_scan_inner: x_proj_weight must have shape (K, R + 2N, E), "
                         f"got {shape_str(x_proj_weight)}")
    num_dirs, inner = index.shape[0], x_proj_weight.shape[2]
    _check_direction_count(num_dirs, x_proj_weight=x_proj_weight, dt_proj_weight=dt_proj_weight,
                           dt_proj_bias=dt_proj_bias, A_log=A_log, D=D, conv_weight=conv_weight, conv_bias=conv_bias)
    if A_log.dim() != 3 or A_log.shape[:2] != (num_dirs, inner):
        raise ValueError(f"multi_scan_inner: A_log must have shape (K, E, N)=({num_dirs}, {inner}, N), "
                         f"got {shape_str(A_log)}")
    if dt_proj_weight.dim() != 3 or dt_proj_weight.shape[:2] != (num_dirs, inner):
        raise ValueError(f"multi_scan_inner: dt_proj_weight must have shape (K, E, R)=({num_dirs}, {inner}, R), "
                         f"got {shape_str(dt_proj_weight)}")
    rank, state = dt_proj_weight.shape[2], A_log.shape[2]
    if state < 1:
        raise ValueError(f"multi_scan_inner: A_log needs at least one state (N >= 1), got {shape_str(A_log)}")
    _expect("x_proj_weight", x_proj_weight, (num_dirs, rank + 2 * state, inner))
    for name, t in (("dt_proj_bias", dt_proj_bias), ("D", D), ("conv_bias", conv_bias)):
        _expect(name, t, (num_dirs, inner))
    if conv_weight is not None and (conv_weight.dim() not in (3, 4) or conv_weight.shape[:2] != (num_dirs, inner)
                                    or (conv_weight.dim() == 4 and conv_weight.shape[2] != 1)
                                    or conv_weight.shape[-1] < 1):
        raise ValueError(f"multi_scan_inner: conv_weight must have shape (K, E, W) or (K, E, 1, W) with "
                         f"(K, E)=({num_dirs}, {inner}) and W >= 1, got {shape_str(conv_weight)}")
    needed = inner * (2 if gate else 1)
    if tokens.shape[2] < needed:
        raise ValueError(f"multi_scan_inner: tokens need at least {needed} channels (x{' and z' if gate else ''}), "
                         f"got {tokens.shape[2]}")
    _check_devices("multi_scan_inner", "tokens are", tokens.device, index=index, x_proj_weight=x_proj_weight,
                   dt_proj_weight=dt_proj_weight, dt_proj_bias=dt_proj_bias, A_log=A_log, D=D, conv_weight=conv_weight,
                   conv_bias=conv_bias)
    _check_dtypes("multi_scan_inner", "tokens are", tokens, x_proj_weight=x_proj_weight, dt_proj_weight=dt_proj_weight,
                  conv_weight=conv_weight, conv_bias=conv_bias)   # A_log, D and dt_proj_bias may be kept in fp32
    if not torch.compiler.is_compiling() and index.device.type != "meta":    # a meta table has no values to read
        check_index_table_once(index, tokens.shape[1])


ATTENTION_WEIGHTS = ("norm_weight", "norm_bias", "reduce_weight", "reduce_bias", "select_weight", "select_bias")


def check_attention_weights(anchor: torch.Tensor, weights: Sequence[torch.Tensor], dim: int) -> None:
    """Refuse channel-attention weights that do not fit E = ``dim`` channels (the kernels read them with the strides
    of these shapes), or that lie on another device than ``anchor`` (the outputs, or the tokens)."""
    if len(weights) != len(ATTENTION_WEIGHTS):
        raise ValueError(f"attention_merge: expected the {len(ATTENTION_WEIGHTS)} weights "
                         f"{', '.join(ATTENTION_WEIGHTS)}, got {len(weights)}")
    named = dict(zip(ATTENTION_WEIGHTS, weights))
    hidden = named["reduce_weight"].shape[0] if named["reduce_weight"].dim() == 2 else -1
    expected = dict(norm_weight=(dim,), norm_bias=(dim,), reduce_weight=(hidden, dim), reduce_bias=(hidden,),
                    select_weight=(dim, hidden), select_bias=(dim,))
    for name, t in named.items():
        if tuple(t.shape) != expected[name]:
            shown = str(expected[name]).replace("-1", "E'")
            raise ValueError(f"attention_merge: {name} must have shape {shown} for E = {dim} channels, "
                             f"got {shape_str(t)}")
    _check_devices("attention_merge", "the outputs are", anchor.device, **named)
    _check_dtypes("attention_merge", "the outputs are", anchor, **named)
