"""Scan maps: hand-written orders on a 4x6 grid, exact inverses on any grid, stacked tables, bad names."""
import re

import pytest
import torch

from classification.models.scan_maps import parse_direction, scan_index, scan_length, sequence_index
from localmamba_ssm.ops.reference import sequence_positions
from scan_reference import reverse, scan

P = 24  # padding marker on a 4x6 grid (= H * W)
GRID = (4, 6)
HAND_WRITTEN = {
    'h': list(range(24)),
    'h_flip': list(range(23, -1, -1)),
    'v': [0, 6, 12, 18, 1, 7, 13, 19, 2, 8, 14, 20, 3, 9, 15, 21, 4, 10, 16, 22, 5, 11, 17, 23],
    'w2': [0, 1, 6, 7, 2, 3, 8, 9, 4, 5, 10, 11, 12, 13, 18, 19, 14, 15, 20, 21, 16, 17, 22, 23],
    'w3': [0, 1, 2, 6, 7, 8, 12, 13, 14, 3, 4, 5, 9, 10, 11, 15, 16, 17,
           18, 19, 20, P, P, P, P, P, P, 21, 22, 23, P, P, P, P, P, P],
}
HAND_WRITTEN['v_flip'] = HAND_WRITTEN['v'][::-1]
HAND_WRITTEN['w2_flip'] = HAND_WRITTEN['w2'][::-1]
HAND_WRITTEN['w3_flip'] = HAND_WRITTEN['w3'][::-1]
NAMES = ['h', 'h_flip', 'v', 'v_flip', 'w1', 'w2', 'w2_flip', 'w3', 'w3_flip', 'w5', 'w7', 'w7_flip']


@pytest.mark.parametrize('name', sorted(HAND_WRITTEN))
def test_hand_written_orders_on_4x6(name):
    assert scan_index(name, GRID).tolist() == HAND_WRITTEN[name]


@pytest.mark.parametrize('name', sorted(HAND_WRITTEN))
def test_scan_reads_tokens_in_order_with_zero_padding(name):
    tokens = torch.arange(1, 25, dtype=torch.float32).view(1, 24, 1)   # token t holds value t + 1
    expected = [0.0 if i == P else i + 1.0 for i in HAND_WRITTEN[name]]
    assert scan(tokens, name, GRID).view(-1).tolist() == expected
    image = tokens.view(1, 4, 6, 1).permute(0, 3, 1, 2)                # the same tokens as (B, D, H, W)
    assert scan(image, name, GRID).view(-1).tolist() == expected


def test_vertical_reverse_is_exact_on_non_square_grid():
    # The original reversed this 2x3 'v' scan [0, 3, 1, 4, 2, 5] into [0, 4, 3, 2, 1, 5].
    x = torch.arange(6, dtype=torch.float32).view(1, 6, 1)
    seq = scan(x, 'v', (2, 3))
    assert seq.view(-1).tolist() == [0, 3, 1, 4, 2, 5]
    assert reverse(seq, 'v', (2, 3)).view(-1).tolist() == [0, 1, 2, 3, 4, 5]


