"""Train a LocalMamba segmentation model on mmengine's Runner.

    python segmentation/tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp] [--cfg-options KEY=VALUE ...]

Several GPUs: segmentation/tools/dist_train.sh CONFIG GPUS [flags].
"""
from classification.dense.launch import train_main

if __name__ == '__main__':
    train_main('segmentation')
