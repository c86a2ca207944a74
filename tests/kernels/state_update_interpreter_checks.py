"""Checks of the Triton ``selective_state_update`` kernel against the reference, run by
test_selective_state_update.py in a subprocess with TRITON_INTERPRET=1 and LOCALMAMBA_BACKEND=triton.

Odd channel and state counts, with and without D, z, the dt bias and softplus; fp32 tightly, bf16 loosely; a state
wider than one tile of lanes; a strided state (a view of a larger cache) updated in place; the batch split into one
kernel call per element; torch.library.opcheck of the custom op. Prints one ``ok`` line per case; exits non-zero
with a message at the first mismatch.
"""
import os
import sys

import torch
from batch_splitting import one_element_per_call
from fast_interpreter import use_fast_interpreter

from localmamba_kernel_runtime import backends
from localmamba_ssm import selective_state_update, selective_state_update_ref
from localmamba_ssm.ops.triton import state_update_triton

TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 2e-2}


def problem(batch, dim, dstate, dtype, seed, D=True, z=True, bias=True):
    """Inputs of one step: a random state (the kernel reads it), activations in ``dtype``, fp32 parameters."""
    g = torch.Generator().manual_seed(seed)
    args = dict(state=torch.randn(batch, dim, dstate, generator=g).to(dtype),
                x=torch.randn(batch, dim, generator=g).to(dtype), dt=torch.randn(batch, dim, generator=g).to(dtype),
                A=-torch.rand(dim, dstate, generator=g) - 0.2, B=torch.randn(batch, dstate, generator=g).to(dtype),
                C=torch.randn(batch, dstate, generator=g).to(dtype))
    args.update(D=torch.randn(dim, generator=g) if D else None, z=torch.randn(batch, dim, generator=g).to(dtype)
                if z else None, dt_bias=torch.rand(dim, generator=g) * 0.5 if bias else None)
    return args


def relative_error(actual, expected):
    return ((actual.float() - expected.float()).abs().max() / expected.float().abs().max().clamp_min(1e-6)).item()


def compare(label, args, softplus, dtype, out_dtype=None):
    """Kernel and reference from the same state: out and the new state, each within ``TOLERANCE`` of its dtype
    (``out_dtype``, when out's differs from the state's)."""
    state_ref = args["state"].clone()
    out = selective_state_update(**args, dt_softplus=softplus)
    out_ref = selective_state_update_ref(**dict(args, state=state_ref), dt_softplus=softplus)
    if out.dtype != args["x"].dtype or args["state"].dtype != state_ref.dtype:
        sys.exit(f"{label}: out {out.dtype}, state {args['state'].dtype}")
    for name, actual, expected, tol in (("out", out, out_ref, TOLERANCE[out_dtype or dtype]),
                                        ("state", args["state"], state_ref, TOLERANCE[dtype])):
        err = relative_error(actual, expected)
        if not err < tol:
            sys.exit(f"{label}: {name} relative error {err:.2e} >= {tol:.0e}")


def check_options():
    """Every combination of D, z, the dt bias and softplus at Dm = 5, N = 3 (partial tiles of both)."""
    for mask in range(16):
        on = [bool(mask >> i & 1) for i in range(4)]
        args = problem(2, 5, 3, torch.float32, seed=mask, D=on[0], z=on[1], bias=on[2])
        compare(f"options D={on[0]} z={on[1]} bias={on[2]} softplus={on[3]}", args, on[3], torch.float32)
    print("ok every combination of D, z, dt_bias, dt_softplus (fp32, Dm=5, N=3)")


def check_bf16():
    compare("bf16", problem(3, 7, 5, torch.bfloat16, seed=20), True, torch.bfloat16)
    print("ok bf16 state and activations (Dm=7, N=5)")


def check_mixed_dtypes():
    """fp16 x and z, bf16 state, fp32 dt, B, C: each read in its own dtype; out in x's."""
    args = problem(2, 5, 3, torch.float32, seed=21)
    args.update(x=args["x"].half(), z=args["z"].half(), state=args["state"].bfloat16())
    compare("mixed dtypes", args, True, torch.bfloat16)
    print("ok mixed dtypes (bf16 state, fp16 x and z, fp32 dt, B, C)")


