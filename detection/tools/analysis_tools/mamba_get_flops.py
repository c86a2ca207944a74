"""FLOPs and parameters of a whole detector or segmentor built from a config, the selective scans included:

    python detection/tools/analysis_tools/mamba_get_flops.py CONFIG [--shape H W] [--cfg-options KEY=VALUE ...]

The original's `tools/analysis_tools/mamba_get_flops.py` (the name its det/seg READMEs give), for our mmdet and mmseg
configs alike. One forward (mode 'tensor') of a random (1, 3, H, W) image is traced by fvcore with the scan handle of
`tools/flops.py` (`classification.models.flop_count`: 9*B*L*D*N + B*D*L per scan; one multiply-add = one FLOP).
Defaults as the original: 1280 x 800 for detection, 512 x 2048 for segmentation. No weights are loaded and no data
set is read (the detector's image metadata is that of the random image). Runs on CPU.
"""
import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, ROOT)


def main() -> None:
    from classification.dense.launch import (add_cfg_options, check_config_file, framework_problem, merge_cfg_options,
                                             read_config, run_step)
    from classification.dense.mm_flops import DEFAULT_SHAPES, complexity

    problem = framework_problem(None)
    if problem:
        print(f'error: {problem}', file=sys.stderr)
        sys.exit(2)

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', help='an mmdet or mmseg config, e.g. detection/configs/local_mamba/*.py')
    parser.add_argument('--shape', type=int, nargs=2, default=None, metavar=('H', 'W'),
                        help='input size (default 1280 800 for detection, 512 2048 for segmentation)')
    add_cfg_options(parser, 'override config entries')
    args = parser.parse_args()
    if args.shape and min(args.shape) < 1:
        parser.error(f"--shape must be two positive sizes (H W), got {' '.join(map(str, args.shape))}")
    check_config_file(args.config)
    cfg = read_config(args.config)
    new_options = merge_cfg_options(cfg, args.cfg_options)
    height, width = args.shape or DEFAULT_SHAPES[cfg.get('default_scope', 'mmdet')]
    result = run_step(lambda: complexity(cfg, height, width), new_options)
    line = '=' * 30
    print(f"{line}\nInput shape: (3, {height}, {width})\tFlops: {result['flops'] / 1e9:.3f} G\t"
          f"Params: {result['params'] / 1e6:.3f} M\n{line}")
    print(f"flops: {result['flops']}\nparams: {result['params']}\nof which selective scans: {result['scan_flops']}")
    if result['uncounted']:
        print('not counted (no FLOP rule; calls): '
              + ', '.join(f'{op} ({n})' for op, n in sorted(result['uncounted'].items())))


if __name__ == '__main__':
    main()
