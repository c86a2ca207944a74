"""Train a LocalMamba detection model on mmengine's Runner.

    python detection/tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp] [--cfg-options KEY=VALUE ...]

Several GPUs: detection/tools/dist_train.sh CONFIG GPUS [flags].
"""
from classification.dense.launch import train_main

if __name__ == '__main__':
    train_main('detection')
