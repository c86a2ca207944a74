"""tools/benchmark.py and classification.benchmarks: the rows they report and the baseline they pick (timings
themselves are not checked)."""
import csv
import importlib.util
import os
from pathlib import Path

import pytest
import torch

from classification.benchmarks import (OpShape, benchmark_op, format_op_table, images_per_second, median_seconds,
                                       print_op_benchmark, render_table)
from classification.benchmarks import timing
from classification.benchmarks.peak_memory import forward_peak_mib
from localmamba_kernel_runtime import backends

TOOL = Path(__file__).resolve().parents[1] / 'tools' / 'benchmark.py'
_spec = importlib.util.spec_from_file_location('benchmark_tool', TOOL)
benchmark = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(benchmark)


@pytest.mark.parametrize('model, baseline', [('local_vim_tiny', 'deit_tiny_patch16_224'),
                                             ('local_vssm_small', 'swin_tiny_patch4_window7_224')])
def test_default_baselines(model, baseline):
    assert benchmark.parse_args(['--model', model]).baselines == [baseline]


def test_several_models_each_get_their_own_baseline():
    assert benchmark.parse_args(['--model', 'local_vim_tiny', 'local_vssm_tiny']).baselines == [
        'deit_tiny_patch16_224', 'swin_tiny_patch4_window7_224']


def test_unknown_family_needs_a_baseline(capsys):
    with pytest.raises(SystemExit):
        benchmark.parse_args(['--model', 'resnet18'])
    assert 'pass --baseline' in capsys.readouterr().err


def test_an_unknown_family_among_several_models_is_sent_to_a_command_of_its_own(capsys):
    """--baseline takes one --model: the advice to pass it must say so, or following it meets a second refusal."""
    with pytest.raises(SystemExit):
        benchmark.parse_args(['--model', 'local_vim_tiny', 'resnet18'])
    assert "no default baseline for 'resnet18': pass --baseline, in a command with it alone as --model (--baseline " \
           "takes one --model)" in capsys.readouterr().err


def test_model_rows_and_csv(tmp_path):
    out = tmp_path / 'bench.csv'
    benchmark.main(['--model', 'local_vim_tiny', '--img-size', '32', '--batch-sizes', '1', '2', '--train-batch', '2',
                    '--repeats', '1', '--warmup', '0', '--csv', str(out)])
    rows = list(csv.DictReader(out.open()))
    assert [r['metric'] for r in rows] == ['inference b1', 'inference b2', 'train step b2']
    for r in rows:
        assert r['baseline'] == 'deit_tiny_patch16_224'
        assert float(r['ratio']) == pytest.approx(float(r['model_img_s']) / float(r['baseline_img_s']))


def test_the_csv_is_named_and_a_replaced_earlier_file_is_said(tmp_path, capsys):
    """A second run with the same --csv replaced the first run's table without a word (no line named the CSV)."""
    out = tmp_path / 'bench.csv'
    argv = ['--op', 'scan', '--backends', 'reference', '--no-backward', '--repeats', '1', '--warmup', '0', '--batch',
            '1', '--dim', '4', '--seqlen', '8', '--csv', str(out)]
    assert benchmark.main(argv) == 0
    assert capsys.readouterr().out.endswith(f'\ncsv: {out}\n')
    assert benchmark.main(argv) == 0
    assert capsys.readouterr().out.endswith(f'\ncsv: {out} (replaced the earlier file there)\n')


def test_an_interrupted_csv_write_leaves_the_previous_file_whole(tmp_path):
    """--csv was written in place: Ctrl-C (or a full disk) in the write left the header and part of the rows, which
    a later plot or report read as the whole table."""
    from classification.benchmarks import write_csv

    class Interrupted:
        def __str__(self):
            raise KeyboardInterrupt

    out = tmp_path / 'bench.csv'
    write_csv(str(out), [{'model': 'a', 'ratio': 1.5}])
    with pytest.raises(KeyboardInterrupt):
        write_csv(str(out), [{'model': 'b', 'ratio': 2.0}, {'model': 'c', 'ratio': Interrupted()}])
    assert out.read_bytes() == b'model,ratio\r\na,1.5\r\n'
    assert sorted(path.name for path in tmp_path.iterdir()) == ['bench.csv']


def test_an_output_file_in_a_folder_that_cannot_be_written_is_refused_before_any_timing(tmp_path, monkeypatch):
    """The file is written beside itself and renamed: a writable file in a read-only folder passed the check and the
    write failed after the timing."""
    from classification.benchmarks import output_file_problem
    from classification.benchmarks import tables

    out = tmp_path / 'bench.csv'
    out.write_text('old')
    monkeypatch.setattr(tables.os, 'access', lambda path, mode: os.fspath(path) != str(tmp_path))
    assert output_file_problem('--csv', str(out)) == f'--csv {out}: not writable'


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


def test_an_op_is_described_by_the_sizes_of_its_problem_only(capsys):
    """conv1d's header printed the state size it has no use for, and no op's named its conv width."""
    backends.force_backend('reference')
    try:
        rows = print_op_benchmark('conv1d', OpShape(batch=1, dim=8, seqlen=5, dstate=4, width=3), repeats=1, warmup=0,
                                  only_backends=['reference'])
    finally:
        backends.force_backend(None)
    assert [r['shape'] for r in rows] == ['B=1 D=8 L=5 W=3']
    assert ' batch=1 dim=8 seqlen=5 width=3 threads=' in capsys.readouterr().out.splitlines()[0]


def test_images_per_second_of_each_model_and_its_mode():
    models = {'a': torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 1000)),
              'b': torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 1000))}
    ips = images_per_second(models, batch=2, img_size=8, train=True, repeats=1, warmup=0)
    assert set(ips) == {'a', 'b'} and all(v > 0 for v in ips.values())
    assert all(m.training for m in models.values())


