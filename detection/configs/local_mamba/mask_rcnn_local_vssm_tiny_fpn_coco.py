# LocalVMamba-T in Mask R-CNN + FPN, 1x schedule (12 epochs), from mmdet's Swin-T Mask R-CNN config with the
# backbone replaced and AMP on, as the original.
_base_ = 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py'

custom_imports = dict(imports=['detection.local_mamba'], allow_failed_imports=False)
pretrained = None  # the base's Swin-T weights URL, which nothing here reads: the backbone's pretrained= is its file

# The searched LocalVMamba-T directions, one list per block over all stages.
from classification.models.directions import LOCAL_VSSM_TINY_DIRECTIONS as directions  # noqa: E402

model = dict(
    backbone=dict(
        # The Swin arguments of the base are dropped (the original merged them and its model ignored them);
        # drop_path_rate=0.2 is the value the original inherited from that base.
        _delete_=True,
        type='MM_LocalVSSM',
        directions=directions,
        out_indices=(0, 1, 2, 3),
        # The original points at the never-released local_vssm_tiny.ckpt. Train `local_vssm_tiny` with tools/train.py
        # and put its checkpoint here (or pass --cfg-options model.backbone.pretrained=PATH).
        pretrained='checkpoints/local_vssm_tiny.pth',
        dims=96,
        depths=(2, 2, 9, 2),
        ssm_d_state=16,
        ssm_dt_rank='auto',
        ssm_ratio=2.0,
        mlp_ratio=0.0,
        downsample_version='v1',
        patchembed_version='v1',
        drop_path_rate=0.2),
    neck=dict(in_channels=[96, 192, 384, 768]))

train_dataloader = dict(batch_size=2)  # x 8 GPUs
optim_wrapper = dict(type='AmpOptimWrapper')
