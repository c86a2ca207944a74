"""Export a model to ONNX: `python tools/export_onnx.py [-c CONFIG] --model NAME [--resume CKPT] --onnx FILE.onnx`.

The model flags are tools/test.py's (`-c`, `--model`, `--img-size`, `--num-classes`, `--model-kwargs`,
`--directions`, `--resume`, `--trust-checkpoint`): a run's args.yaml and its checkpoint export what it trained.
The graph takes any batch size. onnxruntime then runs it on random images against the model and the largest
difference of the outputs is printed (`--no-check` skips this).
"""
import argparse
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not ignored by a parent shell: Ctrl-C during
    signal.signal(signal.SIGINT, signal.SIG_DFL)                  # the imports stops quietly (run_cli restores it)

from classification.engine.cli import run_cli  # noqa: E402


def export_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False,
                                     epilog="\n".join(__doc__.splitlines()[2:]) + "\nModel flags: tools/test.py -h.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--onnx", required=True, metavar="FILE.onnx", help="where to write the ONNX model")
    parser.add_argument("--exporter", default="dynamo", choices=("dynamo", "torchscript"),
                        help="torch.onnx.export's torch.export-based exporter (dynamo=True, torch >= 2.8, needs "
                             "onnxscript; the default) or its TorchScript one (dynamo=False)")
    parser.add_argument("--example-batch", type=int, default=2,
                        help="batch of the example images the export traces (2 or more; default 2)")
    parser.add_argument("--optimize", action="store_true",
                        help="run onnxscript's graph optimisation on the dynamo export (minutes for a full-size model; "
                             "onnxruntime gains little)")
    parser.add_argument("--ema", "--model-ema", dest="ema", action="store_true",
                        help="export the checkpoint's EMA weights; --model-ema as in tools/test.py")
    parser.add_argument("--no-check", dest="check", action="store_false",
                        help="do not run the ONNX model by onnxruntime against the model")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing FILE.onnx")
    return parser


def refuse_abbreviated_export_flags(parser: argparse.ArgumentParser, model_flags: list[str]) -> None:
    """Refuse a flag left for the model flags that abbreviates one of the export's own (which are not abbreviated):
    tools/test.py's parser took it for one of its flags (`--exp torchscript` set --experiment, and the default
    exporter ran)."""
    from classification.engine.flags import build_parser

    model_options = {flag for action in build_parser(evaluation=True)._actions for flag in action.option_strings}
    export_options = [flag for action in parser._actions for flag in action.option_strings if flag.startswith("--")]
    for item in model_flags:
        name = item.split("=", 1)[0]
        if name == "--" or not name.startswith("--") or name in model_options:
            continue
        meant = [flag for flag in export_options if flag.startswith(name)]
        if meant:
            parser.error(f"{name}: give the flag in full ({' or '.join(meant)}): the export's flags are not "
                         f"abbreviated")


def main() -> None:
    from classification.engine.config import parse_args
    from classification.engine.onnx_export import (CHECK_BATCH, check_export_inputs, check_export_options,
                                                   check_onnx_path, export, resolve_export_size)

    parser = export_parser()
    options, model_flags = parser.parse_known_args()
    refuse_abbreviated_export_flags(parser, model_flags)
    cfg = parse_args(model_flags, description="LocalMamba ONNX export", evaluation=True)
    check_export_options(options.exporter, options.example_batch, options.check, options.optimize)
    check_onnx_path(options.onnx, options.overwrite)
    check_export_inputs(cfg)
    size_from = resolve_export_size(cfg)
    weights = f"{cfg.resume}{' (EMA)' if options.ema else ''}" if cfg.resume else "random weights"
    print(f"Exporting {cfg.model} at {cfg.img_size}x{cfg.img_size}{f' ({size_from})' if size_from else ''} with "
          f"{weights} to {options.onnx} ({options.exporter} exporter)...", flush=True)
    report = export(cfg, options.onnx, options.exporter, options.example_batch, options.check, options.overwrite,
                    options.ema, options.optimize)
    model_file, *data_files = report["files"]
    weights_file = f" and its weights {data_files[0]} (the model reads them from there: keep the two together)" \
        if data_files else ""
    print(f"Wrote {model_file}{weights_file} in {report['seconds']:.1f} s ({report['bytes'] / 1e6:.1f} MB)")
    if options.check:
        print(f"onnxruntime vs the model, batch {CHECK_BATCH}: largest difference of the outputs "
              f"{report['max_abs_difference']:.2e}")


if __name__ == "__main__":
    run_cli(main)
