"""The code that runs only on a CUDA device, exercised on the CPU with fakes of ``torch.cuda``.

These paths run for the first time on a rarely lent GPU (``tools/gpu_check.py --e2e``): a crash or a wrong figure
there costs the lease. Each test fakes the ``torch.cuda`` calls its path makes (recording their order, or giving
memory figures) and checks the figure or the calls against hand-computed ones.
"""
import contextlib
import os
import sys

import pytest
import torch

MIB = 2 ** 20


class CudaLog:
    """The calls a fake ``torch.cuda`` received, in order."""

    def __init__(self):
        self.calls = []

    def add(self, *what):
        self.calls.append(what if len(what) > 1 else what[0])


@pytest.fixture
def cuda_log(monkeypatch):
    """``torch.cuda.synchronize`` recorded as ('sync', device) instead of failing on a machine without CUDA."""
    log = CudaLog()
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: log.add("sync", str(device)))
    return log


class FakeAllocator:
    """The CUDA caching allocator's statistics: bytes allocated now and their peak since the last reset."""

    def __init__(self, monkeypatch, log, allocated, peak):
        self.allocated, self.peak, self.log = allocated, peak, log
        monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: self.allocated)
        monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: self.peak)
        monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", self.reset)
        monkeypatch.setattr(torch.cuda, "empty_cache", lambda: log.add("empty_cache"))

    def reset(self, device=None):
        self.log.add("reset_peak", str(device))
        self.peak = self.allocated

    def allocate_and_free(self, nbytes):
        """A step that holds ``nbytes`` more for a while, then frees them."""
        self.log.add("step")
        self.allocated += nbytes
        self.peak = max(self.peak, self.allocated)
        self.allocated -= nbytes


# --- classification/benchmarks/timing.py -------------------------------------------------------------------------

def test_median_seconds_waits_for_the_gpu_before_starting_and_stopping_the_clock(cuda_log, monkeypatch):
    """timing.synchronize -> torch.cuda.synchronize(device) (its `device.type == "cuda"` branch), around each timed
    step of median_seconds. Without the wait before the clock stops, a CUDA step's time is its launch time only (the
    kernels run after the clock stopped): every GPU figure of op_speed, model_speed and ema_speed would be too small.
    """
    from classification.benchmarks import timing

    clock = iter(range(100))
    monkeypatch.setattr(timing.time, "perf_counter", lambda: cuda_log.add("clock") or float(next(clock)))
    timing.median_seconds({"a": lambda: cuda_log.add("step")}, repeats=1, warmup=0, device="cuda")
    assert cuda_log.calls == [("sync", "cuda"), "clock", "step", ("sync", "cuda"), "clock"]
    cuda_log.calls.clear()
    timing.median_seconds({"a": lambda: cuda_log.add("step")}, repeats=1, warmup=0, device="cpu")
    assert ("sync", "cuda") not in cuda_log.calls   # nothing to wait for on the CPU (and no CUDA there to call)


class FakeGraphApi:
    """torch.cuda.Stream / current_stream / stream / CUDAGraph / graph / Event, recording into a CudaLog; every
    timed span between two events lasts ``elapsed_ms``."""

    def __init__(self, monkeypatch, log, elapsed_ms):
        self.log = log
        api = self

        class Stream:
            def __init__(self, name="side"):
                self.name = name

            def wait_stream(self, other):
                api.log.add("wait", self.name, other.name)

        class CUDAGraph:
            def replay(self):
                api.log.add("replay")

        class Event:
            def __init__(self, enable_timing=False):
                assert enable_timing, "an event without enable_timing has no elapsed_time"
                self.recorded = False

            def record(self, stream=None):
                self.recorded = True
                api.log.add("record")

            def synchronize(self):
                api.log.add("event sync")

            def elapsed_time(self, end):
                assert self.recorded and end.recorded
                return elapsed_ms

        @contextlib.contextmanager
        def on_stream(stream):
            log.add("enter", stream.name)
            yield
            log.add("leave", stream.name)

        @contextlib.contextmanager
        def capture(graph, **kwargs):
            log.add("capture")
            yield
            log.add("captured")

        monkeypatch.setattr(torch.cuda, "Stream", lambda device=None: Stream())
        monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: Stream("default"))
        monkeypatch.setattr(torch.cuda, "stream", on_stream)
        monkeypatch.setattr(torch.cuda, "CUDAGraph", CUDAGraph)
        monkeypatch.setattr(torch.cuda, "graph", capture)
        monkeypatch.setattr(torch.cuda, "Event", Event)


