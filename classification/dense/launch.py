"""Training and testing entry points on mmengine's Runner, shared by ``detection/tools`` and ``segmentation/tools``.

The command lines are those of mmdet 3.3 / mmseg 1.2 ``tools/train.py`` and ``tools/test.py``, plus
``--trust-checkpoint``. Adjustments for current software, applied here rather than in the configs:

* mmengine 0.10 pickles its message hub's ``HistoryBuffer`` and numpy values into its checkpoints, which torch >= 2.6
  refuses to load with ``weights_only=True``. The Runner of these entry points saves them as tensors and plain values
  instead (:class:`~classification.dense.mm_checkpoint.PlainCheckpointHook`), and mmengine's file and URL loads
  (``--resume``, ``load_from``, the tested checkpoint) go through :func:`classification.common.load_checkpoint`:
  ``weights_only=True``; a file that needs pickle (one written by plain mmengine) is refused unless
  ``--trust-checkpoint`` is given. Nothing changes torch's default for other loads.
* Without CUDA, ``AmpOptimWrapper`` (which needs a GPU) is replaced by ``OptimWrapper``, and distributed runs (which
  mmengine only starts on GPUs) get a gloo process group, CPU DistributedDataParallel and plain BatchNorm for SyncBN.
"""
from __future__ import annotations

import argparse
import contextlib
import fnmatch
import os
import os.path as osp
import sys
from typing import Any, Callable, NoReturn, Optional, Sequence

from ..common import TRUST_FLAG, CheckpointError, load_checkpoint

TASKS = ('detection', 'segmentation')
# What an mmengine run leaves in its work_dir that a fresh run there would overwrite piecemeal: the checkpoints of
# mmengine's CheckpointHook and the pointer --resume follows.
RUN_CHECKPOINTS = ('epoch_*.pth', 'iter_*.pth', 'best_*.pth', 'last_checkpoint')


def _common_args(parser: argparse.ArgumentParser) -> None:
    from mmengine.config import DictAction
    parser.add_argument('--work-dir', help='folder for logs and checkpoints (default: ./work_dirs/<config name>)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config entries, e.g. model.backbone.pretrained=PATH '
                             'train_dataloader.batch_size=4')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none',
                        help='job launcher (dist_train.sh / dist_test.sh pass pytorch)')
    parser.add_argument(TRUST_FLAG, action='store_true',
                        help='load checkpoints that need pickle (able to run code): only files from a trusted source')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0, help=argparse.SUPPRESS)


def safe_checkpoint_loader(trust: bool) -> Callable[[str, Any], dict]:
    """An mmengine checkpoint loader (``loader(filename, map_location)``) that reads on the CPU with
    :func:`load_checkpoint` (``weights_only=True`` unless ``trust``). The Runner moves the weights and the optimizer
    state to their devices as it loads them."""

    def load(filename: str, map_location: Any = None) -> dict:
        return load_checkpoint(filename, trust=trust)

    return load


def _route_checkpoint_loads(trust: bool) -> None:
    """Make mmengine read local files and http(s) URLs with :func:`safe_checkpoint_loader`."""
    from mmengine.runner import CheckpointLoader
    loader = safe_checkpoint_loader(trust)
    CheckpointLoader.register_scheme(prefixes='', loader=loader, force=True)
    CheckpointLoader.register_scheme(prefixes=('http://', 'https://'), loader=loader, force=True)


def _exit_error(message: str) -> NoReturn:
    """End the process with ``error: message`` (exit status 2), as the classification tools do."""
    print(f'error: {message}', file=sys.stderr)
    sys.exit(2)


def _run(step: Callable[[], Any]) -> None:
    """Run the Runner's train or test; a checkpoint that cannot be read ends the process with its one-line message
    (exit status 2) instead of a traceback."""
    try:
        step()
    except CheckpointError as err:
        _exit_error(str(err))


