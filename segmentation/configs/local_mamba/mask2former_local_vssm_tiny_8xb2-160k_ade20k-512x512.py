# LocalVMamba-T + Mask2Former on ADE20K, 512x512 crops, 160k iterations, from mmseg's Swin-T Mask2Former config with
# the backbone replaced (as our UperNet config's): its four stages (strides 4 to 32, 96 to 768 channels, Swin-T's
# widths) go straight to the head. Not a config of the original. The base's optimizer stays (AdamW 1e-4, weight decay
# 0.05, gradients clipped at 0.01, the backbone at a tenth of the learning rate), its rule too: no weight decay on the
# norms and on the queries' and levels' embeddings; its keys for the backbone's norms name Swin's modules, so they are
# replaced by ours.
_base_ = 'mmseg::mask2former/mask2former_swin-t_8xb2-160k_ade20k-512x512.py'

custom_imports = dict(imports=['mmdet.models', 'segmentation.local_mamba'], allow_failed_imports=False)
pretrained = None  # the base's Swin-T weights URL, which nothing here reads: the backbone's pretrained= is its file

# The searched LocalVMamba-T directions, one list per block over all stages.
from classification.models.directions import LOCAL_VSSM_TINY_DIRECTIONS as directions  # noqa: E402

model = dict(
    backbone=dict(
        _delete_=True,
        type='MM_LocalVSSM',
        directions=directions,
        out_indices=(0, 1, 2, 3),
        # Train `local_vssm_tiny` with tools/train.py and put its checkpoint here (or pass --cfg-options
        # model.backbone.pretrained=PATH).
        pretrained='checkpoints/local_vssm_tiny.pth',
        dims=96,
        depths=(2, 2, 9, 2),
        ssm_d_state=16,
        ssm_dt_rank='auto',
        ssm_ratio=2.0,
        mlp_ratio=0.0,
        downsample_version='v1',
        patchembed_version='v1',
        drop_path_rate=0.1),
    decode_head=dict(in_channels=[96, 192, 384, 768]))

# A custom key (the longest one a parameter's name holds wins) overrides norm_decay_mult: the backbone's norms need
# keys of their own.
backbone_norm_multi = dict(lr_mult=0.1, decay_mult=0.0)
embed_multi = dict(lr_mult=1.0, decay_mult=0.0)
custom_keys = {
    'backbone': dict(lr_mult=0.1, decay_mult=1.0),
    'backbone.patch_embed.2': backbone_norm_multi,  # the patch embedding's LayerNorm
    'backbone.outnorm': backbone_norm_multi,
    'query_embed': embed_multi,
    'query_feat': embed_multi,
    'level_embed': embed_multi,
}
custom_keys.update({
    f'backbone.layers.{stage}.blocks.{block}.{norm}': backbone_norm_multi
    for stage, blocks in enumerate(model['backbone']['depths'])
    for block in range(blocks)
    for norm in ('norm', 'op.out_norm', 'op.multi_scan.attn.norm')
})
custom_keys.update({f'backbone.layers.{stage}.downsample.norm': backbone_norm_multi for stage in range(3)})
optim_wrapper = dict(paramwise_cfg=dict(_delete_=True, custom_keys=custom_keys, norm_decay_mult=0.0))

train_dataloader = dict(batch_size=2)  # x 8 GPUs
