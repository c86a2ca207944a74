"""Supernets over a candidate list of one's own (`candidates=`, registered directions included): the weights, one
training step, the probabilities, the monitor's CSV, the extraction, the heat map and vis_search_prob.py all name the
supernet's candidates, through a training run configured as search.yaml is; bad candidate lists are refused."""
import csv
import logging
import os
import re
import runpy
import sys

import matplotlib.figure
import pytest
import timm
import torch
import torch.nn.functional as F
import yaml

from classification.common.checkpoint_io import CheckpointError
from classification.engine.config import ConfigError, parse_args
from classification.engine.trainer import train
from classification.models import register_direction, unregister_direction
from classification.models.directions import CANDIDATES, load_directions
from classification.models.factory import SUPERNET_FINAL_MODELS
from classification.models.multi_scan import search_candidates, search_layers
from classification.search.extract import extract
from classification.search.monitor import SearchMonitor
from classification.search.probs import layer_probabilities

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
THREE = ['h', 'v_flip', 'snake']
NINE = [*CANDIDATES, 'snake']
VIM = dict(img_size=32, patch_size=8, embed_dim=16, depth=2)
VSSM = dict(dims=8, depths=(1, 1))


def snake(grid):
    rows = torch.arange(grid[0] * grid[1]).view(grid).clone()
    rows[1::2] = rows[1::2].flip(1)
    return rows.reshape(-1)


@pytest.fixture(scope='module', autouse=True)
def snake_registered():
    register_direction('snake', snake)
    yield
    unregister_direction('snake')


def vis(monkeypatch, capsys, *argv):
    monkeypatch.setattr(sys, 'argv', ['vis_search_prob.py', *argv])
    runpy.run_path(os.path.join(REPO, 'tools', 'vis_search_prob.py'), run_name='__main__')
    return capsys.readouterr()


@pytest.fixture
def heatmap_columns(monkeypatch):
    """The column labels of every heat map saved during a test."""
    columns = []

    def savefig(fig, path, **kwargs):
        columns.append([label.get_text() for label in fig.axes[0].get_xticklabels()])

    monkeypatch.setattr(matplotlib.figure.Figure, 'savefig', savefig)
    return columns


def top2(weights, candidates):
    order = weights.view(-1).argsort(descending=True)[:2].sort().values
    return [candidates[i] for i in order.tolist()]


@pytest.mark.parametrize('name, kwargs, candidates', [
    ('local_vim_tiny_search', VIM, THREE),
    ('local_vssm_tiny_search', VSSM, NINE),
    ('local_vssm_small_search', VSSM, THREE),
])
def test_a_supernet_over_its_own_candidates_trains_and_its_search_names_them(name, kwargs, candidates, tmp_path,
                                                                             heatmap_columns):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=3, candidates=candidates, drop_path_rate=0., **kwargs)
    assert model.candidates == tuple(candidates) == search_candidates(model)
    layers = search_layers(model)
    assert layers and all(layer.weights.shape == (len(candidates), 1, 1, 1) for layer in layers)
    before = [layer.weights.detach().clone() for layer in layers]
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    F.cross_entropy(model(torch.randn(2, 3, 32, 32)), torch.tensor([0, 2])).backward()
    optimizer.step()
    assert all(not torch.equal(layer.weights, old) for layer, old in zip(layers, before))

    with torch.no_grad():
        for i, layer in enumerate(layers):                      # layer i prefers candidates n-1-i and n-2-i
            layer.weights.copy_(torch.arange(float(len(candidates))).roll(-i).view(-1, 1, 1, 1))
    expected = [top2(layer.weights, candidates) for layer in layers]
    assert [len(p) for p in layer_probabilities(model)] == [len(candidates)] * len(layers)
    monitor = SearchMonitor.for_model(model, str(tmp_path))
    monitor.append_epoch(0)
    with open(tmp_path / 'search_probs.csv', newline='') as f:
        assert next(csv.reader(f)) == ['epoch', 'layer', *candidates]

    path = tmp_path / 'last.pth.tar'
    torch.save({'epoch': 0, 'model': model.state_dict(), 'model_name': name,
                'config': {'epochs': 1, 'model_kwargs': {'candidates': list(candidates)}}}, path)
    result = extract(str(path), topk=2, out_dir=str(tmp_path / 'searched'))
    assert result['candidates'] == tuple(candidates)
    assert result['directions'] == expected == load_directions(tmp_path / 'searched' / 'directions.yaml')
    assert heatmap_columns == [list(candidates)]
    final = timm.create_model(SUPERNET_FINAL_MODELS[name], num_classes=3, directions=result['directions_file'],
                              **kwargs)
    assert [list(layer) for layer in final.directions] == expected
    assert final(torch.randn(1, 3, 32, 32)).shape == (1, 3)


def test_the_default_candidates_build_the_same_supernet_as_before():
    for name, kwargs in (('local_vim_tiny_search', VIM), ('local_vssm_tiny_search', VSSM)):
        torch.manual_seed(0)
        default = timm.create_model(name, **kwargs)
        torch.manual_seed(0)
        explicit = timm.create_model(name, candidates=list(CANDIDATES), **kwargs)
        assert default.candidates == explicit.candidates == CANDIDATES
        assert all(torch.equal(a, b) for a, b in zip(default.state_dict().values(), explicit.state_dict().values()))


