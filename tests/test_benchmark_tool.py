"""tools/benchmark.py and classification.benchmarks: the rows they report and the baseline they pick (timings
themselves are not checked)."""
import csv
import importlib.util
from pathlib import Path

import pytest
import torch

from classification.benchmarks import OpShape, benchmark_op, images_per_second, render_table
from localmamba_kernel_runtime import backends

TOOL = Path(__file__).resolve().parents[1] / 'tools' / 'benchmark.py'
_spec = importlib.util.spec_from_file_location('benchmark_tool', TOOL)
benchmark = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(benchmark)


@pytest.mark.parametrize('model, baseline', [('local_vim_tiny', 'deit_tiny_patch16_224'),
                                             ('local_vssm_small', 'swin_tiny_patch4_window7_224')])
def test_default_baselines(model, baseline):
    assert benchmark.parse_args(['--model', model]).baseline == baseline


def test_unknown_family_needs_a_baseline(capsys):
    with pytest.raises(SystemExit):
        benchmark.parse_args(['--model', 'resnet18'])
    assert 'pass --baseline' in capsys.readouterr().err


def test_model_rows_and_csv(tmp_path):
    out = tmp_path / 'bench.csv'
    benchmark.main(['--model', 'local_vim_tiny', '--img-size', '32', '--batch-sizes', '1', '2', '--train-batch', '2',
                    '--repeats', '1', '--warmup', '0', '--csv', str(out)])
    rows = list(csv.DictReader(out.open()))
    assert [r['metric'] for r in rows] == ['inference b1', 'inference b2', 'train step b2']
    for r in rows:
        assert r['baseline'] == 'deit_tiny_patch16_224'
        assert float(r['ratio']) == pytest.approx(float(r['model_img_s']) / float(r['baseline_img_s']))


def test_op_rows_time_each_available_backend_and_leave_the_choice_alone():
    backends.force_backend('reference')
    try:
        rows = benchmark_op('scan', OpShape(batch=1, dim=8, seqlen=5, dstate=4), repeats=1, warmup=0)
        assert backends.requested_backend() == 'reference'
    finally:
        backends.force_backend(None)
    assert [r['backend'] for r in rows] == ['cpu', 'reference']
    reference = rows[1]
    assert reference['fwd_speedup'] == reference['fwdbwd_speedup'] == 1.0
    for r in rows:
        assert r['fwd_speedup'] == pytest.approx(reference['fwd_ms'] / r['fwd_ms'])
        assert r['shape'] == 'B=1 D=8 L=5 N=4'


def test_images_per_second_of_each_model_and_its_mode():
    models = {'a': torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 1000)),
              'b': torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 1000))}
    ips = images_per_second(models, batch=2, img_size=8, train=True, repeats=1, warmup=0)
    assert set(ips) == {'a', 'b'} and all(v > 0 for v in ips.values())
    assert all(m.training for m in models.values())


def test_table_layout():
    assert render_table([['name', 'ms'], ['scan', '1.5'], ['reference', '10.25']]).splitlines() == [
        'name          ms', '---------  -----', 'scan         1.5', 'reference  10.25']


@pytest.mark.parametrize('argv, message', [
    (['--op', 'scan', '--repeats', '0'], '--repeats'),
    (['--op', 'scan', '--warmup', '-1'], '--warmup'),
    (['--op', 'scan', '--dim', '0'], '--dim'),
    (['--op', 'scan', '--threads', '0'], '--threads'),
    (['--model', 'local_vim_tiny', '--batch-sizes', '1', '0'], '--batch-sizes'),
    (['--model', 'local_vim_tiny', '--train-batch', '-1'], '--train-batch'),
    (['--op', 'scan', '--csv', 'NO_SUCH_DIR/out.csv'], 'NO_SUCH_DIR'),
    (['--op', 'scan', '--backends', 'cpuu'], "'cpuu'"),
    (['--op', 'scan', '--backends', 'triton'], 'triton'),  # not available for a CPU tensor
    (['--op', 'scan', '--device', 'foo'], "'foo'"),
])
def test_bad_arguments_end_in_one_line_before_any_timing(argv, message, capsys, tmp_path):
    argv = [str(tmp_path / a) if a.startswith('NO_SUCH_DIR') else a for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        benchmark.parse_args(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err.splitlines()[-1]


@pytest.mark.skipif(torch.cuda.is_available(), reason='needs a machine without CUDA')
def test_cuda_without_a_gpu_is_refused(capsys):
    with pytest.raises(SystemExit):
        benchmark.parse_args(['--op', 'scan', '--device', 'cuda'])
    assert 'CUDA is not available' in capsys.readouterr().err
