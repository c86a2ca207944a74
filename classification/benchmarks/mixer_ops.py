"""The fused mixer ops (``multi_scan_inner``, ``attention_merge``) at LocalVim-T's and LocalVMamba-T's layer shapes:
problems for the GPU check (the triton backend against the reference, outputs and gradients) and their timings
against the ``composed`` path (one Triton conv and one Triton scan around plain gathers, transposes and scatters:
what ran before the fused kernels), forward + backward also under ``torch.use_deterministic_algorithms(True)`` (the
scans' B / C gradients summed per channel block instead of by atomics) and, for the scan alone, the fused scan
kernel at the selective-scan benchmark shape.

LocalVim-T layer: 14x14 grid plus the middle class token (T = 197), E = 384, N = 16, R = 12, conv width 4, z gate,
directions ``h v_flip w7 w7_flip`` (its first searched layer: windows with padding, L = 197 + padding).
LocalVMamba-T stage-1 layer (:data:`VSSM_LAYER`): 56x56 grid (T = 3136), E = 192, N = 16, R = 6, no conv, no gate
(the token-major path), fp32 tokens as the model gives them, directions ``h h_flip w7 w7_flip``.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Callable, Dict, Iterator, List, Sequence, Tuple, Union
from unittest import mock

import torch
from localmamba_conv1d import causal_conv1d_fn
from localmamba_kernel_runtime import backends
from localmamba_ssm import attention_merge_fn, attention_merge_ref, multi_scan_inner_fn, selective_scan_fn
from localmamba_ssm.ops.reference import multi_scan_inner_composed

from ..models.scan_maps import sequence_index
from .tables import render_table
from .timing import DTYPES, median_seconds

DeviceLike = Union[str, torch.device]

LAYER_DIRECTIONS = ("h", "v_flip", "w7", "w7_flip")
# (time steps, channels) per program of the Triton scans, timed besides the default to pick the best on a GPU (the
# backward spills registers at larger tiles: 32 x 8, 64 x 4)
SCAN_TILES = ((16, 8), (32, 4), (16, 16))
VSSM_LAYER = dict(grid=(56, 56), inner=192, state=16, rank=6, directions=("h", "h_flip", "w7", "w7_flip"),
                  cls_token=False, conv=False, gate=False)
QUICK_LAYER = dict(grid=(3, 5), inner=12, state=4, rank=2)        # tiny sizes of the --quick (CPU) runs
QUICK_MERGE = dict(num_tokens=16, channels=16)
QUICK_VSSM_LAYER = dict(VSSM_LAYER, **QUICK_LAYER)
MIXER_BATCHES = (8, 64)     # the batches of the mixer timings (tiny runs: batch 2), the rows gpu_report reads
MIXER_HEADER = ["op", "dtype", "batch", "step", "ms", "vs fused"]   # the timings table's, as gpu_report finds it


def _problem_sizes(quick: bool) -> Tuple[dict, dict, dict]:
    """Keyword sizes of the LocalVim-T layer, the merge and the LocalVMamba-T layer problems (tiny when ``quick``)."""
    return (QUICK_LAYER if quick else {}), (QUICK_MERGE if quick else {}), (QUICK_VSSM_LAYER if quick else VSSM_LAYER)


@contextlib.contextmanager
def deterministic_algorithms() -> Iterator[None]:
    """``torch.use_deterministic_algorithms(True)`` inside the block, the previous setting restored after. warn_only
    (its warnings silenced): on CUDA, cuBLAS matmuls would otherwise raise without CUBLAS_WORKSPACE_CONFIG."""
    previous = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])


def _autocast(device: DeviceLike, dtype: torch.dtype):
    """Autocast to ``dtype`` unless fp32: half activations meet fp32 parameters as in a model trained with AMP."""
    return torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype != torch.float32)


def mixer_problem(device: DeviceLike, dtype: torch.dtype, batch: int = 2, grid: Tuple[int, int] = (14, 14),
                  inner: int = 384, state: int = 16, rank: int = 12, directions: Sequence[str] = LAYER_DIRECTIONS,
                  cls_token: bool = True, seed: int = 0, composed: bool = False, conv: bool = True,
                  gate: bool = True):
    """(fn, inputs needing gradients, output weights) of one ``multi_scan_inner_fn`` call, with a width-4 conv and
    the z gate unless not ``conv`` / ``gate`` (of its ``composed`` path on the dispatching conv and scan when
    ``composed``); tokens in ``dtype``, parameters fp32."""
    g = torch.Generator().manual_seed(seed)
    num_dirs = len(directions)
    cls_position = grid[0] * grid[1] // 2 if cls_token else None
    index = sequence_index(directions, grid, cls_position).to(device)
    num_tokens = grid[0] * grid[1] + cls_token

    def rand(*shape, scale=1.0, dt=torch.float32):
        return (torch.randn(*shape, generator=g) * scale).to(device=device, dtype=dt).requires_grad_()

    tokens = rand(batch, num_tokens, 2 * inner if gate else inner, dt=dtype)
    params = [rand(num_dirs, rank + 2 * state, inner, scale=inner ** -0.5),
              rand(num_dirs, inner, rank, scale=rank ** -0.5), rand(num_dirs, inner, scale=0.5),
              rand(num_dirs, inner, state, scale=0.5), rand(num_dirs, inner)]
    conv_params = [rand(num_dirs, inner, 1, 4, scale=0.5), rand(num_dirs, inner, scale=0.1)] if conv else []
    weights = [torch.randn(batch, num_dirs, num_tokens, inner, generator=g).to(device)]
    args = params + (conv_params or [None, None])

    def fn():
        with _autocast(device, dtype):
            if composed:
                return multi_scan_inner_composed(tokens, index, *args, gate, causal_conv1d_fn, selective_scan_fn)
            return multi_scan_inner_fn(tokens, index, *args, gate=gate)

    return fn, [tokens] + params + conv_params, weights


def merge_problem(device: DeviceLike, dtype: torch.dtype, batch: int = 2, num_dirs: int = 4, num_tokens: int = 197,
                  channels: int = 192, seed: int = 1, reference: bool = False):
    """(fn, inputs, output weights) of one ``attention_merge_fn`` call (LocalVim-T: C = 192, C' = 24; the plain-op
    reference when ``reference``)."""
    g = torch.Generator().manual_seed(seed)
    reduced = channels // 8

    def rand(*shape, scale=1.0, shift=0.0, dt=torch.float32):
        return (torch.randn(*shape, generator=g) * scale + shift).to(device=device, dtype=dt).requires_grad_()

    inputs = [rand(batch, num_dirs, num_tokens, channels, dt=dtype), rand(channels, scale=0.1, shift=1.0),
              rand(channels, scale=0.1), rand(reduced, channels, scale=channels ** -0.5), rand(reduced, scale=0.1),
              rand(channels, reduced, scale=reduced ** -0.5), rand(channels, scale=0.1)]
    weights = [torch.randn(batch, num_tokens, channels, generator=g).to(device)]

    def fn():
        with _autocast(device, dtype):
            return (attention_merge_ref if reference else attention_merge_fn)(*inputs)

    return fn, inputs, weights


def correctness_cases(device: DeviceLike, quick: bool) -> List[Tuple[str, str, Callable]]:
    """(case, dtype, problem maker) of the fused mixer ops for ``gpu_check.correctness_cases``, fp32 and bf16."""
    sizes, merge_sizes, vssm = _problem_sizes(quick)
    cases = []
    for dtype in (torch.float32, torch.bfloat16):
        name = str(dtype).replace("torch.", "")
        cases += [("multi_scan_inner K=4 cls, gate", name, lambda dt=dtype: mixer_problem(device, dt, **sizes)),
                  ("attention_merge K=4", name, lambda dt=dtype: merge_problem(device, dt, **merge_sizes))]
    cases.append(("multi_scan_inner token-major", "float32", lambda: mixer_problem(device, torch.float32, **vssm)))
    return cases


def deterministic_cases(device: DeviceLike, quick: bool) -> List[Tuple[str, str, Callable]]:
    """(case, dtype, problem maker) of the multi-direction scans to check again under
    :func:`deterministic_algorithms` (their backward's other path: B / C gradients written per channel block, summed
    in torch), fp32."""
    sizes, _, vssm = _problem_sizes(quick)
    return [("multi_scan_inner conv, determ.", "float32", lambda: mixer_problem(device, torch.float32, **sizes)),
            ("multi_scan_inner token-major, determ.", "float32",
             lambda: mixer_problem(device, torch.float32, **vssm))]


DETERMINISTIC = "deterministic"


def _timed_steps(makers: Dict[str, Callable]) -> Dict[str, Callable[[], None]]:
    """Forward and forward + backward step of each labelled problem, every op on the triton backend; the problem
    labelled :data:`DETERMINISTIC` only forward + backward, under :func:`deterministic_algorithms`."""
    steps = {}
    for label, make in makers.items():
        fn, inputs, weights = make()
        mode = deterministic_algorithms if label == DETERMINISTIC else contextlib.nullcontext

        def forward(fn=fn):
            with backends.forced_backend("triton"), torch.no_grad():
                fn()

        def forward_backward(fn=fn, weight=weights[0], mode=mode):
            with backends.forced_backend("triton"), mode():
                out = fn()
                torch.autograd.backward(out, weight.to(out.dtype))

        if label != DETERMINISTIC:
            steps[f"{label} fwd"] = forward
        steps[f"{label} fwd+bwd"] = forward_backward
    return steps


def fused_scan_step(device: DeviceLike, batch: int = 8, dim: int = 384, seqlen: int = 196, dstate: int = 16,
                    rank: int = 12) -> Dict[str, Callable[[], None]]:
    """The fused scan kernel alone (one direction, identity index, z gate, its dt projection of rank ``rank``) at
    the selective-scan benchmark shape."""
    from localmamba_ssm.ops.triton import multi_scan_triton as kernels

    g = torch.Generator().manual_seed(4)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device).requires_grad_()

    u, x_dbl = rand(batch, 1, seqlen, dim), rand(batch, 1, seqlen, rank + 2 * dstate)
    tokens, dt_weight = rand(batch, seqlen, 2 * dim), rand(1, dim, rank, scale=rank ** -0.5)
    A_log, D, bias = rand(1, dim, dstate, scale=0.5), rand(1, dim), rand(1, dim, scale=0.5)
    index = torch.arange(seqlen, device=device, dtype=torch.int32)[None]
    grad = torch.randn(batch, 1, seqlen, dim, generator=g).to(device)
    inputs = (u, x_dbl, tokens, index, A_log, D, dt_weight, bias, True, False, kernels.SCAN_CHUNK)

    def forward():
        with torch.no_grad():
            kernels.multi_scan_scan_fwd(*inputs)

    def forward_backward():
        out, _ = kernels.multi_scan_scan_fwd(*inputs)
        out.backward(grad)

    return {"fused scan fwd": forward, "fused scan fwd+bwd": forward_backward}


def mixer_timings(device: DeviceLike, quick: bool = False, repeats: int = 20) -> str:
    """Milliseconds of the fused ops (backend triton) against the composed path (multi_scan_inner; its conv and scan
    on triton) or the plain-op reference (attention_merge), fp32 and bf16, at batch 8 and 64 (:data:`MIXER_BATCHES`;
    tiny when ``quick``), the multi-direction op forward + backward also deterministic, and at LocalVMamba-T's
    stage-1 layer (fp32, as the model runs it); then the fused scan kernel alone at the selective-scan benchmark
    shape, at its default tiles and (unless ``quick``) at the other :data:`SCAN_TILES`. ``quick`` warms up once (the
    interpreter compiles nothing)."""
    device = torch.device(device)
    rows = [list(MIXER_HEADER)]
    sizes, merge_sizes, vssm = _problem_sizes(quick)

    def scan_makers(dtype, batch, **problem):
        def make(label):
            return lambda: mixer_problem(device, dtype, batch, composed=label == "composed", **problem)

        return {label: make(label) for label in ("fused", "composed", DETERMINISTIC)}

    for dtype_name in ("fp32", "bf16"):
        dtype = DTYPES[dtype_name]
        for batch in (2,) if quick else MIXER_BATCHES:
            problems = [("multi_scan_inner", scan_makers(dtype, batch, **sizes)),
                        ("attention_merge", {
                            "fused": lambda: merge_problem(device, dtype, batch, **merge_sizes),
                            "reference": lambda: merge_problem(device, dtype, batch, reference=True,
                                                               **merge_sizes)})]
            if dtype_name == "fp32":
                problems.append(("multi_scan_inner LocalVMamba-T", scan_makers(dtype, batch, **vssm)))
            for op, makers in problems:
                seconds = median_seconds(_timed_steps(makers), repeats, 1 if quick else 3, device)
                for name, sec in seconds.items():
                    label, step = name.split(" ")
                    rows.append([f"{op} [{label}]", dtype_name, str(batch), step, f"{sec * 1e3:.3f}",
                                 f"{sec / seconds['fused ' + step]:.2f}x"])
    shape = (dict(batch=2, dim=16, seqlen=9, dstate=4, rank=2) if quick
             else dict(batch=8, dim=384, seqlen=196, dstate=16, rank=12))
    size = "x".join(str(shape[k]) for k in ("batch", "dim", "seqlen", "dstate"))
    from localmamba_ssm.ops.triton import multi_scan_triton as kernels

    default = (kernels.SCAN_CHUNK, kernels.SCAN_BLOCK_D)
    for tiles in [default] + [t for t in SCAN_TILES if t != default and not quick]:
        with mock.patch.multiple(kernels, SCAN_CHUNK=tiles[0], SCAN_BLOCK_D=tiles[1]):
            seconds = median_seconds(fused_scan_step(device, **shape), repeats, 1 if quick else 3, device)
        for name, sec in seconds.items():
            label = f"{name.rsplit(' ', 1)[0]} tiles {tiles[0]}x{tiles[1]}" + (" (default)" if tiles == default else "")
            rows.append([label, "fp32", size, name.rsplit(" ", 1)[1], f"{sec * 1e3:.3f}", "-"])
    return render_table(rows)
