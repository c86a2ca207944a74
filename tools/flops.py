"""Parameters and FLOPs of models: `python tools/flops.py MODEL [MODEL ...] [--img-size 224] [--num-classes N]`.

A searched or resized model is counted as it was trained: `--directions FILE` (a directions.yaml written by
tools/vis_search_prob.py) and `--model-kwargs KEY=VALUE ...` (e.g. `embed_dim=96`; another `depth` needs
`--directions` of that many layers, or a `*_search` supernet) build every MODEL with them.

Two conventions, both counting one multiply-add as one FLOP:

* original -- what the original code reports for the model: LocalVim (`local_vim_*`) its analytic
  `VisionMamba.flops()` (in_proj, conv, x_proj, dt_proj once per layer, a `5*E*L*N + 2*E*L` scan per direction);
  LocalVMamba (`local_vssm_*`) fvcore with a scan handle, as `VSSM.flops()`.
* fvcore -- fvcore's trace of one forward with every selective scan charged `9*B*L*D*N + B*D*L` (L the padded
  length) and the causal conv1d charged as a convolution, for every model alike.

Runs on CPU. Any other timm model gets the fvcore count only.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Optional

if __name__ == "__main__" and signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # Ctrl-C during the
    signal.signal(signal.SIGINT, signal.SIG_DFL)      # imports stops quietly (run_stopping_in_one_line restores it)

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from classification.benchmarks import UnknownModelError, flops_rows, format_flops_table  # noqa: E402
from classification.benchmarks.stopping import run_stopping_in_one_line, where_rows_are  # noqa: E402
from classification.engine.config import ConfigError  # noqa: E402
from classification.engine.flags import KeyValueAction  # noqa: E402
from classification.engine.model_builder import resolve_model_name  # noqa: E402


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog='\n'.join(__doc__.splitlines()[2:]))
    parser.add_argument('models', nargs='+', metavar='MODEL', help='timm model name(s), with or without timm_')
    parser.add_argument('--img-size', type=int, default=224,
                        help='square input size (default 224; an img_size in --model-kwargs wins)')
    parser.add_argument('--num-classes', type=int, default=None,
                        help='classifier size (0: none; default: the model\'s)')
    parser.add_argument('--model-kwargs', nargs='*', default={}, action=KeyValueAction, metavar='KEY=VALUE',
                        help='keyword arguments for the model constructor (e.g. embed_dim=96; depth=12 with '
                             '--directions of 12 layers)')
    parser.add_argument('--directions', default=None,
                        help='directions.yaml written by tools/vis_search_prob.py (one list per layer)')
    args = parser.parse_args(argv)
    if args.img_size < 1:
        parser.error(f'--img-size must be positive, got {args.img_size}')
    if args.num_classes is not None and args.num_classes < 0:
        parser.error(f'--num-classes must be 0 (no classifier) or more, got {args.num_classes}')
    rows: list = []

    def count() -> None:
        names = [resolve_model_name(name) for name in args.models]
        flops_rows(names, args.img_size, args.num_classes, args.model_kwargs, args.directions, finished=rows)

    failure, status = run_stopping_in_one_line(count, (UnknownModelError, ConfigError, FileNotFoundError))
    for row in rows:
        if row['unsupported']:
            print(f"warning: {row['model']}: ops not counted: {row['unsupported']}", file=sys.stderr)
    if rows:
        print(format_flops_table(rows))
    if failure:
        print(failure + where_rows_are(rows), file=sys.stderr)
    return status


if __name__ == '__main__':
    sys.exit(main())
