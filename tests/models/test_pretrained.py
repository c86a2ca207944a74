"""Released weights by name: the v1.0.0 release URLs in the pretrained_cfg table, and timm's pretrained loading (a
file overlay and a file:// URL, no network) of a checkpoint in the released ``{'state_dict': ...}`` form, and of a
``save_for_hf`` export's folder (``'local-dir:PATH'``)."""
import re
import warnings

import pytest
import timm
import torch

import classification  # noqa: F401  (registers the models)
from classification.common import CheckpointError
from classification.models.directions import CANDIDATES, LOCAL_VIM_TINY_DIRECTIONS, LOCAL_VSSM_SMALL_DIRECTIONS

RELEASE = 'https://github.com/hunto/LocalMamba/releases/download/v1.0.0/'
URLS = {
    'local_vim_tiny': RELEASE + 'local_vim_tiny.ckpt',
    'local_vim_tiny_middle_cls_token': RELEASE + 'local_vim_tiny_middle_cls_token.ckpt',
    'local_vim_small': RELEASE + 'local_vim_small.ckpt',
    'local_vssm_small': RELEASE + 'local_vssm_small.ckpt',
    'local_vim_small_searched': '', 'local_vim_tiny_wo_search': '', 'local_vim_tiny_search': '',
    'local_vssm_tiny': '', 'local_vssm_tiny_search': '', 'local_vssm_small_search': '',
}
TINY = {
    'local_vim_tiny': dict(depth=2, embed_dim=32, directions=LOCAL_VIM_TINY_DIRECTIONS[:2]),
    'local_vssm_small': dict(depths=(1, 1, 1, 1), dims=16, directions=LOCAL_VSSM_SMALL_DIRECTIONS[:4]),
}


@pytest.mark.parametrize('name', sorted(URLS))
def test_release_urls(name):
    cfg = timm.models.get_pretrained_cfg(name)
    assert cfg.url == URLS[name]
    assert (cfg.tag == 'in1k') == bool(URLS[name])


def _released_file(name, path, **kwargs):
    """A checkpoint of the tiny variant in the released form (as tools/convert_ckpt.py writes it) and its weights."""
    torch.manual_seed(1)
    weights = timm.create_model(name, **TINY[name], **kwargs).state_dict()
    torch.save({'state_dict': {'module.' + k: v for k, v in weights.items()}}, path)
    return weights


@pytest.mark.parametrize('name', sorted(TINY))
def test_pretrained_loads_a_released_file_through_timm(name, tmp_path):
    path = tmp_path / f'{name}.ckpt'
    weights = _released_file(name, path)
    torch.manual_seed(2)
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **TINY[name])
    assert model.state_dict().keys() == weights.keys()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, weights[key], rtol=0, atol=0, msg=key)


@pytest.mark.parametrize('name', sorted(TINY))
def test_pretrained_loads_a_safetensors_file_as_timm_does(name, tmp_path):
    """timm's own format (``safetensors.torch.save_file``, the Hugging Face hub's model.safetensors): timm loads it
    for its own models, and ours refused it as 'not a PyTorch checkpoint'."""
    from safetensors.torch import save_file

    torch.manual_seed(1)
    weights = timm.create_model(name, **TINY[name]).state_dict()
    path = tmp_path / 'model.safetensors'
    save_file(weights, str(path))
    torch.manual_seed(2)
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **TINY[name])
    assert model.state_dict().keys() == weights.keys()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, weights[key], rtol=0, atol=0, msg=key)


@pytest.mark.parametrize('name', sorted(TINY))
def test_pretrained_for_other_classes_loads_the_trunk_and_leaves_a_new_head(name, tmp_path):
    """Fine-tuning: ``num_classes=10`` drops the released 1000-class head (named by ``pretrained_cfg['classifier']``)
    and loads every other weight."""
    path = tmp_path / f'{name}.ckpt'
    weights = _released_file(name, path)
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), num_classes=10,
                              **TINY[name])
    head = model.pretrained_cfg['classifier'] + '.'
    assert model.get_classifier() is model.get_submodule(head[:-1]) and model.get_classifier().out_features == 10
    for key, value in model.state_dict().items():
        if not key.startswith(head):
            torch.testing.assert_close(value, weights[key], rtol=0, atol=0, msg=key)


