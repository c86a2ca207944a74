"""Training and testing entry points on mmengine's Runner, shared by ``detection/tools`` and ``segmentation/tools``.

The command lines are those of mmdet 3.3 / mmseg 1.2 ``tools/train.py`` and ``tools/test.py``, plus
``--trust-checkpoint``. Adjustments for current software, applied here rather than in the configs:

* mmengine 0.10 pickles its message hub's ``HistoryBuffer`` and numpy values into its checkpoints, which torch >= 2.6
  refuses to load with ``weights_only=True``. The Runner of these entry points saves them as tensors and plain values
  instead (:class:`~classification.dense.mm_checkpoint.PlainCheckpointHook`), and mmengine's file and URL loads
  (``--resume``, ``load_from``, the tested checkpoint) go through
  :func:`classification.common.load_checkpoint_on_all_ranks`: ``weights_only=True``; a file that needs pickle (one
  written by plain mmengine) is refused unless ``--trust-checkpoint`` is given; a URL is downloaded once per node.
  Nothing changes torch's default for other loads.
* Without CUDA, ``AmpOptimWrapper`` (which needs a GPU) is replaced by ``OptimWrapper``, and distributed runs (which
  mmengine only starts on GPUs) get a gloo process group, CPU DistributedDataParallel and plain BatchNorm for SyncBN,
  for the Runner only: the config saved in the work_dir and in every checkpoint keeps what was asked (the log shows
  what ran), so that a GPU run of that saved copy, or a ``--resume`` on a GPU machine, trains with AMP and SyncBN.
* ``--trust-checkpoint`` also lets the LocalMamba backbones load pretrained weights that need pickle. It holds for its
  own command only: it is set on the built backbones (in the model config of a ``FlexibleRunner``, which builds the
  model in ``train()``), not in the config, which mmengine saves into the work_dir and every checkpoint (a later run
  of that saved config would trust the file again unasked).
* A checkpoint that is tested or resumed must fit the model (mmengine would load what fits and go on with the rest as
  initialised) and its backbone's scan directions, which every checkpoint records; pretrained backbone weights of
  another model are refused by the backbone.
* A test run saves its config as ``<timestamp>.py`` beside its log folder: mmengine names the copy after the config
  file, so ``test.py work_dirs/X/X.py CKPT`` (whose default work_dir is work_dirs/X) wrote the test's config (no
  pretrained backbone file, ``load_from`` the tested checkpoint) over the training run's.
* User errors end in one line (``error: ...``, exit status 2) instead of a traceback: an OpenMMLab package that
  cannot be imported (mmengine's traceback suggests PYTHONPATH), a setting the backbone refuses (directions,
  out_indices, ...), a neck or segmentation head set for other maps than the backbone gives (its out_indices
  changed, the neck's or heads' in_channels not), a detector's anchors or RoI extractors set for other strides than
  the maps its neck gives, a config file that does not exist, a ``--cfg-options`` item
  without ``=`` or with text where the config holds a number or a boolean, a misspelt ``--cfg-options`` key that a
  class refuses as an unexpected keyword argument, a work_dir that cannot be written, a checkpoint that cannot be
  used, DistributedDataParallel's stop on trained parameters that got no gradient (named, where DDP gives indices
  only). Ctrl-C and SIGTERM end in one line too (exit status 130 / 143), naming the checkpoint ``--resume`` would
  continue from.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import fnmatch
import importlib
import os
import os.path as osp
import re
import sys
from typing import TYPE_CHECKING, Any, Callable, NoReturn, Optional, Sequence

from ..common import TRUST_FLAG, CheckpointError, load_checkpoint_on_all_ranks
from ..common.checkpoint_io import atomic_write_bytes
from ..common.signals import exit_after_stop, interrupt_on_stop_signals
from .ddp_no_grad import NoGradParametersError, no_grad_parameters_problem
from .map_fit import find_unused_option, head_stride_problem, neck_input_problem, unread_maps_problem
from .run_inputs import (config_file_problem, is_backbone, missing_checkpoint, missing_data_path, missing_pretrained,
                         new_option_keys, walk_dicts, work_dir_problem, wrong_type_option)

if TYPE_CHECKING:   # mmengine is imported where a run starts
    from mmengine.config import Config

TASKS = ('detection', 'segmentation')
# The module a config's custom_imports names to register a task's plugin; importing it imports the task's framework.
PLUGINS = {'detection': 'detection.local_mamba', 'segmentation': 'segmentation.local_mamba'}
FRAMEWORKS = {'detection': 'mmdet', 'segmentation': 'mmseg'}
MM_INSTALL_HINT = 'run `bash tools/install_mm.sh` (mmcv 2.1.0 with its ops, mmengine, mmdet 3.3.0, mmseg 1.2.2)'
# What an mmengine run leaves in its work_dir that a fresh run there would overwrite piecemeal: the checkpoints of
# mmengine's CheckpointHook and the pointer --resume follows.
RUN_CHECKPOINTS = ('epoch_*.pth', 'iter_*.pth', 'best_*.pth', 'last_checkpoint')
# The settings of mmengine's AmpOptimWrapper that its OptimWrapper does not take.
AMP_ONLY_KEYS = ('loss_scale', 'dtype', 'use_fsdp')
# torch's BatchNorm refusal of one value per channel: UperNet's 1x1 pooled map of a step of one image.
ONE_VALUE_PER_CHANNEL = 'Expected more than 1 value per channel when training'
# The keyword a constructor refused, in its TypeError: traced back to the --cfg-options key that added it.
UNEXPECTED_KEYWORD = re.compile(r"unexpected keyword argument '(\w+)'")


def _dict_text(value: Any) -> bool:
    """True for a ``--cfg-options`` value that holds the text 'dict(...)' (itself or in a list or tuple): mmengine's
    parser reads no dicts, and passes one of a single item on as that text."""
    if isinstance(value, (list, tuple)):
        return any(_dict_text(item) for item in value)
    return isinstance(value, str) and value.replace(' ', '').startswith('dict(')


def add_cfg_options(parser: argparse.ArgumentParser, help_text: str) -> None:
    """Add mmengine's ``--cfg-options KEY=VALUE ...``; an item without ``=``, or whose value mmengine's parser cannot
    read (unbalanced brackets, a ``dict(...)``: of several items a RecursionError, of one item the text 'dict(...)',
    refused deep in the run), is a usage error (exit status 2), not mmengine's traceback."""
    from mmengine.config import DictAction

    class CfgOptions(DictAction):
        def __call__(self, parser, namespace, values, option_string=None):
            for item in values:
                if '=' not in item:
                    raise argparse.ArgumentError(self, f'expected KEY=VALUE items, got {item!r}')
            for item in values:     # one at a time, each added to those before it, to name the one it cannot read
                try:
                    super().__call__(parser, namespace, [item], option_string)
                    unread = _dict_text(getattr(namespace, self.dest)[item.split('=', 1)[0]])
                except (AssertionError, RecursionError):
                    unread = True
                if unread:
                    raise argparse.ArgumentError(
                        self, f'cannot read the value of {item!r}: a value is a number, text, True, False, None or '
                              f'a [list] or (tuple) of them, its brackets balanced; set a dict in a config file')

    parser.add_argument('--cfg-options', nargs='+', action=CfgOptions, metavar='KEY=VALUE', help=help_text)


