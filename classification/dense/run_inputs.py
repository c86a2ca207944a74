"""What a det/seg run reads, checked before mmengine builds anything: each check returns the one-line error for the
first missing input or ``--cfg-options`` value of the wrong kind (None when all is right), which mmengine would
otherwise report with a traceback, often after building the datasets and the model. Also the walk over config trees
that finds our backbones in them."""
from __future__ import annotations

import os
import os.path as osp
import tempfile
from typing import TYPE_CHECKING, Any, Callable, Iterator, NamedTuple, Optional, Sequence

from .neck_maps import Misfit, NeckMaps, judges, neck_gives, neck_misfit, option_list, positive_int

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


def _head_fix(where: str, in_index: Any, in_channels: Any, channels: Sequence[int]) -> Optional[str]:
    """The ``--cfg-options`` items that make the mmseg head at ``where`` (``in_index`` and ``in_channels`` as set)
    take the maps of ``channels`` it gets (the backbone's, or the neck's); None when it takes them as set, or when its
    settings do not say (in_channels unset, or not of in_index's kind: the head itself refuses that)."""
    count = len(channels)
    if isinstance(in_index, int) and isinstance(in_channels, int):
        if -count <= in_index < count and channels[in_index] == in_channels:
            return None
        if in_channels in channels:     # a map of its channels is still given (the deepest one, as -1 takes)
            return f'{where}.in_index={count - 1 - channels[::-1].index(in_channels)}'
        if -count <= in_index < count:
            return f'{where}.in_channels={channels[in_index]}'
        return f'{where}.in_index={count - 1} {where}.in_channels={channels[-1]}'
    if not (isinstance(in_index, (list, tuple)) and isinstance(in_channels, (list, tuple))
            and len(in_index) == len(in_channels) and all(isinstance(i, int) for i in in_index)):
        return None
    if all(-count <= i < count for i in in_index):
        wanted = [channels[i] for i in in_index]
        return None if list(in_channels) == wanted else f'{where}.in_channels={option_list(wanted)}'
    return f'{where}.in_index={option_list(range(count))} {where}.in_channels={option_list(channels)}'


def _fit_problem(where: str, takes: str, given: str, fix: str) -> str:
    """The line for the neck or head at ``where`` that ``takes`` other maps than those ``given`` (words)."""
    return f'{where} {takes}, but {given}: set --cfg-options {fix}'


def _backbone_gives(where: str, backbone: dict, maps: Any, what: str) -> str:
    """'<where>.backbone (<type>, out_indices ...) gives N maps of <what> (<unit>s i, j, ...)'."""
    count = len(maps.indices)
    return (f'{where}.backbone ({type_name(backbone)}, out_indices {backbone.get("out_indices")}) gives {count} '
            f'map{"s" if count > 1 else ""} of {what} ({maps.unit}{"s" if count > 1 else ""} '
            f'{", ".join(map(str, maps.indices))})')


def _neck_chain(neck: Any, key: str) -> list[tuple[str, dict]]:
    """(config key, config dict) of each neck of ``neck`` at ``key``: one dict, or a list of them, which mmengine
    chains (each takes the maps the one before gives); empty for anything else."""
    if isinstance(neck, dict):
        return [(key, neck)]
    if isinstance(neck, (list, tuple)) and neck and all(isinstance(part, dict) for part in neck):
        return [(f'{key}.{i}', part) for i, part in enumerate(neck)]
    return []


def _simple_fpn_problem(where: str, key: str, neck: dict, maps: Any, given: str) -> Optional[str]:
    """SimpleFPN at ``key``, which takes one map of backbone_channel channels, given other ``maps``."""
    kind, width = type_name(neck), neck.get('backbone_channel')
    if len(maps.channels) > 1:
        return _fit_problem(f'{key} ({kind})', f'takes one map (of backbone_channel {width} channels)', given,
                            f'{where}.backbone.out_indices=[{maps.indices[-1]}]')
    if width != maps.channels[0]:
        c = maps.channels[0]
        return _fit_problem(f'{key} ({kind})', f'takes one map of backbone_channel {width} channels', given,
                            f'{key}.backbone_channel={c} {key}.in_channels={option_list([c // 4, c // 2, c, c])}')
    return None