def check_config_file(path: str) -> None:
    """End the process in one line (exit status 2) if the config file does not exist or sets nothing (it is empty
    or holds only comments), which mmengine reports with a traceback."""
    if not osp.isfile(path):
        _exit_error(f'config file not found: {path}')
    with open(path, encoding='utf-8', errors='replace') as f:
        if all(not line.strip() or line.lstrip().startswith('#') for line in f):
            _exit_error(f'{path}: the config is empty')


def _load_config(args: argparse.Namespace):
    """Read the config, apply CLI overrides and the CPU adjustments; set work_dir."""
    import torch
    from mmengine.config import Config
    from mmengine.logging import print_log

    _route_checkpoint_loads(args.trust_checkpoint)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    check_config_file(args.config)
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    if args.work_dir:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
    if not torch.cuda.is_available():
        if cfg.get('optim_wrapper', {}).get('type') == 'AmpOptimWrapper':
            cfg.optim_wrapper.type = 'OptimWrapper'
            cfg.optim_wrapper.pop('loss_scale', None)
            print_log('no CUDA: AmpOptimWrapper replaced by OptimWrapper', logger='current')
        if args.launcher != 'none':
            _cpu_distributed(cfg)
    return cfg


class WorkDirError(ValueError):
    """A fresh run would write into another run's work_dir."""


def previous_checkpoints(work_dir: str) -> list[str]:
    """Names of the files in ``work_dir`` that show an earlier run (``RUN_CHECKPOINTS``)."""
    if not osp.isdir(work_dir):
        return []
    return sorted(name for name in os.listdir(work_dir) if any(fnmatch.fnmatch(name, p) for p in RUN_CHECKPOINTS))


def claim_work_dir(work_dir: str, overwrite: bool) -> list[str]:
    """Refuse a fresh run in a ``work_dir`` that holds another run's checkpoints, unless ``overwrite``: then delete
    them (the main rank; the logs' timestamped folders stay) and return their names."""
    found = previous_checkpoints(work_dir)
    if found and not overwrite:
        shown = ', '.join(found[:4]) + (', ...' if len(found) > 4 else '')
        raise WorkDirError(f'{work_dir} already holds a run ({shown}); continue it with --resume, start afresh there '
                           f'with --overwrite (deletes its checkpoints), or choose another --work-dir')
    if os.environ.get('RANK', os.environ.get('SLURM_PROCID', '0')) != '0':
        return []
    for name in found:
        with contextlib.suppress(FileNotFoundError):
            os.remove(osp.join(work_dir, name))
    return found


def _cpu_distributed(cfg) -> None:
    """Start a gloo process group (mmengine's launchers call torch.cuda.set_device), wrap the model in CPU DDP and
    use BatchNorm instead of SyncBN (which needs a GPU)."""
    import torch.distributed as dist
    if not dist.is_initialized():
        dist.init_process_group('gloo')
    cfg.setdefault('model_wrapper_cfg', dict(
        type='MMDistributedDataParallel', device_ids=None, broadcast_buffers=False,
        find_unused_parameters=cfg.get('find_unused_parameters', False)))
    _replace_sync_bn(cfg.model)


