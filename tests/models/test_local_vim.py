"""LocalVim: faithful keys and parameter counts, the mixer's math against a per-direction composition of reference
ops, the layer loop against the original's order of operations, and bad input."""
import copy
import hashlib
import math

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.layers import DropPath

import classification  # noqa: F401  (registers the models)
from classification.models.directions import (CANDIDATES, LOCAL_VIM_TINY_DIRECTIONS, LOCAL_VSSM_SMALL_DIRECTIONS,
                                              LOCAL_VSSM_TINY_DIRECTIONS)
from classification.models.local_vim import MultiMamba, checkpoint_filter_fn, position_table
from localmamba_ssm import mamba_inner_no_out_proj_ref
from scan_reference import reverse, scan

# name -> (parameter count at 224 from the original's arithmetic, width, rope, middle cls, search)
FACTS = {
    'local_vim_tiny': (7_994_152, 192, True, False, False),
    'local_vim_tiny_middle_cls_token': (7_994_536, 192, False, True, False),
    'local_vim_small': (27_783_784, 384, True, False, False),
    'local_vim_small_searched': (27_783_784, 384, True, False, False),
    'local_vim_tiny_wo_search': (7_994_152, 192, True, False, False),
    'local_vim_tiny_search': (5_473_288, 128, True, False, True),
}


