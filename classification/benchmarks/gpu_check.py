"""One-shot check of the GPU backends (``tools/gpu_check.py``): every Triton kernel against the reference, then timings.

Correctness: the triton backend (forced) against the reference backend for the selective scan (grouped, (Bt, N, L) and
time-invariant B/C, with/without z, softplus, last state), the causal conv1d (widths 2-4, SiLU or not),
mamba_inner_fn_no_out_proj, selective_state_update (outputs and the updated state; it has no gradients), the scan
under CUDA autocast and the fused mixer ops (multi_scan_inner with a conv and token-major, attention_merge:
``mixer_ops``); outputs and all gradients, fp32 and bf16 inputs; then the scans again under
``torch.use_deterministic_algorithms(True)`` (their backward's per-block B / C gradients, not atomics); relative error
= max |x - ref| / max |ref|; then the logits of local_vim_tiny and local_vssm_tiny (every op on triton against every
op on the reference), and `--model-ema`'s multi-tensor update against timm's ModelEmaV2 (bit for bit). Timing:
``op_speed``'s interleaved medians for every backend available on the device (reference, triton, and the official
``mamba_ssm`` / ``causal_conv1d`` kernels as backend ``cuda`` when importable) at the LocalVim-T shape and at batch
64, then the fused mixer ops against their composed path and the fused scan kernel alone
(``mixer_ops.mixer_timings``).
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, ContextManager, Dict, List, Sequence, Tuple

import torch
from localmamba_kernel_runtime import backends
from localmamba_ssm import MODEL_OPS
from timm.utils import ModelEmaV2

from ..engine.ema import ForeachModelEma
from ..engine.model_builder import create_model_at_size
from .mixer_ops import correctness_cases as mixer_cases
from .mixer_ops import SCAN_TILES, deterministic_algorithms, deterministic_cases, mixer_timings
from .op_problems import Problem, conv_problem, inner_problem, scan_problem, state_update_problem
from .op_speed import OpShape, print_op_benchmark, scan_tile_sweep

TOLERANCE = {torch.float32: 2e-4, torch.bfloat16: 3e-2, torch.float16: 1e-2}


def _run(fn: Callable, inputs: Sequence[torch.Tensor], weights: Sequence[torch.Tensor]):
    for t in inputs:
        t.grad = None
    outs = fn()
    outs = outs if isinstance(outs, tuple) else (outs,)
    if any(t.requires_grad for t in inputs):
        sum((o.float() * w).sum() for o, w in zip(outs, weights)).backward()
    return [o.detach() for o in outs], [None if t.grad is None else t.grad.detach().clone() for t in inputs]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-6)).item()


def compare(fn: Callable[[], Any], inputs: Sequence[torch.Tensor], weights: Sequence[torch.Tensor]
            ) -> Tuple[float, float, str]:
    """(worst output error, worst gradient error, problems) of the triton backend against the reference."""
    backends.force_backend("triton")
    outs, grads = _run(fn, inputs, weights)
    backends.force_backend("reference")
    outs_ref, grads_ref = _run(fn, inputs, weights)
    problems = []
    if any(o.dtype != r.dtype for o, r in zip(outs, outs_ref)):
        problems.append("output dtype")
    out_err = max(_rel(o, r) for o, r in zip(outs, outs_ref))
    grad_err = 0.0
    for g, r in zip(grads, grads_ref):
        if (g is None) != (r is None):
            problems.append("gradient presence")
        elif g is not None:
            grad_err = max(grad_err, _rel(g, r))
            if g.dtype != r.dtype:
                problems.append("gradient dtype")
    return out_err, grad_err, ", ".join(problems)


def autocast_problem(device: torch.device, dim: int, seqlen: int, dstate: int) -> Problem:
    """The fp32 scan problem called under autocast (fp16 on CUDA, bf16 elsewhere): the scan still computes in fp32."""
    fn, inputs, weights = scan_problem(device, torch.float32, "var4", 1, dim, seqlen, dstate, True, True, False)

    def under_autocast():
        with torch.autocast(device_type=device.type, dtype=torch.float16 if device.type == "cuda" else torch.bfloat16):
            return fn()

    return under_autocast, inputs, weights


CheckCase = Tuple[str, str, Callable[[], Problem]]    # (case, dtype, problem maker) of the correctness table
CHECK_HEADER = ("case", "dtype", "out err", "grad err", "result")


def correctness_cases(device: torch.device, quick: bool) -> Tuple[List[CheckCase], List[CheckCase]]:
    """The rows of the correctness table: (cases checked as they are, the scans checked again under
    ``torch.use_deterministic_algorithms(True)``)."""
    dim, seqlen, dstate = (8, 9, 4) if quick else (384, 196, 16)
    cases: List[CheckCase] = []
    for dtype in (torch.float32, torch.bfloat16):
        name = str(dtype).replace("torch.", "")
        cases += [
            ("scan grouped G=1, z, softplus", name,
             lambda dt=dtype: scan_problem(device, dt, "var4", 1, dim, seqlen, dstate, True, True, False)),
            ("scan grouped G=2, last state", name,
             lambda dt=dtype: scan_problem(device, dt, "var4", 2, dim, seqlen, dstate, True, True, True)),
            ("scan (Bt,N,L), no z/softplus", name,
             lambda dt=dtype: scan_problem(device, dt, "var3", 1, dim, seqlen, dstate, False, False, True)),
            ("scan time-invariant B/C, N=5", name,
             lambda dt=dtype: scan_problem(device, dt, "const", 1, dim, seqlen, 5, True, True, False)),
            ("scan long L=777, N=12", name,
             lambda dt=dtype: scan_problem(device, dt, "var4", 1, 16, 40 if quick else 777, 12, True, True, True)),
            ("inner no out_proj", name, lambda dt=dtype: inner_problem(device, dt, dim, seqlen, dstate)),
            ("state update (decoding step)", name, lambda dt=dtype: state_update_problem(device, dt, dim, dstate)),
        ]
        for width in (2, 3, 4):
            for silu in (True, False):
                cases.append((f"conv1d W={width} silu={silu}", name,
                              lambda dt=dtype, w=width, s=silu: conv_problem(device, dt, w, s, dim, seqlen)))
    cases.append(("scan under autocast", "float32", lambda: autocast_problem(device, dim, seqlen, dstate)))
    cases += mixer_cases(device, quick)
    deterministic: List[CheckCase] = [
        ("scan grouped G=2, determ.", "float32",
         lambda: scan_problem(device, torch.float32, "var4", 2, dim, seqlen, dstate, True, True, True))]
    deterministic += deterministic_cases(device, quick)
    return cases, deterministic


def column_widths(labels: Sequence[Tuple[str, str]]) -> Tuple[int, int]:
    """Widths of the correctness table's case and dtype columns for rows labelled (case, dtype) and the header."""
    labels = [CHECK_HEADER[:2], *labels]
    return max(len(case) for case, _ in labels), max(len(dtype) for _, dtype in labels)


