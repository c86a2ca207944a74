"""What a det/seg run reads, checked before mmengine builds anything: each check returns the one-line error for the
first missing input or ``--cfg-options`` value of the wrong kind (None when all is right), which mmengine would
otherwise report with a traceback, often after building the datasets and the model. Also the walk over config trees
that finds our backbones in them; whether the necks and heads fit our backbone's maps is :mod:`.map_fit`'s."""
from __future__ import annotations

import os
import os.path as osp
import tempfile
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional, Sequence

if TYPE_CHECKING:   # mmengine is imported where a run starts
    from mmengine.config import Config

# The backbone classes registered by the det/seg plugins.
BACKBONES = ('MM_LocalVim', 'MM_LocalVSSM')
# data_prefix keys of image folders (mmdet, mmseg): the only ones a test set without annotations reads.
IMAGE_PREFIXES = ('img', 'img_path')


def walk_dicts(node: Any, visit: Callable[[dict], None]) -> None:
    """Call ``visit`` on every dict in a config tree (dicts, lists, tuples), parents before children."""
    for _, found in keyed_dicts(node, ''):
        visit(found)


def type_name(node: dict) -> str:
    """The class name a config dict's ``type`` names (a registry name, scoped or not, or the class itself)."""
    kind = node.get('type')
    name = kind if isinstance(kind, str) else getattr(kind, '__name__', '')
    return name.rsplit('.', 1)[-1]


def is_backbone(node: dict) -> bool:
    """True for the config dict of one of our backbones."""
    return type_name(node) in BACKBONES


def config_file_problem(path: str) -> Optional[str]:
    """A config file that does not exist, or sets nothing (empty, or only comments)."""
    if not osp.isfile(path):
        return f'config file not found: {path}'
    with open(path, encoding='utf-8', errors='replace') as f:
        if all(not line.strip() or line.lstrip().startswith('#') for line in f):
            return f'{path}: the config is empty'
    return None


def work_dir_problem(work_dir: str) -> Optional[str]:
    """A work_dir that cannot be created or written to (it is created when it can be)."""
    if osp.exists(work_dir) and not osp.isdir(work_dir):
        return f'work_dir {work_dir} is a file, not a folder'
    try:
        os.makedirs(work_dir, exist_ok=True)
        with tempfile.TemporaryFile(dir=work_dir):
            pass
    except OSError as err:
        return f'cannot write to work_dir {work_dir}: {err.strerror or err}'
    return None


def missing_checkpoint(path: str, flag: Optional[str] = None) -> Optional[str]:
    """A local checkpoint given to ``flag`` (None: the positional CHECKPOINT) that does not exist, or is a folder (a
    work_dir: its checkpoints are named); URLs are not checked."""
    where = f'{flag}: ' if flag else ''
    if osp.isdir(path):
        found = sorted(name for name in os.listdir(path) if name.endswith('.pth'))
        shown = f' ({", ".join(found[:4])}{", ..." if len(found) > 4 else ""})' if found else ''
        return f'{where}{path} is a folder: give one of its checkpoint files{shown}'
    if '://' not in path and not osp.isfile(path):
        return f'{where}checkpoint not found: {path}'
    return None


def keyed_dicts(node: Any, where: str) -> Iterator[tuple[str, dict]]:
    """(config key, dict) of every dict in the config tree ``node`` (dicts, lists, tuples) that sits at the key
    ``where``, parents before children; list items are keyed by their index, as ``--cfg-options`` names them."""
    if isinstance(node, dict):
        yield where, node
        for key, value in node.items():
            yield from keyed_dicts(value, f'{where}.{key}')
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            yield from keyed_dicts(value, f'{where}.{i}')


def missing_pretrained(model_cfg: Any) -> Optional[str]:
    """A backbone given an init_cfg it does not take, two different pretrained files, or a pretrained file that does
    not exist (the backbone finds out in ``init_weights``, after the datasets are built), named by its key under
    ``model`` (``model_cfg``)."""
    from .backbones import init_cfg_message, missing_pretrained_message, pretrained_files, two_pretrained_message

    for where, node in keyed_dicts(model_cfg, 'model'):
        if not is_backbone(node):
            continue
        name, files = type_name(node), pretrained_files(node)
        message = init_cfg_message(name, node.get('init_cfg'), f'{where}.') \
            or two_pretrained_message(name, files, f'{where}.')
        for setting, path in files.items():
            message = message or missing_pretrained_message(name, path, f'{where}.{setting}')
        if message:
            return message
    return None