def _bare_map_problem(where: str, key: str, neck: dict, given: str) -> str:
    """A neck at ``key`` that takes a list of maps, after mmdet's MM_LocalVim of one map, which it passes on bare."""
    entries = f' (and {key}.in_channels one entry per layer)' if isinstance(neck.get('in_channels'), list) else ''
    return (f"{key} ({type_name(neck)}) takes a list of maps, but {given}, and mmdet's MM_LocalVim passes one map "
            f"on bare (as SimpleFPN takes it): give {where}.backbone.out_indices two or more layers{entries}, or use "
            f"SimpleFPN")


def _misfit_line(label: str, misfit: Optional[Misfit], given: str) -> Optional[str]:
    """The line for the neck ``label`` set for other maps than ``given`` (words) as ``misfit`` says; None without."""
    if misfit is None:
        return None
    if misfit.fix:
        return _fit_problem(label, misfit.takes, given, misfit.fix)
    return f'{label} {misfit.takes}, but {given}: {misfit.advice}'


class GivenMaps(NamedTuple):
    """The channels of the maps a backbone or a neck gives, and the words that say so in a line."""
    channels: list[int]
    words: str


def _neck_gives_words(key: str, kind: str, channels: list[int]) -> str:
    """'<key> (<kind>) gives N maps of [...] channels'."""
    count = len(channels)
    return f'{key} ({kind}) gives {count} map{"s" if count > 1 else ""} of {channels} channels'


def _follow_necks(where: str, necks: list[tuple[str, dict]], maps: Any, given: str,
                  bare_map: bool) -> tuple[Optional[str], Optional[GivenMaps]]:
    """Follow our backbone's ``maps`` (``given`` in words; ``bare_map``: one, passed on bare) through ``necks`` (a
    chain under the model at ``where``; each next neck gets the maps of the one before): the line for the first neck
    set for other maps than it gets, else the maps the last neck gives (None where not known here). Necks after one
    whose maps are not known here are not judged, nor is a SimpleFPN after another neck (it takes one bare map)."""
    channels, source, first = maps.channels, f'{where}.backbone', necks[0][0]
    for key, neck in necks:
        kind = type_name(neck)
        if kind == 'SimpleFPN':
            problem = _simple_fpn_problem(where, key, neck, maps, given) if key == first else None
            if problem or key != first:
                return problem, None
        elif bare_map and key == first and judges(kind):
            return _bare_map_problem(where, key, neck, given), None
        problem = _misfit_line(f'{key} ({kind})', neck_misfit(kind, neck, key, channels, source), given)
        if problem:
            return problem, None
        gives = neck_gives(kind, neck, NeckMaps(channels, None), len(channels))
        if gives is None or not gives.channels:
            return None, None
        channels, source, given = gives.channels, key, _neck_gives_words(key, kind, gives.channels)
    return None, GivenMaps(channels, given)


def _heads_problem(where: str, node: dict, given: GivenMaps) -> Optional[str]:
    """The first ``decode_head`` / ``auxiliary_head`` (one, or a list) of the segmentor ``node`` at ``where`` whose
    ``in_index`` / ``in_channels`` do not take the maps ``given`` to the heads (by the backbone, or by the neck)."""
    for head_key in ('decode_head', 'auxiliary_head'):
        heads = node.get(head_key)
        keyed = ([(f'{where}.{head_key}.{i}', head) for i, head in enumerate(heads)]
                 if isinstance(heads, (list, tuple)) else [(f'{where}.{head_key}', heads)])
        for head_where, head in keyed:
            if not isinstance(head, dict):
                continue
            in_index, in_channels = head.get('in_index', -1), head.get('in_channels')
            fix = _head_fix(head_where, in_index, in_channels, given.channels)
            if fix:
                takes = 'map' if isinstance(in_index, int) else 'maps'
                return _fit_problem(f'{head_where} ({type_name(head)})', f'takes the {takes} in_index {in_index} '
                                    f'of in_channels {in_channels}', given.words, fix)
    return None


