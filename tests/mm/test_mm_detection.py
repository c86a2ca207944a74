"""Mask R-CNN from the LocalMamba detection configs, shrunk: one training step and one inference step on CPU with
non-square 160x128 images."""
import copy

import pytest
import torch

from conftest import (IMAGE_HW, assert_backbone_gradients, det_batch, det_config, loss_and_grads, require,
                      tiny_fpn_model_cfg, tiny_vitdet_model_cfg)

require('mmdet')


@pytest.mark.parametrize('make_cfg', [tiny_vitdet_model_cfg, tiny_fpn_model_cfg],
                         ids=['vitdet_local_vim', 'fpn_local_vssm'])
def test_mask_rcnn_train_and_inference_steps(make_cfg):
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import init_default_scope
    from mmdet.registry import MODELS
    torch.manual_seed(0)
    cfg, model_cfg = make_cfg()
    init_default_scope('mmdet')
    model = MODELS.build(model_cfg)
    model.init_weights()

    feats = model.extract_feat(model.data_preprocessor(det_batch(1), False)['inputs'])
    assert [tuple(f.shape[-2:]) for f in feats[:4]] == [(32, 40), (16, 20), (8, 10), (4, 5)]

    loss = loss_and_grads(model, det_batch())
    assert torch.isfinite(loss) and loss > 0
    assert_backbone_gradients(model.backbone)

    optim_cfg = copy.deepcopy(cfg.optim_wrapper)
    optim_cfg['type'] = 'OptimWrapper'  # the AMP wrapper needs a GPU
    optim_wrapper = build_optim_wrapper(model, optim_cfg)
    before = {k: v.clone() for k, v in model.backbone.patch_embed.state_dict().items()}
    log = model.train_step(det_batch(), optim_wrapper)
    assert all(torch.isfinite(torch.as_tensor(v)).all() for v in log.values())
    after = model.backbone.patch_embed.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)

    model.eval()
    with torch.no_grad():
        results = model.test_step(det_batch())
    assert len(results) == 2
    for sample in results:
        pred = sample.pred_instances
        assert pred.bboxes.shape[1] == 4 and torch.isfinite(pred.bboxes).all()
        assert len(pred.scores) == len(pred.labels) == len(pred.masks)
        assert tuple(pred.masks.shape[1:]) == IMAGE_HW
        if len(pred.bboxes):
            assert pred.bboxes[:, 2].max() <= IMAGE_HW[1] + 1e-3 and pred.bboxes[:, 3].max() <= IMAGE_HW[0] + 1e-3


def test_simple_fpn_levels_are_strides_4_8_16_32_and_the_extra_level_subsamples_the_last():
    """ViTDet's SimpleFPN on one stride-16 map: 4x and 2x up, the map itself, 2x2 max-pooled; the fifth level is the
    fourth's every second pixel (max_pool2d with kernel 1, stride 2), as the original."""
    from mmdet.registry import MODELS
    from mmengine.registry import init_default_scope
    init_default_scope('mmdet')
    cfg = copy.deepcopy(det_config('vitdet_cascade_mask-rcnn_local_vim_tiny_lsj-100e.py').model.neck)
    cfg.update(backbone_channel=32, in_channels=[8, 16, 32, 32])
    neck = MODELS.build(cfg).eval()
    torch.manual_seed(0)
    x = torch.randn(1, 32, 6, 8)
    with torch.no_grad():
        outs = neck(x)
        pooled = neck.fpn4(x)
    assert [tuple(o.shape)[2:] for o in outs] == [(24, 32), (12, 16), (6, 8), (3, 4), (2, 2)]
    assert all(o.shape[:2] == (1, 256) for o in outs)
    torch.testing.assert_close(outs[4], outs[3][..., ::2, ::2])
    torch.testing.assert_close(pooled, x.unflatten(2, (3, 2)).unflatten(4, (4, 2)).amax(dim=(3, 5)))
    torch.testing.assert_close(neck.fpn3(x), x)