@pytest.mark.parametrize('grid', [(1, 1), (3, 5), (7, 7), (5, 3), (14, 14), (9, 13), (8, 2)])
@pytest.mark.parametrize('name', NAMES)
def test_reverse_inverts_scan(grid, name):
    x = torch.randn(2, grid[0] * grid[1], 3)
    seq = scan(x, name, grid)
    window = parse_direction(name).window
    if window:
        expected = -(-grid[0] // window) * window * -(-grid[1] // window) * window
        assert seq.shape == (2, 3, expected) == (2, 3, scan_length(name, grid))
        assert int((seq[0, 0] == 0).sum()) >= expected - grid[0] * grid[1]
    torch.testing.assert_close(reverse(seq, name, grid), x.transpose(1, 2), rtol=0, atol=0)


@pytest.mark.parametrize('bad', ['x', 'w', 'w0', 'wx', 'h_flop', 'flip', 'W2', 'v-flip', '', 3])
def test_bad_direction_names_are_refused(bad):
    with pytest.raises(ValueError, match='valid directions are h, h_flip, v, v_flip, wK, wK_flip'):
        parse_direction(bad)


@pytest.mark.parametrize('grid', [(0, 4), (4, 0), (3,), (2, 2, 2)])
def test_grids_without_tokens_or_not_of_two_sizes_are_refused(grid):
    with pytest.raises(ValueError, match=rf'^grid must be \(H, W\) with H, W >= 1, got {re.escape(str(grid))}$'):
        scan_index('w2', grid)
    with pytest.raises(ValueError, match='grid must be'):
        sequence_index(('h', 'v'), grid)


def test_sequence_index_is_on_the_device_asked_for():
    table = sequence_index(('h', 'w2_flip'), (3, 3), device='meta')
    assert table.device.type == 'meta' and table.shape == (2, 16)


@pytest.mark.parametrize('grid', [(4, 6), (5, 3), (9, 13)])
def test_sequence_index_rows_are_the_scan_tables_and_the_kernels_inverse_undoes_them(grid):
    names = ('h', 'v_flip', 'w3', 'w7_flip')
    table = sequence_index(names, grid)
    num_tokens = grid[0] * grid[1]
    assert table.shape == (4, max(scan_length(n, grid) for n in names))
    positions = sequence_positions(table, num_tokens)
    for k, name in enumerate(names):
        assert table[k, :scan_length(name, grid)].tolist() == scan_index(name, grid).tolist()
        assert (table[k, scan_length(name, grid):] == num_tokens).all()
        assert table[k, positions[k]].tolist() == list(range(num_tokens))


def test_sequence_index_stacks_directions_with_the_middle_class_token():
    table = sequence_index(('h', 'v_flip', 'w3'), (2, 2), cls_position=2)
    # grid tokens 0, 1 stay rows 0, 1; tokens 2, 3 become rows 3, 4; the class token is row 2; row 5 is padding
    assert table.tolist() == [[0, 1, 2, 3, 4, 5, 5, 5, 5, 5],
                              [4, 1, 2, 3, 0, 5, 5, 5, 5, 5],
                              [0, 1, 2, 5, 3, 4, 5, 5, 5, 5]]


def test_tables_first_built_in_inference_mode_serve_training():
    grid = (5, 3)   # a grid no other test uses, so the tables are built here, under inference_mode
    with torch.inference_mode():
        index = sequence_index(('w2', 'h_flip'), grid)
    x = torch.randn(1, grid[0] * grid[1], 2, requires_grad=True)
    gathered = torch.nn.functional.pad(x, (0, 0, 0, 1))[:, sequence_index(('w2', 'h_flip'), grid)]
    gathered.sum().backward()
    assert torch.equal(x.grad, torch.full_like(x, 2.0))             # each token read once per direction
    assert not index.is_inference()


@pytest.mark.parametrize('transform', ['grad', 'vmap'])
def test_tables_first_built_under_a_torch_func_transform_serve_a_later_trace(transform):
    """A table first built inside ``torch.func.grad`` / ``vmap`` was cached as the transform's wrapped tensor, and a
    later ``torch.jit.trace`` (fvcore's FLOP count) failed with 'Unsupported value kind: Tensor'."""
    grid = (7, 2) if transform == 'grad' else (2, 7)   # grids no other test uses: the tables are first built here
    names = ('w2', 'v_flip')

    def gather_sum(x):
        return torch.nn.functional.pad(x, (0, 1))[..., sequence_index(names, grid)].sum()

    x = torch.arange(grid[0] * grid[1], dtype=torch.float32) - 5    # whole numbers: every order of summing is exact
    if transform == 'grad':
        assert torch.equal(torch.func.grad(gather_sum)(x), torch.full_like(x, 2.0))
    else:
        assert torch.allclose(torch.func.vmap(gather_sum)(x[None]), 2 * x.sum()[None])
    index = sequence_index(names, grid)
    assert not torch._C._functorch.is_functorch_wrapped_tensor(index)
    traced = torch.jit.trace(gather_sum, (x,))
    assert torch.allclose(traced(2 * x), 4 * x.sum())


def test_the_table_caches_keep_the_most_recent_tables_only():
    """A detector trained at many input sizes meets a new grid at every size: the caches keep a bounded number of
    tables (they kept every table ever built), the most recent ones."""
    from classification.models.scan_maps import LAYER_TABLES_KEPT, _sequence_index

    first = sequence_index(('h', 'w2'), (1, 1))
    for width in range(2, LAYER_TABLES_KEPT + 40):
        sequence_index(('h', 'w2'), (3, width))
    info = _sequence_index.cache_info()
    assert info.maxsize == LAYER_TABLES_KEPT and info.currsize == LAYER_TABLES_KEPT
    assert scan_index.cache_info().currsize <= scan_index.cache_info().maxsize
    hits = _sequence_index.cache_info().hits
    sequence_index(('h', 'w2'), (3, LAYER_TABLES_KEPT + 39))
    assert _sequence_index.cache_info().hits == hits + 1
    assert torch.equal(sequence_index(('h', 'w2'), (1, 1)), first)  # evicted, rebuilt the same