def neck_input_problem(model_cfg: Any, bare_single_map: bool = False) -> Optional[str]:
    """A neck or a segmentation head set for other maps than it gets (another number, or other channels), e.g. after
    a change of the backbone's out_indices or width: mmdet's FPN and mmseg's heads end in a bare AssertionError, an
    IndexError or a convolution's channel error, after the datasets are built. Checked: the necks that
    :mod:`.neck_maps` judges (the in_channels of FPN and its kin, BFP, DyHead, YOLOv3's, ...), SimpleFPN (one map of
    ``backbone_channel``), a list of necks (each takes the maps the one before gives), and the ``in_index`` /
    ``in_channels`` of ``decode_head`` and ``auxiliary_head`` against the maps of the backbone, or of the neck where
    :func:`.neck_maps.neck_gives` knows them (after any other neck the heads are not judged), named by their keys
    under ``model`` (``model_cfg``). ``bare_single_map``: MM_LocalVim gives one map bare, not in a list (mmdet's
    registration), which only SimpleFPN takes."""
    from .backbones import backbone_maps

    for where, node in keyed_dicts(model_cfg, 'model'):
        backbone = node.get('backbone')
        if not (isinstance(backbone, dict) and is_backbone(backbone)):
            continue
        name = type_name(backbone)
        maps = backbone_maps(name, backbone)
        if maps is None:
            continue
        words = _backbone_gives(where, backbone, maps, f'{maps.channels} channels')
        given: Optional[GivenMaps] = GivenMaps(maps.channels, words)
        if node.get('neck') is not None:
            bare_map = bare_single_map and name == 'MM_LocalVim' and len(maps.channels) == 1
            problem, given = _follow_necks(where, _neck_chain(node['neck'], f'{where}.neck'), maps, words, bare_map)
            if problem:
                return problem
        problem = _heads_problem(where, node, given) if given else None
        if problem:
            return problem
    return None


def neck_strides(neck: Any, strides: Sequence[int]) -> Optional[list[int]]:
    """The strides of the maps the neck ``neck`` gives from maps of ``strides``: a config dict, or a list of them
    (each takes the maps the one before gives). Known (:func:`.neck_maps.neck_gives`): FPN and its kin (PAFPN,
    FPN_DropBlock, FPG, FPN_CARAFE, NASFPN), ChannelMapper, SimpleFPN, HRFPN, NASFCOS_FPN; the necks that keep their
    maps' sizes (BFP, DyHead, SSH, YOLOXPAFPN, CSPNeXtPAFPN, MLANeck), YOLOV3Neck (in reversed order); DilatedEncoder
    and CTResNetNeck (of the last map); mmseg's MultiLevelNeck, JPU and Feature2Pyramid. None for any other neck, or
    settings a neck refuses itself."""
    necks = _neck_chain(neck, '')
    maps = NeckMaps(None, list(strides))
    for _, part in necks:
        maps = neck_gives(type_name(part), part, maps, len(maps.strides))
        if maps is None or not maps.strides:
            return None
    return maps.strides if necks else None


# Keys under a detector whose subtrees hold the settings of where its heads read the neck's maps.
HEAD_KEYS = ('rpn_head', 'bbox_head', 'roi_head')
PRIOR_GENERATOR_KEYS = ('anchor_generator', 'prior_generator')
# RoI extractors that pool from the neck's first maps (HTC's semantic_roi_extractor pools from its semantic head's).
ROI_EXTRACTOR_KEYS = ('bbox_roi_extractor', 'mask_roi_extractor', 'grid_roi_extractor')
# mmdet's heads that place their priors, or decode their boxes, by a strides setting of their own (one per map), and
# its key: the anchor-free heads that build their point generator from it, YOLOv3's head that scales its boxes by it.
POINT_HEAD_STRIDES = dict(FCOSHead='strides', AutoAssignHead='strides', CenterNetUpdateHead='strides',
                          CondInstBboxHead='strides', BoxInstBboxHead='strides', FoveaHead='strides',
                          NASFCOSHead='strides', VFNetHead='strides', RepPointsHead='point_strides',
                          YOLOXHead='strides', YOLOV3Head='featmap_strides')


