"""classification.models.factory's helpers on small stand-in models (found by a mutation audit): the pretrained_cfg
of a variant, the input channels read from a model, the trunk check and the head keeping of a pretrained load, the
local file of a create_model call, and timm's input-size options."""
import fractions
import re

import pytest
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import PretrainedCfg
from torch import nn

from classification.models.factory import (RELEASE_URL, _pretrained_file, check_input_size_options, check_trunk_fits,
                                           input_channels, keeping_a_fitting_head, model_cfg, read_pretrained_file,
                                           warn_of_other_directions)


def test_model_cfg_is_imagenet_at_224_with_the_release_url_of_released_weights_only():
    cfg = model_cfg('local_vim_tiny', first_conv='patch_embed.proj', classifier='head')
    assert cfg['url'] == RELEASE_URL + 'local_vim_tiny.ckpt'
    assert (cfg['num_classes'], cfg['input_size'], cfg['crop_pct'], cfg['interpolation']) == (
        1000, (3, 224, 224), 0.875, 'bicubic')
    assert (cfg['mean'], cfg['std'], cfg['fixed_input_size']) == (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, False)
    assert (cfg['first_conv'], cfg['classifier'], cfg['pool_size']) == ('patch_embed.proj', 'head', None)
    other = model_cfg('local_vssm_tiny', first_conv='patch_embed.0', classifier='classifier.head', pool_size=(7, 7),
                      crop_pct=1.0, notes=('x',))
    assert other['url'] == '' and other['pool_size'] == (7, 7)
    assert (other['crop_pct'], other['notes']) == (1.0, ('x',))     # keyword arguments override the defaults


class TwoConvs(nn.Module):
    """A 2-channel convolution first in module order, the 5-channel ``stem`` that pretrained_cfg may name, a head."""

    def __init__(self, cfg=None, num_classes=4):
        super().__init__()
        self.side = nn.Conv2d(2, 3, 1)
        self.stem = nn.Conv2d(5, 3, 1)
        self.head = nn.Linear(3, num_classes)
        self.num_classes = num_classes
        if cfg is not None:
            self.pretrained_cfg = cfg


def test_input_channels_reads_the_named_first_conv_else_the_first_conv_else_three():
    assert input_channels(TwoConvs({'first_conv': 'stem'})) == 5
    assert input_channels(TwoConvs({'first_conv': 'head'})) == 2          # not a convolution: the first one
    assert input_channels(TwoConvs({'first_conv': 'missing'})) == 2
    assert input_channels(TwoConvs()) == 2
    assert input_channels(nn.Sequential(nn.Linear(2, 2))) == 3


def weights(model, **changes):
    """The model's state dict with entries replaced (a tensor) or dropped (None)."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for key, value in changes.items():
        key = key.replace('__', '.')
        if value is None:
            del state[key]
        else:
            state[key] = value
    return state


def test_trunk_check_names_missing_unexpected_and_resized_weights_apart_from_the_head():
    model = TwoConvs()
    check_trunk_fits(weights(model, head__weight=torch.zeros(9, 3), head__bias=None), model, 'head')
    state = weights(model, side__weight=None, side__bias=None, stem__bias=torch.zeros(4))
    state.update({'extra.weight': torch.zeros(1), 'head.extra': torch.zeros(1)})
    message = (r"^TwoConvs: the pretrained weights do not fit this model apart from its classifier: missing "
               r"side.weight, side.bias \(2\); unexpected extra.weight \(1\); other shapes stem.bias \(1\): ")
    with pytest.raises(ValueError, match=message):
        check_trunk_fits(state, model, 'head')


def test_trunk_check_lists_three_names_then_an_ellipsis():
    model = nn.Sequential(*[nn.Linear(1, 1) for _ in range(2)])
    with pytest.raises(ValueError, match=re.escape('missing 0.weight, 0.bias, 1.weight (3): ')):
        check_trunk_fits({'1.bias': torch.zeros(1)}, model, None)
    with pytest.raises(ValueError, match=re.escape('missing 0.weight, 0.bias, 1.weight, ... (4): ')):
        check_trunk_fits({}, model, None)


def test_trunk_check_leaves_the_input_channels_of_the_first_conv_alone_only():
    """timm adapts the first convolution's input channels after the check; another conv's are a misfit, and so is
    the first one's output count."""
    model = TwoConvs()
    check_trunk_fits(weights(model, stem__weight=torch.zeros(3, 1, 1, 1)), model, 'head', 'stem')
    with pytest.raises(ValueError, match=r'other shapes side.weight \(1\)'):
        check_trunk_fits(weights(model, side__weight=torch.zeros(3, 1, 1, 1)), model, 'head', 'stem')
    with pytest.raises(ValueError, match=r'other shapes stem.weight \(1\)'):
        check_trunk_fits(weights(model, stem__weight=torch.zeros(4, 5, 1, 1)), model, 'head', 'stem')