def test_vis_tool_reads_recorded_candidates_or_takes_them_named(tmp_path, monkeypatch, capsys, heatmap_columns):
    torch.manual_seed(0)
    model = timm.create_model('local_vim_tiny_search', candidates=THREE, **VIM)
    with torch.no_grad():
        for layer in search_layers(model):
            layer.weights.copy_(torch.tensor([0., 2., 1.]).view(3, 1, 1, 1))
    bare = tmp_path / 'released.pth'                             # a {'state_dict': ...} file records no candidates
    torch.save({'state_dict': model.state_dict()}, bare)
    with pytest.raises(SystemExit) as exit_info:
        vis(monkeypatch, capsys, str(bare), '--out', str(tmp_path / 'a'))
    assert exit_info.value.code == 2
    assert ('holds 3 candidate weights (shape (3, 1, 1, 1)), not one for each of the 8 candidates h, h_flip, v, '
            'v_flip, w2, w2_flip, w7, w7_flip: name the 3 its supernet searched over, in order'
            ) in capsys.readouterr().err
    with pytest.raises(SystemExit):  # named, but not as many as the weights
        vis(monkeypatch, capsys, str(bare), '--candidates', 'h', 'v', '--out', str(tmp_path / 'a'))
    assert ('holds 3 candidate weights (shape (3, 1, 1, 1)), not one for each of the 2 candidates h, v: name the 3 '
            'its supernet searched over') in capsys.readouterr().err
    printed = vis(monkeypatch, capsys, str(bare), '--topk', '2', '--candidates', *THREE, '--out', str(tmp_path / 'b'))
    assert printed.out.splitlines()[2:] == ["['v_flip', 'snake'],"] * 2
    assert heatmap_columns == [THREE]
    with pytest.raises(SystemExit):
        vis(monkeypatch, capsys, str(bare), '--topk', '4', '--candidates', *THREE, '--out', str(tmp_path / 'c'))
    assert '--topk must be between 1 and 3, got 4' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        vis(monkeypatch, capsys, str(bare), '--candidates', 'h', '--out', str(tmp_path / 'd'))
    assert '--candidates must name at least 2 distinct directions' in capsys.readouterr().err
    recorded = tmp_path / 'last.pth.tar'
    torch.save({'model': model.state_dict(), 'config': {'model_kwargs': {'candidates': THREE}}}, recorded)
    with pytest.raises(CheckpointError, match=r"searched over h, v_flip, snake, not the candidates given "
                                              r"\(h, snake, v_flip\)"):
        extract(str(recorded), topk=2, out_dir=str(tmp_path / 'e'), candidates=['h', 'snake', 'v_flip'])


def test_candidates_given_against_a_checkpoints_own_record_are_refused(tmp_path):
    """A run of the default candidates records them in the checkpoint's `candidates` entry (and `convert_ckpt.py`
    keeps it) but not in its model_kwargs: another order given was taken, relabelling every probability."""
    model = timm.create_model('local_vim_tiny_search', **VIM)
    reordered = ['h', 'v', 'w2', 'w7', 'h_flip', 'v_flip', 'w2_flip', 'w7_flip']
    for name, ckpt in (('last.pth.tar', {'model': model.state_dict(), 'epoch': 0, 'config': {'model_kwargs': {}},
                                         'candidates': list(CANDIDATES)}),
                       ('converted.pth', {'state_dict': model.state_dict(), 'candidates': list(CANDIDATES)})):
        torch.save(ckpt, tmp_path / name)
        with pytest.raises(CheckpointError, match=rf"{name}: its supernet searched over h, h_flip, v, .*, not the "
                                                  r"candidates given \(h, v, w2, "):
            extract(str(tmp_path / name), topk=2, out_dir=str(tmp_path / 'out'), candidates=reordered)
    assert not (tmp_path / 'out').exists()


def test_given_candidates_unknown_here_are_extracted_with_a_warning(tmp_path, localmamba_log):
    """A typo in --candidates went into directions.yaml silently and failed only in the next run; names unknown here
    are still written (the directions may be registered only where the result trains) but named in a warning."""
    torch.manual_seed(0)
    model = timm.create_model('local_vim_tiny_search', candidates=THREE, **VIM)
    bare = tmp_path / 'released.pth'
    torch.save({'state_dict': model.state_dict()}, bare)
    with localmamba_log.at_level(logging.WARNING, logger='localmamba'):
        result = extract(str(bare), topk=2, out_dir=str(tmp_path / 'x'), candidates=['h', 'v_fip', 'snake'])
    assert result['candidates'] == ('h', 'v_fip', 'snake')
    assert [r.getMessage() for r in localmamba_log.records] == [
        'candidates v_fip are not directions known here (a typo, or a direction of your own: the run that trains '
        'the result must register it, LOCALMAMBA_DIRECTION_MODULES)']


