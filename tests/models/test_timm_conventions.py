"""timm conventions both families meet: unpooled features (output_fmt, pool_size, reset_classifier(0, '')), the
pooling timm's save_for_hf records (global_pool), torch.fx tracing and timm's FX feature extraction with unchanged
outputs, the build grid of LocalVim at image sizes that are not multiples of the patch, and a clear error for an empty
batch."""
import pytest
import timm
import torch
from timm.models import create_feature_extractor

import classification  # noqa: F401  (registers the models)
from classification.models.directions import LOCAL_VIM_TINY_DIRECTIONS, LOCAL_VSSM_TINY_DIRECTIONS

VIM = dict(depth=2, embed_dim=32, directions=LOCAL_VIM_TINY_DIRECTIONS[:2])
VSSM = dict(depths=(1, 1, 1, 1), dims=16, directions=LOCAL_VSSM_TINY_DIRECTIONS[:4])
MODELS = {
    'local_vim_tiny': VIM,
    'local_vim_tiny_middle_cls_token': VIM,
    'local_vim_tiny_search': dict(depth=2, embed_dim=32),
    'local_vssm_tiny': VSSM,
    'local_vssm_tiny_search': dict(depths=(1, 1, 1, 1), dims=16),
}


def _model(name, **kwargs):
    torch.manual_seed(0)
    return timm.create_model(name, **dict(MODELS[name], **kwargs)).eval()


def test_local_vmamba_declares_channel_last_features_and_its_pool_size():
    model = _model('local_vssm_tiny', num_classes=0, global_pool='')
    assert model.output_fmt == 'NHWC' and model.pretrained_cfg['pool_size'] == (7, 7)
    image = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        out = model(image)
    assert out.shape == (2, 7, 7, 128)            # the pool_size map, channels last (timm's unpooled-output check)
    torch.testing.assert_close(out, model.forward_features(image), rtol=0, atol=0)


def test_reset_classifier_without_pooling_returns_the_features_of_both_families():
    image = torch.randn(2, 3, 64, 64)
    for name in ('local_vssm_tiny', 'local_vim_tiny', 'local_vim_tiny_middle_cls_token'):
        model = _model(name, num_classes=5)
        model.reset_classifier(0, '')
        with torch.no_grad():
            torch.testing.assert_close(model(image), model.forward_features(image), rtol=0, atol=0)
    vssm = _model('local_vssm_tiny', num_classes=5)
    vssm.reset_classifier(3, 'avg')
    with torch.no_grad():
        pooled = vssm.forward_features(image).mean(dim=(1, 2))
        torch.testing.assert_close(vssm(image), vssm.get_classifier()(pooled))
    with pytest.raises(ValueError, match="'avg' or ''"):
        vssm.reset_classifier(0, 'max')


@pytest.mark.parametrize('name', ['local_vim_tiny', 'local_vssm_tiny'])
def test_both_families_take_timms_global_pool_argument(name):
    """`timm.create_model(name, global_pool=...)`, as timm's own models take it (LocalVim refused the keyword)."""
    image = torch.randn(1, 3, 64, 64)
    unpooled = _model(name, num_classes=0, global_pool='')
    with torch.no_grad():
        torch.testing.assert_close(unpooled(image), unpooled.forward_features(image), rtol=0, atol=0)
        pooled = _model(name, num_classes=0, global_pool='avg')
        tokens = pooled.forward_features(image)
        expected = tokens.mean(dim=1) if name == 'local_vim_tiny' else tokens.mean(dim=(1, 2))
        torch.testing.assert_close(pooled(image), expected)