def check_out_from_the_unrounded_state():
    """A bf16 state with fp32 activations: out is read from the new state in fp32, before it is rounded to bf16 (as
    mamba_ssm's kernel does), so it matches the reference to fp32 precision."""
    args = problem(2, 5, 3, torch.float32, seed=28)
    args["state"] = args["state"].bfloat16()
    compare("bf16 state, fp32 out", args, True, torch.bfloat16, out_dtype=torch.float32)
    print("ok bf16 state, fp32 x: out from the state before its rounding")


def check_state_wider_than_a_tile():
    """N = 70 > MAX_BLOCK_N = 64: two tiles of lanes, the second partial, summed into one output."""
    compare("N=70", problem(2, 3, 70, torch.float32, seed=22), True, torch.float32)
    print("ok N=70: two tiles of state lanes")


def check_several_channel_blocks():
    """Dm = 9 at N = 128: blocks of 8 channels (TILE_ELEMENTS / 64), the second partial, each walking two tiles of
    64 lanes."""
    block_d = state_update_triton.tiles(128)[0]
    if block_d != 8:
        sys.exit(f"tiles(128) gives blocks of {block_d} channels, this check expects 8")
    compare("Dm=9, N=128", problem(1, 9, 128, torch.float32, seed=23), False, torch.float32)
    print("ok Dm=9 at N=128: two channel blocks, the last partial")


def check_strided_state_in_place():
    """The state as every other lane of a larger cache, and x, dt, B, C as columns of wider tensors: the cache's
    other lanes untouched, the view's updated as the reference updates a contiguous copy."""
    args = problem(2, 5, 3, torch.float32, seed=24)
    cache = torch.randn(2, 5, 6)
    cache[:, :, ::2] = args["state"]
    args["state"] = cache[:, :, ::2]
    args.update({k: torch.stack([args[k], torch.full_like(args[k], float("nan"))], dim=-1)[..., 0]
                 for k in ("x", "dt", "B", "C")})
    others = cache[:, :, 1::2].clone()
    compare("strided state", args, True, torch.float32)
    if not torch.equal(cache[:, :, 1::2], others):
        sys.exit("strided state: the cache's other lanes were written")
    print("ok strided state (a view of a cache) and strided activations, updated in place")


def check_split_batch():
    args = problem(3, 5, 3, torch.float32, seed=25)
    with one_element_per_call(state_update_triton) as counts:
        compare("batch split", args, True, torch.float32)
    if counts != [3]:
        sys.exit(f"batch split: the batch of 3 was split into {counts} calls, expected [3]")
    print("ok batch split into one call per element")


def check_empty_batch():
    args = problem(0, 5, 3, torch.float32, seed=26)
    if selective_state_update(**args).shape != (0, 5):
        sys.exit("empty batch: wrong output shape")
    print("ok empty batch")


def check_custom_op():
    """Schema (the state declared mutated), fake implementation and AOT dispatch, as torch.compile needs them."""
    args = problem(2, 5, 3, torch.float32, seed=27)
    call = (args["state"], args["x"], args["dt"], args["A"], args["B"], args["C"], args["D"], args["z"],
            args["dt_bias"], True)
    tests = ("test_schema", "test_faketensor", "test_aot_dispatch_dynamic")
    results = torch.library.opcheck(state_update_triton.selective_state_update_triton_step, call, test_utils=tests)
    if set(results.values()) != {"SUCCESS"}:
        sys.exit(f"opcheck: {results}")
    print("ok torch.library.opcheck of the custom op")


def main():
    assert os.environ.get("TRITON_INTERPRET") == "1" and os.environ.get("LOCALMAMBA_BACKEND") == "triton"
    assert backends.selected_backend("selective_state_update", "cpu") == "triton"
    use_fast_interpreter()
    check_options()
    check_bf16()
    check_mixed_dtypes()
    check_out_from_the_unrounded_state()
    check_state_wider_than_a_tile()
    check_several_channel_blocks()
    check_strided_state_in_place()
    check_split_batch()
    check_empty_batch()
    check_custom_op()


if __name__ == "__main__":
    main()