def expected_keys(width, rope, cls, search, depth=20, tokens=196, classes=1000):
    """The original state_dict (facts §2.1): ordered keys and shapes."""
    inner, rank, num_dirs = 2 * width, math.ceil(width / 16), 8 if search else 4
    keys = []
    if cls:
        keys.append(('cls_token', (1, 1, width)))
    keys += [('pos_embed', (1, tokens + cls, width)), ('patch_embed.proj.weight', (width, 3, 16, 16)),
             ('patch_embed.proj.bias', (width,))]
    if rope:
        keys += [('rope.freqs_cos', (tokens, width)), ('rope.freqs_sin', (tokens, width))]
    keys += [('head.weight', (classes, width)), ('head.bias', (classes,))]
    for i in range(depth):
        p = f'layers.{i}.mixer.'
        for k in range(num_dirs):
            keys += [(f'{p}A_log_{k}', (inner, 16)), (f'{p}D_{k}', (inner,))]
        keys.append((f'{p}in_proj.weight', (2 * inner, width)))
        if search:
            keys.append((f'{p}multi_scan.weights', (8, 1, 1, 1)))
        for k in range(num_dirs):
            keys += [(f'{p}conv1d_{k}.weight', (inner, 1, 4)), (f'{p}conv1d_{k}.bias', (inner,)),
                     (f'{p}x_proj_{k}.weight', (rank + 32, inner)),
                     (f'{p}dt_proj_{k}.weight', (inner, rank)), (f'{p}dt_proj_{k}.bias', (inner,))]
        keys += [(f'{p}out_proj.weight', (width, inner)), (f'{p}attn.norm.weight', (inner,)),
                 (f'{p}attn.norm.bias', (inner,)), (f'{p}attn.global_reduce.weight', (inner // 8, inner)),
                 (f'{p}attn.global_reduce.bias', (inner // 8,)),
                 (f'{p}attn.channel_select.weight', (inner, inner // 8)), (f'{p}attn.channel_select.bias', (inner,)),
                 (f'layers.{i}.norm.weight', (width,))]
    keys.append(('norm_f.weight', (width,)))
    return keys


@pytest.mark.parametrize('name', sorted(FACTS))
def test_keys_shapes_and_parameter_count_at_224(name):
    count, width, rope, cls, search = FACTS[name]
    model = timm.create_model(name)
    got = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert got == expected_keys(width, rope, cls, search)
    assert sum(p.numel() for p in model.parameters()) == count


@pytest.mark.parametrize('name,gflops', [('local_vim_tiny', 1.482), ('local_vim_tiny_middle_cls_token', 1.489),
                                         ('local_vim_small', 4.771), ('local_vim_tiny_search', 1.116)])
def test_flops_in_the_original_convention(name, gflops):
    assert timm.create_model(name).flops() / 1e9 == pytest.approx(gflops, abs=5e-4)


def test_directions_of_registered_models():
    assert timm.create_model('local_vim_tiny', embed_dim=16).directions == LOCAL_VIM_TINY_DIRECTIONS
    uniform = (('h', 'h_flip', 'w2', 'w2_flip'),) * 20
    assert timm.create_model('local_vim_small', embed_dim=16).directions == uniform
    assert timm.create_model('local_vim_small_searched', embed_dim=16).directions == LOCAL_VIM_TINY_DIRECTIONS
    search = timm.create_model('local_vim_tiny_search', embed_dim=16)
    assert search.directions is None and search.layers[0].mixer.directions == CANDIDATES


@pytest.mark.parametrize('table, digest', [
    (LOCAL_VIM_TINY_DIRECTIONS, '9d9f0b73243b823bb83ebffa273ef602ce5494e1cdea3ccdbeb911bdecad2056'),
    (LOCAL_VSSM_TINY_DIRECTIONS, 'e744718d01dbc9e10d903f44b42a7309da1455e7af575c644806ac5dd08a895f'),
    (LOCAL_VSSM_SMALL_DIRECTIONS, 'cb2e31bbbbe8ddabf0c7718d57f663aaa94b39d7ed91ca453af7bbb3d052e789'),
])
def test_searched_direction_tables_are_the_released_ones(table, digest):
    """The models, the det/seg configs and these checks all read the same constants, so a swapped row or a
    `x` / `x_flip` slip would move them together: each table is pinned to the SHA-256 of the original's own
    (hunto/LocalMamba 75e5d1f, `lib/models/local_vim.py` local_vim_tiny, `local_vmamba.py` local_vssm_tiny /
    local_vssm_small), one layer per line, directions joined by spaces."""
    assert hashlib.sha256('\n'.join(' '.join(layer) for layer in table).encode()).hexdigest() == digest


def mixer_by_reference(mixer, hidden, grid, cls_position=None):
    """The original MultiMamba forward, one direction at a time, with the reference inner function (facts §3.2)."""
    xz = F.linear(hidden, mixer.in_proj.weight)
    if cls_position is not None:
        cls = xz[:, cls_position]
        xz = torch.cat([xz[:, :cls_position], xz[:, cls_position + 1:]], dim=1)
    outputs = []
    for k, name in enumerate(mixer.directions):
        seq = scan(xz, name, grid)                                          # (B, 2E, L_k)
        if cls_position is not None:
            seq = torch.cat([seq[..., :cls_position], cls[..., None], seq[..., cls_position:]], dim=-1)
        out = mamba_inner_no_out_proj_ref(
            seq, getattr(mixer, f'conv1d_{k}').weight, getattr(mixer, f'conv1d_{k}').bias,
            getattr(mixer, f'x_proj_{k}').weight, getattr(mixer, f'dt_proj_{k}').weight,
            -torch.exp(getattr(mixer, f'A_log_{k}').float()), D=getattr(mixer, f'D_{k}').float(),
            delta_bias=getattr(mixer, f'dt_proj_{k}').bias.float(), delta_softplus=True)
        if cls_position is not None:
            cls_out = out[..., cls_position]
            out = torch.cat([out[..., :cls_position], out[..., cls_position + 1:]], dim=-1)
        out = reverse(out, name, grid)
        if cls_position is not None:
            out = torch.cat([out[..., :cls_position], cls_out[..., None], out[..., cls_position:]], dim=-1)
        outputs.append(mixer.attn(out.transpose(1, 2)))
    if mixer.multi_scan.search:
        probs = torch.softmax(mixer.multi_scan.weights.view(-1), 0)
        merged = sum(p * F.layer_norm(a, a.shape[-1:]) for p, a in zip(probs, outputs))
    else:
        merged = sum(outputs)
    return F.linear(merged, mixer.out_proj.weight)


@pytest.mark.parametrize('directions,grid,cls', [
    (('h', 'v_flip', 'w2', 'w7_flip'), (3, 5), None),         # non-square, w2 and w7 pad
    (('v', 'h_flip', 'w3'), (4, 6), 12),                      # middle class token
    (None, (5, 3), None),                                     # search layer: all 8 candidates, softmax merge
])
def test_mixer_equals_per_direction_reference(directions, grid, cls):
    torch.manual_seed(0)
    mixer = MultiMamba(12, directions, d_state=5)
    with torch.no_grad():
        for p in mixer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    tokens = grid[0] * grid[1] + (cls is not None)
    hidden = torch.randn(2, tokens, 12)
    torch.testing.assert_close(mixer(hidden, grid, cls), mixer_by_reference(mixer, hidden, grid, cls),
                               rtol=1e-4, atol=1e-5)


def rms_norm(x, weight, eps=1e-5):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def rotate(x, cos, sin):
    pairs = x.unflatten(-1, (-1, 2))
    return x * cos + torch.stack((-pairs[..., 1], pairs[..., 0]), -1).flatten(-2) * sin


def forward_by_hand(model, image, grid, path_scales=None, final_scale=1.0):
    """The original's forward (facts §3.1) written out: patch embedding, the middle class token inserted at H*W // 2,
    the position table, RoPE on hidden and residual before every layer, ``residual += drop_path(hidden)`` from the
    second layer on (here a scaling by ``path_scales[i]``, as the stand-ins of the drop-path test), add + RMSNorm,
    the final add + norm (drop path: ``final_scale``), the head on the middle token or on the mean of the tokens.
    ``grid`` must be the model's built grid (its tables are used as they are)."""
    x = model.patch_embed.proj(image).flatten(2).transpose(1, 2)
    middle = grid[0] * grid[1] // 2 if model.has_cls_token else None
    if middle is not None:
        x = torch.cat([x[:, :middle], model.cls_token.expand(len(x), -1, -1), x[:, middle:]], dim=1)
    x = x + model.pos_embed
    rope = (model.rope.freqs_cos, model.rope.freqs_sin) if model.rope is not None else None
    hidden, residual = x, None
    for i, layer in enumerate(model.layers):
        if rope is not None:
            hidden = rotate(hidden, *rope)
        if residual is None:
            residual = hidden
        else:
            scale = 1.0 if path_scales is None else path_scales[i]
            residual = (rotate(residual, *rope) if rope is not None else residual) + scale * hidden
        hidden = layer.mixer(rms_norm(residual, layer.norm.weight), grid, middle)
    tokens = rms_norm(residual + final_scale * hidden, model.norm_f.weight)
    return model.head(tokens[:, middle] if middle is not None else tokens.mean(1))


def test_layer_loop_follows_the_original_order():
    """RoPE on hidden and residual before every layer, add + RMSNorm, final norm, mean pooling (facts §3.1)."""
    torch.manual_seed(0)
    model = timm.create_model('local_vim_tiny', img_size=32, patch_size=8, embed_dim=16, depth=3,
                              directions=[['h', 'w2'], ['v_flip'], ['w3_flip', 'h']], drop_path_rate=0.0,
                              num_classes=7).eval()
    image = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model(image), forward_by_hand(model, image, (4, 4)), rtol=1e-4, atol=1e-5)


def perturbed(model):
    """``model`` with noise on every parameter: at initialisation the mixers' outputs (out_proj scaled down, zero
    class token) are too small beside the residual for a misplaced term to show."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


class Scale(torch.nn.Module):
    """A deterministic stand-in for DropPath: multiplies by ``factor`` and counts its calls."""

    def __init__(self, factor):
        super().__init__()
        self.factor, self.calls = factor, 0

    def forward(self, x):
        self.calls += 1
        return self.factor * x


def test_drop_path_wraps_each_mixer_output_where_it_joins_the_residual():
    """Stochastic depth (facts §3.1): every layer after the first adds ``drop_path(hidden)`` to the residual, and the
    final add before norm_f too. A Block that skipped its drop path (or wrapped the residual instead) trained
    LocalVim without stochastic depth, unseen by the output shapes. The DropPath modules are replaced by distinct
    scalings, each called once per forward, whose effect must match the hand-written loop."""
    torch.manual_seed(0)
    model = timm.create_model('local_vim_tiny', img_size=32, patch_size=8, embed_dim=16, depth=3,
                              directions=[['h', 'w2'], ['v_flip'], ['w3_flip', 'h']], drop_path_rate=0.2,
                              num_classes=7).eval()
    perturbed(model)
    assert [type(m) for m in (model.layers[2].drop_path, model.drop_path)] == [DropPath, DropPath]
    stand_ins = {1: Scale(2.0), 2: Scale(3.0)}
    for i, module in stand_ins.items():
        model.layers[i].drop_path = module
    model.drop_path = final = Scale(5.0)
    image = torch.randn(2, 3, 32, 32)
    logits = model(image)
    assert [m.calls for m in (*stand_ins.values(), final)] == [1, 1, 1]
    expected = forward_by_hand(model, image, (4, 4), path_scales=[None, 2.0, 3.0], final_scale=5.0)
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(logits, forward_by_hand(model, image, (4, 4)), rtol=1e-3, atol=1e-3)


def test_middle_class_token_model_at_an_odd_grid_follows_the_original():
    """The released 77.8% model's layout at a 3 x 5 grid (15 patches, 16 tokens): the class token is inserted at
    15 // 2 = 7, the mixers keep it there, and the head reads token (16 - 1) // 2 = 7. An even grid (4 x 4) cannot
    tell 7 from 8 (17 tokens: both rules give 8), so an off-by-one in the insertion or the pooling went unseen."""
    torch.manual_seed(0)
    model = timm.create_model('local_vim_tiny_middle_cls_token', img_size=(24, 40), patch_size=8, embed_dim=16,
                              depth=2, directions=[['h', 'w2'], ['v_flip', 'h_flip']], drop_path_rate=0.0,
                              num_classes=5).eval()
    assert model.grid == (3, 5) and model.pos_embed.shape == (1, 16, 16)
    perturbed(model)
    image = torch.randn(2, 3, 24, 40)
    torch.testing.assert_close(model(image), forward_by_hand(model, image, (3, 5)), rtol=1e-4, atol=1e-5)
    tokens = model.forward_features(image)
    torch.testing.assert_close(model.forward_head(tokens), model.head(tokens[:, 7]))


def bicubic_rows(rows, old_grid, new_grid):
    """A per-token table (1, H*W, C) resized as timm resizes position embeddings: bicubic, align_corners=False."""
    grid = rows.unflatten(1, old_grid).permute(0, 3, 1, 2)
    resized = F.interpolate(grid, size=new_grid, mode='bicubic', align_corners=False)
    return resized.permute(0, 2, 3, 1).flatten(1, 2)


def test_position_table_moves_the_class_row_to_the_new_middle():
    """A 4 x 4 table with its class row at 16 // 2 = 8, for a 3 x 5 grid: the class row goes to 15 // 2 = 7 (where
    the model inserts the token), the 16 grid rows are resized bicubically around it. (15 + 1) // 2 = 8 put it one
    row late, and every token after it got its neighbour's position."""
    torch.manual_seed(0)
    table = torch.randn(1, 17, 6)
    grid_rows = torch.cat([table[:, :8], table[:, 9:]], dim=1)
    resized = bicubic_rows(grid_rows, (4, 4), (3, 5))
    expected = torch.cat([resized[:, :7], table[:, 8:9], resized[:, 7:]], dim=1)
    got = position_table(table, (4, 4), (3, 5), True)
    assert got.shape == (1, 16, 6) and torch.equal(got[:, 7], table[:, 8])
    torch.testing.assert_close(got, expected)


def test_checkpoint_table_with_a_middle_class_row_resizes_for_another_image_size():
    """The released middle-class-token table (197 rows: 14 x 14 grid, class row at 98) into a model built for 256
    (16 x 16 grid, 257 rows): the class row lands at 128, the grid rows are resized bicubically. A resize that took
    the class row for a grid row refused the table (197 is no square) or resized it into the grid."""
    torch.manual_seed(0)
    model = timm.create_model('local_vim_tiny_middle_cls_token', img_size=256, embed_dim=8, depth=1,
                              directions=[['h']], num_classes=3)
    table = torch.randn(1, 197, 8)
    got = checkpoint_filter_fn({'pos_embed': table}, model)['pos_embed']
    assert got.shape == model.pos_embed.shape == (1, 257, 8)
    assert torch.equal(got[:, 128], table[:, 98])
    resized = bicubic_rows(torch.cat([table[:, :98], table[:, 99:]], dim=1), (14, 14), (16, 16))
    torch.testing.assert_close(torch.cat([got[:, :128], got[:, 129:]], dim=1), resized)


def test_rope_tables_match_the_formula():
    model = timm.create_model('local_vim_tiny', embed_dim=16, depth=1, directions=[['h']])
    dim = 8                                              # RoPE dim = C / 2
    freqs = 1.0 / 10000 ** (torch.arange(0, dim, 2).float() / dim)
    row, col = 5, 9                                      # token 5 * 14 + 9 of the 14x14 grid
    angles = torch.cat([(row * freqs).repeat_interleave(2), (col * freqs).repeat_interleave(2)])
    torch.testing.assert_close(model.rope.freqs_cos[row * 14 + col], angles.cos())
    torch.testing.assert_close(model.rope.freqs_sin[row * 14 + col], angles.sin())


def test_rope_positions_are_scaled_to_the_pretraining_grid_at_another_image_size():
    """Built for 256 pixels (a 16 x 16 grid) the rotary positions are ``arange(16) / 16 * 14`` (EVA-02's
    ``pt_seq_len = 14``, facts 3.1), not the integers: token (5, 9) rotates by the angles of rows 4.375 and 7.875.
    At 224 the two agree, so the formula test above cannot tell them apart."""
    model = timm.create_model('local_vim_tiny', img_size=256, embed_dim=16, depth=1, directions=[['h']])
    dim = 8
    freqs = 1.0 / 10000 ** (torch.arange(0, dim, 2).float() / dim)
    row, col = 5 * 14 / 16, 9 * 14 / 16
    angles = torch.cat([(row * freqs).repeat_interleave(2), (col * freqs).repeat_interleave(2)])
    assert model.rope.freqs_cos.shape == (256, 16)
    torch.testing.assert_close(model.rope.freqs_cos[5 * 16 + 9], angles.cos())
    torch.testing.assert_close(model.rope.freqs_sin[5 * 16 + 9], angles.sin())


@pytest.mark.parametrize('pool, expected', [('mean', [[2.0, -4.0]]), ('max', [[3.0, -2.0]]), ('none', [[2.0, -3.0]]),
                                            ('avg', [[2.0, -4.0]])])
def test_pooling_types_of_the_original(pool, expected):
    """``final_pool_type`` as the original's Vim: 'mean' over the tokens, 'max' per channel, 'none' the last token
    (timm's 'avg' is 'mean'). Tokens (1, 3, 2): [1, -2], [3, -7], [2, -3]."""
    model = timm.create_model('local_vim_tiny', img_size=32, embed_dim=8, depth=1, directions=[['h']],
                              num_classes=0, final_pool_type=pool)
    tokens = torch.tensor([[[1.0, -2.0], [3.0, -7.0], [2.0, -3.0]]])
    assert model.forward_head(tokens).tolist() == expected


def test_drop_path_schedule_is_shifted_with_a_final_drop_path():
    model = timm.create_model('local_vim_tiny', embed_dim=16, drop_path_rate=0.19)
    rates = [getattr(layer.drop_path, 'drop_prob', 0.0) for layer in model.layers]
    assert rates[0] == 0.0
    assert rates[1:] == pytest.approx([0.19 * i / 19 for i in range(19)])
    assert model.drop_path.drop_prob == pytest.approx(0.19)


def test_initialisation_follows_the_original():
    model = timm.create_model('local_vim_tiny', embed_dim=32, depth=20)
    mixer = model.layers[3].mixer
    assert torch.equal(mixer.A_log_2[7], torch.log(torch.arange(1., 17.)))
    assert torch.equal(mixer.D_1, torch.ones(64))
    assert not mixer.dt_proj_0.bias.any()                # the original's Linear init wipes Mamba's dt bias
    assert mixer.dt_proj_0.weight.std().item() == pytest.approx(0.02, rel=0.3)
    bound = 1 / math.sqrt(64) / math.sqrt(20)            # kaiming_uniform(a=sqrt 5) / sqrt(depth)
    assert mixer.out_proj.weight.abs().max().item() <= bound
    assert mixer.out_proj.weight.abs().max().item() > 0.9 * bound
    kept = timm.create_model('local_vim_tiny', embed_dim=32, keep_dt_init=True).layers[3].mixer
    dt = F.softplus(kept.dt_proj_0.bias)                 # opt-in: Mamba's dt ~ log-uniform in [1e-3, 0.1]
    assert dt.min() >= 1e-3 - 1e-7 and dt.max() <= 0.1 + 1e-6 and dt.std() > 0


def test_odd_image_sizes_are_padded_and_position_tables_resized():
    model = timm.create_model('local_vim_tiny', embed_dim=16, num_classes=5).eval()
    image = torch.randn(1, 3, 200, 230)                  # grid 13 x 15 after padding to 208 x 240
    assert model(image).shape == (1, 5)
    padded = F.pad(image, (0, 10, 0, 8))
    torch.testing.assert_close(model(image), model(padded))
    feats = model.forward_intermediates(image, indices=[4, 19], intermediates_only=True)
    assert [f.shape for f in feats] == [(1, 16, 13, 15)] * 2


def test_a_model_built_for_an_odd_size_has_the_padded_grid_everywhere():
    """At img_size 72 (4.5 patches) the layers see a padded 5 x 5 grid: the position table, the model's grid and
    the patch embedding's metadata (timm floors its own to 4 x 4) all say so."""
    model = timm.create_model('local_vim_tiny', img_size=72, embed_dim=16, num_classes=3)
    assert model.grid == model.patch_embed.grid_size == (5, 5)
    assert model.patch_embed.num_patches == 25 == model.pos_embed.shape[1]
    assert model.patch_embed(torch.randn(1, 3, 72, 72)).shape == (1, 25, 16)


def test_middle_class_token_model_pools_the_middle_token():
    model = timm.create_model('local_vim_tiny_middle_cls_token', img_size=64, embed_dim=16, num_classes=4).eval()
    image = torch.randn(2, 3, 64, 64)
    tokens = model.forward_features(image)
    assert tokens.shape == (2, 17, 16)
    torch.testing.assert_close(model.forward_head(tokens), model.head(tokens[:, 8]))
    assert model(torch.randn(1, 3, 48, 80)).shape == (1, 4)    # 3 x 5 grid: resized positions, cls at 7


def test_intermediates_return_the_class_token_beside_the_map_as_timm_vit():
    """timm's `return_prefix_tokens=True` was a TypeError: each intermediate is (map, class token), the token taken
    from the middle of the layer's sequence; a model without one gives an empty (B, 0, C) prefix."""
    model = timm.create_model('local_vim_tiny_middle_cls_token', img_size=64, embed_dim=16, depth=3,
                              directions=[['h', 'v']] * 3).eval()
    image = torch.randn(2, 3, 64, 64)
    maps = model.forward_intermediates(image, indices=[0, 2], norm=True, intermediates_only=True)
    pairs = model.forward_intermediates(image, indices=[0, 2], norm=True, intermediates_only=True,
                                        return_prefix_tokens=True)
    plain = model.forward_intermediates(image, indices=[0, 2], norm=True, output_fmt='NLC', intermediates_only=True,
                                        return_prefix_tokens=True)
    for (grid_map, token), expected_map, (nlc, same_token) in zip(pairs, maps, plain):
        torch.testing.assert_close(grid_map, expected_map, rtol=0, atol=0)
        assert token.shape == (2, 1, 16) and torch.equal(token, same_token)
        # the token is what the map leaves out: the layer's sequence is the 8 tokens before it, it, the 8 after
        assert nlc.shape == (2, 16, 16)
    sequence = model._layers(image, [2], 3)[3][2]
    torch.testing.assert_close(plain[1][1], model.norm_f(sequence)[:, 8:9])
    no_cls = timm.create_model('local_vim_tiny', img_size=64, embed_dim=16, depth=1, directions=[['h']]).eval()
    (grid_map, token), = no_cls.forward_intermediates(image, indices=1, intermediates_only=True,
                                                      return_prefix_tokens=True)
    assert grid_map.shape == (2, 16, 4, 4) and token.shape == (2, 0, 16)


def test_intermediate_maps_put_each_token_at_its_row_and_column():
    """NCHW maps of the middle-class-token model at a 3 x 5 grid: cell (i, j) is the layer's token i * 5 + j, one
    further along from the class token (at 15 // 2 = 7) on, and the class token is the prefix. A map filled column
    by column (unflatten over (W, H), then transposed) has the right shape and the same values, so the shape checks
    and the NLC comparisons could not see it."""
    torch.manual_seed(0)
    model = perturbed(timm.create_model('local_vim_tiny_middle_cls_token', img_size=(24, 40), patch_size=8,
                                        embed_dim=16, depth=2, directions=[['h', 'w2'], ['v_flip']])).eval()
    image = torch.randn(2, 3, 24, 40)
    with torch.no_grad():
        sequence = model._layers(image, [1], 2)[3][1]                       # (2, 16, 16): 15 tokens + class token
        (grid_map, token), = model.forward_intermediates(image, indices=[1], intermediates_only=True,
                                                         return_prefix_tokens=True)
    assert grid_map.shape == (2, 16, 3, 5) and sequence.shape == (2, 16, 16)
    for i in range(3):
        for j in range(5):
            index = i * 5 + j
            assert torch.equal(grid_map[:, :, i, j], sequence[:, index + (index >= 7)]), (i, j)
    assert torch.equal(token, sequence[:, 7:8])


@pytest.mark.parametrize('directions,match', [
    ([['h', 'x']] * 20, 'valid directions are h, h_flip'),
    ([['h', 'wq']] * 20, 'valid directions are h, h_flip'),
    ([['h', 'w0']] * 20, 'valid directions are h, h_flip'),
    ([['h']] * 19, 'has 19 layers, but the model has 20 layers'),
    ([['h', 'h']] * 20, 'repeats a direction'),
    ([[]] * 20, 'non-empty list'),
])
def test_bad_directions_are_refused(directions, match):
    with pytest.raises(ValueError, match=match):
        timm.create_model('local_vim_tiny', embed_dim=16, directions=directions)


@pytest.mark.parametrize('name, kwargs', [('local_vim_tiny_search', {}),
                                          ('local_vim_tiny', dict(directions=LOCAL_VIM_TINY_DIRECTIONS[:2]))])
@pytest.mark.parametrize('copied', [False, True])
def test_gradients_keep_their_parameters_strides_at_dt_rank_1(name, kwargs, copied):
    """A width of 16 gives dt_rank 1: torch gave each (E, 1) dt_proj weight a gradient in transposed strides, which
    DDP warns of ('Grad strides do not match bucket view strides'), in the model and in a deep copy of it."""
    model = timm.create_model(name, depth=2, embed_dim=16, **kwargs)
    model = copy.deepcopy(model) if copied else model
    assert model.layers[0].mixer.dt_proj_0.weight.shape == (32, 1)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    for param_name, param in model.named_parameters():
        assert param.grad.stride() == param.stride(), param_name
