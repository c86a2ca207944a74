"""tools/benchmark.py --model: the rows it reports and the baseline it picks (timings themselves are not checked)."""
import csv
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'tools'))

import benchmark  # noqa: E402


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