def _common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--work-dir', help='folder for logs and checkpoints (default: ./work_dirs/<config name>)')
    add_cfg_options(parser, 'override config entries, e.g. model.backbone.pretrained=PATH '
                            'train_dataloader.batch_size=4')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none',
                        help='job launcher (dist_train.sh / dist_test.sh pass pytorch)')
    parser.add_argument(TRUST_FLAG, action='store_true',
                        help='load checkpoints that need pickle (able to run code): only files from a trusted source')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0, help=argparse.SUPPRESS)


def safe_checkpoint_loader(trust: bool) -> Callable[[str, Any], dict]:
    """An mmengine checkpoint loader (``loader(filename, map_location)``) that reads on the CPU with
    :func:`load_checkpoint_on_all_ranks` (``weights_only=True`` unless ``trust``; a URL downloaded once per node, as
    mmengine's own ``load_from_http`` downloads it on rank 0 first). The Runner moves the weights and the optimizer
    state to their devices as it loads them."""

    def load(filename: str, map_location: Any = None) -> dict:
        return load_checkpoint_on_all_ranks(filename, trust=trust)

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


def _stop_on(problem: Optional[str]) -> None:
    """End the process with ``problem`` (one of the ``run_inputs`` / ``map_fit`` checks' messages) unless it is None."""
    if problem:
        _exit_error(problem)


