"""A layer's direction set (classification.models.multi_scan.MultiScan): the search probabilities, the candidates a
fixed layer refuses, and the candidates a supernet's search layers share."""
import pytest
import torch
from torch import nn

from classification.models.multi_scan import MultiScan, search_candidates, search_probabilities


def test_search_probabilities_are_a_float32_softmax_of_low_precision_weights():
    weights = torch.tensor([0.0, 1.0, 2.0], dtype=torch.bfloat16).view(3, 1, 1, 1)
    probs = search_probabilities(weights)
    assert probs.dtype == torch.float32
    expected = torch.exp(torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64))
    torch.testing.assert_close(probs.double(), expected / expected.sum(), rtol=1e-6, atol=1e-7)


def test_a_layer_of_fixed_directions_refuses_candidates():
    with pytest.raises(ValueError, match=r'^candidates are the directions of a search layer \(directions=None\)'):
        MultiScan(8, ('h', 'v'), candidates=('h', 'v', 'w2'))


def test_search_layers_over_different_candidates_are_named_so():
    model = nn.Sequential(MultiScan(8, candidates=('h', 'v')), MultiScan(8, candidates=('h', 'v')))
    assert search_candidates(model) == ('h', 'v')
    model.append(MultiScan(8, candidates=('h', 'w2')))
    with pytest.raises(ValueError, match=r"search over different candidates: \[\('h', 'v'\), \('h', 'w2'\)\]"):
        search_candidates(model)


def test_a_layer_prints_its_directions_and_whether_it_searches():
    assert repr(MultiScan(8, ('h', 'w2_flip'))) == 'MultiScan(h, w2_flip)'
    assert repr(MultiScan(8, candidates=('h', 'v'))) == 'MultiScan(search over h, v)'
