# LocalVim-T + UperNet on ADE20K, 512x512 crops, 160k iterations, from mmseg's ViT-B UperNet config: four stride-16
# maps (layers 4, 9, 14, 19) go straight to the UperHead (no multi-level neck), as the original.
_base_ = 'mmseg::vit/vit_vit-b16_mln_upernet_8xb2-160k_ade20k-512x512.py'

custom_imports = dict(imports=['segmentation.local_mamba'], allow_failed_imports=False)

# The searched LocalVim-T directions, one list per layer.
from classification.models.directions import LOCAL_VIM_TINY_DIRECTIONS as directions  # noqa: E402

model = dict(
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='MM_LocalVim',
        pretrained_ckpt='https://github.com/hunto/LocalMamba/releases/download/v1.0.0/local_vim_tiny.ckpt',
        img_size=(512, 512),
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
        out_indices=[4, 9, 14, 19]),
    neck=None,
    decode_head=dict(in_channels=[192, 192, 192, 192]),
    auxiliary_head=dict(in_channels=192))

train_dataloader = dict(batch_size=2)