def framework_problem(task: Optional[str]) -> Optional[str]:
    """Why the plugin of ``task`` cannot be imported (mmengine, mmcv with its ops, or the task's mmdet / mmseg missing
    or broken: mmengine would blame the config's custom_imports and suggest PYTHONPATH), or None when it can;
    ``task`` None: mmengine alone."""
    try:
        importlib.import_module(PLUGINS[task] if task else 'mmengine.config')
    except ImportError as err:
        if (err.name or '').split('.')[0] in TASKS:     # the plugin itself: this repository is not importable
            return (f'cannot import {PLUGINS[task]} ({err}): run `pip install -e .` in the repository, or put its '
                    f'root on PYTHONPATH')
        needs = f'mmengine, mmcv and {FRAMEWORKS[task]}' if task else 'mmengine'
        return f'{task or "this tool"} needs {needs}; the import failed ({err}): {MM_INSTALL_HINT}'
    return None


def read_config(path: str) -> Config:
    """``Config.fromfile(path)``, a failing import of the config's ``custom_imports`` (an OpenMMLab package missing or
    broken) ending the process in one line that names the import that failed (exit status 2)."""
    from mmengine.config import Config

    try:
        return Config.fromfile(path)
    except ImportError as err:
        _exit_error(f'{path}: importing what the config needs failed ({_first_import_error(err)}): '
                    f'{MM_INSTALL_HINT}')


def _first_import_error(err: ImportError) -> ImportError:
    """The ImportError that ``err`` was raised in handling of, or from, the first of that chain (mmengine wraps the
    failed import twice)."""
    while isinstance(err.__cause__ or err.__context__, ImportError):
        err = err.__cause__ or err.__context__
    return err


def check_config_file(path: str) -> None:
    """End the process in one line (exit status 2) if the config file does not exist or sets nothing, which mmengine
    reports with a traceback."""
    _stop_on(config_file_problem(path))


def merge_cfg_options(cfg: Config, options: Optional[dict]) -> list[str]:
    """Merge ``--cfg-options`` into ``cfg``, a value of another type than the config's ending the process in one line
    (exit status 2); returns the keys the config did not have (misspellings, as :func:`run_step` names them)."""
    if not options:
        return []
    new_options = new_option_keys(cfg, options)
    _stop_on(wrong_type_option(cfg, options))
    cfg.merge_from_dict(options)
    return new_options


