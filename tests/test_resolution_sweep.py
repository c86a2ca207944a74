"""The resolution sweep (``tools/benchmark.py --sweep``): where a model's img/s ratio to its baseline crosses 1, the
table and figure, and the peak memory of a forward measured in a fresh process (timings themselves not checked)."""
import csv
import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from classification.benchmarks import crossing_size, format_sweep_table, read_sweep_csv
from classification.benchmarks.gpu_e2e import memory_and_resolution_sweep
from classification.benchmarks.gpu_report import read_sections, sweep_rows
from classification.benchmarks.peak_memory import CHILD_MALLOC_ENV, forward_peak_mib, rss_peak_supported

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / 'tools' / 'benchmark.py'
_spec = importlib.util.spec_from_file_location('benchmark_tool', TOOL)
benchmark = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(benchmark)
needs_proc_peak = pytest.mark.skipif(not rss_peak_supported(),
                                     reason='needs Linux /proc/self/clear_refs to reset the peak resident size')


def sweep_row(size, ours, base, ours_mib=None, base_mib=None):
    return {'model': 'local_vim_tiny', 'baseline': 'deit_tiny_patch16_224', 'device': 'cpu', 'dtype': 'fp32',
            'batch': 1, 'img_size': size, 'model_img_s': ours, 'baseline_img_s': base, 'ratio': ours / base,
            'model_peak_mib': ours_mib, 'baseline_peak_mib': base_mib}


def test_crossing_is_interpolated_on_log_scales():
    assert crossing_size([256, 1024], [0.5, 2.0]) == pytest.approx(512)       # log-midpoint of both axes
    # between 512 (0.5) and 1024 (2): halfway in log ratio, so the geometric mean of the sizes
    assert crossing_size([224, 512, 1024], [0.25, 0.5, 2.0]) == pytest.approx(math.sqrt(512 * 1024))
    assert crossing_size([224, 512], [1.6, 0.4]) == pytest.approx(224 * (512 / 224) ** (math.log(1.6) / math.log(4)))
    assert crossing_size([224, 512, 768], [0.5, 1.0, 1.5]) == 512                # reached exactly at a size
    assert crossing_size([224, 512], [0.3, 0.9]) is None
    assert crossing_size([512], [1.0]) == 512 and crossing_size([512], [0.9]) is None
    assert crossing_size([224, 512], [1.2, 3.0]) is None


@pytest.mark.parametrize('ratios, verb', [((1.25, 0.8, 1.1), 'falls behind'), ((0.8, 1.25, 0.9), 'overtakes')])
def test_the_crossing_sentence_says_which_way_the_first_crossing_goes(ratios, verb):
    """The sentence names the first crossing (the log-midpoint of 224 and 512 here): it took its direction from the
    ratio at the last size, which a later crossing back turns the other way ('overtakes' where the model falls
    behind)."""
    from classification.benchmarks.resolution_sweep import crossing_line

    rows = [sweep_row(size, 10.0 * ratio, 10.0) for size, ratio in zip((224, 512, 768), ratios)]
    assert crossing_line(rows) == (f'local_vim_tiny {verb} deit_tiny_patch16_224 at about 339 px (ratio 1, '
                                   f'interpolated on log scales)')


@pytest.mark.parametrize('ratio, side', [(0.5, 'slower than'), (2.0, 'faster than'), (1.0, 'as fast as')])
def test_the_crossing_sentence_of_one_size(ratio, side):
    """--sweep 32 said 'slower than deit_tiny_patch16_224 at every size from 32 to 32 px', and a ratio of 1 there
    'falls behind ... at about 32 px (ratio 1, interpolated on log scales)'."""
    from classification.benchmarks.resolution_sweep import crossing_line

    assert crossing_line([sweep_row(32, 10.0 * ratio, 10.0)]) == (f'local_vim_tiny is {side} deit_tiny_patch16_224 '
                                                                  f'at 32 px (one size swept)')


