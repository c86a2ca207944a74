"""Evaluate a LocalMamba detection checkpoint on mmengine's Runner.

    python detection/tools/test.py CONFIG CHECKPOINT [--out PATH] [--show-dir DIR] [--cfg-options KEY=VALUE ...]

Several GPUs: detection/tools/dist_test.sh CONFIG CHECKPOINT GPUS [flags].
"""
from classification.dense.launch import test_main

if __name__ == '__main__':
    test_main('detection')
