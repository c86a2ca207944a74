# LocalVMamba-S in Mask R-CNN + FPN, 3x schedule (36 epochs) with DETR-style multi-scale training: the LocalVMamba-T
# 3x config with the LocalVMamba-S backbone of the 1x config.
_base_ = './mask_rcnn_local_vssm_tiny_fpn_coco_ms_3x.py'

# The searched LocalVMamba-S directions, one list per block over all stages.
from classification.models.directions import LOCAL_VSSM_SMALL_DIRECTIONS as directions  # noqa: E402

model = dict(
    backbone=dict(
        directions=directions,
        pretrained='https://github.com/hunto/LocalMamba/releases/download/v1.0.0/local_vssm_small.ckpt',
        depths=(2, 2, 27, 2)))
