"""Reading directions files: the shape of their table, and the warnings about where a file's directions come from."""
import pytest

from classification.models.directions import directions_source_warnings, load_directions, save_directions


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
