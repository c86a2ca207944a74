"""One-shot check of the GPU backends: every Triton kernel against the reference, then timings.

    python tools/gpu_check.py                   # on a CUDA machine: correctness table, timing table, exit code
    TRITON_INTERPRET=1 python tools/gpu_check.py --device cpu --quick    # smoke test of this script on CPU

What is checked and timed: see ``classification.benchmarks.gpu_check``.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from classification.benchmarks.gpu_check import run_gpu_check  # noqa: E402


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny shapes (for a CPU smoke test)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--skip-timing", action="store_true")
    args = parser.parse_args(argv)
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available here; run on a GPU machine (or --device cpu with TRITON_INTERPRET=1)")
        return 2
    return 0 if run_gpu_check(args.device, args.quick, args.repeats, args.skip_timing) else 1


if __name__ == "__main__":
    sys.exit(main())