def _square_strides(value: Any) -> Optional[list[int]]:
    """A config's list of strides as ints: ``s`` or ``(s, s)`` each; None for anything else (left to mmdet)."""
    if not isinstance(value, (list, tuple)):
        return None
    square = [s[0] if isinstance(s, (list, tuple)) and len(s) == 2 and s[0] == s[1] else s for s in value]
    return square if all(positive_int(s) for s in square) else None


def _stride_settings(where: str, node: dict, given: Sequence[int]) -> Iterator[tuple[str, list[int], list[int]]]:
    """(key, strides as set, strides that fit) of every stride setting of the detector ``node``'s heads (under
    :data:`HEAD_KEYS`): a prior generator's ``strides`` and an anchor-free head's (:data:`POINT_HEAD_STRIDES`) must
    be those of every map the neck gives, the ``featmap_strides`` of an RoI extractor of :data:`ROI_EXTRACTOR_KEYS`
    those of the first ones."""
    for head_key in HEAD_KEYS:
        for key, found in keyed_dicts(node.get(head_key), f'{where}.{head_key}'):
            kind, setting = type_name(found), [part for part in key.split('.') if not part.isdigit()][-1]
            if setting in PRIOR_GENERATOR_KEYS or setting.endswith('_anchor_generator'):   # guided anchoring's
                name, wanted = 'strides', list(given)
            elif kind in POINT_HEAD_STRIDES:
                name, wanted = POINT_HEAD_STRIDES[kind], list(given)
            elif setting in ROI_EXTRACTOR_KEYS:
                name = 'featmap_strides'
                wanted = list(given[:len(found[name])]) if isinstance(found.get(name), (list, tuple)) else []
            else:
                continue
            strides = _square_strides(found.get(name))
            if strides is not None and strides != wanted:
                yield f'{key}.{name}', strides, wanted


def head_stride_problem(model_cfg: Any) -> Optional[str]:
    """A detector whose heads place anchors, or pool RoIs, at other strides than the maps its neck (without one, our
    backbone) gives, e.g. after the backbone's out_indices became (1, 2, 3): mmdet's anchor generator then ends in a
    bare AssertionError when the number differs, and when only the strides differ training runs silently wrong
    (anchor centres and RoIAlign's scale off the maps). Checked, for the necks :func:`neck_strides` knows: each prior
    generator's ``strides`` (``anchor_generator`` / ``prior_generator`` / ``*_anchor_generator``), the strides
    settings of the heads of :data:`POINT_HEAD_STRIDES`, and the ``featmap_strides`` of the RoI extractors of
    :data:`ROI_EXTRACTOR_KEYS`; strides that are not ints (YOLACT's), or not in the config (a head's defaults),
    are left alone. The neck may be a list of necks (each takes the maps the one before gives). The line names the
    first setting, and its ``--cfg-options`` fit all of them."""
    from .backbones import backbone_maps

    for where, node in keyed_dicts(model_cfg, 'model'):
        backbone = node.get('backbone')
        if not (isinstance(backbone, dict) and is_backbone(backbone)):
            continue
        maps = backbone_maps(type_name(backbone), backbone)
        if maps is None or maps.strides is None:
            continue
        neck = node.get('neck')
        gives = _backbone_gives(where, backbone, maps, f'strides {maps.strides}')
        necks = _neck_chain(neck, f'{where}.neck')
        if necks:
            given = neck_strides(neck, maps.strides)
            names = ', then '.join(type_name(part) for _, part in necks)
            gives = f'{where}.neck ({names}) gives maps of strides {given}, as {gives}'
        elif neck is None:
            given = maps.strides
        else:
            continue
        if given is None:
            continue
        wrong = list(_stride_settings(where, node, given))
        if wrong:
            setting, strides, _ = wrong[0]
            others = len(wrong) - 1
            more = f' (and {others} more stride setting{"s" if others > 1 else ""})' if others else ''
            fix = ' '.join(f'{key}={option_list(wanted)}' for key, _, wanted in wrong)
            return f'{setting} is {strides}{more}, but {gives}: set --cfg-options {fix}'
    return None
