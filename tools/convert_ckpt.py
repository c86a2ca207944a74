"""Write a training checkpoint's weights in the released form: `python tools/convert_ckpt.py IN OUT [KEY]`.

KEY is `model` (default) or `ema_model`; the output is `{'state_dict': weights}` without `module.` prefixes. IN may
also be a file of the weights alone (`torch.save(model.state_dict())`, a .safetensors file). An existing
OUT is replaced only with `--overwrite`, and never when it is IN.
"""
import argparse
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not ignored by a parent shell: Ctrl-C during
    signal.signal(signal.SIGINT, signal.SIG_DFL)                  # the imports stops quietly (run_cli restores it)

from classification.engine.cli import run_cli  # noqa: E402


def main() -> None:
    from classification.common.checkpoint_io import TRUST_FLAG
    from classification.engine.checkpoint import convert_checkpoint

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", help="training checkpoint (e.g. experiments/NAME/best.pth.tar)")
    parser.add_argument("dst", help="output file")
    parser.add_argument("key", nargs="?", default="model", choices=("model", "ema_model"),
                        help="weights to take: model (default) or ema_model")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file (never IN itself)")
    parser.add_argument(TRUST_FLAG, action="store_true",
                        help="allow a checkpoint that needs pickle (it can run code): only files you trust")
    parser.add_argument("--debug", action="store_true", help="show the traceback of errors")
    args = parser.parse_args()
    n, note = convert_checkpoint(args.src, args.dst, args.key, trust=args.trust_checkpoint, overwrite=args.overwrite)
    if note:
        print(f"note: {note}")
    weights = "EMA weights" if args.key == "ema_model" else "model weights"    # wherever the file keeps them
    print(f"wrote the {weights} of {args.src} ({n} tensor{'s' * (n != 1)}) to {args.dst}")


if __name__ == "__main__":
    run_cli(main)