@pytest.mark.parametrize('name', sorted(TINY))
@pytest.mark.parametrize('classes', [1000, 10])
def test_a_feature_model_loads_the_trunk_of_a_checkpoint_of_any_class_count(name, classes, tmp_path):
    """timm loads a features_only model without a classifier: a 10-class file was refused, telling to pass
    num_classes=10, as timm's own ViT does not."""
    path = tmp_path / f'{name}.ckpt'
    weights = _released_file(name, path, num_classes=classes)
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), features_only=True,
                              **TINY[name])
    own = {key.removeprefix('model.'): value for key, value in model.state_dict().items()}   # FeatureGetterNet's
    assert own and all(torch.equal(value, weights[key]) for key, value in own.items())


@pytest.mark.parametrize('name, deeper', [
    ('local_vim_tiny', dict(depth=3, directions=LOCAL_VIM_TINY_DIRECTIONS[:3])),
    ('local_vssm_small', dict(depths=(1, 1, 2, 1), directions=LOCAL_VSSM_SMALL_DIRECTIONS[:5])),
])
def test_a_feature_model_refuses_weights_of_another_depth(name, deeper, tmp_path):
    """The extra layer or block of a deeper feature model kept its initialisation without a word (timm loads a feature
    model non-strictly); a classifier model of that depth is refused."""
    path = tmp_path / f'{name}.ckpt'
    _released_file(name, path)
    with pytest.raises(ValueError, match=r'the pretrained weights do not fit this model apart from its classifier: '
                                         r'missing layers\.'):
        timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), features_only=True,
                          **dict(TINY[name], **deeper))


@pytest.mark.parametrize('name', sorted(TINY))
def test_pretrained_keeps_the_head_of_an_own_checkpoint_with_the_models_classes(name, tmp_path):
    """A user's 10-class checkpoint (tools/convert_ckpt.py) into a 10-class model loads whole: timm dropped its head
    because 10 differs from the release's 1000 in the pretrained_cfg, which now says 10. Into a 5-class model the
    head is dropped and the pretrained_cfg keeps the release's count."""
    path = tmp_path / f'{name}.ckpt'
    weights = _released_file(name, path, num_classes=10)
    torch.manual_seed(2)
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), num_classes=10,
                              **TINY[name])
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, weights[key], rtol=0, atol=0, msg=key)
    assert model.pretrained_cfg['num_classes'] == 10
    other = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), num_classes=5,
                              **TINY[name])
    assert other.get_classifier().out_features == 5 and other.pretrained_cfg['num_classes'] == 1000
    with pytest.raises(ValueError, match=r"the pretrained classifier has 10 classes and this model 1000: pass "
                                         r"num_classes=10 to keep it"):   # torch's size mismatch before
        timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **TINY[name])


@pytest.mark.parametrize('name', sorted(TINY))
def test_pretrained_downloads_a_file_url_into_the_hub_cache(name, tmp_path):
    path = tmp_path / f'{name}.ckpt'
    weights = _released_file(name, path)
    hub_dir = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / 'hub'))
    try:
        torch.manual_seed(2)
        model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(url=path.as_uri()),
                                  **TINY[name])
    finally:
        torch.hub.set_dir(hub_dir)
    assert (tmp_path / 'hub' / 'checkpoints' / path.name).is_file()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, weights[key], rtol=0, atol=0, msg=key)


@pytest.mark.parametrize('channel_kwarg', ['in_chans', 'channels'])
def test_pretrained_local_vim_adapts_its_patch_embedding_to_one_input_channel(channel_kwarg, tmp_path):
    """timm sums a 3-channel patch embedding over its input channels for a 1-channel model. ``channels=``, the
    original's name of ``in_chans``, built a 1-channel model that timm took for a 3-channel one: the load stopped with
    'Pretrained patch_embed.proj weight shape (32, 3, 16, 16) is inconsistent with input_size[0]=3'."""
    path = tmp_path / 'local_vim_tiny.ckpt'
    weights = _released_file('local_vim_tiny', path)
    model = timm.create_model('local_vim_tiny', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                              **{channel_kwarg: 1}, **TINY['local_vim_tiny'])
    torch.testing.assert_close(model.patch_embed.proj.weight.detach(),
                               weights['patch_embed.proj.weight'].sum(dim=1, keepdim=True))
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 1000)


@pytest.mark.parametrize('name, first_conv', [('local_vim_tiny', 'patch_embed.proj.weight'),
                                              ('local_vssm_small', 'patch_embed.0.weight')])
