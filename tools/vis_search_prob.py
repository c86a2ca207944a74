"""Searched directions of a supernet: `python tools/vis_search_prob.py CKPT [--topk 4] [--out DIR] [--ema]`.

Prints every layer's candidate probabilities and top-k list as the original does, and writes DIR/directions.yaml
(for `tools/train.py --directions`) and DIR/search_probs.png (a heat map). DIR defaults to the checkpoint's folder
(the current one for an http(s) URL); a directions.yaml there with other directions is replaced only with
`--overwrite`. A checkpoint saved before the end of its search run (an interrupted run's last.pth.tar, an early
best.pth.tar) gets a note saying so. The candidates are the supernet's, as its training checkpoint records them
(`--candidates` for a file that does not).
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
    from classification.search.extract import extract

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpt", help="training checkpoint of a *_search model (last.pth.tar, best.pth.tar, ...)")
    parser.add_argument("--topk", type=int, default=4, help="directions kept per layer (default 4)")
    parser.add_argument("--out", default=None,
                        help="folder for directions.yaml and search_probs.png (default: the checkpoint's folder; the "
                             "current one for a checkpoint URL)")
    parser.add_argument("--ema", "--model-ema", dest="ema", action="store_true",
                        help="use the EMA weights (ema_model); --model-ema as in tools/test.py")
    parser.add_argument("--supernet", default=None,
                        help="supernet name for the file (default: the checkpoint's, else the registered supernet "
                             "whose search layers it has)")
    parser.add_argument("--candidates", nargs="+", default=None, metavar="NAME",
                        help="the supernet's candidates, in order, for a checkpoint that does not record them "
                             "(default: the checkpoint's, else the original 8)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a directions.yaml in --out that holds other directions")
    parser.add_argument(TRUST_FLAG, action="store_true",
                        help="allow a checkpoint that needs pickle (it can run code): only files you trust")
    parser.add_argument("--debug", action="store_true", help="show the traceback of errors")
    args = parser.parse_args()
    if args.topk < 1:
        parser.error(f"--topk must be at least 1, got {args.topk}")
    if args.candidates is not None and (len(args.candidates) < 2 or len(set(args.candidates)) < len(args.candidates)):
        parser.error(f"--candidates must name at least 2 distinct directions, got {' '.join(args.candidates)}")
    result = extract(args.ckpt, args.topk, args.out, args.ema, args.supernet, trust=args.trust_checkpoint,
                     overwrite=args.overwrite, candidates=args.candidates)
    print(result["printout"])
    print(f"wrote {result['directions_file']} and {result['heatmap']}", file=sys.stderr)
    if result["unfinished"]:
        print(f"note: {args.ckpt} is not the end of its search run ({result['unfinished']}): these directions are "
              f"the search's state then, not its result", file=sys.stderr)


if __name__ == "__main__":
    run_cli(main)
