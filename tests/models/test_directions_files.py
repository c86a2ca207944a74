"""Reading directions files: the shape of their table, and the warnings about where a file's directions come from."""
import re

import pytest
from torch import nn

from classification.models.directions import (directions_difference, directions_source_warnings, load_directions,
                                              resolve_directions, save_directions)


@pytest.mark.parametrize('text', ['directions: [h, v_flip]\n', '[[h, v], w2]\n'])
def test_a_table_whose_layers_are_not_lists_is_refused(tmp_path, text):
    """A layer given as a bare name was read as the list of its letters ('v_flip' as v, _, f, l, i, p)."""
    path = tmp_path / 'directions.yaml'
    path.write_text(text)
    with pytest.raises(ValueError, match=r'"directions" must be a list of per-layer lists of direction names'):
        load_directions(path)


def test_a_file_that_records_no_search_gives_no_warning(tmp_path):
    """Only a search recorded as unfinished (``finished: False``) is warned of, not a file that records none."""
    path = tmp_path / 'directions.yaml'
    save_directions(path, [['h', 'v']] * 2, supernet='local_vim_tiny_search', topk=2)
    assert directions_source_warnings(path, 'local_vim_tiny', 'LocalVim', None) == []
    save_directions(path, [['h', 'v']] * 2, supernet='local_vim_tiny_search', topk=2,
                    searched_from={'finished': False, 'unfinished': 'saved after epoch 0 of epochs 0-1'})
    assert directions_source_warnings(path, 'local_vim_tiny', 'LocalVim', None) == [
        f'{path} holds the directions of an unfinished search (saved after epoch 0 of epochs 0-1)']


def test_a_folder_given_as_a_directions_file_is_named_so(tmp_path):
    with pytest.raises(ValueError, match=rf'^directions file {re.escape(str(tmp_path))} is a folder: give the '
                                         rf'directions.yaml in it$'):
        load_directions(tmp_path)


def test_a_file_of_another_depth_names_the_depth_it_was_searched_with(tmp_path):
    path = tmp_path / 'directions.yaml'
    save_directions(path, [['h', 'v']] * 3, supernet='local_vim_tiny_search', topk=2,
                    searched_from={'model_kwargs': {'depth': 3}})
    with pytest.raises(ValueError, match=r'has 3 layers, but the model has 2 layers: build the model with the 3 layers '
                                         r'of the supernet that searched them \(depth=3\)$'):
        resolve_directions(str(path), None, 2)


def test_directions_difference_names_the_first_other_layer_or_the_layer_counts():
    model = nn.Module()
    model.directions = (('h', 'v'), ('w2', 'h_flip'), ('v',))
    assert directions_difference(model, {}) is None
    assert directions_difference(model, {'directions': [['h', 'v'], ['w2', 'h_flip'], ['v']]}) is None
    assert directions_difference(model, {'directions': [['h', 'v'], ['w2', 'h'], ['h']]}) == \
        "layer 1: ['w2', 'h'] vs ['w2', 'h_flip'] here"
    assert directions_difference(model, {'directions': [['h', 'v'], ['w2', 'h_flip']]}) == '2 layers vs 3 here'
    assert directions_difference(model, {'directions': None}) == "a search supernet vs this model's fixed table"