@pytest.mark.parametrize('head', [dict(num_classes=10), dict(features_only=True)])
def test_pretrained_trunk_of_a_one_channel_model_takes_the_adapted_first_conv(name, first_conv, head, tmp_path):
    """Released weights for 1-channel images and a new head (10 classes, or features_only): the trunk check took the
    3-channel first conv for a weight of another model ('other shapes patch_embed...') before timm could sum it over
    its input channels, as it does for a 1000-class model."""
    path = tmp_path / f'{name}.ckpt'
    weights = _released_file(name, path)
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), in_chans=1,
                              **head, **TINY[name])
    own = {key.removeprefix('model.'): value for key, value in model.state_dict().items()}   # FeatureGetterNet's
    torch.testing.assert_close(own[first_conv], weights[first_conv].sum(dim=1, keepdim=True))
    assert all(torch.equal(value, weights[key]) for key, value in own.items()
               if key != first_conv and not key.startswith(('head.', 'classifier.head.')))


def test_pretrained_local_vim_resizes_the_tables_of_a_224_checkpoint(tmp_path):
    path = tmp_path / 'local_vim_tiny.ckpt'
    weights = _released_file('local_vim_tiny', path)
    model = timm.create_model('local_vim_tiny', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                              img_size=256, **TINY['local_vim_tiny'])
    assert weights['pos_embed'].shape == (1, 196, 32) and model.pos_embed.shape == (1, 256, 32)
    expected = torch.nn.functional.interpolate(weights['pos_embed'].view(1, 14, 14, 32).permute(0, 3, 1, 2),
                                               size=(16, 16), mode='bicubic', align_corners=False)
    torch.testing.assert_close(model.pos_embed.detach(), expected.permute(0, 2, 3, 1).reshape(1, 256, 32))


def test_a_table_of_a_non_square_grid_is_refused_with_the_way_out():
    """A (2, 4)-grid class-token model's table (9 rows) into a (4, 8) one: no square grid holds 8 tokens; the error
    says only square tables resize and to build the model at the checkpoint's size."""
    from classification.models.local_vim import checkpoint_filter_fn

    kwargs = dict(depth=2, embed_dim=32, directions=LOCAL_VIM_TINY_DIRECTIONS[:2])
    small = timm.create_model('local_vim_tiny_middle_cls_token', img_size=(32, 64), **kwargs)
    large = timm.create_model('local_vim_tiny_middle_cls_token', img_size=(64, 128), **kwargs)
    with pytest.raises(ValueError, match=r"pos_embed: the checkpoint's table \(1, 9, 32\) holds 8 tokens, not a "
                                         r"square grid, and only square tables are resized: build the model at"):
        checkpoint_filter_fn(small.state_dict(), large)


def test_a_square_table_is_resized_for_an_oblong_grid_of_as_many_tokens(tmp_path):
    """The 14 x 14 middle-class-token table (197 rows) into a model built for 112 x 448 (a 7 x 28 grid, also 196
    tokens): the shapes agree, and the 14 x 14 rows were loaded as they were, read as rows of 28. They are now resized
    bicubically to 7 x 28, the class row kept in the middle; an oblong table of no square count still loads as it is."""
    kwargs = dict(depth=2, embed_dim=32, directions=LOCAL_VIM_TINY_DIRECTIONS[:2])
    path = tmp_path / 'local_vim_tiny_middle_cls_token.ckpt'
    torch.manual_seed(1)
    table = torch.randn(1, 197, 32)
    weights = dict(timm.create_model('local_vim_tiny_middle_cls_token', **kwargs).state_dict(), pos_embed=table)
    torch.save({'state_dict': weights}, path)
    model = timm.create_model('local_vim_tiny_middle_cls_token', pretrained=True, img_size=(112, 448),
                              pretrained_cfg_overlay=dict(file=str(path)), **kwargs)
    grid_rows = torch.cat([table[:, :98], table[:, 99:]], dim=1).view(1, 14, 14, 32).permute(0, 3, 1, 2)
    resized = torch.nn.functional.interpolate(grid_rows, size=(7, 28), mode='bicubic', align_corners=False)
    resized = resized.permute(0, 2, 3, 1).reshape(1, 196, 32)
    assert model.grid == (7, 28)
    torch.testing.assert_close(model.pos_embed.detach(), torch.cat([resized[:, :98], table[:, 98:99], resized[:, 98:]],
                                                                   dim=1))
    oblong = timm.create_model('local_vim_tiny_middle_cls_token', img_size=(32, 64), **kwargs).state_dict()
    torch.save({'state_dict': oblong}, path)
    reloaded = timm.create_model('local_vim_tiny_middle_cls_token', pretrained=True, img_size=(32, 64),
                                 pretrained_cfg_overlay=dict(file=str(path)), **kwargs)
    assert torch.equal(reloaded.pos_embed, oblong['pos_embed'])


