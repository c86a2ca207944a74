# LocalVMamba-S + UperNet on ADE20K, with AMP (the only seg config of the original that uses it).
_base_ = './upernet_local_vssm_tiny_8xb2-160k_ade20k-512x512.py'

# The searched LocalVMamba-S directions, one list per block over all stages.
from classification.models.directions import LOCAL_VSSM_SMALL_DIRECTIONS as directions  # noqa: E402

model = dict(
    backbone=dict(
        directions=directions,
        pretrained='https://github.com/hunto/LocalMamba/releases/download/v1.0.0/local_vssm_small.ckpt',
        depths=(2, 2, 27, 2),
        drop_path_rate=0.2))

train_dataloader = dict(batch_size=2)
optim_wrapper = dict(type='AmpOptimWrapper')
