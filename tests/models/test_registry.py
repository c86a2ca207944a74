"""Generic checks over every registered LocalMamba model, timm style, at small sizes."""
import os
import re

import pytest
import timm
import torch

import classification  # noqa: F401  (registers the models)
from classification.models.factory import SUPERNET_FINAL_MODELS

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
    if name not in SUPERNET_FINAL_MODELS:
        model_kwargs = dict(model_kwargs, directions=SHORT_TABLE[family])
    return timm.create_model(name, **model_kwargs, **kwargs), size


def test_every_expected_name_is_registered():
    assert EXPECTED_NAMES <= set(registered())


def readme_model_rows():
    """The README's Models table: name -> its params column as an int."""
    readme = open(os.path.join(os.path.dirname(__file__), '..', '..', 'README.md'), encoding='utf-8').read()
    section = readme.split('\n## Models\n', 1)[1].split('\n## ', 1)[0]
    rows = re.findall(r'^\| `(\w+)` \| [^|]+ \| ([\d,]+) \|', section, re.MULTILINE)
    return {name: int(params.replace(',', '')) for name, params in rows}


def test_readme_models_table_lists_every_registered_model_with_its_parameters():
    """A model added without its README row (or a row left for a removed one) fails here; the parameter counts are
    those of the models as registered, at 1000 classes (built on the meta device: nothing allocated)."""
    rows = readme_model_rows()
    assert sorted(rows) == registered(), 'add a README Models row per model (figures from `python tools/flops.py NAME`)'
    for name, params in rows.items():
        model = timm.create_model(name, device='meta')
        assert sum(p.numel() for p in model.parameters()) == params, name


@pytest.mark.parametrize('name', registered())
def test_supernets_are_declared_with_their_final_model(name):
    """The tools read `SUPERNET_FINAL_MODELS` to give a supernet a config's `candidates` and to refuse it
    `directions`: a model that builds as a supernet must be declared there (`@supernet_of`) with a registered
    fixed-direction model, and no other model may be."""
    model = timm.create_model(name, device='meta')
    assert model.is_search == (name in SUPERNET_FINAL_MODELS), (
        f"{name} builds {'a search supernet' if model.is_search else 'fixed directions'}, but is "
        f"{'' if name in SUPERNET_FINAL_MODELS else 'not '}declared a supernet: "
        f"{'add' if model.is_search else 'remove'} @supernet_of(<final model>) under its @register_model")
    if model.is_search:
        assert not timm.create_model(SUPERNET_FINAL_MODELS[name], device='meta').is_search


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


@pytest.mark.parametrize('name', registered())
def test_reset_classifier_builds_the_head_on_the_models_device_and_dtype(name):
    """timm's models build the new head where the model is (``get_device_dtype``): a head reset on a model cast to
    float64 (or moved to a GPU) was a float32 CPU Linear, and the next forward failed on mixed dtypes. 0 classes:
    no head (nn.Identity), as in timm."""
    torch.manual_seed(0)
    model, size = small_model(name, num_classes=3)
    model = model.double().eval()
    model.reset_classifier(5)
    assert model.get_classifier().weight.dtype == torch.float64
    with torch.no_grad():
        logits = model(torch.randn(1, 3, size, size, dtype=torch.float64))
    assert logits.shape == (1, 5) and logits.dtype == torch.float64
    model.reset_classifier(0)
    assert isinstance(model.get_classifier(), torch.nn.Identity)
    meta, _ = small_model(name, num_classes=3, device='meta')
    meta.reset_classifier(7)
    assert {p.device.type for p in meta.parameters()} == {'meta'}
