"""Extraction with --topk equal to the supernet's candidate count keeps every candidate."""
import pytest
import torch

from classification.common.checkpoint_io import CheckpointError
from classification.models.directions import load_directions
from classification.search.extract import extract, plot_heatmap

THREE = ['h', 'v_flip', 'snake']


def test_topk_equal_to_the_candidate_count_keeps_them_all(tmp_path):
    """Guards against refusing topk == K (an off-by-one `topk >= K` bound): all K candidates are chosen in every
    layer; topk = K + 1 is still refused."""
    weights = {'layers.0.mixer.multi_scan.weights': torch.tensor([0., 2., 1.]).view(3, 1, 1, 1),
               'layers.1.mixer.multi_scan.weights': torch.tensor([3., -1., 0.]).view(3, 1, 1, 1)}
    path = tmp_path / 'last.pth.tar'
    torch.save({'model': weights, 'config': {'model_kwargs': {'candidates': THREE}}}, path)
    result = extract(str(path), topk=3, out_dir=str(tmp_path / 'out'))
    assert result['candidates'] == tuple(THREE)
    assert result['directions'] == [THREE, THREE]  # chosen names are listed in the candidates' order
    assert load_directions(tmp_path / 'out' / 'directions.yaml') == result['directions']
    torch.testing.assert_close(result['probs'][0], torch.softmax(torch.tensor([0., 2., 1.]), 0))
    with pytest.raises(CheckpointError, match='--topk must be between 1 and 3, got 4'):
        extract(str(path), topk=4, out_dir=str(tmp_path / 'out4'))


def test_heatmap_outlines_the_chosen_cells_at_column_candidate_row_layer(tmp_path, monkeypatch):
    """Guards against the outline's x and y being swapped: the chosen cell of layer l, candidate j is the unit square
    centred at (x=j, y=l) of the imshow grid."""
    import matplotlib.patches

    drawn = []

    class Recording(matplotlib.patches.Rectangle):
        def __init__(self, xy, *args, **kwargs):
            if kwargs.get('edgecolor') == 'red':  # the outlines (matplotlib makes other rectangles too)
                drawn.append(tuple(xy))
            super().__init__(xy, *args, **kwargs)

    monkeypatch.setattr(matplotlib.patches, 'Rectangle', Recording)
    probs = [torch.tensor([0.2, 0.3, 0.5]), torch.tensor([0.6, 0.3, 0.1])]
    plot_heatmap(probs, [['snake'], ['h']], str(tmp_path / 'map.png'), candidates=THREE)
    assert drawn == [(1.5, -0.5), (-0.5, 0.5)]
    assert (tmp_path / 'map.png').stat().st_size > 0


def test_heatmap_title_of_few_candidates_stays_inside_the_figure(tmp_path, monkeypatch):
    """Guards against a title wider than the figure: a supernet of 2 candidates draws a 4-inch figure, and the note
    of an unfinished search ran past both edges (cut off in the PNG); its lines are wrapped instead."""
    import matplotlib.figure

    drawn = []  # (figure width, title extent, title text) as saved, in pixels

    def record(fig, *args, **kwargs):
        title = fig.axes[0].title
        drawn.append((fig.bbox.width, title.get_window_extent(fig.canvas.get_renderer()), title.get_text()))

    monkeypatch.setattr(matplotlib.figure.Figure, 'savefig', record)
    title = ('local_vssm_small_search: top-1 per layer (red)\nunfinished search: saved in the middle of epoch 12 of '
             'epochs 0-99, after its step 1234')
    probs = [torch.tensor([0.6, 0.4]), torch.tensor([0.3, 0.7])]
    plot_heatmap(probs, [['h'], ['v_flip']], str(tmp_path / 'map.png'), title=title, candidates=['h', 'v_flip'])
    width, box, shown = drawn[0]
    assert 0 <= box.x0 and box.x1 <= width
    assert shown.split() == title.split()  # every word kept, in order


@pytest.mark.parametrize('ema, title', [(False, 'local_vim_tiny_search: top-1 per layer (red)'),
                                        (True, 'local_vim_tiny_search (EMA weights): top-1 per layer (red)')])
def test_heatmap_title_names_the_ema_weights(tmp_path, monkeypatch, ema, title):
    """--ema's heat map had the same title as the model weights' one, beside it in another --out."""
    import matplotlib.figure

    titles = []
    monkeypatch.setattr(matplotlib.figure.Figure, 'savefig',
                        lambda fig, *args, **kwargs: titles.append(fig.axes[0].title.get_text()))
    weights = {'layers.0.mixer.multi_scan.weights': torch.arange(8.).view(8, 1, 1, 1)}  # the original 8 candidates
    path = tmp_path / 'last.pth.tar'
    torch.save({'model': weights, 'ema_model': weights, 'model_name': 'local_vim_tiny_search'}, path)
    extract(str(path), topk=1, out_dir=str(tmp_path / 'out'), ema=ema)
    assert titles == [title]
