# LocalVim-T in a ViTDet-style Mask R-CNN (plain Mask R-CNN despite the file name, as in the original): SimpleFPN
# from the last layer's stride-16 map, LayerNorm'd conv heads, LSJ 1024x1024, 100 epochs.
_base_ = [
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py',
    './lsj-100e_coco-instance.py',
]

custom_imports = dict(imports=['detection.local_mamba'], allow_failed_imports=False)

norm_cfg = dict(type='LN2d', requires_grad=True)
image_size = (1024, 1024)

# The searched LocalVim-T directions, one list per layer.
from classification.models.directions import LOCAL_VIM_TINY_DIRECTIONS as directions  # noqa: E402

model = dict(
    data_preprocessor=dict(
        pad_size_divisor=32,
        batch_augments=[dict(type='BatchFixedSizePad', size=image_size, pad_mask=True)]),
    backbone=dict(
        _delete_=True,
        type='MM_LocalVim',
        pretrained_ckpt='https://github.com/hunto/LocalMamba/releases/download/v1.0.0/local_vim_tiny.ckpt',
        img_size=image_size,
        patch_size=16,
        embed_dim=192,
        depth=20,
        drop_path_rate=0.1,
        # LayerNorm blocks as the original det/seg configs, although the ImageNet weights were trained with RMSNorm
        # (their norm weights load, the LayerNorm biases start at 0); set rms_norm=True to match the checkpoint.
        rms_norm=False,
        fused_add_norm=False,
        residual_in_fp32=True,
        final_pool_type='mean',
        if_abs_pos_embed=True,
        if_rope=True,
        if_rope_residual=True,
        bimamba_type='v2',
        directions=directions,
        out_indices=[19]),
    neck=dict(
        _delete_=True,
        type='SimpleFPN',
        backbone_channel=192,
        in_channels=[48, 96, 192, 192],
        out_channels=256,
        num_outs=5,
        norm_cfg=norm_cfg),
    rpn_head=dict(num_convs=2),
    roi_head=dict(
        bbox_head=dict(type='Shared4Conv1FCBBoxHead', conv_out_channels=256, norm_cfg=norm_cfg),
        mask_head=dict(norm_cfg=norm_cfg)))

custom_hooks = [dict(type='Fp16CompresssionHook')]
# As the original: full-precision training with gradient clipping (the LSJ base's AMP wrapper is replaced), and the
# ViT layer-decay rule kept from the base, which for LocalVim only scales the patch/position embeddings' lr by 0.7^13
# (see LayerDecayOptimizerConstructor).
optim_wrapper = dict(type='OptimWrapper', clip_grad=dict(max_norm=35, norm_type=2))
train_dataloader = dict(batch_size=2)