@pytest.mark.parametrize('name, kwargs, match', [
    ('local_vim_tiny_search', dict(candidates=['h']), 'a search needs at least 2 candidate directions'),
    ('local_vim_tiny_search', dict(candidates=['h', 'v', 'h']), r"candidates: repeats a direction: \['h', 'v', 'h'\]"),
    ('local_vim_tiny_search', dict(candidates='h v'), "expected a list of direction names, got 'h v'"),
    ('local_vssm_tiny_search', dict(candidates=['h', 'spiral']),
     r"unknown scan direction 'spiral': valid directions are .* and the registered snake, snake_flip"),
    ('local_vssm_small_search', dict(candidates=[]), 'at least 2'),
    ('local_vim_tiny', dict(candidates=THREE), 'candidates= is the search set of a search supernet'),
    ('local_vssm_tiny', dict(candidates=THREE), 'candidates= is the search set of a search supernet'),
])
def test_bad_candidate_lists_are_refused(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        timm.create_model(name, **kwargs)


def test_a_search_run_configured_like_search_yaml_trains_extracts_and_trains_the_searched_model(
        tmp_path, monkeypatch, capsys):
    """`model_kwargs: {candidates: [...]}` in the YAML config (search.yaml's place for model kwargs) reaches the
    supernet; its checkpoint records them, vis_search_prob.py reads them, the searched file trains the final model."""
    config = tmp_path / 'search.yaml'
    config.write_text(yaml.safe_dump({'model': 'local_vim_tiny_search', 'model_kwargs': {'candidates': THREE}}))
    run = ['--dataset', 'digits', '--model-kwargs', 'img_size=16', 'patch_size=4', 'embed_dim=16', 'depth=2',
           '--img-size', '16', '-b', '256', '--epochs', '1', '--opt', 'adamw', '--lr', '5e-3', '--sched', 'cosine',
           '--warmup-epochs', '0', '-j', '0', '--output', str(tmp_path)]
    train(parse_args(['-c', str(config), *run, '--experiment', 'supernet']))
    capsys.readouterr()                                             # the run's own printout
    exp = tmp_path / 'supernet'
    with open(exp / 'search_probs.csv', newline='') as f:
        assert next(csv.reader(f)) == ['epoch', 'layer', *THREE]
    printed = vis(monkeypatch, capsys, str(exp / 'last.pth.tar'), '--topk', '2').out.splitlines()
    ckpt = torch.load(exp / 'last.pth.tar', map_location='cpu', weights_only=True)
    weights = [v for k, v in ckpt['model'].items() if k.endswith('multi_scan.weights')]
    assert printed[2:] == [f'{top2(w, THREE)},' for w in weights]
    train(parse_args([*run, '--model', 'local_vim_tiny', '--directions', str(exp / 'directions.yaml'),
                      '--experiment', 'searched']))
    searched = torch.load(tmp_path / 'searched' / 'last.pth.tar', map_location='cpu', weights_only=True)
    assert searched['directions'] == [top2(w, THREE) for w in weights]


def test_a_config_of_ones_own_on_search_yaml_takes_candidates_and_a_copy_elsewhere_names_its_base(tmp_path):
    """docs/search.md's way to give the candidates on ImageNet: a config of one's own whose _base_ is search.yaml gets
    its recipe and the candidates. A copy of search.yaml in another folder is refused naming its `_base_: config.yaml`,
    which is read relative to the copy; the error named only `<folder>/config.yaml`, a file never given."""
    search_yaml = os.path.join(REPO, 'configs', 'strategies', 'local_mamba', 'search.yaml')
    own = tmp_path / 'my_search.yaml'
    own.write_text(f'_base_: {search_yaml}\nmodel_kwargs: {{candidates: [h, h_flip, v, v_flip, snake]}}\n')
    cfg = parse_args(['-c', str(own)])
    assert (cfg.model, cfg.epochs, cfg.batch_size, cfg.warmup_epochs) == ('local_vim_tiny_search', 100, 128, 20)
    assert cfg.model_kwargs == {'candidates': ['h', 'h_flip', 'v', 'v_flip', 'snake']}
    copy = tmp_path / 'copies' / 'search.yaml'
    copy.parent.mkdir()
    with open(search_yaml) as f:
        copy.write_text(f.read())
    with pytest.raises(ConfigError, match=re.escape(
            f'{copy}: its _base_ config.yaml is not there ({copy.parent}/config.yaml): a _base_ path is read '
            f'relative to the file that names it')):
        parse_args(['-c', str(copy)])


def test_extract_refuses_a_single_candidate(tmp_path):
    ckpt = tmp_path / "supernet.pth.tar"
    torch.save({"state_dict": {"blocks.0.mixer.multi_scan.weights": torch.zeros(1, 1, 1, 1)}}, ckpt)
    with pytest.raises(ValueError, match="at least 2 distinct direction names"):
        extract(str(ckpt), topk=1, out_dir=str(tmp_path / "out"), candidates=["h"])
    assert not os.path.exists(tmp_path / "out" / "directions.yaml")