def _datasets(node: Any, where: str) -> Iterator[tuple[str, dict]]:
    """(config key, dict) of each dataset config under a dataloader's ``dataset``, wrapped ones included
    (``dataset`` of RepeatDataset and the like, ``datasets`` of ConcatDataset)."""
    if not isinstance(node, dict):
        return
    yield where, node
    yield from _datasets(node.get('dataset'), f'{where}.dataset')
    for i, inner in enumerate(node.get('datasets') or ()):
        yield from _datasets(inner, f'{where}.datasets.{i}')


def _missing_dataset_path(dataset: dict, where: str, prefixes: Optional[Sequence[str]]) -> Optional[str]:
    """What a local dataset config names that does not exist: its data_root, ann_file or data_prefix folders (only
    those keyed by ``prefixes`` unless None), joined to data_root as mmengine's BaseDataset joins them. Datasets read
    through another storage backend (``backend_args``, or a URI) are not checked."""
    root = dataset.get('data_root') or ''
    if dataset.get('backend_args') or '://' in root:
        return None
    if root and not osp.isdir(root):
        return (f'{where}.data_root: {root} is not a folder (put the dataset there, or give its place with '
                f'--cfg-options {where}.data_root=PATH)')

    def local(path: Any) -> Optional[str]:
        if not isinstance(path, str) or not path or '://' in path:
            return None
        return path if osp.isabs(path) or not root else osp.join(root, path)
    ann_file = local(dataset.get('ann_file'))
    if ann_file and not osp.isfile(ann_file):
        return f'{where}.ann_file: {ann_file} not found'
    for key, prefix in (dataset.get('data_prefix') or {}).items():
        folder = local(prefix) if prefixes is None or key in prefixes else None
        if folder and not osp.isdir(folder):
            return f'{where}.data_prefix.{key}: {folder} is not a folder'
    return None


def _missing_evaluator_file(evaluator: Any, where: str) -> Optional[str]:
    """A local ``ann_file`` that a metric of the evaluator config ``evaluator`` (a dict, or a list of them) reads and
    that does not exist: COCO's metrics read their own copy of the annotations, at the path the config gave them."""
    metrics = evaluator if isinstance(evaluator, (list, tuple)) else [evaluator]
    for i, metric in enumerate(metrics):
        ann_file = metric.get('ann_file') if isinstance(metric, dict) else None
        if not isinstance(ann_file, str) or not ann_file or '://' in ann_file or metric.get('backend_args'):
            continue
        if not osp.isfile(ann_file):
            key = f'{where}.{i}' if metric is not evaluator else where
            return (f'{key}.ann_file: {ann_file} not found (the evaluator reads the annotations itself: give their '
                    f'place with --cfg-options {key}.ann_file=PATH)')
    return None


def missing_data_path(cfg: Any, loaders: Sequence[str], images_only: bool = False) -> Optional[str]:
    """A local path that a dataset of one of ``loaders`` (config keys), or the evaluator beside it
    (``val_dataloader``: ``val_evaluator``), names and that does not exist. With ``images_only`` (a test set, which
    may have no annotations) of the data_prefix folders only the image ones."""
    for loader in loaders:
        if not cfg.get(loader):
            continue
        for where, dataset in _datasets(cfg[loader].get('dataset'), f'{loader}.dataset'):
            message = _missing_dataset_path(dataset, where, IMAGE_PREFIXES if images_only else None)
            if message:
                return message
        evaluator = loader.replace('_dataloader', '_evaluator')
        message = _missing_evaluator_file(cfg.get(evaluator), evaluator)
        if message:
            return message
    return None


_ABSENT = object()


def _config_entry(tree: dict, key: str) -> Any:
    """The value of the dotted ``key`` (list items keyed by their index) in ``tree``, or ``_ABSENT``."""
    node: Any = tree
    for part in key.split('.'):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, (list, tuple)) and part.isdecimal() and int(part) < len(node):
            node = node[int(part)]
        else:
            return _ABSENT
    return node


def new_option_keys(cfg: Config, options: dict) -> list[str]:
    """The keys of ``options`` (``--cfg-options``) that name no entry of ``cfg``: new entries, or misspelt ones."""
    tree = cfg.to_dict()
    return [key for key in options if _config_entry(tree, key) is _ABSENT]


def wrong_type_option(cfg: Config, options: dict) -> Optional[str]:
    """Why the first ``--cfg-options`` item that gives text where ``cfg`` holds a number or a boolean is refused
    (``max_iters=8O000``, ``find_unused_parameters=yes``: mmengine would pass the text on to fail deep in a run), or
    None when every item fits."""
    tree = cfg.to_dict()
    for key, value in options.items():
        old = _config_entry(tree, key)
        if not isinstance(value, str) or old is _ABSENT:
            continue
        if isinstance(old, bool):
            return f'--cfg-options {key}={value}: the config holds True or False there ({old}), not text'
        if isinstance(old, (int, float)):
            return f'--cfg-options {key}={value}: the config holds a number there ({old}), not text'
    return None
