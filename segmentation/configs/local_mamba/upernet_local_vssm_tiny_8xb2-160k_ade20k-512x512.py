# LocalVMamba-T + UperNet on ADE20K, 512x512 crops, 160k iterations, from mmseg's Swin-T UperNet config with the
# backbone replaced.
_base_ = 'mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py'

custom_imports = dict(imports=['segmentation.local_mamba'], allow_failed_imports=False)

# The searched LocalVMamba-T directions, one list per block over all stages.
from classification.models.directions import LOCAL_VSSM_TINY_DIRECTIONS as directions  # noqa: E402

model = dict(
    backbone=dict(
        # The Swin arguments of the base (and its Swin init_cfg) are dropped; the original merged them and its model
        # ignored them.
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
        drop_path_rate=0.1))

train_dataloader = dict(batch_size=2)
