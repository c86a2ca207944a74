"""Evaluate a LocalMamba segmentation checkpoint on mmengine's Runner.

    python segmentation/tools/test.py CONFIG CHECKPOINT [--out PATH] [--show-dir DIR] [--cfg-options KEY=VALUE ...]

Several GPUs: segmentation/tools/dist_test.sh CONFIG CHECKPOINT GPUS [flags].
"""
from classification.dense.launch import test_main

if __name__ == '__main__':
    test_main('segmentation')
