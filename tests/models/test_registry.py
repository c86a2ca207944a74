"""Generic checks over every registered LocalMamba model, timm style, at small sizes."""
import pytest
import timm
import torch

import classification  # noqa: F401  (registers the models)

EXPECTED_NAMES = {
    'local_vim_tiny', 'local_vim_tiny_middle_cls_token', 'local_vim_small', 'local_vim_small_searched',
    'local_vim_tiny_wo_search', 'local_vim_tiny_search',
    'local_vssm_tiny', 'local_vssm_small', 'local_vssm_tiny_search', 'local_vssm_small_search',
}
# Small widths, depths and images: these tests are about logic, not size (faithful sizes and the default direction
# tables are tested per family). Searched models get a short table that mixes every kind of direction.
SMALL = {
    'local_vim': (dict(img_size=32, patch_size=8, embed_dim=16, depth=2), 32),
    'local_vssm': (dict(dims=8, depths=(1, 1, 1, 1)), 64),
}
SHORT_TABLE = {
    'local_vim': [['h', 'v_flip', 'w2'], ['w7_flip', 'h_flip', 'v', 'w3']],
    'local_vssm': [['h', 'v_flip', 'w2'], ['w7_flip', 'h_flip', 'v', 'w3'], ['w2_flip', 'v'], ['h', 'w7', 'w3_flip']],
}


def registered():
    return sorted(name for name in timm.list_models('local_v*'))


def small_model(name, **kwargs):
    family = next(prefix for prefix in SMALL if name.startswith(prefix))
    model_kwargs, size = SMALL[family]
    if not name.endswith('_search'):
        model_kwargs = dict(model_kwargs, directions=SHORT_TABLE[family])
    return timm.create_model(name, **model_kwargs, **kwargs), size


def test_every_expected_name_is_registered():
    assert EXPECTED_NAMES <= set(registered())


@pytest.mark.parametrize('name', registered())
def test_forward_backward_reaches_every_parameter(name):
    torch.manual_seed(0)
    model, size = small_model(name, num_classes=3, drop_path_rate=0.0)
    logits = model(torch.randn(2, 3, size, size))
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()
    logits.pow(2).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f'no gradient reaches {missing}'


@pytest.mark.parametrize('name', registered())
def test_state_dict_round_trip_restores_every_tensor(name):
    torch.manual_seed(0)
    source, size = small_model(name, num_classes=3)
    torch.manual_seed(1)
    target, _ = small_model(name, num_classes=3)
    target.load_state_dict(source.state_dict(), strict=True)
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key
    image = torch.randn(1, 3, size, size)
    torch.testing.assert_close(source.eval()(image), target.eval()(image), rtol=0, atol=0)


@pytest.mark.parametrize('name', registered())
def test_timm_conventions(name):
    model, size = small_model(name, num_classes=3)
    assert model.pretrained_cfg['classifier'] and model.default_cfg == model.pretrained_cfg
    assert isinstance(model.no_weight_decay(), set)
    features = model.forward_features(torch.randn(1, 3, size, size))
    pooled = model.forward_head(features, pre_logits=True)
    assert pooled.shape == (1, model.num_features)
    model.reset_classifier(5)
    assert model(torch.randn(1, 3, size, size)).shape == (1, 5)
