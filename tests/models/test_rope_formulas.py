"""rope.py on its own, against hand-written formulas: the pair rotation, the angle tables of VisionRotaryEmbedding
(its defaults included, which the models always override) and the bicubic resize of a per-token table (downsampling
too, where an antialiased resize would differ)."""
import math

import torch
import torch.nn.functional as F

from classification.models.rope import VisionRotaryEmbedding, apply_rotary, resize_grid_table, rotate_half


def test_rotate_half_turns_each_adjacent_pair_by_a_quarter():
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]])
    assert torch.equal(rotate_half(x), torch.tensor([[-2.0, 1.0, -4.0, 3.0, -6.0, 5.0]]))


def test_apply_rotary_multiplies_each_pair_as_a_complex_number_by_its_angle():
    """(x0 + i x1) * e^(i a): the pair (1, 2) by a quarter turn is (-2, 1), the pair (3, 4) by a = 0 stays."""
    x = torch.tensor([[[1.0, 2.0, 3.0, 4.0]]])
    angles = torch.tensor([[math.pi / 2, math.pi / 2, 0.0, 0.0]])
    got = apply_rotary(x, angles.cos(), angles.sin())
    torch.testing.assert_close(got, torch.tensor([[[-2.0, 1.0, 3.0, 4.0]]]), rtol=0, atol=1e-6)


def test_apply_rotary_keeps_each_pairs_length_and_turns_it_by_the_angle():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 8, generator=gen)
    angles = torch.rand(3, 4, generator=gen).repeat_interleave(2, dim=-1) * 6
    got = torch.view_as_complex(apply_rotary(x, angles.cos(), angles.sin()).unflatten(-1, (-1, 2)).contiguous())
    expected = torch.view_as_complex(x.unflatten(-1, (-1, 2)).contiguous()) * torch.polar(
        torch.ones(3, 4), angles[:, ::2])
    torch.testing.assert_close(got, expected)


def hand_tables(dim, pt, ft, theta=10000.0):
    """cos and sin (ft*ft, 2*dim) written out token by token: row angles, then column angles, each frequency twice."""
    freqs = [1.0 / theta ** (2 * i / dim) for i in range(dim // 2)]
    rows = []
    for r in range(ft):
        for c in range(ft):
            row, col = r / ft * pt, c / ft * pt
            rows.append([row * f for f in freqs for _ in range(2)] + [col * f for f in freqs for _ in range(2)])
    angles = torch.tensor(rows, dtype=torch.float64)
    return angles.cos().float(), angles.sin().float()


def test_rotary_tables_of_the_defaults_are_those_of_a_14_by_14_grid():
    rope = VisionRotaryEmbedding(dim=4)
    cos, sin = hand_tables(4, 14, 14)
    assert rope.grid == (14, 14) and rope.freqs_cos.shape == (196, 8)
    torch.testing.assert_close(rope.freqs_cos, cos)
    torch.testing.assert_close(rope.freqs_sin, sin)


def test_rotary_tables_of_another_grid_and_theta():
    rope = VisionRotaryEmbedding(dim=8, pt_seq_len=14, ft_seq_len=5, theta=100.0)
    cos, sin = hand_tables(8, 14, 5, theta=100.0)
    assert rope.grid == (5, 5)
    torch.testing.assert_close(rope.freqs_cos, cos)
    torch.testing.assert_close(rope.freqs_sin, sin)


def bicubic(table, old_grid, new_grid):
    """(H*W, C) resized as an image of C channels: bicubic, align_corners=False, no antialiasing."""
    image = table.unflatten(0, old_grid).permute(2, 0, 1)[None]
    resized = F.interpolate(image, size=new_grid, mode='bicubic', align_corners=False, antialias=False)
    return resized[0].permute(1, 2, 0).flatten(0, 1)


def test_tables_of_another_grid_are_the_built_tables_resized_bicubically():
    """Down (8x8 -> 3x5, where antialiasing would differ) and up (8x8 -> 11x11); the built grid: the tables as they
    are. cos and sin stay apart."""
    rope = VisionRotaryEmbedding(dim=4, pt_seq_len=14, ft_seq_len=8)
    for grid in ((3, 5), (11, 11)):
        cos, sin = rope.tables(grid)
        torch.testing.assert_close(cos, bicubic(rope.freqs_cos, (8, 8), grid))
        torch.testing.assert_close(sin, bicubic(rope.freqs_sin, (8, 8), grid))
    cos, sin = rope.tables((8, 8))
    assert cos is rope.freqs_cos and sin is rope.freqs_sin


def test_resize_grid_table_takes_a_table_with_or_without_its_batch_dimension():
    table = torch.randn(6 * 4, 3, generator=torch.Generator().manual_seed(1))
    expected = bicubic(table, (6, 4), (2, 3))
    torch.testing.assert_close(resize_grid_table(table, (6, 4), (2, 3)), expected)
    torch.testing.assert_close(resize_grid_table(table[None], (6, 4), (2, 3)), expected[None])
