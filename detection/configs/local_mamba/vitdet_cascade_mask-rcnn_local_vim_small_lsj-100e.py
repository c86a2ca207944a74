# LocalVim-S in the ViTDet-style Mask R-CNN: width 384, the LocalVim-T directions (as the original), batch 1 per GPU.
_base_ = './vitdet_cascade_mask-rcnn_local_vim_tiny_lsj-100e.py'

model = dict(
    backbone=dict(
        # No LocalVim-S ImageNet checkpoint was released (the original trains this config without one). Point this
        # at a `local_vim_small_searched` checkpoint from tools/train.py (same directions as this config), or set
        # it to None to train from scratch as the original does.
        pretrained_ckpt='checkpoints/local_vim_small_searched.pth',
        drop_path_rate=0.1,
        embed_dim=384),
    neck=dict(backbone_channel=384, in_channels=[96, 192, 384, 384]),
    rpn_head=dict(num_convs=2))

train_dataloader = dict(batch_size=1)