def _replace_sync_bn(node) -> None:
    if isinstance(node, dict):
        if node.get('type') == 'SyncBN':
            node['type'] = 'BN'
        for value in node.values():
            _replace_sync_bn(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            _replace_sync_bn(value)


def _build_runner(cfg):
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner

    from .mm_checkpoint import PlainCheckpointHook
    runner = RUNNERS.build(cfg) if 'runner_type' in cfg else Runner.from_cfg(cfg)
    runner.register_hook(PlainCheckpointHook())
    return runner


def train_main(task: str, argv: Optional[Sequence[str]] = None) -> None:
    """``train.py CONFIG [--work-dir DIR] [--resume [CKPT] | --overwrite] [--amp] [--auto-scale-lr]
    [--cfg-options ...]``.

    A fresh run (no --resume) into a work_dir that holds another run's checkpoints is refused unless --overwrite.
    """
    if task not in TASKS:
        raise ValueError(f'task must be one of {TASKS}, got {task!r}')
    parser = argparse.ArgumentParser(description=f'Train a LocalMamba {task} model')
    parser.add_argument('config', help='config file, e.g. configs/local_mamba/....py')
    parser.add_argument('--resume', nargs='?', const='auto', default=None,
                        help='resume from CKPT, or from the latest checkpoint in work_dir if no CKPT is given')
    parser.add_argument('--overwrite', action='store_true',
                        help='start afresh in a work_dir that holds another run, deleting its checkpoints')
    parser.add_argument('--amp', action='store_true', help='mixed-precision training (CUDA)')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale the lr by total batch size / auto_scale_lr.base_batch_size')
    _common_args(parser)
    args = parser.parse_args(argv)
    if args.overwrite and args.resume is not None:
        parser.error('--overwrite starts a run afresh and --resume continues one: give only one of them')
    cfg = _load_config(args)
    if args.amp:
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.loss_scale = 'dynamic'
    if args.auto_scale_lr:
        if 'base_batch_size' not in cfg.get('auto_scale_lr', {}):
            raise ValueError('--auto-scale-lr needs auto_scale_lr.base_batch_size in the config')
        cfg.auto_scale_lr.enable = True
    if args.resume == 'auto':
        cfg.resume, cfg.load_from = True, None
    elif args.resume is not None:
        cfg.resume, cfg.load_from = True, args.resume
    if not cfg.get('resume'):
        try:
            removed = claim_work_dir(cfg.work_dir, args.overwrite)
        except WorkDirError as err:
            _exit_error(str(err))
        if removed:
            print(f'--overwrite: deleted the earlier run\'s checkpoints {removed} in {cfg.work_dir}', file=sys.stderr)
    _run(_build_runner(cfg).train)


def test_main(task: str, argv: Optional[Sequence[str]] = None) -> None:
    """``test.py CONFIG CHECKPOINT [--out FILE_OR_DIR] [--show-dir DIR] [--show] [--tta] [--cfg-options ...]``."""
    if task not in TASKS:
        raise ValueError(f'task must be one of {TASKS}, got {task!r}')
    parser = argparse.ArgumentParser(description=f'Evaluate a LocalMamba {task} checkpoint')
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint written by train.py')
    parser.add_argument('--out', help='detection: a .pkl file for the raw results; segmentation: a folder for the '
                                      'predicted maps')
    parser.add_argument('--show', action='store_true', help='show predictions in a window')
    parser.add_argument('--show-dir', help='save images with predictions drawn to this folder')
    parser.add_argument('--wait-time', type=float, default=2, help='seconds each shown image stays')
    parser.add_argument('--tta', action='store_true', help='test-time augmentation (the config\'s tta_pipeline)')
    _common_args(parser)
    args = parser.parse_args(argv)
    cfg = _load_config(args)
    cfg.load_from = args.checkpoint
    if args.show or args.show_dir:
        hook = cfg.default_hooks.visualization
        hook.draw = True
        if args.show:
            hook.show, hook.wait_time = True, args.wait_time
        if args.show_dir:
            if task == 'detection':
                hook.test_out_dir = args.show_dir
            else:
                cfg.visualizer.save_dir = args.show_dir
    if args.tta:
        if 'tta_model' not in cfg or 'tta_pipeline' not in cfg:
            raise ValueError('--tta needs tta_model and tta_pipeline in the config')
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
        cfg.tta_model.module = cfg.model
        cfg.model = cfg.tta_model
    if args.out and task == 'segmentation':
        cfg.test_evaluator.output_dir = args.out
        cfg.test_evaluator.keep_results = True
    runner = _build_runner(cfg)
    if args.out and task == 'detection':
        from mmdet.evaluation import DumpDetResults
        if not args.out.endswith(('.pkl', '.pickle')):
            raise ValueError('--out must be a .pkl file for detection')
        runner.test_evaluator.metrics.append(DumpDetResults(out_file_path=args.out))
    _run(runner.test)
