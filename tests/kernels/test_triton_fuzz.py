"""A few cases of the randomised differential fuzz of every op's Triton backend (kernel_fuzz_checks.py, which runs
for minutes on its own) under the Triton interpreter: random odd shapes, optional arguments, dtypes and memory
layouts (transposed, sliced, stride-0, permuted views), outputs and every input's gradient against the reference,
and no input modified in place. This keeps the fuzz itself working; its findings are the fixed cases of
triton_interpreter_checks.py and triton_multi_scan_checks.py.

TRITON_INTERPRET must be set before the kernels are defined, so the fuzz runs in a subprocess.
"""
import importlib.util

import pytest
from interpreter_scripts import run_under_interpreter

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")


def test_triton_fuzz_smoke(tmp_path):
    log = tmp_path / "fuzz.jsonl"
    result = run_under_interpreter("kernel_fuzz_checks.py", "--backend", "triton", "--seed", "0", "--max-cases", "10",
                                   "--log", str(log), timeout=600)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    assert "10 cases in" in result.stdout and "0 failing" in result.stdout, result.stdout[-5000:]
    assert len(log.read_text().splitlines()) == 10
