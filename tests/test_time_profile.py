"""tools/benchmark.py --profile and classification.benchmarks.time_profile: how profiled ops are grouped, the
figures derived from their times (GFLOP/s, ns per state update per core), and the scan's problem sizes a real
model's profile finds (timings themselves are not checked)."""
import collections
import csv
import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest
import timm
import torch

from classification.benchmarks import time_profile
from classification.benchmarks.time_profile import (CONV_COPIES, GROUPS, INSIDE, MERGE, OTHERS, PRODUCTS, SCAN,
                                                    TimeProfile, op_group, profile_model, summarize_events)
from classification.models.multi_scan import MultiScan
from localmamba_ssm.ops.cpu.scan_merge_cpu import MERGE_RECORD, scan_record_name

TOOL = Path(__file__).resolve().parents[1] / 'tools' / 'benchmark.py'
_spec = importlib.util.spec_from_file_location('benchmark_tool_profile', TOOL)
benchmark = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(benchmark)


def event(name, self_us=0.0, parent=None, flops=0):
    """A stand-in for torch.profiler's FunctionEvent with the fields the grouping reads."""
    return SimpleNamespace(name=name, self_cpu_time_total=self_us, cpu_parent=parent, flops=flops)


def test_ops_are_grouped_by_the_fused_ops_entries_then_by_kind():
    fused = event('localmamba::multi_scan_attention_merge_cpu')
    scan = event(scan_record_name(8, 4, 197, 384, 16), parent=fused)
    inside_scan = event('aten::bmm', parent=scan)
    linear = event('aten::linear')
    assert op_group(scan) == SCAN
    assert op_group(event(MERGE_RECORD, parent=fused)) == MERGE
    assert op_group(fused) == INSIDE                       # the op's own glue outside its kernels' entries
    assert op_group(inside_scan) == INSIDE
    assert op_group(event('aten::gelu', parent=event('aten::linear', parent=fused))) == INSIDE
    assert op_group(event('aten::addmm', parent=linear)) == PRODUCTS
    assert op_group(event('aten::mkldnn_convolution')) == CONV_COPIES
    assert op_group(event('aten::copy_')) == CONV_COPIES
    assert op_group(event('aten::native_layer_norm')) == OTHERS


def test_summary_divides_by_the_forwards_and_derives_gflops_and_ns_per_update():
    """Two forwards: per forward, 3 ms of mm doing 6e9 FLOP (2000 GFLOP/s), a scan of 2*4*10*8*16 = 10240 updates in
    0.5 ms each, twice per forward (2 threads: 0.5e6 ns * 2 / 10240 per update per core)."""
    fused = event('localmamba::multi_scan_attention_merge_cpu', 100.0)
    scan_name = scan_record_name(2, 4, 10, 8, 16)
    events = [event('aten::mm', 3000.0, flops=6e9), event('aten::mm', 3000.0, flops=6e9), fused,
              *[event(scan_name, 500.0, parent=fused) for _ in range(4)], event('aten::add', 400.0)]
    summary = summarize_events(events, forwards=2)
    profile = TimeProfile('m', 2, 32, 'fp32', 2, 2, **summary)
    assert profile.group_ms == {SCAN: 1.0, MERGE: 0.0, INSIDE: 0.05, PRODUCTS: 3.0, CONV_COPIES: 0.0, OTHERS: 0.2}
    assert profile.total_ms == pytest.approx(4.25)
    assert profile.share(profile.product_ms) == pytest.approx(3.0 / 4.25)
    assert profile.product_gflops == pytest.approx(2000.0)
    (shape, scan), = profile.scans.items()
    assert shape == (2, 4, 10, 8, 16) and scan.calls == 2 and scan.updates == 2 * 10240
    assert scan.ms == pytest.approx(1.0)
    assert profile.ns_per_update_core(scan) == pytest.approx(0.5e6 * 2 / 10240)
    assert profile.op_ms[time_profile.SCAN_RECORD] == pytest.approx(1.0)   # one entry for all its sizes