def test_cuda_graph_seconds_times_only_the_replays_in_seconds_per_replay(cuda_log, monkeypatch):
    """timing.cuda_graph_seconds (op_speed's "graph ms" columns): warm-up off the default stream, one capture, one
    untimed replay, then `repeats` replays between two events. CUDA events give milliseconds: 40 ms over 8 replays is
    0.005 s each (a missing / 1e3 or / repeats makes the column 1000x or 8x off; timing the capture or the first
    replay adds their one-off cost)."""
    from classification.benchmarks.timing import cuda_graph_seconds

    FakeGraphApi(monkeypatch, cuda_log, elapsed_ms=40.0)
    seconds = cuda_graph_seconds(lambda: cuda_log.add("step"), repeats=8, warmup=3, device="cuda")
    assert seconds == pytest.approx(40.0 / 1e3 / 8)
    calls = cuda_log.calls
    assert calls[:7] == [("wait", "side", "default"), ("enter", "side"), "step", "step", "step", ("leave", "side"),
                         ("wait", "default", "side")]
    assert calls[7:11] == ["capture", "step", "captured", "replay"]     # captured once, replayed once untimed
    start, end = calls.index("record"), len(calls) - 1 - calls[::-1].index("record")
    assert calls[start + 1:end] == ["replay"] * 8 and calls[end + 1:] == ["event sync"]


# --- classification/benchmarks/peak_memory.py and gpu_e2e.peak_mib_cell ---------------------------------------------

def test_cuda_peak_is_measured_from_a_reset_peak_in_mib(cuda_log, monkeypatch):
    """peak_memory.cuda_peak_mib: reset_peak_memory_stats before the step, memory_allocated before it subtracted
    (above_current) or not, bytes / 2**20. With 100 MiB held, a stale peak of 1000 MiB from an earlier model, and a
    step that needs 300 MiB more: 300 MiB above, 400 MiB in all (without the reset: 900 and 1000)."""
    from classification.benchmarks.peak_memory import cuda_peak_mib

    for above, expected in ((True, 300.0), (False, 400.0)):
        allocator = FakeAllocator(monkeypatch, cuda_log, allocated=100 * MIB, peak=1000 * MIB)
        cuda_log.calls.clear()
        assert cuda_peak_mib(lambda: allocator.allocate_and_free(300 * MIB), "cuda", above_current=above) == expected
        assert cuda_log.calls.index(("reset_peak", "cuda")) < cuda_log.calls.index("step")
        assert cuda_log.calls[-1] == ("sync", "cuda")   # the step's queued work is done before the peak is read


def test_memory_table_cell_on_cuda_counts_what_the_process_holds(cuda_log, monkeypatch):
    """gpu_e2e.peak_mib_cell on CUDA (the "inference b64 peak MiB" / "train step b64 peak MiB" cells): the peak in
    all (weights and images included, above_current=False), whole MiB."""
    from classification.benchmarks import gpu_e2e

    allocator = FakeAllocator(monkeypatch, cuda_log, allocated=50 * MIB, peak=0)
    assert gpu_e2e.peak_mib_cell(lambda: allocator.allocate_and_free(int(200.6 * MIB)), torch.device("cuda")) == "251"


def test_forward_peak_on_cuda_is_measured_in_this_process(cuda_log, monkeypatch):
    """peak_memory.forward_peak_mib's `device.type == "cuda"` branch (the sweep's peak MiB columns on a GPU): the
    allocator's peak above the weights and images, in this process (no child process: that one is the CPU's way)."""
    from classification.benchmarks import peak_memory

    allocator = FakeAllocator(monkeypatch, cuda_log, allocated=80 * MIB, peak=0)
    built = []
    monkeypatch.setattr(peak_memory, "_forward_step", lambda *args: built.append(args) or (
        lambda: allocator.allocate_and_free(12 * MIB)))
    monkeypatch.setattr(peak_memory.subprocess, "run", lambda *a, **k: pytest.fail("started a child process"))
    assert peak_memory.forward_peak_mib("local_vim_tiny", 224, 8, "bf16", "cuda") == 12.0
    assert built == [("local_vim_tiny", 224, 8, "bf16", torch.device("cuda"), dict(model_kwargs={}, directions=None))]


# --- classification/engine/logs.py -------------------------------------------------------------------------------

@pytest.mark.parametrize("device", [torch.device("cuda"), torch.device("cuda", 0), "cuda", "cuda:0"])
def test_training_log_memory_on_cuda_is_the_allocator_peak_in_mib(monkeypatch, device):
    """logs.peak_memory_mib's CUDA branch (the `Mem:` of every training line): max_memory_allocated / 2**20, for a
    device given as a torch.device or, as its signature allows, as a name; "cuda:0" was taken for a CPU and gave this
    process's resident size instead."""
    from classification.engine.logs import peak_memory_mib

    asked = []
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda dev=None: asked.append(dev) or 1536 * MIB)
    assert peak_memory_mib(device) == 1536.0
    assert len(asked) == 1


