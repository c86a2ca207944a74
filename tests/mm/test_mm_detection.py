"""Mask R-CNN from the LocalMamba detection configs, shrunk: one training step and one inference step on CPU with
non-square 160x128 images."""
import copy

import pytest
import torch

from conftest import (IMAGE_HW, assert_backbone_gradients, det_batch, det_config, loss_and_grads, require,
                      shrink_mask_rcnn, tiny_vim_backbone, tiny_vssm_backbone)

require('mmdet')


def _vitdet_model_cfg():
    cfg = det_config('vitdet_cascade_mask-rcnn_local_vim_tiny_lsj-100e.py')
    model = copy.deepcopy(cfg.model)
    model['backbone'] = tiny_vim_backbone(model['backbone'], depth=2, out_indices=[1], width=32)
    model['neck'].update(backbone_channel=32, in_channels=[8, 16, 32, 32])
    model['data_preprocessor']['batch_augments'][0]['size'] = IMAGE_HW
    return cfg, shrink_mask_rcnn(model)


def _fpn_model_cfg():
    cfg = det_config('mask_rcnn_local_vssm_tiny_fpn_coco.py')
    model = copy.deepcopy(cfg.model)
    model['backbone'] = tiny_vssm_backbone(model['backbone'], dims=16)
    model['neck']['in_channels'] = [16, 32, 64, 128]
    return cfg, shrink_mask_rcnn(model)


@pytest.mark.parametrize('make_cfg', [_vitdet_model_cfg, _fpn_model_cfg], ids=['vitdet_local_vim', 'fpn_local_vssm'])
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