def test_a_checkpoint_with_tables_the_model_lacks_is_refused_naming_the_keys(tmp_path):
    """A RoPE checkpoint into a model built without RoPE: the strict load names the unexpected tables; timm's
    ``pretrained_strict=False`` loads the rest."""
    path = tmp_path / 'local_vim_tiny.ckpt'
    weights = _released_file('local_vim_tiny', path)
    kwargs = dict(TINY['local_vim_tiny'], if_rope=False, if_rope_residual=False)
    with pytest.raises(ValueError, match=r'^VisionMamba: the pretrained weights do not fit this model apart from its '
                                         r'classifier: unexpected rope\.freqs_cos, rope\.freqs_sin \(2\): a '):
        timm.create_model('local_vim_tiny', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kwargs)
    for classes in (1000, 10):
        model = timm.create_model('local_vim_tiny', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                                  pretrained_strict=False, num_classes=classes, **kwargs)
        assert all(torch.equal(value, weights[key]) for key, value in model.state_dict().items()
                   if not key.startswith('head.') or classes == 1000)


def test_weights_of_another_model_for_the_same_class_count_are_refused_in_one_line(tmp_path):
    """LocalVMamba-S's file into LocalVim, as the original README links local_vssm_small.ckpt for LocalVim-S: at the
    release's 1000 classes timm loads strictly, and torch's RuntimeError listed every key of both models."""
    vssm = tmp_path / 'local_vssm_small.ckpt'
    _released_file('local_vssm_small', vssm)
    with pytest.raises(ValueError) as err:
        timm.create_model('local_vim_tiny', pretrained=True, pretrained_cfg_overlay=dict(file=str(vssm)),
                          **TINY['local_vim_tiny'])
    assert re.fullmatch(r"VisionMamba: the pretrained weights do not fit this model apart from its classifier: "
                        r"missing pos_embed, patch_embed\.proj\.weight, patch_embed\.proj\.bias, \.\.\. \(\d+\); "
                        r"unexpected patch_embed\.0\.weight, patch_embed\.0\.bias, patch_embed\.2\.weight, \.\.\. "
                        r"\(\d+\): a checkpoint of another model or size \(build the model as the checkpoint's was "
                        r"built\)", str(err.value))


@pytest.mark.parametrize('saved, built', [
    ('local_vim_tiny_middle_cls_token', 'local_vim_tiny'),
    ('local_vim_tiny', 'local_vim_tiny_middle_cls_token'),
])
@pytest.mark.parametrize('classes', [1000, 10])
def test_a_class_token_in_the_checkpoint_but_not_the_model_or_back_is_named(saved, built, classes, tmp_path):
    """The middle-class-token release into the RoPE model (or back), at the same image size: the position table's
    class row was counted as a grid token (17 rows of a 4x4 grid), and the error asked to build the model at the
    checkpoint's img_size, which it was. The load now names the class token and the table of another shape."""
    path = tmp_path / f'{saved}.ckpt'
    kwargs = dict(TINY['local_vim_tiny'], img_size=64)
    torch.save({'state_dict': timm.create_model(saved, **kwargs).state_dict()}, path)
    with pytest.raises((RuntimeError, ValueError), match=r'cls_token[\s\S]*pos_embed') as err:
        timm.create_model(built, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), num_classes=classes,
                          **kwargs)
    assert 'square' not in str(err.value)


def test_weights_of_another_model_for_another_class_count_are_refused_not_skipped(tmp_path):
    """timm loads non-strictly when the class counts differ (its head is dropped): a checkpoint of the other family,
    or of fewer layers, left the model random (or half random) without a word."""
    vssm = tmp_path / 'local_vssm_small.ckpt'
    _released_file('local_vssm_small', vssm)
    with pytest.raises(ValueError, match=r"VisionMamba: the pretrained weights do not fit this model apart from its "
                                         r"classifier: missing pos_embed, .*; unexpected .*a checkpoint of another "
                                         r"model or size"):
        timm.create_model('local_vim_tiny', pretrained=True, pretrained_cfg_overlay=dict(file=str(vssm)),
                          num_classes=5, **TINY['local_vim_tiny'])
    shallow = tmp_path / 'local_vim_tiny.ckpt'
    _released_file('local_vim_tiny', shallow)
    deeper = dict(TINY['local_vim_tiny'], depth=3, directions=LOCAL_VIM_TINY_DIRECTIONS[:3])
    with pytest.raises(ValueError, match=r"classifier: missing layers\.2\.[^;]*\(\d+\): a checkpoint"):
        timm.create_model('local_vim_tiny', pretrained=True, pretrained_cfg_overlay=dict(file=str(shallow)),
                          num_classes=5, **deeper)
    wider = dict(TINY['local_vim_tiny'], embed_dim=48)
    with pytest.raises(ValueError, match=r"classifier: other shapes pos_embed, "):
        timm.create_model('local_vim_tiny', pretrained=True, pretrained_cfg_overlay=dict(file=str(shallow)),
                          num_classes=5, **wider)