def run_step(step: Callable[[], Any], new_options: Sequence[str] = (), resume_from: Optional[str] = None) -> Any:
    """Run ``step`` (build the Runner and train or test, or build a model) and return its result. A checkpoint that
    cannot be used, a setting the backbone refuses (directions, out_indices, ...), a BatchNorm step on one image,
    DistributedDataParallel's stop on parameters that got no gradient (:func:`_train`), or
    an unexpected keyword argument that is a part of one of ``new_options`` (``--cfg-options`` keys the config did
    not have: a misspelling), end the process with one line (exit status 2); Ctrl-C, SIGTERM, SIGUSR1 or SIGHUP
    (``interrupt_on_stop_signals``) with one line naming ``resume_from`` (the work_dir whose latest checkpoint
    --resume continues from, for training) and exit status 128 + the signal's number (130, 143, 138, 129)."""
    from .backbones import BackboneSettingError

    try:
        with interrupt_on_stop_signals():
            return step()
    except (CheckpointError, NoGradParametersError) as err:
        _exit_error(str(err))
    except BackboneSettingError as err:
        _exit_error(f'model.backbone: {err}')
    except ValueError as err:
        if ONE_VALUE_PER_CHANNEL not in str(err):
            raise
        _exit_error(f'{str(err).strip()}: a BatchNorm layer (e.g. of UperNet\'s 1x1 pooled map) saw one image; '
                    f'{_one_image_advice()}')
    except TypeError as err:
        found = UNEXPECTED_KEYWORD.search(str(err))
        # the key up to the refused keyword: model.backbone.norm_cfg for model.backbone.norm_cfg.type
        typos = [parts[:parts.index(found.group(1)) + 1] for parts in (key.split('.') for key in new_options)
                 if found and found.group(1) in parts]
        if not typos:
            raise
        _exit_error(f'{str(err).strip().splitlines()[-1]}: --cfg-options {".".join(typos[0])} is not a key of the '
                    f'config (misspelt?)')
    except KeyboardInterrupt as stop:   # Ctrl-C, or StopSignalReceived
        exit_after_stop(stop, lambda: _resume_hint(resume_from) if resume_from else '')


def _one_image_advice() -> str:
    """What a BatchNorm step of one image asks for in this run: SyncBN counts the images of all processes only on
    GPUs with several processes (where it never refuses one image per process); one process's BatchNorm, SyncBN
    included, and the BatchNorm that replaces SyncBN without CUDA, normalise each process's own images."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return ("train with at least 2 images per step (train_dataloader.batch_size): a single process's BatchNorm, "
                "SyncBN included, normalises its own images")
    if not torch.cuda.is_available():
        return ("train with at least 2 images per process and step (train_dataloader.batch_size): without CUDA, "
                "SyncBN runs as BatchNorm, which normalises each process's own images")
    return ("train with at least 2 images per process and step (train_dataloader.batch_size): a BatchNorm layer "
            "normalises each process's own images (SyncBN counts those of all processes)")


def _resume_hint(work_dir: str) -> str:
    """How to continue an interrupted training run in ``work_dir``, naming the checkpoint :func:`latest_checkpoint`
    takes."""
    pointed = _pointed_checkpoint(work_dir)
    if pointed is None:
        return '; no checkpoint was saved yet, nothing to resume'
    named, own = pointed
    return f'; the command with --resume (and no path) continues from {own if osp.isfile(own) else named}'


def _load_config(args: argparse.Namespace, task: Optional[str] = None):
    """Read the config (once it is found to exist, the plugin of ``task`` must import), apply CLI overrides, check
    that the neck or the heads take the maps the backbone gives, at the strides they are set for; set work_dir. Sets
    ``args.new_options`` to the ``--cfg-options`` keys the config did not have."""
    _route_checkpoint_loads(args.trust_checkpoint)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    check_config_file(args.config)
    _stop_on(framework_problem(task))
    cfg = read_config(args.config)
    cfg.launcher = args.launcher
    args.new_options = merge_cfg_options(cfg, args.cfg_options)
    _stop_on(neck_input_problem(cfg.get('model'), bare_single_map=task == 'detection')
             or head_stride_problem(cfg.get('model')))
    if args.work_dir:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
    return cfg


def _for_this_machine(cfg: Config) -> Config:
    """A copy of ``cfg`` that runs here: without CUDA, ``OptimWrapper`` for ``AmpOptimWrapper`` and, in a distributed
    run, :func:`_cpu_distributed`. ``cfg`` stays as asked: it is what the work_dir and the checkpoints keep, so that
    a GPU run of the saved copy trains with AMP and SyncBN again."""
    import torch
    from mmengine.logging import print_log

    machine_cfg = copy.deepcopy(cfg)
    if not torch.cuda.is_available():
        if machine_cfg.get('optim_wrapper', {}).get('type') == 'AmpOptimWrapper':
            machine_cfg.optim_wrapper.type = 'OptimWrapper'
            for amp_only in AMP_ONLY_KEYS:     # OptimWrapper refuses them
                machine_cfg.optim_wrapper.pop(amp_only, None)
            print_log('no CUDA: AmpOptimWrapper replaced by OptimWrapper', logger='current')
        if machine_cfg.launcher != 'none':
            _cpu_distributed(machine_cfg)
    return machine_cfg


class WorkDirError(ValueError):
    """A fresh run would write into another run's work_dir."""


