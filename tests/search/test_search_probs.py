"""The search reads a supernet's probabilities from MultiScan.probabilities(): of a live model (the monitor) and of a
checkpoint file's weights (the extraction), with the same values; bad weights are refused by name."""
import math

import pytest
import timm
import torch

import classification  # noqa: F401  (registers the models)
from classification.common.checkpoint_io import CheckpointError, state_dict_from
from classification.models.directions import CANDIDATES
from classification.models.multi_scan import MultiScan
from classification.search.extract import extract
from classification.search.monitor import SearchMonitor
from classification.search.probs import chosen_directions, layer_probabilities


MIXED = [0., 3., 1., 2., -1., 0.5, -2., 1.5]


@pytest.fixture(scope='module')
def supernet():
    torch.manual_seed(0)
    model = timm.create_model('local_vim_tiny_search', depth=3, embed_dim=16)
    with torch.no_grad():
        layers = [m for m in model.modules() if isinstance(m, MultiScan)]
        layers[0].weights.copy_(-torch.arange(8.).view(8, 1, 1, 1))
        layers[1].weights.copy_(torch.tensor(MIXED).view(8, 1, 1, 1))
        layers[2].weights.copy_(torch.arange(8.).view(8, 1, 1, 1))
    return model


def test_probabilities_of_a_live_supernet_are_its_layers_softmax(supernet):
    probs = layer_probabilities(supernet)
    assert len(probs) == 3
    total = sum(math.exp(i) for i in range(8))
    torch.testing.assert_close(probs[2], torch.tensor([math.exp(i) / total for i in range(8)]))
    mixed_total = sum(math.exp(w) for w in MIXED)
    torch.testing.assert_close(probs[1], torch.tensor([math.exp(w) / mixed_total for w in MIXED]))
    assert chosen_directions(probs, 2) == [['h', 'h_flip'], ['h_flip', 'v_flip'], ['w7', 'w7_flip']]
    monitor = SearchMonitor.for_model(supernet, '/nonexistent', enabled=False)
    torch.testing.assert_close(monitor.current(), torch.stack(probs))


def test_the_logged_probabilities_stand_beside_their_candidates(supernet):
    """The training log's line of layer 2 (weights 0..7): candidate i shows exp(i) / sum exp(0..7), the last one
    w7_flip=0.6323; a line that paired the names with another order of the values read as another search."""
    import logging

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger('localmamba')
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        SearchMonitor.for_model(supernet, '/nonexistent', enabled=False).log_probs()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    total = sum(math.exp(i) for i in range(8))
    line = '  layer  2: ' + ' '.join(f'{name}={math.exp(i) / total:.4f}' for i, name in enumerate(CANDIDATES))
    assert line.endswith('w7_flip=0.6323')
    assert line in records[0].getMessage().splitlines()


def test_a_new_supernet_starts_its_search_at_uniform_probabilities():
    """The original draws each layer's weights as 1e-3 * randn(8, 1, 1, 1): every candidate starts at 1/8 (within
    a percent), and the weights differ, so no candidate is favoured by its init nor all tied exactly."""
    torch.manual_seed(0)
    model = timm.create_model('local_vim_tiny_search', depth=20, embed_dim=16)
    weights = torch.cat([layer.weights.detach().view(-1) for layer in model.modules() if isinstance(layer, MultiScan)])
    assert weights.numel() == 160 and 0.7e-3 < weights.std().item() < 1.3e-3 and abs(weights.mean().item()) < 3e-4
    for probs in layer_probabilities(model):
        torch.testing.assert_close(probs, torch.full((8,), 1 / 8), rtol=1e-2, atol=0)


def test_a_model_without_search_layers_gets_no_monitor():
    model = timm.create_model('local_vim_tiny', depth=1, embed_dim=16, directions=[CANDIDATES[:4]])
    assert SearchMonitor.for_model(model, '/nonexistent') is None and layer_probabilities(model) == []


def test_extraction_from_a_checkpoint_file_gives_the_live_model_probabilities(supernet, tmp_path):
    path = tmp_path / 'supernet.pth.tar'
    torch.save({'model': {'module.' + k: v for k, v in supernet.state_dict().items()}}, path)
    result = extract(str(path), topk=2, out_dir=str(tmp_path))
    for got, want in zip(result['probs'], layer_probabilities(supernet)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert result['directions'] == [['h', 'h_flip'], ['h_flip', 'v_flip'], ['w7', 'w7_flip']]


def test_extraction_keeps_the_layer_order_of_a_file_with_sorted_keys(tmp_path):
    """A safetensors file stores its keys sorted as text (layers.0, layers.1, layers.10, layers.11, layers.2, ...):
    the extraction took that order for the layer order, and gave layer 2 the directions searched in layer 10. Layer
    i's weights here make candidate i % 8 the most probable."""
    from safetensors.torch import save_file

    model = timm.create_model('local_vim_tiny_search', depth=12, embed_dim=16)
    with torch.no_grad():
        for i, layer in enumerate(model.layers):
            layer.mixer.multi_scan.weights.copy_(torch.eye(8)[i % 8].view(8, 1, 1, 1))
    path = tmp_path / 'supernet.safetensors'
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    result = extract(str(path), topk=1, out_dir=str(tmp_path))
    assert result['directions'] == [[CANDIDATES[i % 8]] for i in range(12)]
    for got, want in zip(result['probs'], layer_probabilities(model)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_extraction_refuses_weights_without_one_entry_per_candidate(tmp_path):
    path = tmp_path / 'bad.pth.tar'
    torch.save({'model': {'layers.0.mixer.multi_scan.weights': torch.zeros(7, 1, 1, 1)}}, path)
    with pytest.raises(CheckpointError, match=r'layers.0.mixer.multi_scan.weights holds 7 candidate weights'):
        extract(str(path), out_dir=str(tmp_path))


def test_ema_extraction_of_a_run_without_ema_says_so(supernet, tmp_path):
    path = tmp_path / 'no_ema.pth.tar'
    torch.save({'epoch': 0, 'model': supernet.state_dict(), 'ema_model': None}, path)
    message = r'no_ema.pth.tar: holds no EMA weights \(its run was trained without --model-ema\)$'
    with pytest.raises(CheckpointError, match=message):
        extract(str(path), out_dir=str(tmp_path), ema=True)
    assert not (tmp_path / 'directions.yaml').exists()
    with pytest.raises(CheckpointError, match=message):         # what tools/convert_ckpt.py ... ema_model meets too
        state_dict_from(torch.load(path), 'ema_model', source=str(path))