def test_a_pretrained_file_that_cannot_be_read_is_named_in_one_line(tmp_path):
    """timm raised FileNotFoundError with an empty message for a missing file, and KeyError: 101 after a long
    traceback for a text file."""
    text = tmp_path / 'notes.txt'
    text.write_text('hello')
    for path, message in ((tmp_path / 'missing.ckpt', 'not found'), (tmp_path, 'is a folder'),
                          (text, 'is not a PyTorch checkpoint')):
        with pytest.raises(CheckpointError, match=rf"^local_vim_tiny: pretrained file: .*{message}"):
            timm.create_model('local_vim_tiny', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                              **TINY['local_vim_tiny'])


@pytest.mark.parametrize('name', sorted(TINY))
@pytest.mark.parametrize('features', [{}, dict(features_only=True), dict(features_only=True, feature_cls='hook')])
def test_pretrained_file_of_other_scan_directions_warns_naming_them(name, features, tmp_path):
    """A checkpoint that records its run's scan directions (a training one, or tools/convert_ckpt.py's output) loaded
    into a model of other directions: same keys and shapes, so it loaded without a word and computed something
    else. Now a warning names the first layer that differs; the model of its own directions loads silently. A
    features_only model was compared by its wrapper, which has no directions: its own directions were called 'a
    search supernet'."""
    path = tmp_path / f'{name}.ckpt'
    weights = _released_file(name, path)
    own = [list(layer) for layer in TINY[name]['directions']]
    torch.save({'state_dict': weights, 'directions': own}, path)
    other = [[d for d in CANDIDATES if d not in own[0]][:len(own[0])], *own[1:]]
    with pytest.warns(UserWarning, match=re.escape(f"{path} was trained with other scan directions (layer 0: {own[0]} "
                                                   f"vs {other[0]} here)")) as caught:
        timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                          **{**TINY[name], 'directions': other}, **features)
    assert [w.filename for w in caught if 'scan directions' in str(w.message)] == [__file__]   # the user's line
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **TINY[name],
                          **features)


@pytest.mark.parametrize('name, small', [('local_vim_tiny_search', dict(depth=2, embed_dim=16)),
                                         ('local_vssm_tiny_search', dict(depths=(1, 1, 1, 1), dims=16))])
def test_pretrained_search_over_other_candidates_warns_naming_them(name, small, tmp_path):
    """A supernet's training checkpoint (it records its candidates) into a supernet of as many other candidates: the
    search weights and branches loaded without a word, each under another direction. A warning names both lists;
    the supernet of the run's candidates loads silently."""
    searched = ['h', 'v', 'w3', 'w3_flip']
    path = tmp_path / f'{name}.pth'
    weights = timm.create_model(name, candidates=searched, **small).state_dict()
    torch.save({'model': weights, 'model_name': name, 'directions': None, 'candidates': searched}, path)
    with pytest.warns(UserWarning, match=re.escape(f"{path} is a search over other candidates (h, v, w3, w3_flip vs "
                                                   f"h, h_flip, v, v_flip here): build the model with the "
                                                   f"candidates= of its run, {searched}")):
        timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                          candidates=['h', 'h_flip', 'v', 'v_flip'], **small)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), candidates=searched,
                          **small)


@pytest.mark.parametrize('name', sorted(TINY))
def test_a_save_for_hf_export_loads_back_from_its_local_folder(name, tmp_path):
    """timm's ``save_for_hf`` export (config.json and the weights) of a 10-class, 1-channel model builds back through
    ``create_model('local-dir:PATH', pretrained=True)`` with every tensor it saved; the folder was taken for a
    checkpoint file ('... is a folder, holding no checkpoint file')."""
    torch.manual_seed(1)
    saved = timm.create_model(name, **TINY[name], num_classes=10, in_chans=1).eval()
    timm.models.save_for_hf(saved, tmp_path)
    torch.manual_seed(2)
    loaded = timm.create_model(f'local-dir:{tmp_path}', pretrained=True).eval()
    assert (loaded.num_classes, loaded.in_chans) == (10, 1)
    weights = saved.state_dict()
    assert loaded.state_dict().keys() == weights.keys()
    for key, value in loaded.state_dict().items():
        torch.testing.assert_close(value, weights[key], rtol=0, atol=0, msg=key)
