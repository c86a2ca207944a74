# LocalVim-S + UperNet on ADE20K: width 384, the LocalVim-T directions (as the original).
_base_ = './upernet_local_vim-tiny_8xb2-160k_ade20k-512x512.py'

model = dict(
    backbone=dict(
        # The original loads local_vssm_small.ckpt here, the LocalVMamba-S file, of which nothing matches this model;
        # no LocalVim-S checkpoint was released. Point this at a `local_vim_small_searched` checkpoint from
        # tools/train.py (same directions as this config), or set it to None to train from scratch.
        pretrained_ckpt='checkpoints/local_vim_small_searched.pth',
        drop_path_rate=0.1,
        embed_dim=384),
    decode_head=dict(in_channels=[384, 384, 384, 384]),
    auxiliary_head=dict(in_channels=384))