def test_sweep_table_and_its_crossing_sentence():
    rows = [sweep_row(224, 20.0, 50.0, 1.25, 1.5), sweep_row(1024, 1.0, 0.5, 36.0, None)]
    lines = format_sweep_table(rows).splitlines()
    assert lines[0] == ('resolution sweep, local_vim_tiny against deit_tiny_patch16_224: inference at batch 1, fp32, '
                        'cpu; peak MiB above weights and images:')
    assert lines[3].split() == ['224', '20.00', '50.00', '0.400x', '1.2', '1.5']
    assert lines[4].split() == ['1024', '1.00', '0.50', '2.000x', '36.0', '-']
    # ratio 0.4 -> 2: log(0.4) / log(0.4 / 2) = 0.569 of the way from 224 to 1024 on a log axis
    size = 224 * (1024 / 224) ** (math.log(0.4) / math.log(0.2))
    assert lines[5] == (f'local_vim_tiny overtakes deit_tiny_patch16_224 at about {size:.0f} px '
                        '(ratio 1, interpolated on log scales)')


def test_sweep_tables_are_read_back_from_a_log():
    rows = [sweep_row(224, 20.0, 50.0, 1.25, 1.5), sweep_row(1024, 1.0, 0.5, 36.0, None)]
    section = 'peak MiB table\n\n' + format_sweep_table(rows) + '\nPASS'
    assert sweep_rows(read_sections(['===== peak memory and resolution sweep\n' + section])) == [
        dict(rows[0], model_peak_mib=1.2), rows[1]]


@needs_proc_peak
def test_rss_peak_is_the_largest_live_memory_of_a_step_not_its_total():
    code = '''
import torch
from classification.benchmarks.peak_memory import rss_peak_mib
kept = []
print(rss_peak_mib(lambda: kept.append(torch.ones(16 * 2 ** 20))))        # 64 MiB kept
def churn():
    for _ in range(4):
        torch.ones(4 * 2 ** 20).add_(1)                                    # 16 MiB, freed each time
print(rss_peak_mib(churn))
'''
    env = dict(os.environ, **CHILD_MALLOC_ENV)
    done = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, check=True)
    kept, churned = map(float, done.stdout.split())
    assert 63 < kept < 70
    assert 15 < churned < 20


@needs_proc_peak
def test_a_step_that_stays_below_the_resident_size_peaks_at_zero(monkeypatch):
    """The peak read after a step can be a few pages below the resident size read before it: a sweep row read
    -0.078 MiB (the sweep tool's test failed on `>= 0`)."""
    from classification.benchmarks import peak_memory

    sizes = {"VmRSS": 50_080, "VmHWM": 50_000}                              # KiB: the peak 80 KiB below
    monkeypatch.setattr(peak_memory, "_status_kib", sizes.__getitem__)
    assert peak_memory.rss_peak_mib(lambda: None) == 0.0
    sizes["VmHWM"] = 50_080 + 2048
    assert peak_memory.rss_peak_mib(lambda: None) == 2.0


@needs_proc_peak
def test_a_failing_memory_child_is_named_in_one_line():
    with pytest.raises(RuntimeError, match=r"^peak memory of no_such_model at 32px: .*no_such_model"):
        forward_peak_mib('no_such_model', 32)