def previous_checkpoints(work_dir: str) -> list[str]:
    """Names of the files in ``work_dir`` that show an earlier run (``RUN_CHECKPOINTS``)."""
    if not osp.isdir(work_dir):
        return []
    return sorted(name for name in os.listdir(work_dir) if any(fnmatch.fnmatch(name, p) for p in RUN_CHECKPOINTS))


def _first_names(names: Sequence[str]) -> str:
    """The first four of a work_dir's checkpoint ``names``, for an error line."""
    return ', '.join(names[:4]) + (', ...' if len(names) > 4 else '')


def check_resume_folder(work_dir: str, checkpoint: str) -> None:
    """Refuse ``--resume checkpoint`` of another run into a ``work_dir`` that holds a run's checkpoints: mmengine
    would write the resumed run's checkpoints over that run's, file by file."""
    found = previous_checkpoints(work_dir)
    own = osp.realpath(osp.dirname(osp.abspath(checkpoint)))
    if found and own != osp.realpath(work_dir):
        raise WorkDirError(f'--resume {checkpoint} continues a run of another folder than {work_dir}, which holds a '
                           f'run ({_first_names(found)}) its checkpoints would overwrite: give --work-dir '
                           f'{osp.dirname(checkpoint)} to continue it in its own folder, or a --work-dir of its own')


def _pointed_checkpoint(work_dir: str) -> Optional[tuple[str, str]]:
    """The checkpoint the work_dir's ``last_checkpoint`` names, and the work_dir's own file of that name (mmengine
    writes an absolute path there, which a moved or copied work_dir no longer means); None without a pointer."""
    pointer = osp.join(work_dir, 'last_checkpoint')
    if not osp.isfile(pointer):
        return None
    with open(pointer, encoding='utf-8') as f:
        named = f.read().strip()
    return named, osp.join(work_dir, osp.basename(named))


def latest_checkpoint(work_dir: str) -> Optional[str]:
    """The checkpoint ``--resume`` without a path continues: the work_dir's own file of the name its
    ``last_checkpoint`` holds. mmengine writes an absolute path there, and so resumed a moved work_dir from a file no
    longer there (or a copied one from the original folder's file). None (mmengine follows the pointer) without a
    pointer, or when the work_dir has no such file and the named one exists or is a URI (``CheckpointHook(out_dir=...)``
    saves elsewhere); a pointer to a local file that exists in neither place ends the process in one line."""
    pointed = _pointed_checkpoint(work_dir)
    if pointed is None:
        return None
    named, own = pointed
    if osp.isfile(own):
        return own
    if '://' not in named and not osp.isfile(named):
        _exit_error(f'--resume: {osp.join(work_dir, "last_checkpoint")} names {named}, which does not exist (nor does '
                    f'{own}): give the checkpoint to continue from, --resume {work_dir}/CHECKPOINT')
    return None


def claim_work_dir(work_dir: str, overwrite: bool) -> list[str]:
    """Refuse a fresh run in a ``work_dir`` that holds another run's checkpoints, unless ``overwrite``: then return
    their names, which the run deletes once it has started (``EarlierRunDeletion``; the logs' folders stay)."""
    found = previous_checkpoints(work_dir)
    if found and not overwrite:
        raise WorkDirError(f'{work_dir} already holds a run ({_first_names(found)}); continue it with --resume, start '
                           f'afresh there with --overwrite (deletes its checkpoints), or choose another --work-dir')
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
    walk_dicts(cfg.model, _replace_sync_bn)


