"""search/probs.py, search/monitor.py and search/extract.py facts that the pipeline tests did not pin (found by a
mutation audit): the top-k default, the monitor's CSV file only where enabled, and what the extraction refuses and
records."""
import math
import os

import pytest
import timm
import torch
import yaml

import classification  # noqa: F401  (registers the models)
from classification.models.directions import CANDIDATES
from classification.search.extract import extract
from classification.search.monitor import SearchMonitor
from classification.search.probs import chosen_directions

SOFTMAX_0_TO_7 = [math.exp(i) / sum(math.exp(j) for j in range(8)) for i in range(8)]


def test_chosen_directions_keeps_four_candidates_unless_told():
    """The original keeps 4 directions per layer: probabilities 0.30, 0.05, 0.20, 0.01, 0.25, 0.09, 0.08, 0.02 choose
    candidates 0, 2, 4 and 5 in candidate order."""
    probs = [torch.tensor([0.30, 0.05, 0.20, 0.01, 0.25, 0.09, 0.08, 0.02])]
    assert chosen_directions(probs) == [[CANDIDATES[0], CANDIDATES[2], CANDIDATES[4], CANDIDATES[5]]]
    assert chosen_directions(probs, 4, CANDIDATES) == chosen_directions(probs)


@pytest.fixture(scope='module')
def supernet():
    """A 2-layer supernet whose layer i has weights (0..7) rolled by i: its probabilities are SOFTMAX_0_TO_7 rolled."""
    model = timm.create_model('local_vim_tiny_search', depth=2, embed_dim=16)
    with torch.no_grad():
        for i, layer in enumerate(model.layers):
            layer.mixer.multi_scan.weights.copy_(torch.arange(8.).roll(i).view(8, 1, 1, 1))
    return model


def test_a_disabled_monitor_writes_no_file(supernet, tmp_path):
    """Every process of a distributed run has a monitor; only the main one (enabled) writes the run's CSV file."""
    monitor = SearchMonitor.for_model(supernet, str(tmp_path), enabled=False)
    monitor.append_epoch(0)
    assert list(tmp_path.iterdir()) == []
    torch.testing.assert_close(monitor.current()[1], torch.tensor(SOFTMAX_0_TO_7).roll(1))


def three_candidate_checkpoint(path, **entries):
    """A 1-layer search over (h, v_flip, w2) whose weights (0, 2, 1) choose v_flip, then w2."""
    weights = {'layers.0.mixer.multi_scan.weights': torch.tensor([0., 2., 1.]).view(3, 1, 1, 1)}
    torch.save({'model': weights, 'config': {'model_kwargs': {'candidates': ['h', 'v_flip', 'w2']}}, **entries}, path)


def test_extraction_refuses_a_topk_of_zero_before_reading_anything(tmp_path):
    with pytest.raises(ValueError, match='^--topk must be at least 1, got 0$'):
        extract(str(tmp_path / 'absent.pth.tar'), topk=0)


def test_a_relative_checkpoint_path_is_recorded_absolute_with_the_weights_it_read(tmp_path, monkeypatch):
    """searched_from names the file wherever the directions file is read from; --ema records 'ema_model'; the run's
    model_kwargs are kept."""
    monkeypatch.chdir(tmp_path)
    three_candidate_checkpoint('last.pth.tar', ema_model={
        'layers.0.mixer.multi_scan.weights': torch.tensor([1., 0., 2.]).view(3, 1, 1, 1)})
    result = extract('last.pth.tar', topk=1, out_dir='model')
    assert result['directions'] == [['v_flip']]
    ema = extract('last.pth.tar', topk=1, out_dir='ema', ema=True)
    assert ema['directions'] == [['w2']]
    for folder, weights in (('model', 'model'), ('ema', 'ema_model')):
        with open(os.path.join(folder, 'directions.yaml')) as f:
            assert yaml.safe_load(f)['searched_from'] == {
                'checkpoint': str(tmp_path / 'last.pth.tar'), 'weights': weights,
                'model_kwargs': {'candidates': ['h', 'v_flip', 'w2']}}


def test_extraction_refuses_given_candidates_named_twice(tmp_path):
    """A file that records no candidates, given (h, h, v): two columns would both be called h."""
    torch.save({'model': {'layers.0.mixer.multi_scan.weights': torch.zeros(3, 1, 1, 1)}}, tmp_path / 'last.pth.tar')
    with pytest.raises(ValueError, match=r"^candidates must be at least 2 distinct direction names, got \['h', 'h', "
                                         r"'v'\]$"):
        extract(str(tmp_path / 'last.pth.tar'), topk=1, candidates=['h', 'h', 'v'])


def test_a_file_is_taken_for_the_supernet_of_its_search_layer_names_not_of_their_count(tmp_path):
    """A LocalVim search of depth 15 has as many search layers as local_vssm_tiny_search (2 + 2 + 9 + 2 blocks), but
    not its layer names: the file names no supernet, not the LocalVMamba one."""
    weights = {f'layers.{i}.mixer.multi_scan.weights': torch.zeros(8, 1, 1, 1) for i in range(15)}
    torch.save({'model': weights}, tmp_path / 'last.pth.tar')
    extract(str(tmp_path / 'last.pth.tar'))
    with open(tmp_path / 'directions.yaml') as f:
        assert yaml.safe_load(f)['supernet'] is None
