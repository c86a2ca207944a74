"""Parameters and FLOPs of models: `python tools/flops.py MODEL [MODEL ...] [--img-size 224] [--num-classes N]`.

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
import sys
from typing import Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))    # tools/benchmark.py, the shared table layout

import torch  # noqa: E402
from torch import nn  # noqa: E402

import classification  # noqa: E402,F401  (registers the LocalMamba models)
from classification.engine.model_builder import (UnknownModelError, create_model_at_size,  # noqa: E402
                                                 resolve_model_name)
from benchmark import render_table  # noqa: E402
from classification.models.flop_count import flop_analysis  # noqa: E402
from classification.models.local_vim import VisionMamba  # noqa: E402
from classification.models.local_vmamba import VSSM  # noqa: E402


def build(name: str, img_size: int = 224, num_classes: Optional[int] = None) -> nn.Module:
    """The timm model, on CPU, in eval mode (`img_size` passed to models that take one, e.g. LocalVim)."""
    kwargs = {} if num_classes is None else dict(num_classes=num_classes)
    return create_model_at_size(name, img_size, **kwargs).eval()


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def fvcore_flops(model: nn.Module, img_size: int = 224) -> tuple[int, dict]:
    """fvcore's total with the scan handle, and the ops it could not count (name -> calls)."""
    analysis = flop_analysis(model, (3, img_size, img_size))
    return int(analysis.total()), dict(analysis.unsupported_ops())


def original_flops(model: nn.Module, img_size: int = 224, fvcore_total: Optional[int] = None) -> Optional[int]:
    """The original code's figure: LocalVim's analytic count, LocalVMamba's fvcore count (the same as
    :func:`fvcore_flops`, reused when given); None for other models."""
    if isinstance(model, VisionMamba):
        return int(model.flops((3, img_size, img_size)))
    if isinstance(model, VSSM):
        return fvcore_total if fvcore_total is not None else int(model.flops((3, img_size, img_size)))
    return None


def measure(name: str, img_size: int = 224, num_classes: Optional[int] = None) -> dict:
    """Params and both FLOP counts of one model: dict(model, img_size, params, original, fvcore, unsupported)."""
    model = build(name, img_size, num_classes)
    total, unsupported = fvcore_flops(model, img_size)
    return dict(model=resolve_model_name(name), img_size=img_size, params=count_params(model),
                original=original_flops(model, img_size, total), fvcore=total, unsupported=unsupported)


def format_table(rows: list[dict]) -> str:
    header = ('model', 'img', 'params (M)', 'GFLOPs original', 'GFLOPs fvcore+scan')
    lines = [list(header)]
    for row in rows:
        original = '-' if row['original'] is None else f"{row['original'] / 1e9:.3f}"
        lines.append([row['model'], str(row['img_size']), f"{row['params'] / 1e6:.2f}", original,
                      f"{row['fvcore'] / 1e9:.3f}"])
    return render_table(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog='\n'.join(__doc__.splitlines()[2:]))
    parser.add_argument('models', nargs='+', metavar='MODEL', help='timm model name(s), with or without timm_')
    parser.add_argument('--img-size', type=int, default=224, help='square input size (default 224)')
    parser.add_argument('--num-classes', type=int, default=None, help='classifier size (default: the model\'s)')
    args = parser.parse_args(argv)
    if args.img_size < 1:
        parser.error(f'--img-size must be positive, got {args.img_size}')
    try:
        names = [resolve_model_name(name) for name in args.models]
    except UnknownModelError as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    rows = []
    with torch.no_grad():
        for name in names:
            row = measure(name, args.img_size, args.num_classes)
            if row['unsupported']:
                print(f"warning: {name}: ops not counted: {row['unsupported']}", file=sys.stderr)
            rows.append(row)
    print(format_table(rows))
    return 0


if __name__ == '__main__':
    sys.exit(main())