def _replace_sync_bn(node: dict) -> None:
    if node.get('type') == 'SyncBN':
        node['type'] = 'BN'


def _trust_backbone(node: dict) -> None:
    if is_backbone(node):
        node['trust_checkpoint'] = True


def _skip_pretrained(node: dict) -> None:
    if is_backbone(node):
        for key in ('pretrained', 'pretrained_ckpt', 'init_cfg'):
            if node.get(key) is not None:
                node[key] = None


def _unnamed(cfg: Config) -> Config:
    """``cfg`` without its file's name, after which mmengine's Runner names the copy it saves in the work_dir: a test
    run's copy is then ``<timestamp>.py``, beside its log folder, and leaves the training run's alone."""
    from mmengine.config import Config
    return Config(cfg.to_dict())


def resumes_a_checkpoint(cfg: Config) -> bool:
    """True when the run continues from a checkpoint: ``--resume CKPT``, or ``--resume`` with a ``last_checkpoint``
    in the work_dir (without one, mmengine starts the run afresh)."""
    return bool(cfg.get('resume')) and bool(cfg.get('load_from')
                                            or osp.isfile(osp.join(cfg.work_dir, 'last_checkpoint')))


def _file_content(path: str) -> Optional[bytes]:
    """The bytes of the file ``path``; None when there is none."""
    try:
        with open(path, 'rb') as f:
            return f.read()
    except FileNotFoundError:
        return None


def _put_back(path: str, content: Optional[bytes]) -> None:
    """Make the file ``path`` hold ``content`` again (:func:`_file_content`; None: no file)."""
    if content is None:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
    else:
        atomic_write_bytes(path, content)


def _build_runner(cfg, fit_source: Optional[str] = None, overwritten: Sequence[str] = (), trust: bool = False,
                  saved_cfg: Optional[Config] = None):
    """mmengine's Runner with the weights-only checkpoint hook, and, given ``fit_source`` (the checkpoint to test or
    resume, as named in errors), the check that its weights fit the model; ``overwritten``: the earlier run's
    checkpoint files in the work_dir, deleted once the run has started, when its config replaces the earlier run's
    copy; ``trust``: the backbones may load pretrained
    weights that need pickle (``--trust-checkpoint``); ``saved_cfg``: the config the work_dir's copy and every
    checkpoint keep (default ``cfg``)."""
    import torch
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner
    from mmengine.visualization import LocalVisBackend

    from .backbones import DenseBackbone
    from .mm_checkpoint import (CheckpointFitHook, EarlierRunDeletion, LoadFromDirectionsHook, PlainCheckpointHook,
                                ScanDirectionsHook)
    machine_cfg = _for_this_machine(cfg)
    saved_copy = osp.join(cfg.work_dir, osp.basename(cfg.filename or ''))
    earlier_copy = _file_content(saved_copy) if overwritten else None
    runner = RUNNERS.build(machine_cfg) if 'runner_type' in cfg else Runner.from_cfg(machine_cfg)
    # in every checkpoint, and in the work_dir's copy, over the one just dumped
    runner.cfg = copy.deepcopy(cfg if saved_cfg is None else saved_cfg)
    if overwritten:     # the earlier run's copy stays beside its checkpoints until EarlierRunDeletion deletes them
        if runner.rank == 0:
            _put_back(saved_copy, earlier_copy)
    else:
        runner.dump_config()
    if runner.rank == 0:    # and <timestamp>/vis_data/config.py (a backend that appends, as TensorBoard's, is left)
        for backend in runner.visualizer._vis_backends.values():
            if isinstance(backend, LocalVisBackend):
                backend.add_config(runner.cfg)
    if trust:   # on the modules, which load their weights in runner.train(): the saved config leaves it out
        if isinstance(runner.model, torch.nn.Module):
            for module in runner.model.modules():
                if isinstance(module, DenseBackbone):
                    module.trust_checkpoint = True
        else:   # a FlexibleRunner builds the model in train(), from this config of it
            runner.model = copy.deepcopy(runner.model)
            walk_dicts(runner.model, _trust_backbone)
    runner.register_hook(PlainCheckpointHook())
    runner.register_hook(ScanDirectionsHook())
    if fit_source is not None:
        runner.register_hook(CheckpointFitHook(fit_source))
    elif cfg.get('load_from'):
        runner.register_hook(LoadFromDirectionsHook(cfg.load_from))
    if overwritten:
        runner.register_hook(EarlierRunDeletion(cfg.work_dir, overwritten))
    return runner