# --- classification/engine/amp.py --------------------------------------------------------------------------------

def test_fp16_autocast_on_cuda_gets_a_cuda_grad_scaler():
    """amp.make_scaler / amp.autocast on CUDA (the e2e's `--amp` epoch): fp16 autocast on device type cuda and a
    GradScaler for cuda (torch.amp.GradScaler(device.type), the torch >= 2.3 form torch 2.11 takes); bf16: autocast
    in bf16 and no scaler."""
    from classification.engine.amp import autocast, make_scaler

    cuda = torch.device("cuda", 0)
    with pytest.warns(UserWarning):   # this machine has no CUDA: the scaler and the autocast disable themselves
        scaler = make_scaler(cuda, True)
        context = autocast(cuda, True)
    assert isinstance(scaler, torch.amp.GradScaler) and scaler._device == "cuda"
    assert (context.device, context.fast_dtype) == ("cuda", torch.float16)
    assert make_scaler(cuda, True, "bfloat16") is None
    with pytest.warns(UserWarning):
        assert autocast(cuda, True, "bfloat16").fast_dtype == torch.bfloat16


def test_the_precision_line_on_cuda_names_fp16_with_its_scaler_and_warns_of_no_emulation(monkeypatch):
    """amp.log_precision on CUDA (the first lines of the e2e's --amp runs): fp16 autocast with a GradScaler by default,
    bf16 without; the CPU's emulated-half-precision warning (a oneDNN query) is never made for a GPU."""
    from types import SimpleNamespace

    from classification.engine import amp

    lines = []
    log = SimpleNamespace(info=lines.append, warning=lambda line: pytest.fail(f"warned on CUDA: {line}"))
    monkeypatch.setattr(amp, "_cpu_computes_natively", lambda dtype: pytest.fail("asked oneDNN about a GPU"))
    amp.log_precision(log, torch.device("cuda"), True, True, None)
    amp.log_precision(log, torch.device("cuda", 0), True, False, "bfloat16")
    assert lines == ["Precision on cuda: training in float16 autocast with a GradScaler, evaluation in float16 "
                     "autocast", "Precision on cuda: training in bfloat16 autocast, evaluation in fp32"]


# --- classification/engine/distributed.py ------------------------------------------------------------------------

