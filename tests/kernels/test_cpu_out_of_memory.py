"""A CPU kernel that cannot allocate its work buffers says so: it returns LM_OUT_OF_MEMORY having written nothing,
and the op raises KernelOutOfMemoryError (a MemoryError) instead of returning uninitialised outputs."""
import ctypes
import subprocess
import sys

import pytest

from localmamba_conv1d import cpu_conv1d
from localmamba_kernel_runtime import ckernel, task_runner
from localmamba_ssm.ops.cpu import attention_merge_cpu, multi_scan_cpu, selective_scan_cpu

pytestmark = pytest.mark.skipif(ckernel.compiler() is None, reason="no C compiler")

# Sizes whose work buffers pass 2**57 bytes, beyond any x86-64 or arm64 address space (so no malloc succeeds, whatever
# the overcommit policy), while every size computed from them stays inside int64.
HUGE_SEQLEN, HUGE_DIM = 2**52, 2**52
SMALL = dict(batch=1, seqlen=16, dim=16, nstate=16)


def _conv(seqlen: int) -> ctypes.Structure:
    return cpu_conv1d.Conv1dArgs(batch=1, dim=16, seqlen=seqlen, width=4, silu=1)


def _scan(seqlen: int) -> ctypes.Structure:
    return selective_scan_cpu.SelectiveScanArgs(batch=1, dim=16, seqlen=seqlen, nstate=16, softplus=1)


def _multi_scan(dim: int) -> ctypes.Structure:
    return multi_scan_cpu.MultiScanArgs(batch=1, ndir=4, seqlen=16, ntok=16, dim=dim, nstate=16, rank=1, width=4,
                                        silu=1, gate=1, src_stride=2 * dim, pdim=dim)


# (library loader, kernel, argument struct at a small size, the same at a size no allocation can meet)
ALLOCATING = [
    (cpu_conv1d.load_kernel, "causal_conv1d_bwd", _conv(16), _conv(2**60)),
    (selective_scan_cpu.load_kernel, "selective_scan_fwd", _scan(16), _scan(HUGE_SEQLEN)),
    (selective_scan_cpu.load_kernel, "selective_scan_bwd", _scan(16), _scan(HUGE_SEQLEN)),
    *[(multi_scan_cpu.load_kernel, name, _multi_scan(16), _multi_scan(HUGE_DIM)) for name in multi_scan_cpu.KERNELS],
]
NOT_ALLOCATING = [(cpu_conv1d.load_kernel, "causal_conv1d_fwd"),
                  *[(attention_merge_cpu.load_kernel, name) for name in attention_merge_cpu.KERNELS]]


@pytest.mark.parametrize("load, name, small, huge", ALLOCATING, ids=[case[1] for case in ALLOCATING])
def test_a_kernel_reports_a_failed_allocation(load, name, small, huge):
    """An empty range of items runs nothing but the kernel's allocations: LM_OK at a small size, LM_OUT_OF_MEMORY
    when the buffers cannot exist."""
    fn = getattr(load(), name)
    assert fn(ctypes.byref(small), 0, 0) == task_runner.LM_OK
    assert fn(ctypes.byref(huge), 0, 0) == task_runner.LM_OUT_OF_MEMORY


@pytest.mark.parametrize("load, name", NOT_ALLOCATING, ids=[case[1] for case in NOT_ALLOCATING])
def test_a_kernel_without_work_buffers_returns_ok(load, name):
    struct = {cpu_conv1d.load_kernel: cpu_conv1d.Conv1dArgs,
              attention_merge_cpu.load_kernel: attention_merge_cpu.AttentionMergeArgs}[load]
    assert getattr(load(), name)(ctypes.byref(struct()), 0, 0) == task_runner.LM_OK


@pytest.mark.parametrize("threads", ["openmp", "thread pool"])
@pytest.mark.parametrize("tasks", [1, 2])
def test_run_parallel_raises_when_any_task_runs_out_of_memory(monkeypatch, tasks, threads):
    """Whichever way the tasks run, one failed task raises, naming the kernel; tasks that succeed raise nothing."""
    fn = selective_scan_cpu.load_kernel().selective_scan_fwd
    if threads == "thread pool":
        monkeypatch.setattr(fn, "lm_runner", None)
    elif not task_runner.uses_openmp(fn):
        pytest.skip("torch on this platform does not run on GNU OpenMP, so the kernels use the thread pool")
    task_runner.run_parallel(fn, [_scan(16) for _ in range(tasks)], 0)
    args = [_scan(16) for _ in range(tasks - 1)] + [_scan(HUGE_SEQLEN)]
    with pytest.raises(task_runner.KernelOutOfMemoryError, match="selective_scan_fwd could not allocate"):
        task_runner.run_parallel(fn, args, 0)


def test_an_unknown_status_is_an_error():
    fn = selective_scan_cpu.load_kernel().selective_scan_fwd
    task_runner.check_status(fn, task_runner.LM_OK)
    with pytest.raises(RuntimeError, match="unknown status 2"):
        task_runner.check_status(fn, 2)


OP_UNDER_ADDRESS_LIMIT = r"""
import resource
import torch
from localmamba_kernel_runtime import backends, task_runner
from localmamba_ssm import selective_scan_fn, selective_scan_ref

backends.force_backend("cpu")
torch.manual_seed(0)

def problem(length):
    u, delta = torch.randn(1, 2, length), torch.rand(1, 2, length)
    return u, delta, -torch.rand(2, 16), torch.randn(2, 16), torch.randn(2, 16)

selective_scan_fn(*problem(64))  # builds the kernel and starts the threads before the limit
inputs = problem(2**20)  # 1 MB per row; the kernel's work buffers take over 200 MB per task
before = selective_scan_fn(*inputs)

def vm_bytes():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))

soft, hard = resource.getrlimit(resource.RLIMIT_AS)
resource.setrlimit(resource.RLIMIT_AS, (vm_bytes() + 100 * 2**20, hard))
try:
    selective_scan_fn(*inputs)
    print("no error")
except task_runner.KernelOutOfMemoryError as err:
    print("raised:", err)
resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
out = selective_scan_fn(*inputs)
prefix = [t[..., :4096] if t.dim() == 3 else t for t in inputs]   # (the reference takes a minute for all 2**20 steps)
print("matches after the limit is lifted:", torch.equal(out, before),
      torch.allclose(out[..., :4096], selective_scan_ref(*prefix), atol=1e-4))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc/self/status are Linux's")
def test_the_op_raises_when_memory_runs_out_and_runs_again_after():
    """Under an address-space limit that the inputs and outputs fit but the work buffers do not, the public op raises
    a MemoryError instead of returning an unwritten output; without the limit the same call returns what it did before
    the limit, which matches the reference (over its first 4096 steps)."""
    result = subprocess.run([sys.executable, "-c", OP_UNDER_ADDRESS_LIMIT], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("raised: out of memory: the CPU kernel selective_scan_fwd"), result.stdout
    assert lines[1] == "matches after the limit is lifted: True True", result.stdout
