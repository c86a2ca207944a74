"""The fused Triton mixer kernels (multi_scan_inner, attention_merge) against their references on CPU, under the
Triton interpreter: outputs and all gradients, fp32 and bf16, torch.library.opcheck of their custom ops and
torch.compile against eager (the cases: triton_multi_scan_checks.py); and each kernel compiled for sm_90.

TRITON_INTERPRET must be set before the kernels are defined, so the checks run in a subprocess.
"""
import importlib.util

import pytest
from hopper_compile import assert_compiles_well
from interpreter_scripts import run_under_interpreter

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")


def test_fused_mixer_kernels_match_reference_under_interpreter():
    result = run_under_interpreter("triton_multi_scan_checks.py", timeout=900, backend="triton")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("ok ") == 21, result.stdout


def test_fused_mixer_kernels_compile_for_hopper():
    """The interpreter does not lower kernels: compile each one for an H100/H200 (sm_90) at the default tiles, without
    register spills and with every scan a loop in registers."""
    pytest.importorskip("triton.backends.nvidia", reason="triton's NVIDIA backend is not installed")
    from localmamba_ssm.ops.triton import attention_merge_triton as merge
    from localmamba_ssm.ops.triton import multi_scan_triton as scan

    conv = dict(HAS_BIAS=True, WIDTH=4, CT=scan.CONV_CHUNK, BE=scan.CONV_BLOCK_E)
    tiles = dict(HAS_D=True, GATE=True, TOKEN_MAJOR=False, CT=scan.SCAN_CHUNK, BD=scan.SCAN_BLOCK_D, BN=16)
    token_major = dict(tiles, TOKEN_MAJOR=True)
    backward, backward_token_major = dict(tiles, ATOMIC=True, RP=16), dict(token_major, ATOMIC=True, RP=16)
    kernels = [(scan._conv_fwd_kernel, conv), (scan._conv_bwd_pre_kernel, conv),
               (scan._conv_bwd_x_kernel, dict(ATOMIC=True, WIDTH=4, CT=scan.CONV_CHUNK, BE=scan.CONV_BLOCK_E)),
               (scan._conv_bwd_x_kernel, dict(ATOMIC=False, WIDTH=4, CT=scan.CONV_CHUNK, BE=scan.CONV_BLOCK_E)),
               (scan._scan_fwd_kernel, tiles), (scan._scan_bwd_kernel, backward),
               (scan._scan_bwd_kernel, dict(backward, ATOMIC=False)),
               (scan._scan_fwd_kernel, token_major), (scan._scan_bwd_kernel, backward_token_major),
               (scan._scan_bwd_kernel, dict(backward_token_major, ATOMIC=False)),
               (merge._norm_mean_kernel, dict(RT=merge.ROWS, BE=512)),
               (merge._merge_kernel, dict(RT=merge.MERGE_ROWS, BC=merge.MERGE_COLS)),
               (merge._gate_grad_kernel, dict(RT=merge.MERGE_ROWS, BC=merge.MERGE_COLS)),
               (merge._input_grad_kernel, dict(RT=merge.INPUT_GRAD_ROWS, BE=512))]
    for kernel, constexprs in kernels:
        assert_compiles_well(kernel, constexprs)