def test_a_profile_of_local_vim_finds_each_layers_scan_at_its_own_size():
    """LocalVim-T at 32 px is a 2x2 grid without a class token: a layer with a w7 direction scans its four directions
    over the grid padded to 7x7 (49 positions), the others over the 4 tokens; E 384, N 16, one call per layer."""
    torch.set_num_threads(1)
    model = timm.create_model('local_vim_tiny', img_size=32)
    expected = collections.Counter((1, len(layer.directions), 49 if 'w7' in layer.directions else 4, 384, 16)
                                   for layer in model.modules() if isinstance(layer, MultiScan))
    profile = profile_model('local_vim_tiny', batch=1, img_size=32, forwards=2, warmup=0)
    assert {shape: scan.calls for shape, scan in profile.scans.items()} == dict(expected)
    assert all(scan.updates == scan.calls * shape[0] * shape[1] * shape[2] * shape[3] * shape[4]
               for shape, scan in profile.scans.items())
    assert profile.group_ms[SCAN] == pytest.approx(sum(scan.ms for scan in profile.scans.values()))
    assert profile.group_ms[MERGE] > 0 and profile.group_ms[PRODUCTS] > 0
    assert sum(profile.share(ms) for ms in profile.group_ms.values()) == pytest.approx(1.0)


def test_profile_cli_writes_a_row_per_group_and_per_scan_size(tmp_path, capsys):
    out = tmp_path / 'profile.csv'
    assert benchmark.main(['--profile', 'local_vssm_tiny', '--img-size', '32', '--batch', '1', '--repeats', '1',
                           '--warmup', '0', '--threads', '1', '--csv', str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [row['part'] for row in rows[:len(GROUPS)]] == list(GROUPS)
    scans = [row for row in rows[len(GROUPS):]]
    # LocalVMamba-T at 32 px: stages of 8x8, 4x4, 2x2, 1x1 tokens at 192, 384, 768, 1536 channels, K 4, N 16
    assert {int(row['part'].split('x')[3]) for row in scans} == {192, 384, 768, 1536}
    assert all(row['part'].startswith('scan 1x4x') and row['part'].endswith('x16') for row in scans)
    assert sum(float(row['share']) for row in rows[:len(GROUPS)]) == pytest.approx(1.0)
    printed = capsys.readouterr().out
    assert 'profile: model=local_vssm_tiny batch=1 img=32 device=cpu' in printed
    assert f'csv: {out}' in printed


@pytest.mark.parametrize('argv, message', [
    (['--profile', 'local_vim_tiny', '--dim', '8'], '--dim is a flag of --op, not of --profile'),
    (['--profile', 'local_vim_tiny', '--train-batch', '2'], '--train-batch is a flag of --model, not of --profile'),
    (['--profile', 'local_vim_tiny', '--baseline', 'resnet18'], '--baseline is a flag of --model: --profile has no'),
    (['--profile', 'local_vim_tiny', '--batch', '0'], '--batch must be at least 1'),
])
def test_bad_profile_arguments_end_in_one_line(argv, message, capsys):
    with pytest.raises(SystemExit):
        benchmark.parse_args(argv)
    assert message in capsys.readouterr().err


def test_profile_defaults_and_its_flags_of_other_modes():
    args = benchmark.parse_args(['--profile', 'local_vim_tiny', '--img-size', '64', '--batch', '2'])
    assert (args.profile, args.img_size, args.batch, args.repeats) == (['local_vim_tiny'], 64, 2, 3)
    args = benchmark.parse_args(['--profile', 'local_vim_tiny'])
    assert (args.img_size, args.batch) == (224, 8)


def test_profile_on_a_gpu_is_refused_in_one_line(monkeypatch, capsys):
    """The profile reads CPU self times: on CUDA they would be the launches' host time, not the kernels'."""
    monkeypatch.setattr(benchmark, 'parse_device', lambda name: torch.device('cuda'))
    monkeypatch.setattr(benchmark, 'check_settings', lambda device: None)
    with pytest.raises(SystemExit):
        benchmark.parse_args(['--profile', 'local_vim_tiny', '--device', 'cuda'])
    assert '--profile reads torch.profiler\'s CPU self times: it profiles on the CPU, not on cuda' in \
        capsys.readouterr().err