def test_sweep_tool_writes_rows_csv_and_figure(tmp_path, capsys):
    out, figure = tmp_path / 'sweep.csv', tmp_path / 'sweep.png'
    assert benchmark.main(['--model', 'local_vim_tiny', '--sweep', '64', '32', '64', '--repeats', '1',
                           '--warmup', '0', '--csv', str(out), '--plot', str(figure)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [int(r['img_size']) for r in rows] == [32, 64]           # sorted, once each
    for r in rows:
        assert (r['model'], r['baseline'], r['batch']) == ('local_vim_tiny', 'deit_tiny_patch16_224', '1')
        assert float(r['ratio']) == pytest.approx(float(r['model_img_s']) / float(r['baseline_img_s']))
        if rss_peak_supported():
            assert float(r['model_peak_mib']) >= 0 and float(r['baseline_peak_mib']) >= 0
    text = capsys.readouterr().out
    assert 'resolution sweep, local_vim_tiny against deit_tiny_patch16_224' in text and f'plot: {figure}' in text
    import matplotlib.image

    height, width = matplotlib.image.imread(str(figure)).shape[:2]
    assert (width, height) == ((1320, 495) if rss_peak_supported() else (715, 495))   # a memory panel beside speed


def test_the_gpu_checks_sweep_gives_one_readable_table_per_pair_on_the_cpu():
    sections = read_sections(['===== peak memory and resolution sweep\n' +
                              '\n\n'.join(memory_and_resolution_sweep('cpu', quick=True, repeats=1))])
    rows = sweep_rows(sections)
    vim, vssm = ('local_vim_tiny', 'deit_tiny_patch16_224'), ('local_vssm_tiny', 'swin_tiny_patch4_window7_224')
    assert [(r['model'], r['baseline'], r['img_size']) for r in rows] == [
        (*vim, 32), (*vim, 64), (*vssm, 32), (*vssm, 64)]
    assert all(r['model_peak_mib'] is None and r['batch'] == 1 for r in rows)   # memory is measured on CUDA only here


def test_the_readme_sweep_table_is_the_committed_measurement():
    rows = read_sweep_csv(str(REPO / 'docs' / 'measurements' / 'cpu_resolution_sweep.csv'))
    readme = (REPO / 'README.md').read_text(encoding='utf-8')
    by_size = {}
    for r in rows:
        by_size.setdefault(r['img_size'], []).append(r)
    for size, (vim, vssm) in by_size.items():
        line = next(line for line in readme.splitlines() if line.startswith(f'| {size}² |'))
        cells = [c.strip().strip('*') for c in line.strip('|').split('|')]
        assert cells[1] == f"{vim['ratio']:.3f}×" and cells[4] == f"{vssm['ratio']:.3f}×"
        assert cells[2] == f"{vim['model_img_s']:.2f} / {vim['baseline_img_s']:.2f}"
        assert cells[6] == f"{vssm['model_peak_mib']:.1f} / {vssm['baseline_peak_mib']:.1f}"
    vim_rows = [r for r in rows if r['model'] == 'local_vim_tiny']
    crossing = crossing_size([r['img_size'] for r in vim_rows], [r['ratio'] for r in vim_rows])
    assert f'LocalVim-T overtakes DeiT-Ti at about **{crossing:.0f} px**' in readme


@needs_proc_peak
def test_a_memory_child_killed_by_the_out_of_memory_killer_is_named_so(monkeypatch):
    """A child killed by SIGKILL printed nothing: the error read `exit status -9`, in a RuntimeError traceback."""
    from classification.benchmarks import peak_memory

    monkeypatch.setattr(peak_memory.subprocess, 'run',
                        lambda *args, **kwargs: subprocess.CompletedProcess(args, -9, stdout='', stderr=''))
    with pytest.raises(peak_memory.PeakMemoryError) as raised:
        forward_peak_mib('local_vim_tiny', 1024)
    assert str(raised.value) == ('peak memory of local_vim_tiny at 1024px: killed by SIGKILL (most often the '
                                 'out-of-memory killer: try a smaller --sweep size or --sweep-batch)')


@pytest.mark.parametrize('failure, message', [
    ('peak', 'error: peak memory of deit_tiny_patch16_224 at 64px: killed by SIGKILL'),
    ('cuda', 'error: CUDA out of memory. Tried to allocate 2.00 GiB.'),
])
def test_a_sweep_stopped_by_memory_keeps_the_sizes_before_it_and_ends_in_one_line(failure, message, tmp_path,
                                                                                  monkeypatch, capsys):
    """The memory child's RuntimeError and CUDA's out-of-memory error ended the sweep in a traceback, its finished
    sizes lost with it."""
    import torch
    from classification.benchmarks.peak_memory import PeakMemoryError

    sweep = sys.modules['classification.benchmarks.resolution_sweep']

    def images_per_second(models, batch, size, **kwargs):
        if failure == 'cuda' and size == 64:
            raise torch.cuda.OutOfMemoryError('CUDA out of memory. Tried to allocate 2.00 GiB.\nmore advice')
        model, baseline = models
        return {model: 1.0, baseline: 4.0}

    def forward_peak_mib(name, size, *args, **kwargs):
        if failure == 'peak' and size == 64 and name.startswith('deit'):
            raise PeakMemoryError(f'peak memory of {name} at {size}px: killed by SIGKILL')
        return 2.0

    monkeypatch.setattr(sweep, 'build_compared', lambda model, baseline, *args, **kwargs: dict.fromkeys(
        (model, baseline), torch.nn.Linear(1, 1)))
    monkeypatch.setattr(sweep, 'images_per_second', images_per_second)
    monkeypatch.setattr(sweep, 'forward_peak_mib', forward_peak_mib)
    out = tmp_path / 'sweep.csv'
    assert benchmark.main(['--model', 'local_vim_tiny', '--sweep', '32', '64', '128', '--csv', str(out)]) == 2
    rows = list(csv.DictReader(out.open()))
    assert [(r['img_size'], float(r['ratio'])) for r in rows] == [('32', 0.25)]
    err = capsys.readouterr().err.splitlines()
    assert err == [f'{message}; the row that ended is in the table above and in {out}']


def test_the_gpu_checks_sweep_keeps_the_sizes_before_one_that_fails(monkeypatch):
    """A pair whose sweep ran out of memory at its last size lost the table of its other sizes: the log (and
    --report) had only the error line."""
    import torch
    from classification.benchmarks import gpu_e2e

    sweep = sys.modules['classification.benchmarks.resolution_sweep']

    def images_per_second(models, batch, size, **kwargs):
        model, baseline = models
        if model == 'local_vim_tiny' and size == 64:
            raise RuntimeError('CUDA out of memory')
        return {model: 3.0, baseline: 4.0}

    monkeypatch.setattr(gpu_e2e, 'build_model', lambda name, *args, **kwargs: torch.nn.Linear(1, 1))
    monkeypatch.setattr(sweep, 'build_compared', lambda model, baseline, *args, **kwargs: dict.fromkeys(
        (model, baseline), torch.nn.Linear(1, 1)))
    monkeypatch.setattr(sweep, 'images_per_second', images_per_second)
    text = '\n\n'.join(memory_and_resolution_sweep('cpu', quick=True, repeats=1))
    rows = sweep_rows(read_sections(['===== peak memory and resolution sweep\n' + text]))
    assert [(r['model'], r['img_size'], r['ratio']) for r in rows] == [
        ('local_vim_tiny', 32, 0.75), ('local_vssm_tiny', 32, 0.75), ('local_vssm_tiny', 64, 0.75)]
    assert ('resolution sweep, local_vim_tiny against deit_tiny_patch16_224: error: RuntimeError: CUDA out of memory'
            in text.splitlines())


def test_a_sweep_size_a_model_cannot_take_is_blamed_on_sweep(capsys):
    """The error named --img-size, a flag the sweep refuses, for a size given by --sweep."""
    assert benchmark.main(['--model', 'local_vim_tiny', '--sweep', '8', '--repeats', '1', '--warmup', '0']) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith('error: --sweep 8: model deit_tiny_patch16_224 cannot take 8x8 images (')


def test_the_crossing_of_a_four_size_sweep_is_found_between_its_last_two_sizes():
    """The GPU check sweeps 224, 512, 768 and 1024 px: a crossing between 768 (0.5) and 1024 (2) is the log-midpoint
    of those two sizes; a ratio of 1 at two sizes in a row is reached at the first."""
    assert crossing_size([224, 512, 768, 1024], [0.2, 0.3, 0.5, 2.0]) == pytest.approx(math.sqrt(768 * 1024))
    assert crossing_size([224, 512, 768], [1.0, 1.0, 1.5]) == 224


def test_the_cuda_peak_is_the_allocators_peak_above_what_was_allocated_before_in_mib(monkeypatch):
    """cuda_peak_mib on stand-ins of torch.cuda's counters: 100 MiB allocated before the step, a peak of 612.5 MiB
    (2 ** 20 bytes a MiB, not 10 ** 6): 512.5 MiB above it, 612.5 in all."""
    from classification.benchmarks import peak_memory

    mib = 2 ** 20
    monkeypatch.setattr(peak_memory, 'synchronize', lambda device: None)
    for name, value in (('empty_cache', None), ('reset_peak_memory_stats', None), ('memory_allocated', 100 * mib),
                        ('max_memory_allocated', int(612.5 * mib))):
        monkeypatch.setattr(peak_memory.torch.cuda, name, lambda *args, value=value: value)
    assert peak_memory.cuda_peak_mib(lambda: None, 'cuda') == 512.5
    assert peak_memory.cuda_peak_mib(lambda: None, 'cuda', above_current=False) == 612.5
    assert peak_memory.cuda_peak_mib(lambda: None, 'cuda', above_current=False) == 612.5


@pytest.mark.parametrize('ratios, side', [((0.5, 0.8), 'slower'), ((1.2, 3.0), 'faster')])
def test_the_crossing_sentence_of_a_sweep_that_never_crosses(ratios, side):
    from classification.benchmarks.resolution_sweep import crossing_line

    rows = [sweep_row(size, 10.0 * ratio, 10.0) for size, ratio in zip((224, 512), ratios)]
    assert crossing_line(rows) == (f'local_vim_tiny is {side} than deit_tiny_patch16_224 at every size from 224 to '
                                   f'512 px')


def test_each_sweep_row_gives_the_models_and_the_baselines_own_figures(monkeypatch):
    """resolution_sweep on stand-ins of the timing and the memory measure: at 32 px the model does 40 img/s and its
    baseline 80 (ratio 0.5), at 64 px 30 and 15 (ratio 2); peaks 1 and 3 MiB per 32 px of side."""
    sweep = importlib.import_module('classification.benchmarks.resolution_sweep')
    img_s = {32: {'local_vim_tiny': 40.0, 'deit_tiny_patch16_224': 80.0},
             64: {'local_vim_tiny': 30.0, 'deit_tiny_patch16_224': 15.0}}
    monkeypatch.setattr(sweep, 'build_compared', lambda model, baseline, *args, **kwargs: {model: model,
                                                                                           baseline: baseline})
    monkeypatch.setattr(sweep, 'images_per_second', lambda models, batch, size, **kwargs: img_s[size])
    monkeypatch.setattr(sweep, 'forward_peak_mib', lambda name, size, *args, **kwargs: (
        {'local_vim_tiny': 1.0, 'deit_tiny_patch16_224': 3.0}[name] * size / 32))
    rows = sweep.resolution_sweep('local_vim_tiny', sizes=(32, 64), batch=2, repeats=1, warmup=0)
    figures = [(r['img_size'], r['model_img_s'], r['baseline_img_s'], r['ratio'], r['model_peak_mib'],
                r['baseline_peak_mib']) for r in rows]
    assert figures == [(32, 40.0, 80.0, 0.5, 1.0, 3.0), (64, 30.0, 15.0, 2.0, 2.0, 6.0)]


def test_the_cuda_peak_of_a_forward_is_above_its_weights_and_images(monkeypatch):
    """forward_peak_mib on CUDA: cuda_peak_mib of the forward above what was allocated before it (the weights and
    images), on stand-ins of torch.cuda's counters as in the test of cuda_peak_mib: 512.5 MiB, not 612.5 in
    all."""
    from classification.benchmarks import peak_memory

    mib = 2 ** 20
    monkeypatch.setattr(peak_memory, 'synchronize', lambda device: None)
    monkeypatch.setattr(peak_memory, '_forward_step', lambda *args: (lambda: None))
    for name, value in (('empty_cache', None), ('reset_peak_memory_stats', None), ('memory_allocated', 100 * mib),
                        ('max_memory_allocated', int(612.5 * mib))):
        monkeypatch.setattr(peak_memory.torch.cuda, name, lambda *args, value=value: value)
    assert forward_peak_mib('local_vim_tiny', 32, device='cuda') == 512.5