def _train(runner) -> None:
    """``runner.train()``; DistributedDataParallel's stop on trained parameters that got no gradient raised as a
    :class:`NoGradParametersError` whose line names them (from ``runner.model``, the wrapped model, and ``runner.cfg``,
    the config as asked), any other error as it is."""
    try:
        runner.train()
    except RuntimeError as err:
        problem = no_grad_parameters_problem(str(err), runner.model, find_unused_option(runner.cfg))
        if problem is None:
            raise
        raise NoGradParametersError(problem) from err


def train_main(task: str, argv: Optional[Sequence[str]] = None) -> None:
    """``train.py CONFIG [--work-dir DIR] [--resume [CKPT] | --overwrite] [--amp] [--auto-scale-lr]
    [--cfg-options ...]``.

    A fresh run (no --resume) into a work_dir that holds another run's checkpoints is refused unless --overwrite, and
    so is --resume (no CKPT) into one whose checkpoints lack the ``last_checkpoint`` that names the one to continue.
    """
    if task not in TASKS:
        raise ValueError(f'task must be one of {TASKS}, got {task!r}')
    _stop_on(framework_problem(None))    # the parser's --cfg-options needs mmengine
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
    cfg = _load_config(args, task)
    _stop_on(unread_maps_problem(cfg))
    import torch
    if args.amp and not torch.cuda.is_available():
        _exit_error("--amp needs CUDA (mmengine's AmpOptimWrapper trains on GPUs); this machine has none")
    if args.amp:
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.loss_scale = 'dynamic'
    if args.auto_scale_lr:
        if 'base_batch_size' not in cfg.get('auto_scale_lr', {}):
            _exit_error('--auto-scale-lr needs auto_scale_lr.base_batch_size in the config')
        cfg.auto_scale_lr.enable = True
    # What the work_dir's copy of the config keeps: the run as asked, the backbone's pretrained files included (a
    # resumed run does not read them), without --resume's resume=True and load_from, with which a run of that copy
    # without --resume resumed from the checkpoint this run started from and wrote over the later ones.
    saved_cfg = copy.deepcopy(cfg)
    if args.resume == 'auto':
        cfg.resume, cfg.load_from = True, latest_checkpoint(cfg.work_dir)
    elif args.resume is not None:
        _stop_on(missing_checkpoint(args.resume, '--resume'))
        cfg.resume, cfg.load_from = True, args.resume
    if resumes_a_checkpoint(cfg):  # it holds every weight: the backbone's pretrained file is not read (nor needed)
        walk_dicts(cfg.model, _skip_pretrained)
    else:
        _stop_on(missing_pretrained(cfg.model))
        if cfg.get('resume'):   # mmengine then logs "Auto resumed from the latest checkpoint None."
            found = previous_checkpoints(cfg.work_dir)
            if found:   # copied without the pointer: a fresh run there would write its checkpoints over them
                _exit_error(f'--resume: {cfg.work_dir} holds checkpoints ({_first_names(found)}) but no '
                            f'last_checkpoint, which names the one to continue from: give it, --resume '
                            f'{cfg.work_dir}/CHECKPOINT')
            print(f'--resume: {cfg.work_dir} holds no checkpoint (no last_checkpoint): the run starts afresh',
                  file=sys.stderr)
    _stop_on(missing_data_path(cfg, ['train_dataloader'] + (['val_dataloader'] if cfg.get('val_cfg') else [])))
    overwritten: list[str] = []
    try:
        if not cfg.get('resume'):
            overwritten = claim_work_dir(cfg.work_dir, args.overwrite)
        elif cfg.load_from:
            check_resume_folder(cfg.work_dir, cfg.load_from)
    except WorkDirError as err:
        _exit_error(str(err))
    _stop_on(work_dir_problem(cfg.work_dir))
    fit_source = (cfg.load_from or f'the latest checkpoint in {cfg.work_dir}') if cfg.get('resume') else None
    run_step(lambda: _train(_build_runner(cfg, fit_source, overwritten, args.trust_checkpoint, saved_cfg)),
             args.new_options, resume_from=cfg.work_dir)


