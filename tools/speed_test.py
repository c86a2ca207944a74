"""Throughput of a model, as the original's speed test: parameters and FLOPs, then images per second at a batch size.

    python tools/speed_test.py -c configs/strategies/local_mamba/config.yaml --model local_vim_tiny -b 128
    python tools/speed_test.py --model local_vssm_tiny -b 8 --device cpu --iters 20 --warmup-iters 3

FLOPs as the original's `get_flops`: the model's own `flops()` (LocalVim's analytic count, LocalVMamba's fvcore count),
else fvcore's count with the scan handle. Inference in eval mode on random images (batch, C, S, S), C the model's input
channels, S the `--img-size` (default 224), after `--warmup-iters` untimed forwards (default 100, as the original),
timed over `--iters` forwards (default 1000); the throughput is batch / median seconds per forward (the original divides
by the mean). Progress and an ETA are logged after the first forward and every tenth of them. `-c` reads `model`,
`model_kwargs`, `directions`, `num_classes`, `batch_size`, `img_size` and `threads` from a YAML config (a run's
`args.yaml` times that run's model as it ran), checked as tools/train.py checks it: config `model_kwargs` the model does
not take are dropped with a warning, as training drops them; the command line wins (`--model-kwargs` updates the
config's, and is refused where the model does not take a key).
"""
import argparse
import logging
import os
import signal
import sys
from typing import Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not ignored by a parent shell: Ctrl-C during
    signal.signal(signal.SIGINT, signal.SIG_DFL)                  # the imports stops quietly (run_cli restores it)

from classification.engine.cli import run_cli  # noqa: E402


def _first_given(*values: Optional[int]) -> int:
    """The first value that is not None (command line, config, default)."""
    return next(value for value in values if value is not None)


def main() -> None:
    import torch

    from classification.benchmarks import build_model, flops_row, images_per_second, parse_device
    from classification.benchmarks.model_speed import COMPILE_WARMUP, square_side
    from classification.benchmarks.timing import progress_reporter
    from classification.engine.config import read_config
    from classification.engine.flags import KeyValueAction
    from classification.engine.model_builder import config_kwargs_taken, resolve_model_name
    from classification.models.factory import input_channels

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", default=None,
                        help="YAML config, e.g. a run's args.yaml (its model, model_kwargs, directions, num_classes, "
                             "batch_size, img_size, threads)")
    parser.add_argument("--model", default=None, help="model name, with or without timm_")
    parser.add_argument("--model-kwargs", nargs="*", default={}, action=KeyValueAction, metavar="KEY=VALUE",
                        help="ours: keyword arguments for the model constructor (update the config's model_kwargs)")
    parser.add_argument("--directions", default=None, help="ours: directions.yaml written by tools/vis_search_prob.py")
    parser.add_argument("--num-classes", type=int, default=None, help="ours: classifier size (default: the model's)")
    parser.add_argument("-b", "--batch-size", type=int, default=None, help="batch size (default 128, as the original)")
    parser.add_argument("--img-size", type=int, default=None, help="square input size (default 224, or model_kwargs' "
                        "img_size, for which the model is built: another size beside it is refused)")
    parser.add_argument("--iters", type=int, default=1000, help="timed forwards (default 1000)")
    parser.add_argument("--warmup-iters", type=int, default=100, help="untimed forwards first (default 100)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads, 0: torch's default, as in training (default: the config's, else torch's)")
    parser.add_argument("--compile", default=None, choices=("default", "reduce-overhead", "max-autotune"),
                        help="ours: time the model under torch.compile in this mode (reduce-overhead: CUDA graphs)")
    parser.add_argument("--debug", action="store_true", help="show the traceback of errors")
    args = parser.parse_args()
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S", level=logging.INFO)
    logger = logging.getLogger("speed_test")
    defaults = read_config(args.config) if args.config else {}
    model_name = args.model or defaults.get("model")
    if not model_name:
        parser.error("--model is required (or a config with a model key)")
    name = resolve_model_name(model_name)
    model_kwargs = {**config_kwargs_taken(name, defaults.get("model_kwargs", {})), **args.model_kwargs}
    batch = _first_given(args.batch_size, defaults.get("batch_size"), 128)
    built_size = None if model_kwargs.get("img_size") is None else square_side(model_kwargs["img_size"])
    if built_size is not None and args.img_size not in (None, built_size):
        parser.error(f"--img-size {args.img_size} and model_kwargs img_size={model_kwargs['img_size']!r}: the model "
                     f"is built for the images it is timed on: give one size")
    img_size = _first_given(built_size, args.img_size, defaults.get("img_size"), 224)
    for flag, value, least in (("-b/--batch-size", batch, 1), ("--img-size", img_size, 1), ("--iters", args.iters, 1),
                               ("--warmup-iters", args.warmup_iters, 0)):
        if value < least:
            parser.error(f"{flag} must be {least} or more, got {value}")
    if args.compile and args.warmup_iters < COMPILE_WARMUP:
        parser.error(f"--compile {args.compile} compiles in the warmup forwards: --warmup-iters {args.warmup_iters} "
                     f"would time the compilation; give --warmup-iters {COMPILE_WARMUP} or more")
    if args.threads is not None and args.threads < 0:
        parser.error(f"--threads must be 0 (torch's default) or more, got {args.threads}")
    threads = (args.threads if args.threads is not None else defaults.get("threads")) or None  # 0: torch's default
    num_classes = args.num_classes if args.num_classes is not None else defaults.get("num_classes")
    if num_classes is not None and num_classes < 1:
        parser.error(f"--num-classes must be positive, got {num_classes}")
    directions = args.directions or defaults.get("directions")
    try:
        device = str(parse_device(args.device))
    except ValueError as err:
        parser.error(str(err))
    if threads is not None:
        torch.set_num_threads(threads)
    built = dict(num_classes=num_classes, model_kwargs=model_kwargs, directions=directions)
    with torch.no_grad():
        row = flops_row(name, img_size, **built)
    flops = row["original"] if row["original"] is not None else row["fvcore"]
    logger.info(f"Model {name} created, params: {row['params']}, FLOPs: {flops}")
    model = build_model(name, img_size, device, **built)
    logger.info("Start measuring speed.")
    speed = images_per_second({name: model}, batch, img_size, repeats=args.iters, warmup=args.warmup_iters,
                              compile_mode=args.compile, progress=progress_reporter(logger.info))[name]
    shape = (input_channels(model), img_size, img_size)
    logger.info(f"Done, n_iters: {args.iters}, batch size: {batch}, image shape: {shape}, device: {device}")
    logger.info(f"total samples: {batch * args.iters}, throughput: {speed:.3f} samples/second.")


if __name__ == "__main__":
    run_cli(main)