def test_a_training_step_draws_its_labels_below_the_models_class_count():
    """A 10-class model's training step (its labels were drawn below 1000: IndexError): with zero logits the bias
    gradient is softmax - one-hot averaged over the batch, 0.1 - (share of the batch labelled c) for class c."""
    from classification.benchmarks.model_speed import train_step

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 10))
    torch.nn.init.zeros_(model[1].weight)
    torch.nn.init.zeros_(model[1].bias)
    train_step(model, torch.randn(6, 3, 4, 4), torch.float32)()
    labels = torch.randint(0, 10, (6,), generator=torch.Generator().manual_seed(0))
    expected = 0.1 - torch.bincount(labels, minlength=10) / 6
    torch.testing.assert_close(model[1].bias.grad, expected)


def test_images_per_second_gives_each_model_images_of_its_own_channels():
    """A model of one input channel beside an RGB one: each is timed on images it takes (all had 3 channels)."""
    gray = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 8), torch.nn.Flatten(), torch.nn.Linear(4, 1000))
    rgb = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 8), torch.nn.Flatten(), torch.nn.Linear(4, 1000))
    seen = {}
    for name, model in (('gray', gray), ('rgb', rgb)):
        model.register_forward_pre_hook(lambda module, args, name=name: seen.update({name: tuple(args[0].shape)}))
    ips = images_per_second({'gray': gray, 'rgb': rgb}, batch=2, img_size=8, repeats=1, warmup=0)
    assert set(ips) == {'gray', 'rgb'}
    assert seen == {'gray': (2, 1, 8, 8), 'rgb': (2, 3, 8, 8)}


def test_images_per_second_is_the_batch_over_each_models_median_step(monkeypatch):
    """img/s = batch / median seconds of a step, per model: a rate per step (1 / seconds) kept the ratio of two models
    timed at one batch and gave their img/s a batch-fold too low."""
    from classification.benchmarks import model_speed

    monkeypatch.setattr(model_speed, 'median_seconds', lambda steps, *args, **kwargs: {
        name: seconds for name, seconds in zip(steps, (0.25, 0.5))})
    models = {'a': torch.nn.Conv2d(3, 2, 1), 'b': torch.nn.Conv2d(3, 2, 1)}
    assert images_per_second(models, batch=8, img_size=4, repeats=1, warmup=0) == {'a': 32.0, 'b': 16.0}


def test_table_layout():
    assert render_table([['name', 'ms'], ['scan', '1.5'], ['reference', '10.25']]).splitlines() == [
        'name          ms', '---------  -----', 'scan         1.5', 'reference  10.25']


def op_row(backend, fwd_ms, fwdbwd_ms, reference_ms=(8.0, 20.0)):
    """A row of benchmark_op with hand-made timings (milliseconds of forward and of forward + backward)."""
    return {'backend': backend, 'fwd_ms': fwd_ms, 'fwd_speedup': reference_ms[0] / fwd_ms,
            'fwd_ns_per_update_core': None, 'fwdbwd_ms': fwdbwd_ms,
            'fwdbwd_speedup': None if fwdbwd_ms is None else reference_ms[1] / fwdbwd_ms,
            'bwd_over_fwd': None if fwdbwd_ms is None else (fwdbwd_ms - fwd_ms) / fwd_ms}


def test_op_table_gives_no_backward_ratio_where_noise_made_forward_and_backward_no_slower_than_forward():
    rows = [op_row('cpu', 2.0, 1.5), op_row('triton', 2.0, 2.0), op_row('reference', 8.0, 20.0)]
    assert format_op_table(rows).splitlines() == [
        'backend    fwd ms  fwd speedup  fwd ns/update/core  fwd+bwd ms  fwd+bwd speedup                      bwd/fwd',
        '---------  ------  -----------  ------------------  ----------  ---------------  ---------------------------',
        'cpu         2.000         4.0x                   -       1.500            13.3x  n/a (noise: fwd+bwd <= fwd)',
        'triton      2.000         4.0x                   -       2.000            10.0x  n/a (noise: fwd+bwd <= fwd)',
        'reference   8.000         1.0x                   -      20.000             1.0x                        1.50x']


def test_op_table_without_backward_timings_has_no_ratio():
    assert format_op_table([op_row('cpu', 2.0, None), op_row('reference', 8.0, None)]).splitlines()[2:] == [
        'cpu         2.000         4.0x                   -           -                -        -',
        'reference   8.000         1.0x                   -           -                -        -']