def test_main(task: str, argv: Optional[Sequence[str]] = None) -> None:
    """``test.py CONFIG CHECKPOINT [--out FILE_OR_DIR] [--show-dir DIR] [--show] [--tta] [--cfg-options ...]``."""
    if task not in TASKS:
        raise ValueError(f'task must be one of {TASKS}, got {task!r}')
    _stop_on(framework_problem(None))    # the parser's --cfg-options needs mmengine
    parser = argparse.ArgumentParser(description=f'Evaluate a LocalMamba {task} checkpoint')
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint written by train.py')
    parser.add_argument('--out', help='detection: a .pkl file for the raw results; segmentation: a folder for the '
                                      'predicted maps')
    parser.add_argument('--show', action='store_true', help='show predictions in a window')
    parser.add_argument('--show-dir', help='save every image with its predictions drawn: detection in DIR (under '
                                           'work_dir/<timestamp>/ if relative), segmentation in DIR/vis_data/vis_image')
    parser.add_argument('--wait-time', type=float, default=2, help='seconds each shown image stays')
    parser.add_argument('--tta', action='store_true', help='test-time augmentation (the config\'s tta_pipeline)')
    _common_args(parser)
    args = parser.parse_args(argv)
    if args.out and task == 'detection' and not args.out.endswith(('.pkl', '.pickle')):
        parser.error(f'--out must be a .pkl file for detection, got {args.out}')
    cfg = _load_config(args, task)
    # The weights only: the config a resumed run saved holds resume=True, with which mmengine's test resumed the
    # training state (built the optimizer and the training set, which must then be at hand).
    cfg.load_from, cfg.resume = args.checkpoint, False
    walk_dicts(cfg.model, _skip_pretrained)  # the checkpoint holds every weight: the backbone's file is not read
    if args.show or args.show_dir:
        hook = cfg.default_hooks.visualization
        hook.draw = True
        if task == 'segmentation':
            hook.interval = 1   # mmseg's hook draws every 50th image by default: of a small test set none
        if args.show:
            hook.show, hook.wait_time = True, args.wait_time
        if args.show_dir:
            if task == 'detection':
                hook.test_out_dir = args.show_dir
            else:
                cfg.visualizer.save_dir = args.show_dir
    if args.tta:
        if 'tta_model' not in cfg or 'tta_pipeline' not in cfg:
            _exit_error('--tta needs tta_model and tta_pipeline in the config')
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
        cfg.tta_model.module = cfg.model
        cfg.model = cfg.tta_model
    if args.out and task == 'segmentation':
        cfg.test_evaluator.output_dir = args.out
        cfg.test_evaluator.keep_results = True
    _stop_on(missing_checkpoint(args.checkpoint))
    _stop_on(missing_data_path(cfg, ['test_dataloader'], images_only=True))
    _stop_on(work_dir_problem(cfg.work_dir))

    def test() -> None:
        runner = _build_runner(_unnamed(cfg), args.checkpoint)
        if args.out and task == 'detection':
            from mmdet.evaluation import DumpDetResults
            runner.test_evaluator.metrics.append(DumpDetResults(out_file_path=args.out))
        runner.test()

    run_step(test, args.new_options)