@pytest.fixture
def two_gpus(monkeypatch):
    """torch.cuda with two devices; the current device as set_device left it."""
    from classification.engine import distributed

    current = []
    monkeypatch.setattr(distributed.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(distributed.torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(distributed.torch.cuda, "set_device", current.append)
    return current


@pytest.mark.parametrize("name, local_rank, expected", [("cuda", 0, "cuda:0"), ("cuda", 3, "cuda:1"),
                                                        ("auto", 1, "cuda:1"), ("cuda:1", 0, "cuda:1")])
def test_each_process_takes_the_gpu_of_its_local_rank_and_makes_it_current(two_gpus, name, local_rank, expected):
    """distributed._resolve_device on CUDA: plain cuda (or auto) is GPU local_rank mod the count, made the current
    device (NCCL and the kernels launch on the current device; DDP's device_ids take its index)."""
    from classification.engine.distributed import _resolve_device

    assert _resolve_device(name, local_rank) == torch.device(expected)
    assert two_gpus == [torch.device(expected)]


def test_a_cuda_process_group_is_nccl_a_cpu_one_gloo(two_gpus, monkeypatch):
    """init_distributed's backend choice: nccl for CUDA devices, gloo on the CPU, rank and world from torchrun."""
    from classification.engine import distributed

    joined = []
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda **kwargs: joined.append(kwargs))
    for key, value in (("WORLD_SIZE", "2"), ("RANK", "1"), ("LOCAL_RANK", "1"), ("LOCAL_WORLD_SIZE", "2")):
        monkeypatch.setenv(key, value)
    env = distributed.init_distributed("cuda")
    assert (env.device, env.rank, env.world_size) == (torch.device("cuda", 1), 1, 2)
    assert joined[-1] == dict(backend="nccl", init_method="env://", rank=1, world_size=2)
    distributed.init_distributed("cpu")
    assert joined[-1]["backend"] == "gloo"


# --- classification/common/rng.py --------------------------------------------------------------------------------

def test_a_checkpoint_carries_the_cuda_generator_once_cuda_is_initialised(monkeypatch):
    """rng.get_rng_state's CUDA branch: the current GPU's state once CUDA is in use, which an exact resume on a GPU
    restores; none before (asking would initialise CUDA in a process that does not use it)."""
    from classification.common import rng

    state = torch.full((16,), 7, dtype=torch.uint8)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": state if device == "cuda" else None)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    assert "cuda_device" not in rng.get_rng_state()
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    assert rng.get_rng_state()["cuda_device"] is state


# --- classification/benchmarks/op_speed.py -----------------------------------------------------------------------

def test_graph_timing_is_in_milliseconds_and_a_failed_capture_leaves_none(monkeypatch, capsys):
    """op_speed._graph_ms: cuda_graph_seconds' seconds as milliseconds (the table's unit); a step that cannot be
    captured (a host sync in it) gives None and one line, and the benchmark goes on."""
    from classification.benchmarks import op_speed

    monkeypatch.setattr(op_speed, "cuda_graph_seconds", lambda step, repeats, device: 0.0025)
    assert op_speed._graph_ms(lambda: None, 5, torch.device("cuda")) == pytest.approx(2.5)

    def capture_fails(step, repeats, device):
        raise RuntimeError("CUDA error: operation not permitted when stream is capturing\nmore")

    monkeypatch.setattr(op_speed, "cuda_graph_seconds", capture_fails)
    assert op_speed._graph_ms(lambda: None, 5, torch.device("cuda")) is None
    assert capsys.readouterr().out == ("(no CUDA-graph timing: RuntimeError: CUDA error: operation not permitted when "
                                       "stream is capturing)\n")


def test_cuda_op_rows_carry_graph_figures_of_the_kernel_backends_only(monkeypatch):
    """benchmark_op's `device.type == "cuda"` branch: each kernel backend's step also replayed as a CUDA graph, for
    forward and forward + backward, into its row; the reference (plain PyTorch, many small kernels) is not."""
    from classification.benchmarks import op_speed
    from classification.benchmarks.op_speed import Case, OpShape

    graphed = []
    monkeypatch.setitem(op_speed.CASES, "scan", lambda *args: Case(lambda: torch.zeros(1), [], updates=10))
    monkeypatch.setattr(op_speed.backends, "available_backends", lambda *args: ["triton", "reference"])
    monkeypatch.setattr(op_speed, "median_seconds", lambda steps, *args: {name: 4e-3 for name in steps})
    monkeypatch.setattr(op_speed, "_graph_ms", lambda step, repeats, device: graphed.append(device) or len(graphed))
    rows = op_speed.benchmark_op("scan", OpShape(batch=1, dim=8, seqlen=5, dstate=4), device="cuda", repeats=3)
    assert [(r["backend"], r["fwd_graph_ms"], r["fwdbwd_graph_ms"]) for r in rows] == [
        ("triton", 1, 2), ("reference", None, None)]
    assert graphed == [torch.device("cuda")] * 2


def test_scan_tile_sweep_on_cuda_times_each_tile_as_a_graph_too(monkeypatch):
    """op_speed.scan_tile_sweep's CUDA branch: the graph columns hold _graph_ms of each tile's steps, taken while the
    tile is patched in (after the patch they would all time the default tile)."""
    from classification.benchmarks import op_speed
    from classification.benchmarks.op_speed import Case, OpShape
    from localmamba_ssm.ops.triton import selective_scan_triton as kernels

    monkeypatch.setattr(op_speed, "scan_case", lambda *args: Case(lambda: torch.zeros(1), []))
    monkeypatch.setattr(op_speed, "median_seconds", lambda steps, *args: {name: 1e-3 for name in steps})
    monkeypatch.setattr(op_speed, "_graph_ms", lambda step, repeats, device: kernels.CHUNK / 10)
    default = (kernels.CHUNK, kernels.MAX_BLOCK_D)
    other = (default[0] * 2, default[1])
    table = op_speed.scan_tile_sweep("cuda", OpShape(batch=1, dim=8, seqlen=5, dstate=4), 2, tiles=[other])
    rows = [line.split() for line in table.splitlines()[3:]]
    assert rows[0][-2:] == [f"{default[0] / 10:.3f}"] * 2 and rows[1][-2:] == [f"{other[0] / 10:.3f}"] * 2


# --- classification/benchmarks/gpu_e2e.py and resolution_sweep.device_description -----------------------------------

@pytest.fixture
def h100(monkeypatch):
    """torch.cuda naming one or more "NVIDIA H100 80GB HBM3"."""
    def set_count(count):
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    set_count(1)
    return set_count


def test_the_cuda_plan_runs_kernels_natively_and_uses_nccl_with_two_gpus(h100, tmp_path):
    """gpu_e2e.plan on CUDA: no step runs Triton under its interpreter, test.py and the throughput compile with
    reduce-overhead (CUDA graphs), and `dist_train.sh 2 (NCCL)` joins `dist_train.sh 1` where two GPUs are visible
    (one GPU: no NCCL step, which would put two ranks on one GPU)."""
    from classification.benchmarks.gpu_e2e import plan

    steps = plan("cuda", str(tmp_path))
    assert all("TRITON_INTERPRET" not in step.env for step in steps)
    names = [step.name for step in steps]
    assert [n for n in names if n.startswith("tools/dist_train.sh")] == ["tools/dist_train.sh 1"]
    assert "reduce-overhead" in next(s for s in steps if s.name == "tools/test.py --compile reduce-overhead").argv
    assert sum("--compile reduce-overhead" in n for n in names) == 3
    h100(2)
    dist = [s for s in plan("cuda", str(tmp_path)) if s.name.startswith("tools/dist_train.sh")]
    assert [s.name for s in dist] == ["tools/dist_train.sh 1", "tools/dist_train.sh 2 (NCCL)"]
    assert dist[1].argv[:3] == ["sh", "tools/dist_train.sh", "2"] and "cuda" in dist[1].argv


def test_cuda_logs_are_named_after_the_gpu(h100, tmp_path, capsys):
    """default_log_path and run_e2e's header on CUDA: the GPU's name (get_device_name), as file name and in the
    transcript's first line that gpu_report reads."""
    from classification.benchmarks import gpu_e2e
    from classification.benchmarks.gpu_e2e import Outcome

    expected = os.path.join(gpu_e2e.REPO, "docs", "measurements", "nvidia_h100_80gb_hbm3_e2e.log")
    assert gpu_e2e.default_log_path("cuda") == expected
    log = tmp_path / "e2e.log"
    assert gpu_e2e.run_e2e("cuda", log_path=str(log), runner=lambda step: Outcome(0, "ALL CHECKS PASSED", 1.0),
                           workdir=str(tmp_path / "runs"), only=["kernel checks"])
    assert "device NVIDIA H100 80GB HBM3  torch " in log.read_text().splitlines()[0]
    assert "PASS" in capsys.readouterr().out


def test_sweep_titles_name_the_gpu(h100):
    """resolution_sweep.device_description on CUDA: the GPU's name (the CPU's description lists threads and ISA)."""
    from classification.benchmarks.resolution_sweep import device_description

    assert device_description("cuda") == "NVIDIA H100 80GB HBM3"


def test_the_cuda_memory_table_and_sweep_measure_the_allocator(cuda_log, monkeypatch):
    """gpu_e2e.memory_and_resolution_sweep on CUDA: each cell of the memory table is the allocator's peak in all over
    one inference / training step (10 MiB held, steps needing 5 and 20 MiB more: 15 and 30), the cache emptied after
    each model, and the resolution sweep asked for its per-forward peaks (memory=True, which it takes on CUDA only)."""
    from classification.benchmarks import gpu_e2e

    allocator = FakeAllocator(monkeypatch, cuda_log, allocated=10 * MIB, peak=0)
    real_randn = torch.randn
    monkeypatch.setattr(torch, "randn", lambda *shape, device=None, **kwargs: real_randn(*shape, **kwargs))
    monkeypatch.setattr(gpu_e2e, "build_model", lambda name, size, device: torch.nn.Linear(1, 1))
    monkeypatch.setattr(gpu_e2e, "inference_step", lambda *args: lambda: allocator.allocate_and_free(5 * MIB))
    monkeypatch.setattr(gpu_e2e, "train_step", lambda *args: lambda: allocator.allocate_and_free(20 * MIB))
    sweeps = []

    def sweep(model, baseline, sizes, batch, device, dtype, repeats, warmup, memory, finished):
        sweeps.append((model, device, memory))
        finished.append({"model": model, "baseline": baseline, "device": "cuda", "dtype": dtype, "batch": batch,
                         "img_size": sizes[0], "model_img_s": 2.0, "baseline_img_s": 1.0, "ratio": 2.0,
                         "model_peak_mib": 3.0, "baseline_peak_mib": 4.0})

    monkeypatch.setattr(gpu_e2e, "resolution_sweep", sweep)
    memory, *sweep_tables = gpu_e2e.memory_and_resolution_sweep("cuda", quick=True)
    rows = [line.split() for line in memory.splitlines()[2:]]
    assert [row[1:] for row in rows] == [[dtype, "15", "30"] for _ in range(4) for dtype in ("fp32", "bf16")]
    assert cuda_log.calls.count("empty_cache") == 8 * 2 + 8 + 2   # per cell, per model, per sweep
    assert sweeps == [("local_vim_tiny", "cuda", True), ("local_vssm_tiny", "cuda", True)]
    assert all("3.0" in table and "4.0" in table for table in sweep_tables)


def test_the_cuda_sweep_empties_the_cache_before_each_peak(h100, cuda_log, monkeypatch):
    """resolution_sweep's `device.type == "cuda"` branch: after each size's timing its models are dropped and the
    cache emptied before the peaks of that size are measured on the same GPU (else the timed models' cached blocks
    stay reserved and the larger sizes run out of memory sooner); the rows carry the GPU's name."""
    import classification.benchmarks.resolution_sweep  # noqa: F401  (the package's name is the function's)

    sweep = sys.modules["classification.benchmarks.resolution_sweep"]
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: cuda_log.add("empty_cache"))
    monkeypatch.setattr(sweep, "build_compared",
                        lambda model, baseline, *args, **kwargs: dict.fromkeys((model, baseline)))
    monkeypatch.setattr(sweep, "images_per_second", lambda models, *args, **kwargs: {name: 2.0 for name in models})
    monkeypatch.setattr(sweep, "forward_peak_mib", lambda name, size, batch, dtype, device, **built: cuda_log.add(
        "peak", name, size, device) or float(size))
    rows = sweep.resolution_sweep("local_vim_tiny", "deit_tiny_patch16_224", (32, 64), 1, "cuda")
    assert cuda_log.calls == ["empty_cache", ("peak", "local_vim_tiny", 32, "cuda"),
                              ("peak", "deit_tiny_patch16_224", 32, "cuda"), "empty_cache",
                              ("peak", "local_vim_tiny", 64, "cuda"), ("peak", "deit_tiny_patch16_224", 64, "cuda")]
    assert [(r["device"], r["device_name"], r["model_peak_mib"]) for r in rows] == [
        ("cuda", "NVIDIA H100 80GB HBM3", 32.0), ("cuda", "NVIDIA H100 80GB HBM3", 64.0)]