@pytest.mark.parametrize('argv, message', [
    (['--op', 'scan', '--repeats', '0'], '--repeats'),
    (['--op', 'scan', '--repeats', '-3'], '--repeats must be at least 1'),
    (['--op', 'scan', '--warmup', '-1'], '--warmup'),
    (['--op', 'scan', '--dim', '0'], '--dim'),
    (['--op', 'scan', '--threads', '0'], '--threads'),
    (['--model', 'local_vim_tiny', '--batch-sizes', '1', '0'], '--batch-sizes'),
    (['--model', 'local_vim_tiny', '--train-batch', '-1'], '--train-batch'),
    (['--op', 'scan', '--csv', 'NO_SUCH_DIR/out.csv'], 'NO_SUCH_DIR'),
    (['--op', 'scan', '--backends', 'cpuu'], "'cpuu'"),
    (['--op', 'scan', '--backends', 'triton'], 'triton'),  # not available for a CPU tensor
    (['--op', 'scan', '--device', 'foo'], "'foo'"),
    (['--op', 'scan', '--sweep', '224'], '--sweep is a flag of --model, not of --op'),
    (['--op', 'scan', '--img-size', '32'], '--img-size is a flag of --model, not of --op'),
    (['--model', 'local_vim_tiny', '--dim', '4'], '--dim is a flag of --op, not of --model'),
    (['--op', 'scan', '--width', '8'], '--width does not apply to --op scan (its sizes: --batch --dim --seqlen'),
    (['--op', 'conv1d', '--dstate', '32'], '--dstate does not apply to --op conv1d'),
    (['--op', 'multi_scan', '--seqlen', '1000'], '--seqlen does not apply to --op multi_scan'),
    (['--model', 'local_vim_tiny', '--no-backward'], '--no-backward is a flag of --op, not of --model'),
    (['--model', 'local_vim_tiny', '--sweep-batch', '2'], '--sweep-batch is the batch of --sweep: give --sweep'),
    (['--model', 'local_vim_tiny', '--sweep', '224', '0'], '--sweep must be at least 1'),
    (['--model', 'local_vim_tiny', '--sweep', '224', '--sweep-batch', '0'], '--sweep-batch must be at least 1'),
    (['--model', 'local_vim_tiny', '--plot', 'sweep.png'], '--plot draws a resolution sweep: give --sweep SIZE'),
    (['--model', 'local_vim_tiny', '--sweep', '224', '--plot', 'NO_SUCH_DIR/s.png'], 'NO_SUCH_DIR'),
    (['--model', 'local_vim_tiny', '--sweep', '224', '--plot', 'sweep.txt'],
     "--plot sweep.txt: matplotlib cannot write '.txt' files"),
    (['--model', 'local_vim_tiny', 'local_vssm_tiny', '--baseline', 'resnet18'], '--baseline takes one --model'),
    (['--model', 'local_vim_tiny', '--sweep', '224', '--img-size', '512'], '--img-size sets the batch table, not'),
    (['--model', 'local_vim_tiny', '--sweep', '224', '--batch-sizes', '8'], 'its batch is --sweep-batch'),
    (['--ema', 'local_vim_tiny', '--dim', '4'], '--dim is a flag of --op, not of --ema'),
    (['--ema', 'local_vim_tiny', '--train-batch', '4'], '--train-batch is a flag of --model, not of --ema'),
    (['--ema', 'local_vim_tiny', '--baseline', 'resnet18'], "--baseline is a flag of --model: --ema's baseline is"),
    (['--ema', 'local_vim_tny'], "--ema: unknown model 'local_vim_tny'; did you mean local_vim_tiny"),
    (['--model', 'local_vim_tiny', 'timm_local_vim_tiny'],
     "--model: timm_local_vim_tiny is local_vim_tiny, given already: give each model once"),
    (['--ema', 'local_vssm_tiny', 'local_vssm_tiny'],
     "--ema: local_vssm_tiny given twice: give each model once"),
    (['--model', 'local_vim_tiny', '--compile', 'default', '--warmup', '1'],
     "--compile default compiles in the warmup calls: --warmup 1 would time the compilation; give --warmup 2 or more"),
])
def test_bad_arguments_end_in_one_line_before_any_timing(argv, message, capsys, tmp_path):
    argv = [str(tmp_path / a) if a.startswith('NO_SUCH_DIR') else a for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        benchmark.parse_args(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err.splitlines()[-1]


@pytest.mark.parametrize('variable, value, message', [
    ('CC', '/nonexistent', "CC='/nonexistent' is not an executable C compiler"),
    ('LOCALMAMBA_CPU_ISA', 'bogus', "LOCALMAMBA_CPU_ISA='bogus' is not an instruction set"),
    ('LOCALMAMBA_BACKEND', 'bogus', "LOCALMAMBA_BACKEND"),
])
def test_a_bad_kernel_setting_ends_in_one_line_before_any_timing(variable, value, message, monkeypatch, capsys):
    """--op timed the ops into the setting's traceback, where tools/train.py and the other tools print one line."""
    monkeypatch.setenv('LOCALMAMBA_CPU_KERNEL', 'require')
    monkeypatch.setenv(variable, value)
    with backends.restoring_choice(), pytest.raises(SystemExit) as exit_info:
        backends.force_backend(None)  # LOCALMAMBA_BACKEND is read again
        benchmark.parse_args(['--op', 'conv1d', '--batch', '1', '--dim', '4', '--seqlen', '8'])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err.splitlines()[-1]


def test_a_plot_name_without_extension_is_the_png_file_matplotlib_writes(tmp_path):
    args = benchmark.parse_args(['--model', 'local_vim_tiny', '--sweep', '224', '--plot', str(tmp_path / 'sweep')])
    assert args.plot == str(tmp_path / 'sweep.png')


@pytest.mark.skipif(torch.cuda.is_available(), reason='needs a machine without CUDA')
def test_cuda_without_a_gpu_is_refused(capsys):
    with pytest.raises(SystemExit):
        benchmark.parse_args(['--op', 'scan', '--device', 'cuda'])
    assert 'CUDA is not available' in capsys.readouterr().err


@pytest.mark.parametrize('argv, model, baseline', [
    (['--model', 'timm_local_vim_tiny'], 'local_vim_tiny', 'deit_tiny_patch16_224'),
    (['--model', 'timm_local_vssm_tiny', '--baseline', 'timm_resnet18'], 'local_vssm_tiny', 'resnet18'),
])
def test_model_names_are_taken_with_the_original_timm_prefix(argv, model, baseline):
    args = benchmark.parse_args(argv)
    assert (args.model, args.baselines) == ([model], [baseline])


@pytest.mark.parametrize('argv, message', [
    (['--model', 'local_vim_tny'], "--model: unknown model 'local_vim_tny'; did you mean local_vim_tiny"),
    (['--model', 'local_vim_tiny', '--baseline', 'deit_tny_patch16_224'],
     "--baseline: unknown model 'deit_tny_patch16_224'; did you mean deit_tiny_patch16_224"),
])
def test_unknown_model_names_end_in_one_line_with_close_matches(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        benchmark.parse_args(argv)
    assert exit_info.value.code == 2 and f'error: {message}' in capsys.readouterr().err.splitlines()[-1]


def test_progress_reports_the_first_call_every_tenth_and_an_eta():
    now = iter(float(t) for t in range(0, 100, 2))              # every call to the clock 2 s later
    lines = []
    report = timing.progress_reporter(lines.append, clock=lambda: next(now))
    for done in range(1, 26):
        report(done, 25)
    assert [line.split(',')[0] for line in lines] == ['forwards 1/25', 'forwards 3/25', 'forwards 6/25',
                                                      'forwards 9/25', 'forwards 12/25', 'forwards 15/25',
                                                      'forwards 18/25', 'forwards 21/25', 'forwards 24/25',
                                                      'forwards 25/25']
    assert lines[0] == 'forwards 1/25, elapsed 0:00:02, ETA 0:00:48'   # 2 s for 1 of 25: 48 s for the other 24
    assert lines[-1] == 'forwards 25/25, elapsed 0:00:20, ETA 0:00:00'


def test_median_seconds_reports_progress_over_warmup_and_timed_repeats():
    calls = []
    median_seconds({'a': lambda: None, 'b': lambda: None}, repeats=3, warmup=2,
                   progress=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 5), (2, 5), (3, 5), (4, 5), (5, 5)]


def test_an_image_size_the_baseline_cannot_take_ends_in_one_line(capsys):
    assert benchmark.main(['--model', 'local_vim_tiny', '--img-size', '8', '--batch-sizes', '1', '--train-batch',
                           '0', '--repeats', '1', '--warmup', '0']) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith('error: --img-size 8: model deit_tiny_patch16_224 cannot take 8x8 images (')
    assert len(err.splitlines()) == 1


def test_a_kernel_that_does_not_build_is_not_blamed_on_the_image_size():
    """Under LOCALMAMBA_CPU_KERNEL=require a failed build raised in the first forward read `--img-size 32: model ...
    cannot take 32x32 images (... the compiler said:)`, the compiler's output cut off; it is the build's error,
    whole."""
    from classification.benchmarks.model_speed import check_image_size
    from classification.engine.config import ConfigError
    from localmamba_kernel_runtime.ckernel import KernelBuildError

    class BuildFails(torch.nn.Linear):
        def forward(self, x):
            raise KernelBuildError('LOCALMAMBA_CPU_KERNEL=require, but building failed; the compiler said:\n'
                                   'scan.c:1: error: bad')

    with pytest.raises(ConfigError) as raised:
        check_image_size(BuildFails(1, 1), 'local_vim_tiny', 32)
    assert str(raised.value) == ('LOCALMAMBA_CPU_KERNEL=require, but building failed; the compiler said:\n'
                                 'scan.c:1: error: bad')


def test_ema_rows_time_both_updates_and_compare_their_weights(tmp_path, capsys):
    out = tmp_path / 'ema.csv'
    benchmark.main(['--ema', 'timm_local_vim_tiny', '--repeats', '1', '--warmup', '0', '--csv', str(out)])
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ['model', 'tensors', 'ModelEmaV2', 'ms', 'ForeachModelEma', 'ms', 'ratio', 'equal',
                                'bit', 'for', 'bit']
    cells = table[2].split()
    assert cells[:2] == ['local_vim_tiny', '748'] and cells[-1] == 'yes'
    with open(out) as f:
        row, = list(csv.DictReader(f))
    assert float(row['ratio']) == pytest.approx(float(row['model_ema_v2_ms']) / float(row['foreach_ms']))
    assert (row['device'], row['dtype'], row['equal']) == ('cpu', 'fp32', 'True')


def _fake_timings(monkeypatch, fail):
    """benchmark_models without models or timings: every model 'takes' 2 img/s, every baseline 4; ``fail(model,
    batch, train)`` raises for the measurement that is to fail."""
    from classification.benchmarks import model_speed

    def images_per_second(models, batch, img_size, train, *args):
        model, baseline = models
        fail(model, batch, train)
        return {model: 2.0, baseline: 4.0}

    monkeypatch.setattr(model_speed, 'build_model', lambda name, *args, **kwargs: torch.nn.Linear(1, 1))
    monkeypatch.setattr(model_speed, 'check_image_size', lambda *args, **kwargs: None)
    monkeypatch.setattr(model_speed, 'images_per_second', images_per_second)


def test_a_model_that_fails_keeps_the_rows_of_the_models_before_it(tmp_path, monkeypatch, capsys):
    """`--model A B` where B fails: A's rows were dropped from --csv (the run ended before writing it)."""
    from classification.engine.config import ConfigError

    def fail(model, batch, train):
        if model == 'local_vssm_tiny':
            raise ConfigError('--img-size 8: model local_vssm_tiny cannot take 8x8 images')

    _fake_timings(monkeypatch, fail)
    out = tmp_path / 'bench.csv'
    assert benchmark.main(['--model', 'local_vim_tiny', 'local_vssm_tiny', '--batch-sizes', '1', '--train-batch', '2',
                           '--csv', str(out)]) == 2
    rows = list(csv.DictReader(out.open()))
    assert [(r['model'], r['metric'], float(r['ratio'])) for r in rows] == [
        ('local_vim_tiny', 'inference b1', 0.5), ('local_vim_tiny', 'train step b2', 0.5)]
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        'error: --img-size 8: model local_vssm_tiny cannot take 8x8 images; the 2 rows that ended are in the table '
        f'above and in {out}']
    assert 'local_vim_tiny img/s' in captured.out


def test_ctrl_c_keeps_the_rows_that_ended_in_the_table_and_the_csv(tmp_path, monkeypatch, capsys,
                                                                   status_after_ctrl_c):
    def fail(model, batch, train):
        if train:
            raise KeyboardInterrupt

    _fake_timings(monkeypatch, fail)
    out = tmp_path / 'bench.csv'
    assert status_after_ctrl_c(benchmark.main, ['--model', 'local_vim_tiny', 'local_vssm_tiny', '--batch-sizes', '1',
                                                '8', '--csv', str(out)]) == 130
    rows = list(csv.DictReader(out.open()))
    assert [(r['model'], r['metric'], float(r['model_img_s'])) for r in rows] == [
        ('local_vim_tiny', 'inference b1', 2.0), ('local_vim_tiny', 'inference b8', 2.0)]
    captured = capsys.readouterr()
    table = captured.out[captured.out.index('metric '):].splitlines()
    assert [line.split()[:2] for line in table[2:]] == [['inference', 'b1'], ['inference', 'b8']]
    assert captured.err.splitlines() == [f'interrupted (Ctrl-C); the 2 rows that ended are in the table above and '
                                         f'in {out}']


def test_ctrl_c_in_ema_keeps_the_rows_of_the_models_before_it(tmp_path, monkeypatch, capsys, status_after_ctrl_c):
    def benchmark_ema(model, *args, **kwargs):
        if model == 'local_vssm_tiny':
            raise KeyboardInterrupt
        return [{'model': model, 'tensors': 3, 'device': 'cpu', 'dtype': 'fp32', 'model_ema_v2_ms': 4.0,
                 'foreach_ms': 1.0, 'ratio': 4.0, 'equal': True}]

    monkeypatch.setattr(benchmark, 'benchmark_ema', benchmark_ema)
    out = tmp_path / 'ema.csv'
    argv = ['--ema', 'local_vim_tiny', 'local_vssm_tiny', '--csv', str(out)]
    assert status_after_ctrl_c(benchmark.main, argv) == 130
    assert [(r['model'], float(r['ratio'])) for r in csv.DictReader(out.open())] == [('local_vim_tiny', 4.0)]
    captured = capsys.readouterr()
    assert 'local_vim_tiny' in captured.out and 'local_vssm_tiny' not in captured.out
    assert captured.err.splitlines() == [f'interrupted (Ctrl-C); the row that ended is in the table above and in {out}']


def test_ctrl_c_in_the_op_benchmark_keeps_the_forward_timings(tmp_path, monkeypatch, capsys, status_after_ctrl_c):
    """`--op` ended Ctrl-C in a traceback, losing the forward timings that had ended: now the forward figures of
    each backend are in the table and the CSV, one line says it was interrupted, and the exit status is 130."""
    from classification.benchmarks import op_speed

    modes = []

    def median_seconds(steps, repeats, warmup, device):
        modes.append('fwd+bwd' if modes else 'fwd')
        if modes[-1] == 'fwd+bwd':
            raise KeyboardInterrupt
        return {name: 0.002 if name == 'reference' else 0.001 for name in steps}

    monkeypatch.setattr(op_speed, 'median_seconds', median_seconds)
    out = tmp_path / 'op.csv'
    assert status_after_ctrl_c(benchmark.main, ['--op', 'conv1d', '--dim', '4', '--seqlen', '8', '--batch', '1',
                                                '--backends', 'cpu', '--csv', str(out)]) == 130
    rows = list(csv.DictReader(out.open()))
    assert [(r['backend'], float(r['fwd_ms']), float(r['fwd_speedup']), r['fwdbwd_ms']) for r in rows] == [
        ('cpu', 1.0, 2.0, ''), ('reference', 2.0, 1.0, '')]
    captured = capsys.readouterr()
    table = captured.out[captured.out.index('backend '):].splitlines()
    assert [line.split()[:3] for line in table[2:]] == [['cpu', '1.000', '2.0x'], ['reference', '2.000', '1.0x']]
    assert captured.err.splitlines() == [f'interrupted (Ctrl-C); the 2 rows that ended are in the table above and '
                                         f'in {out}']


def test_a_sweep_that_fails_at_a_size_keeps_the_sizes_before_it(tmp_path, monkeypatch, capsys):
    from classification.engine.config import ConfigError

    resolution_sweep = importlib.import_module('classification.benchmarks.resolution_sweep')

    def images_per_second(models, batch, size, **kwargs):
        if size == 64:
            raise ConfigError('--img-size 64: too large')
        model, baseline = models
        return {model: 3.0, baseline: 2.0}

    monkeypatch.setattr(resolution_sweep, 'build_compared', lambda model, baseline, *args, **kwargs: dict.fromkeys(
        (model, baseline), torch.nn.Linear(1, 1)))
    monkeypatch.setattr(resolution_sweep, 'images_per_second', images_per_second)
    monkeypatch.setattr(resolution_sweep, 'forward_peak_mib', lambda *args, **kwargs: 1.5)
    out = tmp_path / 'sweep.csv'
    assert benchmark.main(['--model', 'local_vim_tiny', '--sweep', '32', '64', '--csv', str(out)]) == 2
    rows = list(csv.DictReader(out.open()))
    assert [(r['img_size'], float(r['ratio']), float(r['model_peak_mib'])) for r in rows] == [('32', 1.5, 1.5)]
    assert capsys.readouterr().err.startswith('error: --img-size 64: too large; the row that ended is')


def test_a_replaced_earlier_plot_is_said(tmp_path, monkeypatch, capsys):
    """A second sweep with the same --plot says that it replaced the first one's figure, as --csv's line does; the
    first names the figure alone. The sweep's timings and peak memory are faked."""
    resolution_sweep = importlib.import_module('classification.benchmarks.resolution_sweep')
    monkeypatch.setattr(resolution_sweep, 'build_compared', lambda model, baseline, *args, **kwargs: dict.fromkeys(
        (model, baseline), torch.nn.Linear(1, 1)))
    monkeypatch.setattr(resolution_sweep, 'images_per_second',
                        lambda models, batch, size, **kwargs: dict(zip(models, (3.0, 2.0))))
    monkeypatch.setattr(resolution_sweep, 'forward_peak_mib', lambda *args, **kwargs: 1.5)
    out = tmp_path / 'sweep.png'
    argv = ['--model', 'local_vim_tiny', '--sweep', '32', '--plot', str(out)]
    assert benchmark.main(argv) == 0
    assert capsys.readouterr().out.endswith(f'\nplot: {out}\n')
    assert benchmark.main(argv) == 0
    assert capsys.readouterr().out.endswith(f'\nplot: {out} (replaced the earlier file there)\n')


@pytest.mark.parametrize('size', ['-32', '[-32,-32]'])
def test_flops_of_a_negative_model_kwargs_image_size_end_in_one_line(size, capsys):
    """`flops.py MODEL --model-kwargs img_size=-32` ended in the model's RuntimeError traceback."""
    spec = importlib.util.spec_from_file_location('flops_tool', TOOL.parent / 'flops.py')
    flops = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(flops)
    assert flops.main(['local_vim_tiny', '--model-kwargs', f'img_size={size}']) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: model_kwargs img_size={[-32, -32] if '[' in size else -32}: an image side must be at least 1 pixel"]


def test_the_mixer_timings_table_divides_each_step_by_the_fused_ones(monkeypatch):
    """The GPU check's fused-mixer table (run on a GPU only): each row's `vs fused` is its time over the fused op's
    for the same op, dtype, batch and step (forward, or forward + backward); the scan-tile rows have none. Timings
    are made up: fused 1 ms, deterministic 2, composed 3, reference 4, and forward + backward 2.5 times the forward."""
    from classification.benchmarks import mixer_ops

    base_ms = {'fused': 1.0, 'deterministic': 2.0, 'composed': 3.0, 'reference': 4.0}

    def made_up_seconds(steps, repeats, warmup, device):
        return {name: base_ms[name.split()[0]] * (2.5 if name.endswith('fwd+bwd') else 1.0) / 1e3 for name in steps}

    monkeypatch.setattr(mixer_ops, 'median_seconds', made_up_seconds)
    monkeypatch.setattr(mixer_ops, 'render_table', lambda rows: rows)
    header, *rows = mixer_ops.mixer_timings('cpu', quick=True, repeats=1)
    assert header == ['op', 'dtype', 'batch', 'step', 'ms', 'vs fused']
    ops = [(op, dtype) for op, dtype, *_ in rows if '[' in op]
    assert sorted(set(ops)) == sorted(
        [(f'{op} [{label}]', dtype) for dtype in ('fp32', 'bf16')
         for op, labels in (('multi_scan_inner', ('fused', 'composed', 'deterministic')),
                            ('attention_merge', ('fused', 'reference')))
         for label in labels]
        + [(f'multi_scan_inner LocalVMamba-T [{label}]', 'fp32') for label in ('fused', 'composed', 'deterministic')])
    for op, dtype, batch, step, ms, vs_fused in rows:
        label = op.split('[')[1].rstrip(']') if '[' in op else op.split(' tiles ')[0]
        ms_expected = base_ms[label.split()[0]] * (2.5 if step == 'fwd+bwd' else 1.0)
        assert float(ms) == ms_expected, op
        if '[' in op:
            assert batch == '2' and vs_fused == f'{base_ms[label]:.2f}x', (op, step)
        else:
            assert (op, dtype, vs_fused) == ('fused scan tiles 16x8 (default)', 'fp32', '-')
    assert [step for op, _, _, step, _, _ in rows if op == 'multi_scan_inner [deterministic]'] == ['fwd+bwd'] * 2


def test_median_seconds_is_the_median_of_the_timed_repeats_only(monkeypatch):
    """Each step moves a stand-in clock on by its made-up duration: two warmup calls of 100 s each, then 1, 9 and 2 s
    for 'a' (median 2 s; mean 4, minimum 1) and 3, 3 and 30 s for 'b'."""
    now = [0.0]
    durations = {'a': iter([100.0, 100.0, 1.0, 9.0, 2.0]), 'b': iter([100.0, 100.0, 3.0, 3.0, 30.0])}

    def step(name):
        def run():
            now[0] += next(durations[name])
        return run

    monkeypatch.setattr(timing.time, 'perf_counter', lambda: now[0])
    assert median_seconds({name: step(name) for name in durations}, repeats=3, warmup=2) == {'a': 2.0, 'b': 3.0}


def test_throughput_and_op_timings_time_the_repeats_after_the_warmup_asked_for(monkeypatch):
    """images_per_second and benchmark_op hand median_seconds their repeats and warmup in that order (swapped, a
    benchmark would time its warmup count of calls)."""
    from classification.benchmarks import model_speed, op_speed

    seen = []

    def fake_median(steps, repeats, warmup, *args, **kwargs):
        seen.append((repeats, warmup))
        return {name: 1e-3 for name in steps}

    monkeypatch.setattr(model_speed, 'median_seconds', fake_median)
    monkeypatch.setattr(op_speed, 'median_seconds', fake_median)
    images_per_second({'a': torch.nn.Conv2d(3, 2, 1)}, batch=2, img_size=4, repeats=7, warmup=3)
    benchmark_op('conv1d', OpShape(batch=1, dim=8, seqlen=5), repeats=9, warmup=4)
    assert seen == [(7, 3), (9, 4), (9, 4)]


def test_cuda_graph_seconds_is_the_time_of_one_replay(monkeypatch):
    """cuda_graph_seconds on stand-ins of torch.cuda: every replay takes 2 ms of a stand-in device clock, which the
    events read in milliseconds; the replay before the timed ones is not counted. 5 replays: 0.002 s each."""
    from contextlib import nullcontext
    from types import SimpleNamespace

    now_ms = [0.0]

    class Event:
        def __init__(self, enable_timing):
            self.at = None

        def record(self):
            self.at = now_ms[0]

        def synchronize(self):
            pass

        def elapsed_time(self, end):
            return end.at - self.at

    class Graph:
        def replay(self):
            now_ms[0] += 2.0

    stream = SimpleNamespace(wait_stream=lambda other: None)
    for name, value in (('Stream', lambda device: stream), ('current_stream', lambda device: stream),
                        ('stream', lambda s: nullcontext()), ('graph', lambda g: nullcontext()),
                        ('CUDAGraph', Graph), ('Event', Event)):
        monkeypatch.setattr(timing.torch.cuda, name, value)
    assert timing.cuda_graph_seconds(lambda: None, repeats=5) == 0.002


def test_each_row_of_the_model_table_is_timed_as_its_metric_says(monkeypatch):
    """benchmark_models asks images_per_second for inference at each batch size (under --compile's mode) and for an
    eager training step at the training batch; each row's ratio is the model's img/s over its baseline's."""
    from classification.benchmarks import model_speed

    asked = []

    def fake_images_per_second(models, batch, img_size, train, dtype, repeats, warmup, compile_mode=None):
        asked.append((batch, train, compile_mode))
        return {'local_vim_tiny': 10.0 * batch, 'deit_tiny_patch16_224': 40.0 * batch}

    monkeypatch.setattr(model_speed, 'images_per_second', fake_images_per_second)
    monkeypatch.setattr(model_speed, 'check_image_size', lambda *args, **kwargs: None)
    rows = model_speed.benchmark_models('local_vim_tiny', batch_sizes=(1, 4), train_batch=2, img_size=32,
                                        log=lambda line: None, compile_mode='default')
    assert asked == [(1, False, 'default'), (4, False, 'default'), (2, True, 'default')]
    assert [(r['metric'], r['model_img_s'], r['baseline_img_s'], r['ratio']) for r in rows] == [
        ('inference b1', 10.0, 40.0, 0.25), ('inference b4', 40.0, 160.0, 0.25), ('train step b2', 20.0, 80.0, 0.25)]


@pytest.mark.parametrize('argv, message', [
    (['--op', 'scan', '--model-kwargs', 'in_chans=1'],
     '--model-kwargs builds the models of --model, --ema and --profile, not of --op'),
    (['--op', 'scan', '--directions', 'directions.yaml'],
     '--directions builds the models of --model, --ema and --profile, not of --op'),
    (['--model', 'local_vim_tiny', '--model-kwargs', 'img_size=64'],
     "--model-kwargs img_size: the image sizes timed are --img-size's (or --sweep's): give them there"),
    (['--model', 'local_vim_tiny', 'local_vssm_tiny', '--model-kwargs', 'depth=4'],
     "--model-kwargs: model local_vssm_tiny does not take 'depth'; did you mean depths?"),
    (['--profile', 'local_vim_tiny', '--model-kwargs', 'in_chan=1'],
     "--model-kwargs: model local_vim_tiny does not take 'in_chan'; did you mean in_chans?"),
    (['--model', 'local_vim_tiny', '--model-kwargs', 'in_chan=1', 'dept=2'],
     "--model-kwargs: model local_vim_tiny does not take 'in_chan'; did you mean in_chans?"),
    (['--ema', 'local_vim_tiny', '--directions', 'NO_SUCH_DIR/directions.yaml'],
     '--directions: directions file not found: '),
])
def test_model_kwargs_and_directions_that_cannot_build_end_in_one_line_before_any_timing(
        argv, message, capsys, tmp_path):
    """Each of these used to be refused as an unknown flag, or (a keyword of the second --model) only after the
    first model's timings."""
    argv = [str(tmp_path / a) if a.startswith('NO_SUCH_DIR') else a for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        benchmark.parse_args(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err.splitlines()[-1]


def test_build_model_names_the_registered_model_that_does_not_take_a_keyword():
    """The library's build_model given the original's name (timm_ prefix), as a caller that does not resolve it first
    (the tools do) gives it: the line names the registered model; nothing is built."""
    from classification.benchmarks import build_model
    from classification.engine.config import ConfigError

    with pytest.raises(ConfigError, match=r"^--model-kwargs: model local_vim_tiny does not take 'dept'; did you mean "
                                          r"depth\?$"):
        build_model('timm_local_vim_tiny', img_size=32, model_kwargs={'dept': 2})


def test_model_kwargs_build_the_timed_model_and_not_its_baseline(monkeypatch, capsys):
    """--model-kwargs in_chans=1: the timed LocalVim takes one channel (its settings line says how it was built),
    the DeiT baseline keeps its three; the timings are faked."""
    from classification.benchmarks import model_speed
    from classification.models.factory import input_channels

    channels = {}

    def images_per_second(models, batch, img_size, train, *args):
        channels.update({name: input_channels(model) for name, model in models.items()})
        return dict.fromkeys(models, 1.0)

    monkeypatch.setattr(model_speed, 'images_per_second', images_per_second)
    assert benchmark.main(['--model', 'local_vim_tiny', '--model-kwargs', 'in_chans=1', '--img-size', '32',
                           '--batch-sizes', '1', '--train-batch', '0']) == 0
    assert channels == {'local_vim_tiny': 1, 'deit_tiny_patch16_224': 3}
    assert capsys.readouterr().out.startswith('model=local_vim_tiny model_kwargs=in_chans=1 baseline=deit_tiny_')


def test_a_sweep_builds_and_measures_the_memory_of_the_model_with_its_kwargs_and_the_baseline_without(monkeypatch):
    sweep = importlib.import_module('classification.benchmarks.resolution_sweep')
    built, measured = [], []
    monkeypatch.setattr(sweep, 'build_compared', lambda *args, **kwargs: built.append(args) or {'a': 0, 'b': 0})
    monkeypatch.setattr(sweep, 'images_per_second', lambda models, *args, **kwargs: {'a': 2.0, 'b': 1.0})
    monkeypatch.setattr(sweep, 'forward_peak_mib', lambda name, *args, **kwargs: measured.append((name, kwargs)))
    sweep.resolution_sweep('a', 'b', sizes=(32,), model_kwargs={'in_chans': 1}, directions='d.yaml')
    assert built == [('a', 'b', 32, 'cpu', {'in_chans': 1}, 'd.yaml')]
    assert measured == [('a', dict(model_kwargs={'in_chans': 1}, directions='d.yaml')), ('b', {})]


def test_the_memory_child_builds_the_model_with_its_kwargs():
    """The fresh process that measures a CPU forward's peak builds the model as given: a depth without its
    directions fails there, naming both depths."""
    with pytest.raises(RuntimeError, match=r"^peak memory of local_vim_tiny at 32px: .*20 layers, but the model has 3"):
        forward_peak_mib('local_vim_tiny', 32, model_kwargs={'depth': 3})


def test_ema_and_profile_time_the_model_built_with_its_kwargs():
    """num_classes=0 leaves LocalVim-T without its head's weight and bias (748 tensors with them); the profile's
    settings line says how its model was built."""
    from classification.benchmarks.ema_speed import benchmark_ema
    from classification.benchmarks.time_profile import format_time_profile, profile_model

    row, = benchmark_ema('local_vim_tiny', repeats=1, warmup=0, model_kwargs={'num_classes': 0})
    assert row['tensors'] == 746
    profile = profile_model('local_vim_tiny', batch=1, img_size=32, forwards=1, warmup=0,
                            model_kwargs={'in_chans': 1})
    assert format_time_profile(profile).startswith('profile: model=local_vim_tiny model_kwargs=in_chans=1 batch=1')


def test_the_settings_line_names_every_keyword_and_the_directions_file():
    from classification.benchmarks.model_speed import variant_text

    assert variant_text() == variant_text({}, None) == ''
    assert variant_text({'in_chans': 1, 'depth': 2}, 'run/directions.yaml') == (
        ' model_kwargs=in_chans=1,depth=2 directions=run/directions.yaml')


@pytest.fixture
def two_layer_directions(tmp_path) -> str:
    """A directions file of LocalVim-T's first two layers: with --model-kwargs depth=2 the model builds only where
    the file reaches it (its own 20 layers' directions do not fit 2 layers)."""
    from classification.models.directions import LOCAL_VIM_TINY_DIRECTIONS, save_directions

    path = tmp_path / 'directions.yaml'
    save_directions(path, LOCAL_VIM_TINY_DIRECTIONS[:2])
    return str(path)


@pytest.mark.parametrize('mode', [['--img-size', '32', '--batch-sizes', '1', '--train-batch', '0'],
                                  ['--sweep', '32']])
def test_directions_build_the_timed_model_of_model_and_sweep(mode, two_layer_directions, monkeypatch, capsys):
    """--model and --sweep with --model-kwargs depth=2 and a two-layer directions file: the timed LocalVim has 2
    layers, the sweep measures its memory built the same way (the baseline as registered), and the settings line
    names both; the timings and peaks are faked."""
    from classification.benchmarks import model_speed

    sweep = importlib.import_module('classification.benchmarks.resolution_sweep')
    layers, measured = {}, []

    def images_per_second(models, *args, **kwargs):
        layers.update({name: len(model.layers) for name, model in models.items() if hasattr(model, 'layers')})
        return dict.fromkeys(models, 1.0)

    monkeypatch.setattr(model_speed, 'images_per_second', images_per_second)
    monkeypatch.setattr(sweep, 'images_per_second', images_per_second)
    monkeypatch.setattr(sweep, 'forward_peak_mib', lambda name, *args, **kwargs: measured.append((name, kwargs)))
    assert benchmark.main(['--model', 'local_vim_tiny', '--model-kwargs', 'depth=2', '--directions',
                           two_layer_directions, '--repeats', '1', '--warmup', '0', *mode]) == 0
    assert layers == {'local_vim_tiny': 2}
    assert capsys.readouterr().out.startswith(
        f'model=local_vim_tiny model_kwargs=depth=2 directions={two_layer_directions} baseline=deit_tiny_patch16_224 ')
    if '--sweep' in mode:
        assert measured == [('local_vim_tiny', dict(model_kwargs={'depth': 2}, directions=two_layer_directions)),
                            ('deit_tiny_patch16_224', {})]


@pytest.mark.parametrize('mode', [['--ema', 'local_vim_tiny'],
                                  ['--profile', 'local_vim_tiny', '--img-size', '32', '--batch', '1']])
def test_directions_build_the_model_of_ema_and_profile(mode, two_layer_directions, capsys):
    """--ema and --profile build their model with --model-kwargs depth=2 and a two-layer directions file; without
    either it does not build."""
    assert benchmark.main([*mode, '--model-kwargs', 'depth=2', '--directions', two_layer_directions, '--repeats', '1',
                           '--warmup', '0']) == 0
    if '--profile' in mode:
        assert capsys.readouterr().out.startswith(
            f'profile: model=local_vim_tiny model_kwargs=depth=2 directions={two_layer_directions} batch=1')


def test_the_memory_child_builds_the_model_with_its_directions(two_layer_directions):
    assert forward_peak_mib('local_vim_tiny', 32, model_kwargs={'depth': 2}, directions=two_layer_directions) >= 0


def test_model_kwargs_of_a_model_that_takes_any_keyword_are_passed_on():
    """ByobNet (bat_resnext26ts) takes ``**kwargs``: its keywords cannot be checked before the build, so none is
    refused here."""
    args = benchmark.parse_args(['--model', 'bat_resnext26ts', '--baseline', 'resnet18', '--model-kwargs',
                                 'drop_rate=0.1'])
    assert args.model_kwargs == {'drop_rate': 0.1}