def check_line(cells: Sequence[str], widths: Tuple[int, int]) -> str:
    """A line of the correctness table (the cells of ``CHECK_HEADER``): case and dtype left-aligned in ``widths``,
    the errors right-aligned, two spaces between columns."""
    case, dtype, out_err, grad_err, result = cells
    return f"{case:<{widths[0]}}  {dtype:<{widths[1]}}  {out_err:>9}  {grad_err:>9}  {result}"


def _check_case(check: CheckCase, widths: Tuple[int, int], mode: Callable[[], ContextManager]) -> bool:
    """Print one row of the correctness table: the problem of ``check`` compared under the context ``mode``."""
    case, dtype, make = check
    fn, inputs, weights = make()
    tol = TOLERANCE.get(inputs[0].dtype, 1e-2)
    try:
        with mode():
            out_err, grad_err, problems = compare(fn, inputs, weights)
    except Exception as err:  # report and continue with the other cases
        print(check_line((case, dtype, "-", "-", f"ERROR {type(err).__name__}: {err}"), widths))
        return False
    passed = out_err < tol and grad_err < 5 * tol and not problems
    verdict = "ok" if passed else f"FAIL {problems}".strip()
    grad_text = f"{grad_err:.2e}" if any(t.requires_grad for t in inputs) else "-"    # an inference-only op
    print(check_line((case, dtype, f"{out_err:.2e}", grad_text, verdict), widths))
    return passed


# ``quick``: each family with two blocks and a narrow width, so that the check takes seconds under the interpreter
QUICK_MODELS = {"local_vim_tiny_wo_search": dict(depth=2, embed_dim=64),
                "local_vssm_tiny": dict(dims=16, depths=(1, 1, 1, 1), directions=[["h", "w7"]] * 4)}


def checked_models(quick: bool) -> Dict[str, dict]:
    """Registered model -> keyword arguments of the model check (LocalVim-T, LocalVMamba-T; two-block narrow
    versions when ``quick``)."""
    return QUICK_MODELS if quick else dict.fromkeys(("local_vim_tiny", "local_vssm_tiny"), {})