@pytest.mark.parametrize('pool', ['avg', 'max'])
def test_a_class_token_model_refuses_a_pooling_it_would_ignore(pool):
    """The middle class token is what LocalVim-T (middle cls token) classifies, as in the original: timm's
    global_pool='avg' / 'max' used to be accepted, stored and ignored."""
    with pytest.raises(ValueError, match=f"global_pool='{pool}': a model with a class token classifies its middle"):
        _model('local_vim_tiny_middle_cls_token', num_classes=0, global_pool=pool)
    model = _model('local_vim_tiny_middle_cls_token', num_classes=3)
    with pytest.raises(ValueError, match='pools no tokens'):
        model.reset_classifier(0, pool)
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        tokens = model.forward_features(image)
        torch.testing.assert_close(model(image), model.head(tokens[:, (tokens.shape[1] - 1) // 2]))


def test_timms_token_pool_is_the_class_token_and_needs_one():
    """timm's global_pool='token' names what a class-token model does (it was refused as a pooling of tokens); with
    reset_classifier it also brings back the class token after '' (every token). A model without a class token refuses
    it, naming the poolings it has."""
    image = torch.randn(1, 3, 64, 64)
    model = _model('local_vim_tiny_middle_cls_token', num_classes=0, global_pool='token')
    with torch.no_grad():
        tokens = model.forward_features(image)
        torch.testing.assert_close(model(image), tokens[:, (tokens.shape[1] - 1) // 2])
        model.reset_classifier(0, '')
        torch.testing.assert_close(model(image), tokens)
        model.reset_classifier(0, 'token')
        torch.testing.assert_close(model(image), tokens[:, (tokens.shape[1] - 1) // 2])
    with pytest.raises(ValueError, match="global_pool='token': this model has no class token"):
        _model('local_vim_tiny', num_classes=0, global_pool='token')
    with pytest.raises(ValueError, match="global_pool='token': this model has no class token"):
        _model('local_vim_tiny', num_classes=3).reset_classifier(0, 'token')


@pytest.mark.parametrize('name, pool, kwargs', [
    ('local_vim_tiny', '', {}), ('local_vim_tiny', 'max', {}), ('local_vim_tiny', 'avg', {}),
    ('local_vim_tiny', 'none', dict(final_pool_type='none')), ('local_vim_tiny_middle_cls_token', '', {}),
    ('local_vim_tiny_middle_cls_token', 'token', {}), ('local_vssm_tiny', '', {})])
def test_the_pooling_of_reset_classifier_is_saved_by_save_for_hf(name, pool, kwargs, tmp_path):
    """timm's ``save_for_hf`` records the model's current pooling (its ``global_pool``) to build it again: LocalVim
    had none, so a model reset to '' (every token) or 'max' came back from ``'local-dir:PATH'`` pooling the mean."""
    model = _model(name, **kwargs)
    if pool != 'none':
        model.reset_classifier(10, pool)
    assert model.global_pool == pool
    timm.models.save_for_hf(model, tmp_path)
    loaded = timm.create_model(f'local-dir:{tmp_path}', pretrained=True).eval()
    assert loaded.global_pool == pool
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(image), model(image), rtol=0, atol=0)


def test_rope_refuses_a_width_it_cannot_rotate():
    with pytest.raises(ValueError, match='embed_dim must be a multiple of 4, got 18'):
        timm.create_model('local_vim_tiny', embed_dim=18)


@pytest.mark.parametrize('name', sorted(MODELS))
def test_symbolic_trace_gives_the_same_outputs_at_any_size(name):
    model = _model(name, num_classes=10)
    graph = torch.fx.symbolic_trace(model)
    for hw in ((64, 80), (48, 48)):
        image = torch.randn(2, 3, *hw)
        with torch.no_grad():
            torch.testing.assert_close(graph(image), model(image), rtol=0, atol=0)


@pytest.mark.parametrize('name', sorted(MODELS))
def test_intermediates_come_in_layer_order_whatever_the_order_of_the_indices(name):
    """timm's ViT returns the taken blocks in block order (indices=[1, 0] gives block 0 first, as [0, 1] does), as
    LocalVMamba does; LocalVim returned them in the order listed (layer 1 first), negative indices too."""
    vit = timm.create_model('vit_tiny_patch16_224', img_size=32, depth=2).eval()
    image = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        vit_order = vit.forward_intermediates(image, indices=[1, 0], intermediates_only=True)
        assert [torch.equal(a, b) for a, b in zip(vit_order, vit.forward_intermediates(
            image, indices=[0, 1], intermediates_only=True))] == [True, True]
        model = _model(name)
        in_order = model.forward_intermediates(image, indices=[0, 1], intermediates_only=True)
        for indices in ([1, 0], [1 - len(model.layers), 0]):
            taken = model.forward_intermediates(image, indices=indices, intermediates_only=True)
            assert [torch.equal(a, b) for a, b in zip(taken, in_order)] == [True, True]


@pytest.mark.filterwarnings('ignore:NOTE. The nodes obtained by tracing the model in eval mode')
@pytest.mark.parametrize('name', sorted(MODELS))
def test_timm_fx_feature_extraction_matches_forward_intermediates(name):
    model = _model(name)
    vim = name.startswith('local_vim')
    image = torch.randn(2, 3, 64, 80)
    extractor = create_feature_extractor(model, {model.feature_info[i]['module']: str(i) for i in (0, 1)})
    torch.manual_seed(0)                                # the same initial weights as ``model``
    features_only = timm.create_model(name, features_only=True, feature_cls='fx', out_indices=(0, 1),
                                      **MODELS[name]).eval()
    with torch.no_grad():
        extracted = list(extractor(image).values())
        graph_features = features_only(image)
        expected = model.forward_intermediates(image, [0, 1], output_fmt='NLC' if vim else 'NHWC',
                                               intermediates_only=True)
    if name == 'local_vim_tiny_middle_cls_token':      # the layers' outputs still hold the class token
        middle = expected[0].shape[1] // 2
        extracted = [torch.cat([f[:, :middle], f[:, middle + 1:]], dim=1) for f in extracted]
        graph_features = [torch.cat([f[:, :middle], f[:, middle + 1:]], dim=1) for f in graph_features]
    for got, graph_feature, want in zip(extracted, graph_features, expected):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
        torch.testing.assert_close(graph_feature, want, rtol=0, atol=0)


@pytest.mark.filterwarnings('ignore:NOTE. The nodes obtained by tracing the model in eval mode')
@pytest.mark.parametrize('feature_cls, shape', [('getter', (1, 32, 2, 2)), ('fx', (1, 4, 32))])
def test_local_vim_default_feature_layers_follow_its_depth(feature_cls, shape):
    """The last layer of each quarter: (4, 9, 14, 19) at the registered depth 20, (2, 5, 8, 11) at depth 12 (a fixed
    (4, 9, 14, 19) was out of range there), every layer at depth 3; NCHW maps from the getter, the mixers' token
    outputs from fx."""
    assert timm.create_model('local_vim_tiny', features_only=True).feature_info.module_name() == [
        f'layers.{i}.mixer' for i in (4, 9, 14, 19)]
    for depth, layers in ((12, [2, 5, 8, 11]), (3, [0, 1, 2])):
        model = timm.create_model('local_vim_tiny_wo_search', depth=depth, embed_dim=32, img_size=32,
                                  features_only=True, feature_cls=feature_cls).eval()
        assert [int(name.split('.')[1]) for name in model.feature_info.module_name()] == layers
        with torch.no_grad():
            assert [tuple(f.shape) for f in model(torch.randn(1, 3, 32, 32))] == [shape] * len(layers)


@pytest.mark.filterwarnings('ignore:NOTE. The nodes obtained by tracing the model in eval mode')
@pytest.mark.parametrize('name, small', [('local_vim_tiny_wo_search', dict(depth=2, embed_dim=16)),
                                         ('local_vssm_tiny', dict(dims=[8, 16, 24, 32]))])
def test_feature_classes_each_work_or_are_refused_in_one_line(name, small):
    """'hook' gives the feature layers' raw outputs as 'fx' does; 'dict' and 'list', which need the layers as
    top-level children, are refused naming what works (timm's assertion that the layers are not present before)."""
    images = torch.randn(1, 3, 32, 32)
    outputs = []
    for feature_cls in ('hook', 'fx'):
        torch.manual_seed(0)                       # the same weights
        with torch.no_grad():
            outputs.append(timm.create_model(name, features_only=True, feature_cls=feature_cls, **small).eval()(images))
    hooked, traced = outputs
    assert len(hooked) == len(traced) and all(torch.equal(a, b) for a, b in zip(hooked, traced))
    for feature_cls in ('dict', 'list'):
        with pytest.raises(ValueError, match=rf"^{name}: features_only with feature_cls='{feature_cls}' needs the "
                                             r"feature layers as top-level children.*feature_cls='fx' / 'hook'"):
            timm.create_model(name, features_only=True, feature_cls=feature_cls, **small)


@pytest.mark.parametrize('name, count, unit', [('local_vim_tiny', 2, 'layer'), ('local_vssm_tiny', 4, 'stage')])
def test_features_only_checks_and_orders_its_out_indices(name, count, unit):
    """Out-of-range, repeated and empty out_indices are refused in one line (timm's assertion, or a bare max() of an
    empty list, before); indices given from the end come back in the model's order, as feature_info lists them."""
    for bad, message in (((0, count), 'out of range'), ((1, 1 - count), f'names a {unit} twice'), ((), 'is empty')):
        with pytest.raises(ValueError, match=rf"^{name}: out_indices .*{message}"):
            _model(name, features_only=True, out_indices=bad)
    model = _model(name, features_only=True, out_indices=(-1, -2))
    with torch.no_grad():
        maps = model(torch.randn(1, 3, 64, 64))
    assert [m.shape[1] for m in maps] == model.feature_info.channels()
    assert model.feature_info.channels() == sorted(model.feature_info.channels())


def test_local_vim_builds_the_grid_its_image_size_gives(monkeypatch):
    """72 px is 4.5 patches: the build grid is 5x5 (as the padded input's), so a 72 px input resizes nothing."""
    model = _model('local_vim_tiny', img_size=72)
    assert model.grid == (5, 5) and model.pos_embed.shape == (1, 25, 32) and model.rope.freqs_cos.shape == (25, 32)
    calls = []
    interpolate = torch.nn.functional.interpolate
    monkeypatch.setattr(torch.nn.functional, 'interpolate',
                        lambda x, size, **k: calls.append(list(size)) or interpolate(x, size, **k))
    with torch.no_grad():
        model(torch.randn(1, 3, 72, 72))
        model(torch.randn(1, 3, 80, 80))         # 5x5 too
        assert calls == []
        model(torch.randn(1, 3, 64, 64))         # 4x4: pos_embed, rope cos and sin are resized
    assert calls == [[4, 4]] * 3


def test_an_empty_batch_is_refused_with_a_clear_error():
    for name, message in (('local_vim_tiny', 'LocalVim: empty batch'),
                          ('local_vssm_tiny', 'LocalVMamba: empty batch')):
        with pytest.raises(ValueError, match=message):
            _model(name)(torch.randn(0, 3, 64, 64))


def test_local_vim_reset_classifier_takes_timm_pool_names_and_refuses_others():
    model = _model('local_vim_tiny', num_classes=5)
    image = torch.randn(2, 3, 64, 64)
    model.reset_classifier(3, 'avg')                     # timm's name of the mean pooling
    with torch.no_grad():
        torch.testing.assert_close(model(image), model.get_classifier()(model.forward_features(image).mean(1)))
    with pytest.raises(ValueError, match="final_pool_type must be one of"):
        model.reset_classifier(3, 'avgmax')


def test_local_vim_pruned_final_norm_leaves_the_residual_stream():
    model = _model('local_vim_tiny_search', num_classes=5)
    image = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        hidden, residual, _, _ = model._layers(image)
        assert model.prune_intermediate_layers([1], prune_norm=True) == [1]
        features, intermediates = model.forward_intermediates(image, [1])
    torch.testing.assert_close(features, residual + hidden, rtol=0, atol=0)
    assert intermediates[0].shape == (2, 32, 4, 4)


@pytest.mark.parametrize('name', sorted(MODELS))
def test_pruning_the_head_leaves_the_unpooled_features_as_timms_models_do(name):
    """``prune_intermediate_layers`` (``prune_head=True``, its default) leaves the model giving the features of its
    last kept layer or stage unpooled, as timm's ViT (``reset_classifier(0, '')``); it gave them pooled to (B, C)."""
    vit = timm.create_model('vit_tiny_patch16_224', img_size=64, depth=2).eval()
    model = _model(name)
    image = torch.randn(2, 3, 64, 64)
    for pruned in (vit, model):
        assert pruned.prune_intermediate_layers([0]) == [0]
        assert pruned.num_classes == 0 and pruned.global_pool == ''
    with torch.no_grad():
        features, _ = model.forward_intermediates(image, [0])
        torch.testing.assert_close(model(image), features, rtol=0, atol=0)
        assert vit(image).shape == (2, 17, 192)


@pytest.mark.parametrize('name', sorted(timm.list_models('local_*')))
def test_an_unknown_keyword_is_a_type_error_naming_it(name):
    """The original's entrypoints swallowed unknown keywords (`**kwargs`): a misspelt `drop_path_rat=` built the
    default model without a word (README, Deviations)."""
    with pytest.raises(TypeError, match="drop_path_rat"):
        timm.create_model(name, drop_path_rat=0.3)


@pytest.mark.parametrize('name, small, dropout', [
    ('local_vim_tiny_wo_search', ['depth=2', 'embed_dim=32'], 'pos_drop'),
    ('local_vssm_tiny_search', ['depths=[1,1,1,1]', 'dims=16'], 'head_drop'),
])
def test_the_drop_flag_reaches_the_model_as_its_drop_rate(name, small, dropout):
    """`--drop` was not passed to the model by the original's train.py; here it is its `drop_rate` (README,
    Deviations)."""
    from classification.engine.config import parse_args
    from classification.engine.model_builder import build_model
    flags = ['--model', name, '--model-kwargs', *small]
    assert getattr(build_model(parse_args([*flags, '--drop', '0.25'])), dropout).p == 0.25
    assert getattr(build_model(parse_args(flags)), dropout).p == 0.0


class Zeroing(torch.nn.Module):
    """A stand-in for a Dropout that dropped everything: records its input, returns zeros."""

    def forward(self, x):
        self.seen = x.detach().clone()
        return torch.zeros_like(x)


@pytest.mark.parametrize('name', ['local_vim_tiny', 'local_vssm_tiny'])
def test_the_dropout_of_drop_rate_is_applied_where_the_model_says(name):
    """LocalVim's ``pos_drop`` takes the patch tokens plus the position table, LocalVMamba's ``head_drop`` the pooled
    features before the head (all dropped: the logits are the head's bias). A model that built the Dropout and never
    called it passed the test of the flag above."""
    image = torch.randn(2, 3, 64, 64)
    if name == 'local_vim_tiny':
        model = _model(name, num_classes=4, drop_rate=0.5, img_size=64)
        model.pos_drop = Zeroing()
        with torch.no_grad():
            model.forward_features(image)
            expected = model.patch_embed(image) + model.pos_embed
        torch.testing.assert_close(model.pos_drop.seen, expected)
    else:
        model = _model(name, num_classes=4, drop_rate=0.5)
        model.head_drop = Zeroing()
        with torch.no_grad():
            logits = model(image)
            expected = model.forward_features(image).mean(dim=(1, 2))
        torch.testing.assert_close(model.head_drop.seen, expected)
        torch.testing.assert_close(logits, model.classifier.head.bias.expand(2, -1))


@pytest.mark.parametrize('name', ['local_vim_tiny', 'local_vssm_tiny'])
def test_the_evaluation_transform_timm_resolves_is_bicubic_0_875_at_224(name):
    config = timm.data.resolve_data_config({}, model=_model(name))
    assert config == {'input_size': (3, 224, 224), 'interpolation': 'bicubic', 'mean': (0.485, 0.456, 0.406),
                      'std': (0.229, 0.224, 0.225), 'crop_pct': 0.875, 'crop_mode': 'center'}
