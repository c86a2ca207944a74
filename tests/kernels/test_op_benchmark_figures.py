"""The per-update and backward/forward figures of ``tools/benchmark.py --op`` follow their definitions (no timings
are checked: only how the printed figures derive from the measured ones)."""
import torch

from classification.benchmarks import OpShape, benchmark_op, format_op_table
from classification.benchmarks.op_speed import CASES, LAYER_GRID, multi_scan_case


def test_scan_rows_give_ns_per_update_per_core_and_the_backward_ratio():
    shape = OpShape(batch=1, dim=8, seqlen=5, dstate=4)
    rows = benchmark_op("scan", shape, repeats=1, warmup=0)
    for r in rows:
        updates = 1 * 8 * 5 * 4
        assert r["fwd_ns_per_update_core"] == r["fwd_ms"] * 1e6 * torch.get_num_threads() / updates
        assert r["bwd_over_fwd"] == (r["fwdbwd_ms"] - r["fwd_ms"]) / r["fwd_ms"]
    header = format_op_table(rows).splitlines()[0]
    assert "fwd ns/update/core" in header and "bwd/fwd" in header


def test_multi_scan_case_counts_every_direction_and_position():
    case = multi_scan_case(OpShape(batch=2, dim=8, dstate=4), torch.device("cpu"), torch.float32)
    out = case.run()
    batch, num_dirs, num_tokens, inner = out.shape
    assert (batch, inner, num_tokens) == (2, 8, LAYER_GRID[0] * LAYER_GRID[1] + 1)
    assert num_dirs == 4 and case.updates == batch * num_dirs * inner * num_tokens * 4  # every token once a direction


def test_conv1d_rows_have_no_per_update_figure():
    assert CASES["conv1d"](OpShape(batch=1, dim=8, seqlen=5), torch.device("cpu"), torch.float32).updates is None


def test_multi_scan_rows_time_the_kernel_backends():
    rows = benchmark_op("multi_scan", OpShape(batch=1, dim=8, dstate=4), repeats=1, warmup=0, backward=False)
    assert [r["backend"] for r in rows] == ["cpu", "reference"]
    assert all(r["fwd_ns_per_update_core"] > 0 and r["bwd_over_fwd"] is None for r in rows)


def test_the_decoding_step_is_timed_forward_only_and_steps_its_state_in_place():
    """--op state_update: no backward (the op has none), a figure per update of the B x D x N state, and each call a
    step of the same state, as a decoding loop takes (not a copy)."""
    rows = benchmark_op("state_update", OpShape(batch=2, dim=8, dstate=4), repeats=1, warmup=0)
    assert [r["backend"] for r in rows] == ["cpu", "reference"]
    for r in rows:
        assert r["shape"] == "B=2 D=8 N=4" and r["fwdbwd_ms"] is None and r["bwd_over_fwd"] is None
        assert r["fwd_ns_per_update_core"] == r["fwd_ms"] * 1e6 * torch.get_num_threads() / (2 * 8 * 4)
    case = CASES["state_update"](OpShape(batch=2, dim=8, dstate=4), torch.device("cpu"), torch.float32)
    first, second = case.run(), case.run()
    assert first.shape == (2, 8) and not torch.equal(first, second)    # the second step starts from the first's state


def test_graph_columns_appear_only_with_cuda_graph_figures():
    rows = benchmark_op("conv1d", OpShape(batch=1, dim=8, seqlen=5), repeats=1, warmup=0)
    assert all(r["fwd_graph_ms"] is None and r["fwdbwd_graph_ms"] is None for r in rows)  # CPU: nothing to capture
    assert "graph" not in format_op_table(rows)
    rows[0].update(fwd_graph_ms=0.0125, fwdbwd_graph_ms=0.25)
    header, _, first, second = format_op_table(rows).splitlines()
    assert header.split()[-6:] == ["fwd", "graph", "ms", "fwd+bwd", "graph", "ms"]
    assert first.split()[-2:] == ["0.013", "0.250"] and second.split()[-2:] == ["-", "-"]


def test_multi_scan_rows_name_the_sequence_length_they_ran(capsys):
    from classification.benchmarks import print_op_benchmark

    shape = OpShape(batch=1, dim=8, seqlen=50, dstate=4)  # --seqlen does not apply: the 14x14 grid + cls fixes L
    rows = print_op_benchmark("multi_scan", shape, repeats=1, warmup=0, backward=False)
    tokens = LAYER_GRID[0] * LAYER_GRID[1] + 1
    assert all(r["shape"] == f"B=1 D=8 L={tokens} N=4" for r in rows)
    assert f"seqlen={tokens} " in capsys.readouterr().out.splitlines()[0]


def test_a_gpu_row_gives_no_per_core_figure(monkeypatch):
    """On CUDA the figure was the GPU's time times the CPU's thread count (16 on the H100 machine): 16x too large,
    and per no core at all."""
    from classification.benchmarks import op_speed
    from classification.benchmarks.op_speed import Case

    monkeypatch.setitem(op_speed.CASES, "scan", lambda *args: Case(lambda: torch.zeros(1), [], updates=1000))
    monkeypatch.setattr(op_speed.backends, "available_backends", lambda *args: ["triton", "reference"])
    monkeypatch.setattr(op_speed, "median_seconds", lambda steps, *args: {name: 2e-3 for name in steps})
    monkeypatch.setattr(op_speed, "_graph_ms", lambda *args: 1.0)
    rows = benchmark_op("scan", OpShape(batch=1, dim=8, seqlen=5, dstate=4), device="cuda", backward=False)
    assert [(r["backend"], r["fwd_ms"], r["fwd_ns_per_update_core"]) for r in rows] == [
        ("triton", 2.0, None), ("reference", 2.0, None)]


def test_a_gpu_rows_graph_figures_are_milliseconds_of_one_replay_timed_over_the_repeats(monkeypatch):
    """benchmark_op on CUDA: each kernel backend's step also replayed in a CUDA graph, ``repeats`` times, its seconds
    per replay (stand-ins: 25 us forward, 100 us forward + backward) given in milliseconds; the reference has
    none."""
    from classification.benchmarks import op_speed
    from classification.benchmarks.op_speed import Case

    replays = []

    def graph_seconds(step, repeats, device):
        replays.append(repeats)
        return (2.5e-5, 1e-4)[len(replays) - 1]

    monkeypatch.setitem(op_speed.CASES, "scan", lambda *args: Case(lambda: torch.zeros(1), [], updates=1000))
    monkeypatch.setattr(op_speed.backends, "available_backends", lambda *args: ["triton", "reference"])
    monkeypatch.setattr(op_speed, "median_seconds", lambda steps, *args: {name: 2e-3 for name in steps})
    monkeypatch.setattr(op_speed, "cuda_graph_seconds", graph_seconds)
    rows = benchmark_op("scan", OpShape(batch=1, dim=8, seqlen=5, dstate=4), device="cuda", repeats=7)
    assert [(r["backend"], r["fwd_graph_ms"], r["fwdbwd_graph_ms"]) for r in rows] == [
        ("triton", 0.025, 0.1), ("reference", None, None)]
    assert replays == [7, 7]