def model_check(device: torch.device, quick: bool, widths: Tuple[int, int]) -> bool:
    """Logits of :func:`checked_models` with every op forced to triton against the reference backend, one row of
    the correctness table each."""
    ok = True
    size = 32 if quick else 224
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(3)).to(device)
    for name, kwargs in checked_models(quick).items():
        torch.manual_seed(0)
        model = create_model_at_size(name, size, **kwargs).to(device).eval()
        logits = {}
        for backend in ("triton", "reference"):
            backends.force_backend(backend)
            with torch.no_grad():
                logits[backend] = model(images)
        err = _rel(logits["triton"], logits["reference"])
        passed = err < 1e-3
        ok &= passed
        print(check_line((f"model {name}", "float32", f"{err:.2e}", "-", "ok" if passed else "FAIL"), widths))
    return ok


def ema_check(device: torch.device, quick: bool, widths: Tuple[int, int]) -> bool:
    """`--model-ema`'s multi-tensor update (`ForeachModelEma`) against timm's ModelEmaV2 on ``device``: the EMA
    weights of the first checked model after three updates towards changed weights, bit for bit (its row's "out
    err" is the largest difference, which must be 0)."""
    name, kwargs = next(iter(checked_models(quick).items()))
    torch.manual_seed(0)
    model = create_model_at_size(name, 32 if quick else 224, **kwargs).to(device)
    emas = [ModelEmaV2(model, decay=0.9998), ForeachModelEma(model, decay=0.9998)]
    with torch.no_grad():
        for _ in range(3):
            for param in model.parameters():
                param.add_(torch.randn_like(param), alpha=1e-2)
            for ema in emas:
                ema.update(model)
    pairs = zip(emas[0].module.state_dict().values(), emas[1].module.state_dict().values())
    diff = max(float((a.double() - b.double()).abs().max()) for a, b in pairs)
    print(check_line((f"EMA update {name}", "float32", f"{diff:.2e}", "-", "ok" if diff == 0 else "FAIL"), widths))
    return diff == 0


def timings(device: torch.device, quick: bool, repeats: int) -> None:
    """The op benchmarks of every backend available on ``device``, fp32 and bf16, at the LocalVim-T shape and at
    batch 64 (a tiny shape when ``quick``)."""
    shapes = [OpShape(2, 16, 9, 4)] if quick else [OpShape(8, 384, 196, 16), OpShape(64, 384, 196, 16)]
    for op in ("scan", "inner", "conv1d"):
        for shape in shapes:
            for dtype in ("fp32", "bf16"):
                print_op_benchmark(op, shape, device.type, dtype, repeats=repeats)
                print()
    print(scan_tile_sweep(device, shapes[0], repeats, tiles=SCAN_TILES[:1] if quick else SCAN_TILES))
    print()
    print(mixer_timings(device, quick, repeats))


def run_gpu_check(device: str = "cuda", quick: bool = False, repeats: int = 20, skip_timing: bool = False,
                  models: bool = True) -> bool:
    """Print the backends of every model op, the correctness table, the model check (unless not ``models``) and
    (unless ``skip_timing``) the timings; True when every check passed."""
    device = torch.device(device)
    print(f"torch {torch.__version__}, device {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}")
    for op in MODEL_OPS:
        print(f"  {op}: auto backend '{backends.selected_backend(op, device)}', "
              f"available {list(backends.available_backends(op, device))}")
    cases, deterministic = correctness_cases(device, quick)
    widths = column_widths([(case, dtype) for case, dtype, _ in cases + deterministic] +
                           [(f"model {name}", "float32") for name in (checked_models(quick) if models else ())] +
                           [(f"EMA update {next(iter(checked_models(quick)))}", "float32")])
    print(check_line(CHECK_HEADER, widths))
    with backends.restoring_choice():
        ok = all([_check_case(check, widths, contextlib.nullcontext) for check in cases] +
                 [_check_case(check, widths, deterministic_algorithms) for check in deterministic])
        try:
            ok &= model_check(device, quick, widths) if models else True
            ok &= ema_check(device, quick, widths)
        except Exception as err:  # report and go on to the timings
            print(f"model check ERROR {type(err).__name__}: {err}")
            ok = False
        if not skip_timing:
            print()
            timings(device, quick, repeats)
    print("ALL CHECKS PASSED" if ok else "SOME CHECKS FAILED")
    return ok