def _tool(name):
    """tools/<name>.py as a module (the tools are scripts, not a package)."""
    import importlib.util

    from classification.benchmarks.gpu_e2e import REPO

    path = os.path.join(REPO, "tools", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"{name}_tool_for_cuda_plan", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_command_of_the_full_cuda_plan_is_taken_by_its_tool(h100, monkeypatch, tmp_path):
    """gpu_e2e.plan("cuda") without --quick: the CPU rehearsal runs the quick plan, so the commands only the GPU run
    gives (the `--compile reduce-overhead` throughput steps, `dist_train.sh 2 (NCCL)`, the full sizes, `--repeats 10`)
    never met their tools' parsers here. Each is parsed by its own tool (with CUDA faked as present); a flag a tool
    refuses would cost its step on the lease."""
    from classification.benchmarks.gpu_e2e import REPO, plan
    from classification.engine.config import parse_args

    h100(2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.chdir(REPO)
    benchmark, gpu_check = _tool("benchmark"), _tool("gpu_check")
    ran = []
    monkeypatch.setattr(gpu_check, "run_gpu_check", lambda *args: ran.append(("kernels", args)) or True)
    monkeypatch.setattr(gpu_check, "memory_and_resolution_sweep", lambda *args, **kw: ran.append(("sweep", args))
                        or iter(()))
    seen = set()
    for step in plan("cuda", str(tmp_path)):
        tool, argv = (step.argv[1], step.argv[2:]) if step.argv[0] != "sh" else (step.argv[1], step.argv[3:])
        seen.add(os.path.basename(tool))
        if tool == "tools/benchmark.py":
            args = benchmark.parse_args(argv)
            assert args.device == "cuda" and args.repeats >= 1
            if "--compile" in argv:
                assert (args.compile, args.train_batch, args.batch_sizes) == ("reduce-overhead", 0, [1, 64])
        elif tool == "tools/gpu_check.py":
            assert gpu_check.main(argv) == 0, step.name
        elif tool in ("tools/train.py", "tools/test.py"):
            args = parse_args(argv, evaluation=tool == "tools/test.py")
            assert args.device == "cuda" and args.model == "local_vim_tiny"
        else:
            assert tool == "tools/dist_train.sh", tool
            config, model, *flags = argv
            assert parse_args(["-c", config, "--model", model, *flags]).device == "cuda"
    assert seen == {"gpu_check.py", "benchmark.py", "train.py", "test.py", "dist_train.sh"}
    assert ran == [("kernels", ("cuda", False, 10, False, True)), ("sweep", ("cuda", False))]


@pytest.fixture
def mixed_gpus(monkeypatch):
    """torch.cuda with two different GPUs, GPU 0 current until set_device; returns the set_device calls."""
    names = {0: "NVIDIA A100-SXM4-40GB", 1: "NVIDIA H100 80GB HBM3"}
    current = [0]
    calls = []

    def index_of(device):
        index = torch.device(device).index if device is not None else None
        return current[0] if index is None else index

    def set_device(device):
        calls.append(device)
        current[0] = index_of(device)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", set_device)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: names[index_of(device)])
    return calls


def test_the_kernel_check_on_cuda_n_makes_gpu_n_current_and_refuses_one_past_them(mixed_gpus, monkeypatch, capsys):
    """tools/gpu_check.py --device cuda:N: its CUDA graphs, events and streams follow the current device, not the
    tensors' (the Triton ops make their tensors' device current only for their own launches); GPU N is made current
    first. An N past the GPUs is refused in one line (it was an AssertionError traceback from
    get_device_name)."""
    gpu_check = _tool("gpu_check")
    ran = []
    monkeypatch.setattr(gpu_check, "run_gpu_check", lambda device, *args: ran.append(device) or True)
    assert gpu_check.main(["--device", "cuda:1", "--skip-timing"]) == 0
    assert mixed_gpus == [1] and ran == ["cuda:1"]
    assert gpu_check.main(["--device", "cuda:2"]) == 2
    assert capsys.readouterr().err == "error: --device cuda:2: this machine has 2 CUDA device(s)\n"
    assert gpu_check.main(["--device", "cuda", "--skip-timing"]) == 0 and mixed_gpus == [1]   # plain cuda: as is


def test_e2e_logs_name_the_gpu_asked_for(mixed_gpus, tmp_path):
    """gpu_e2e.default_log_path and the transcript's header for --device cuda:1 name GPU 1, not GPU 0."""
    from classification.benchmarks import gpu_e2e
    from classification.benchmarks.gpu_e2e import Outcome

    assert os.path.basename(gpu_e2e.default_log_path("cuda:1")) == "nvidia_h100_80gb_hbm3_e2e.log"
    assert os.path.basename(gpu_e2e.default_log_path("cuda")) == "nvidia_a100_sxm4_40gb_e2e.log"
    log = tmp_path / "e2e.log"
    gpu_e2e.run_e2e("cuda:1", log_path=str(log), runner=lambda step: Outcome(0, "ALL CHECKS PASSED", 1.0),
                    workdir=str(tmp_path / "runs"), only=["kernel checks"])
    assert "device NVIDIA H100 80GB HBM3  torch " in log.read_text().splitlines()[0]


def test_the_benchmark_tools_make_cuda_n_current(mixed_gpus):
    """classification.benchmarks.parse_device (tools/benchmark.py's and tools/speed_test.py's --device): cuda:N is
    GPU N made current, for the reason above (graphs, events and streams follow the current device); plain cuda and
    cpu leave the current device as it is, and an N past the GPUs is refused as training refuses it."""
    from classification.benchmarks import parse_device
    from classification.engine.config import ConfigError

    assert parse_device("cuda") == torch.device("cuda") and parse_device("cpu") == torch.device("cpu")
    assert mixed_gpus == []
    assert parse_device("cuda:1") == torch.device("cuda", 1) and mixed_gpus == [torch.device("cuda", 1)]
    with pytest.raises(ConfigError, match="this machine has 2 CUDA device"):
        parse_device("cuda:2")
    args = _tool("benchmark").parse_args(["--model", "local_vim_tiny", "--device", "cuda:1"])
    assert args.device == "cuda:1" and mixed_gpus[-1] == torch.device("cuda", 1) and len(mixed_gpus) == 2


def test_the_cuda_fp16_epoch_passes_only_with_its_grad_scaler(h100, tmp_path):
    """The e2e's "train 1 epoch --amp (fp16 + GradScaler)" on CUDA: `--amp` alone is fp16 with a GradScaler there
    (bf16 on the CPU, so the rehearsal cannot show it); the check now asks the run's precision line for it, where an
    exit status of 0 passed a run without any scaler."""
    from classification.benchmarks.gpu_e2e import Outcome, plan

    step = next(s for s in plan("cuda", str(tmp_path)) if s.name == "train 1 epoch --amp (fp16 + GradScaler)")
    checkpoint = tmp_path / "amp_fp16" / "run" / "last.pth.tar"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"")
    scaled = "INFO Precision on cuda: training in float16 autocast with a GradScaler, evaluation in fp32\nTrain: 0\n"
    assert step.verdict(Outcome(0, scaled, 1.0)) is None
    unscaled = "INFO Precision on cuda: training in bfloat16 autocast, evaluation in fp32\nTrain: 0\n"
    assert step.verdict(Outcome(0, unscaled, 1.0)) == (
        "output does not show 'training in float16 autocast with a GradScaler'")


OPCHECK_SCRIPT = """
import torch
from localmamba_ssm.ops.triton import selective_scan_triton as scan
from localmamba_conv1d import triton_conv1d as conv

g = torch.Generator().manual_seed(0)
def rand(*shape, dtype=torch.float32):
    return torch.randn(*shape, generator=g).to(dtype).requires_grad_()
batch, dim, length, state, bf16 = 2, 4, 7, 3, torch.bfloat16
A = (-torch.rand(dim, state, generator=g) - 0.5).requires_grad_()
calls = [(scan.selective_scan_triton_fwd, (rand(batch, dim, length), rand(batch, dim, length), A,
          rand(batch, 1, state, length), rand(batch, 1, state, length), rand(dim), rand(batch, dim, length),
          rand(dim), True, 4)),
         (scan.selective_scan_triton_fwd, (rand(batch, dim, length), rand(batch, dim, length), A, rand(dim, state),
          rand(dim, state), None, None, None, False, 4)),
         (scan.selective_scan_triton_fwd, (rand(batch, dim, length, dtype=bf16), rand(batch, dim, length, dtype=bf16),
          A, rand(batch, state, length, dtype=bf16), rand(batch, state, length, dtype=bf16), rand(dim),
          rand(batch, dim, length, dtype=bf16),
          rand(dim), True, 4)),
         (conv.causal_conv1d_triton_fwd, (rand(batch, dim, length), rand(dim, 4), rand(dim), True)),
         (conv.causal_conv1d_triton_fwd, (rand(batch, dim, length, dtype=bf16), rand(dim, 3, dtype=bf16), None, False))]
tests = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")
for op, args in calls:
    print(sorted(set(torch.library.opcheck(op, args, test_utils=tests).values())))
for op, args in calls:   # the backward ops' own fakes (the compiled backward graph calls them)
    args = [a.detach() if isinstance(a, torch.Tensor) else a for a in args]
    with torch.no_grad():
        out = op(*args)
    if op is conv.causal_conv1d_triton_fwd:
        backward = conv.causal_conv1d_triton_bwd, (torch.randn_like(out), *args)
    else:
        backward = scan.selective_scan_triton_bwd, (torch.randn_like(out[0]), torch.randn_like(out[1]), out[2], *args)
    print(sorted(set(torch.library.opcheck(*backward, test_utils=("test_schema", "test_faketensor")).values())))
"""


def test_the_scan_and_conv1d_triton_ops_have_the_fakes_torch_compile_needs():
    """The selective scan's and the conv1d's Triton custom ops (forward, and backward through autograd) under
    torch.library.opcheck: schema, autograd registration, fake kernels against the real outputs (shape, dtype,
    strides), AOT dispatch. `tools/test.py --compile reduce-overhead` and the compiled throughput run these ops inside
    compiled graphs on CUDA only (the CPU compiles the cpu ops), through their fakes; opcheck covered the fused mixer
    ops alone. Run under the Triton interpreter, in a subprocess (TRITON_INTERPRET is read when kernels are defined).
    """
    pytest.importorskip("triton")
    from classification.benchmarks.gpu_e2e import REPO

    paths = [REPO, os.path.join(REPO, "mamba-1p1p1"), os.path.join(REPO, "causal-conv1d")]
    env = dict(os.environ, TRITON_INTERPRET="1", LOCALMAMBA_BACKEND="triton",
               PYTHONPATH=os.pathsep.join(filter(None, paths + [os.environ.get("PYTHONPATH")])))
    import subprocess

    done = subprocess.run([sys.executable, "-c", OPCHECK_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines() == ["['SUCCESS']"] * 10, done.stdout + done.stderr


def test_the_scan_autocast_row_runs_under_fp16_autocast_on_cuda(monkeypatch):
    """gpu_check.autocast_problem's CUDA branch (the "scan under autocast" row of the kernel check): the fp32 scan
    called under CUDA's own AMP dtype, fp16 (bf16 on the CPU); the kernels must still compute in fp32 there."""
    from classification.benchmarks import gpu_check

    regions = []

    @contextlib.contextmanager
    def autocast(device_type, dtype):
        regions.append(("enter", device_type, dtype))
        yield
        regions.append("leave")

    monkeypatch.setattr(gpu_check, "scan_problem", lambda *args: (lambda: regions.append("scan"), ["u"], ["w"]))
    monkeypatch.setattr(torch, "autocast", autocast)
    for device, dtype in ((torch.device("cuda"), torch.float16), (torch.device("cpu"), torch.bfloat16)):
        regions.clear()
        fn, inputs, weights = gpu_check.autocast_problem(device, 8, 9, 4)
        fn()
        assert regions == [("enter", device.type, dtype), "scan", "leave"] and inputs == ["u"]
