"""LocalVim: faithful keys and parameter counts, the mixer's math against a per-direction composition of reference
ops, the layer loop against the original's order of operations, and bad input."""
import math

import pytest
import timm
import torch
import torch.nn.functional as F

import classification  # noqa: F401  (registers the models)
from classification.models.directions import CANDIDATES, LOCAL_VIM_TINY_DIRECTIONS
from classification.models.local_vim import MultiMamba
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
                 (f'{p}attn.global_reduce.bias', (inner // 8,)), (f'{p}attn.channel_select.weight', (inner, inner // 8)),
                 (f'{p}attn.channel_select.bias', (inner,)), (f'layers.{i}.norm.weight', (width,))]
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


def test_layer_loop_follows_the_original_order():
    """RoPE on hidden and residual before every layer, add + RMSNorm, final norm, mean pooling (facts §3.1)."""
    torch.manual_seed(0)
    model = timm.create_model('local_vim_tiny', img_size=32, patch_size=8, embed_dim=16, depth=3,
                              directions=[['h', 'w2'], ['v_flip'], ['w3_flip', 'h']], drop_path_rate=0.0,
                              num_classes=7).eval()
    image = torch.randn(2, 3, 32, 32)
    x = model.patch_embed.proj(image).flatten(2).transpose(1, 2) + model.pos_embed
    cos, sin = model.rope.freqs_cos, model.rope.freqs_sin
    hidden, residual = x, None
    for layer in model.layers:
        hidden = rotate(hidden, cos, sin)
        residual = hidden if residual is None else rotate(residual, cos, sin) + hidden
        hidden = layer.mixer(rms_norm(residual, layer.norm.weight), (4, 4))
    logits = model.head(rms_norm(residual + hidden, model.norm_f.weight).mean(1))
    torch.testing.assert_close(model(image), logits, rtol=1e-4, atol=1e-5)


def test_rope_tables_match_the_formula():
    model = timm.create_model('local_vim_tiny', embed_dim=16, depth=1, directions=[['h']])
    dim = 8                                              # RoPE dim = C / 2
    freqs = 1.0 / 10000 ** (torch.arange(0, dim, 2).float() / dim)
    row, col = 5, 9                                      # token 5 * 14 + 9 of the 14x14 grid
    angles = torch.cat([(row * freqs).repeat_interleave(2), (col * freqs).repeat_interleave(2)])
    torch.testing.assert_close(model.rope.freqs_cos[row * 14 + col], angles.cos())
    torch.testing.assert_close(model.rope.freqs_sin[row * 14 + col], angles.sin())


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


@pytest.mark.parametrize('directions,match', [
    ([['h', 'x']] * 20, 'valid directions are h, h_flip'),
    ([['h', 'wq']] * 20, 'valid directions are h, h_flip'),
    ([['h', 'w0']] * 20, 'valid directions are h, h_flip'),
    ([['h']] * 19, 'has 19 layers, but the model has depth 20'),
    ([['h', 'h']] * 20, 'repeats a direction'),
    ([[]] * 20, 'non-empty list'),
])
def test_bad_directions_are_refused(directions, match):
    with pytest.raises(ValueError, match=match):
        timm.create_model('local_vim_tiny', embed_dim=16, directions=directions)