def as_given(state_dict, model):
    return state_dict


def test_a_head_of_the_models_class_count_is_kept_and_recorded_in_its_pretrained_cfg():
    model = TwoConvs({'classifier': 'head', 'num_classes': 1000}, num_classes=4)
    state = weights(model)
    assert keeping_a_fitting_head(as_given)(state, model) is state
    assert model.pretrained_cfg['num_classes'] == 4


def test_a_head_of_another_class_count_than_the_models_is_refused_naming_both():
    model = TwoConvs({'classifier': 'head', 'num_classes': 4}, num_classes=4)
    state = weights(model, head__weight=torch.zeros(7, 3), head__bias=torch.zeros(7))
    with pytest.raises(ValueError, match=r'^TwoConvs: the pretrained classifier has 7 classes and this model 4: pass '
                                         r'num_classes=7 to keep it'):
        keeping_a_fitting_head(as_given)(state, model)


@pytest.mark.parametrize('features_only', [False, True])
def test_a_trunk_that_does_not_fit_is_refused_unless_loaded_non_strictly(features_only):
    model = TwoConvs({'classifier': 'head', 'first_conv': 'stem', 'num_classes': 4})
    state = weights(model, side__bias=None)
    with pytest.raises(ValueError, match=r'missing side.bias \(1\)'):
        keeping_a_fitting_head(as_given, features_only)(state, model)
    assert keeping_a_fitting_head(as_given, features_only, strict=False)(state, model) is state


def test_the_pretrained_file_is_the_overlays_then_the_cfgs_but_not_a_local_folder():
    assert _pretrained_file({'pretrained_cfg_overlay': {'file': 'a.pth'}, 'pretrained_cfg': {'file': 'b.pth'}}) == \
        'a.pth'
    assert _pretrained_file({'pretrained_cfg_overlay': {'url': 'u'}, 'pretrained_cfg': PretrainedCfg(file='b.pth')}) \
        == 'b.pth'
    assert _pretrained_file({'pretrained_cfg': {'file': 'folder', 'source': 'local-dir'}}) is None
    assert _pretrained_file({}) is None


def test_input_size_options_other_than_the_familys_are_refused():
    check = dict(any_size_because='reason', pads=True, pad_refusal='no')
    check_input_size_options('F', True, True, **check)
    with pytest.raises(ValueError, match=r'^F takes any input size \(reason\): dynamic_img_size=False'):
        check_input_size_options('F', False, True, **check)
    with pytest.raises(ValueError, match='^no$'):
        check_input_size_options('F', True, False, **check)
    check_input_size_options('F', True, False, **dict(check, pads=False))


def test_a_pretrained_file_that_needs_pickle_is_left_to_timm(tmp_path):
    """A file torch reads only with pickle (a Fraction beside the weights) is timm's to read, not refused here."""
    torch.save({'state_dict': {'w': torch.ones(1)}, 'ratio': fractions.Fraction(1, 3)}, tmp_path / 'pickled.pth')
    assert read_pretrained_file('m', {'pretrained_cfg_overlay': {'file': str(tmp_path / 'pickled.pth')}}) is None
    torch.save({'state_dict': {'w': torch.ones(1)}}, tmp_path / 'plain.pth')
    path, ckpt = read_pretrained_file('m', {'pretrained_cfg_overlay': {'file': str(tmp_path / 'plain.pth')}})
    assert path == str(tmp_path / 'plain.pth') and torch.equal(ckpt['state_dict']['w'], torch.ones(1))


def test_a_search_over_the_same_candidates_in_another_order_warns():
    """The order of the candidates is the order of the search weights' columns: (v_flip, h) is another search."""
    model = nn.Linear(1, 1)
    model.candidates = ('h', 'v_flip')
    with pytest.warns(UserWarning, match=re.escape('f.pth is a search over other candidates (v_flip, h vs h, v_flip '
                                                   'here)')):
        warn_of_other_directions(model, {'candidates': ['v_flip', 'h']}, 'f.pth')
