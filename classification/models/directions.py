"""Scan-direction tables of the released models, and reading, checking and writing direction files.

A *direction* names one scan order of a token grid (see :mod:`classification.models.scan_maps`): ``h``, ``h_flip``,
``v``, ``v_flip``, ``wK`` or ``wK_flip`` for a window size ``K >= 1``, or one added with ``register_direction``. A
model takes one tuple of directions per layer (LocalVim) or per block (LocalVMamba); the order inside a tuple fixes
the ``_k`` suffix of that layer's parameters. A search supernet takes one tuple of *candidates*, the same in every
layer (``candidates=``, default :data:`CANDIDATES`); its order is the order of the search weights.
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Optional, Sequence, Union

import timm
import torch
import yaml
from torch import nn

from ..common import TRUST_FLAG, CheckpointError, UnsafeCheckpointError, atomic_write_text, load_checkpoint
from ..common.checkpoint_io import CHECKPOINT_MAGIC
from .scan_maps import parse_direction

# The original's candidate set of the search supernets (their default ``candidates``), in the order of their
# ``multi_scan.weights`` (softmax index).
CANDIDATES: tuple[str, ...] = ('h', 'h_flip', 'v', 'v_flip', 'w2', 'w2_flip', 'w7', 'w7_flip')

DirectionTable = tuple[tuple[str, ...], ...]
DirectionsArg = Union[None, str, os.PathLike, Sequence[Sequence[str]]]


def _table(text: str) -> DirectionTable:
    """One layer per line, directions separated by spaces."""
    return tuple(tuple(line.split()) for line in text.strip().splitlines())


# LocalVim-T searched directions (also used by `local_vim_tiny_middle_cls_token`, `local_vim_small_searched`
# and the det/seg LocalVim configs), layer 0 first.
LOCAL_VIM_TINY_DIRECTIONS = _table("""
h v_flip w7 w7_flip
h_flip w2_flip w7 w7_flip
h h_flip v w7
h h_flip v v_flip
h h_flip v v_flip
h h_flip v v_flip
h_flip v v_flip w7
h_flip v v_flip w2_flip
h h_flip v v_flip
h h_flip v v_flip
h v v_flip w2
h v v_flip w2_flip
h h_flip v_flip w7
h_flip v v_flip w2
h h_flip v v_flip
h v w2 w2_flip
v v_flip w2 w7
h h_flip v w2
h h_flip w2_flip w7
v v_flip w2 w2_flip
""")

# The un-searched uniform set of `local_vim_tiny_wo_search` and of the registered `local_vim_small`.
UNIFORM_W2_DIRECTIONS: tuple[str, ...] = ('h', 'h_flip', 'w2', 'w2_flip')

# LocalVMamba-T searched directions, one line per block over all stages (2 + 2 + 9 + 2 blocks).
LOCAL_VSSM_TINY_DIRECTIONS = _table("""
h h_flip w7 w7_flip
h_flip v_flip w2 w2_flip
h_flip v_flip w2_flip w7
h_flip v v_flip w2
h h_flip v_flip w2_flip
h_flip v_flip w2 w2_flip
h w2_flip w7 w7_flip
h h_flip v v_flip
h v_flip w7 w7_flip
h_flip v w2 w7_flip
v v_flip w2 w7_flip
h h_flip v_flip w2_flip
v_flip w2_flip w7 w7_flip
h_flip v_flip w2_flip w7_flip
h_flip v w7 w7_flip
""")

# LocalVMamba-S searched directions, one line per block over all stages (2 + 2 + 27 + 2 blocks).
LOCAL_VSSM_SMALL_DIRECTIONS = _table("""
h v v_flip w7_flip
h h_flip v w7
h_flip v v_flip w7
h_flip v w2_flip w7
h_flip v w2_flip w7
h_flip v_flip w2 w7_flip
h_flip v v_flip w7
h v v_flip w7
h v v_flip w7
h v v_flip w7_flip
h h_flip v v_flip
h v v_flip w2
v v_flip w2_flip w7
h h_flip v w2
h_flip v v_flip w7_flip
h h_flip v v_flip
h v v_flip w7_flip
h v v_flip w7_flip
h h_flip v_flip w7
h_flip v_flip w2_flip w7
h_flip v v_flip w7_flip
v v_flip w7 w7_flip
h v v_flip w7_flip
h_flip v v_flip w2
h v v_flip w2_flip
h h_flip v w7
h h_flip w7 w7_flip
h v_flip w2 w2_flip
h v_flip w2 w7
h v v_flip w7_flip
h_flip v w2_flip w7
h_flip v_flip w7 w7_flip
h v w7 w7_flip
""")


def validate_directions(directions: Sequence[Sequence[str]], depth: int, source: str = 'directions',
                        check_names: bool = True, depth_hint: str = '') -> DirectionTable:
    """Check a per-layer direction table and return it as a tuple of tuples.

    Raises ``ValueError`` naming ``source`` when the table does not have ``depth`` layers (``depth_hint`` ends that
    message), a layer is empty or repeats a direction, or (with ``check_names``) a name is not a known direction.
    """
    if isinstance(directions, (str, bytes)) or not isinstance(directions, Sequence):
        raise ValueError(f'{source}: expected a list of per-layer lists of direction names, '
                         f'got {type(directions).__name__}')
    if len(directions) == 0:
        raise ValueError(f'{source}: holds no layers (one list of direction names per layer)')
    if len(directions) != depth:
        raise ValueError(f'{source}: has {len(directions)} layers, but the model has {depth} layers{depth_hint}')
    table = []
    for i, layer in enumerate(directions):
        if isinstance(layer, (str, bytes)) or not isinstance(layer, Sequence) or len(layer) == 0:
            raise ValueError(f'{source}: layer {i} must be a non-empty list of direction names, got {layer!r}')
        for name in layer:
            if check_names:
                try:
                    parse_direction(name)
                except ValueError as err:
                    raise ValueError(f'{source}: layer {i}: {err}') from None
            elif not isinstance(name, str) or not name:
                raise ValueError(f'{source}: layer {i} holds {name!r}, not a direction name')
        if len(set(layer)) != len(layer):
            raise ValueError(f'{source}: layer {i} repeats a direction: {list(layer)}')
        table.append(tuple(layer))
    return tuple(table)


def validate_candidates(candidates: Sequence[str], source: str = 'candidates') -> tuple[str, ...]:
    """Check a search supernet's candidate list (at least two known directions, none repeated) and return it as a
    tuple; ``ValueError`` naming ``source`` says what is wrong."""
    if isinstance(candidates, (str, bytes)) or not isinstance(candidates, Sequence):
        raise ValueError(f'{source}: expected a list of direction names, got {candidates!r}')
    if len(candidates) < 2:
        raise ValueError(f'{source}: a search needs at least 2 candidate directions, got {list(candidates)}')
    for name in candidates:
        parse_direction(name)
    if len(set(candidates)) != len(candidates):
        raise ValueError(f'{source}: repeats a direction: {list(candidates)}')
    return tuple(candidates)


def checkpoint_candidates(ckpt: Mapping[str, Any]) -> Optional[tuple[str, ...]]:
    """The candidates a checkpoint's supernet searched over: its `candidates` entry (our training checkpoints and the
    files `convert_ckpt.py` writes of them), else `candidates` in its run's `model_kwargs` (checkpoints written before
    that entry); None when it says neither (a released file)."""
    found = ckpt.get("candidates")
    if found is None:
        model_kwargs = (ckpt.get("config") or {}).get("model_kwargs") or {}
        found = model_kwargs.get("candidates") if isinstance(model_kwargs, Mapping) else None
    return None if found is None else tuple(str(name) for name in found)


def resolve_candidates(candidates: Optional[Sequence[str]], is_search: bool) -> Optional[tuple[str, ...]]:
    """A model's ``candidates`` argument as its checked search set: :data:`CANDIDATES` when None; None for a model
    with fixed directions, which refuses candidates (ValueError)."""
    if not is_search:
        if candidates is not None:
            raise ValueError('candidates= is the search set of a search supernet (a *_search model); a model with '
                             'fixed directions takes directions=')
        return None
    return CANDIDATES if candidates is None else validate_candidates(candidates)


def load_directions(path: Union[str, os.PathLike]) -> list[list[str]]:
    """Read the per-layer lists of a directions file written by ``tools/vis_search_prob.py``, or those a training
    checkpoint was trained with.

    The file is YAML: ``{supernet: <name>, topk: <k>, directions: [[...], ...]}``; a plain list of lists is accepted
    too. A checkpoint (``torch.save``) gives its ``directions`` entry, which our training checkpoints and the files
    ``convert_ckpt.py`` writes of them hold: the directions of a run whose directions file has changed since.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f'directions file {path} is a folder: give the directions.yaml in it')
    if not os.path.isfile(path):
        where = '' if os.path.isabs(path) else f' (relative to the current directory {os.getcwd()})'
        raise FileNotFoundError(f'directions file not found: {path}{where}')
    if _is_checkpoint(path):
        return _checkpoint_directions(path)
    with open(path, encoding='utf-8') as f:
        try:
            data = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ValueError(f'{path}: not a valid YAML file: {e}') from e
        except UnicodeDecodeError as e:
            raise ValueError(f'{path}: neither a directions YAML file nor a checkpoint (not UTF-8 text: {e})') from e
    if not isinstance(data, (dict, list)):
        what = 'nothing (an empty file)' if data is None else f'a YAML {type(data).__name__}'
        raise ValueError(f'{path}: not a directions file: its text reads as {what}, not as the mapping '
                         f'vis_search_prob.py writes (directions: one list per layer) or a list of lists')
    if isinstance(data, dict):
        if 'directions' not in data:
            raise ValueError(f'{path}: no "directions" key (found keys: {sorted(data)})')
        data = data['directions']
    if not isinstance(data, list) or not all(isinstance(layer, list) for layer in data):
        raise ValueError(f'{path}: "directions" must be a list of per-layer lists of direction names')
    return [[str(name) for name in layer] for layer in data]


def _is_checkpoint(path: str) -> bool:
    with open(path, 'rb') as f:
        return f.read(4).startswith(CHECKPOINT_MAGIC)


def _checkpoint_directions(path: str) -> list[list[str]]:
    """The ``directions`` entry of the checkpoint at ``path``; ValueError when it holds none, or when it needs pickle
    (``--directions`` takes no ``--trust-checkpoint``: the error names the conversion that gives a file it reads)."""
    try:
        table = load_checkpoint(path, mmap=True).get('directions')
    except UnsafeCheckpointError as e:
        raise ValueError(f'{path} holds pickled objects beyond tensors and plain containers, and loading it could run '
                         f'code; --directions reads checkpoints without pickle: if you trust its source, python '
                         f'tools/convert_ckpt.py {path} OUT {TRUST_FLAG} writes its weights and directions to OUT, '
                         f'which --directions reads') from e
    except CheckpointError as e:
        raise ValueError(str(e)) from e
    if not isinstance(table, list) or not all(isinstance(layer, list) for layer in table):
        raise ValueError(f'{path}: a checkpoint that records no scan directions (a released file, or a search '
                         f'supernet\'s): give a directions file')
    return [[str(name) for name in layer] for layer in table]


def directions_record(path: Union[str, os.PathLike]) -> dict[str, Any]:
    """What a directions file says besides its table (``supernet``, ``topk``, ``searched_from``, as
    ``save_directions`` writes them); empty for a plain list or a checkpoint."""
    if _is_checkpoint(os.fspath(path)):
        return {}
    with open(os.fspath(path), encoding='utf-8') as f:
        data = yaml.safe_load(f)
    return {key: value for key, value in data.items() if key != 'directions'} if isinstance(data, dict) else {}


FAMILIES = {'local_vim': 'LocalVim', 'local_vssm': 'LocalVMamba'}


def model_family(name: str) -> Optional[str]:
    """'LocalVim' or 'LocalVMamba' for a model name of that family (by its prefix), None for another name."""
    return next((family for prefix, family in FAMILIES.items() if name.startswith(prefix)), None)


def _default_depths(supernet: str) -> Optional[tuple[int, ...]]:
    """The stage depths registered model `supernet` is built with (None for a name not registered here, or a model
    without stages)."""
    if not supernet or supernet not in timm.list_models():
        return None
    with torch.device('meta'):
        return getattr(timm.create_model(supernet), 'depths', None)


def directions_source_warnings(path: Union[str, os.PathLike], name: str, family: Optional[str],
                               depths: Optional[Sequence[int]]) -> list[str]:
    """Why the directions file ``path`` may not be what model ``name`` (of ``family``, with stage ``depths`` or
    None) should take, though its layer count fits: a supernet of the other family, a LocalVMamba search whose stages
    split the layers otherwise (each stage then takes another stage's directions), a search that had not finished.
    One warning line each; [] for a list or a checkpoint."""
    record = directions_record(path)
    supernet = str(record.get('supernet') or '')
    searched = model_family(supernet)
    messages = []
    if searched and family and searched != family:
        messages.append(f'{path} holds the directions searched by {supernet} (a {searched} supernet), but {name} is '
                        f'a {family} model: its layers take them as given')
    source = record.get('searched_from') if isinstance(record.get('searched_from'), dict) else {}
    searched_kwargs = source.get('model_kwargs') if isinstance(source.get('model_kwargs'), dict) else {}
    searched_depths = None
    if searched == family == 'LocalVMamba' and depths is not None:
        searched_depths = searched_kwargs.get('depths') or _default_depths(supernet)
    if searched_depths is not None and tuple(searched_depths) != tuple(depths):
        messages.append(f"{path} was searched with stage depths {tuple(searched_depths)}, {name} has "
                        f"{tuple(depths)}: its stages take the directions searched for other stages' blocks")
    if source.get('finished') is False:
        messages.append(f"{path} holds the directions of an unfinished search "
                        f"({source.get('unfinished') or 'its checkpoint was saved before the end of its run'})")
    return messages


def save_directions(path: Union[str, os.PathLike], directions: Sequence[Sequence[str]],
                    supernet: Optional[str] = None, topk: Optional[int] = None, check_names: bool = True,
                    searched_from: Optional[Mapping[str, Any]] = None) -> None:
    """Write a directions file that ``load_directions`` and ``--directions`` read back (``check_names=False``: the
    names need not be registered in this process, as the searched names of a supernet's checkpoint).
    ``searched_from``: where the directions come from (plain YAML values), kept under that key for the reader."""
    validate_directions(directions, len(directions), source=os.fspath(path), check_names=check_names)
    data = {'supernet': supernet, 'topk': topk, 'directions': [list(layer) for layer in directions]}
    if searched_from:
        data['searched_from'] = dict(searched_from)
    atomic_write_text(os.fspath(path), yaml.safe_dump(data, default_flow_style=None, sort_keys=False))


def _searched_depth(path: Union[str, os.PathLike]) -> Optional[str]:
    """The depth keyword the supernet a directions file was searched by was built with (``depth=N`` or
    ``depths=[...]``, as its ``searched_from`` records the run's ``model_kwargs``), None when it records neither."""
    source = directions_record(path).get('searched_from')
    kwargs = source.get('model_kwargs') if isinstance(source, dict) else None
    if not isinstance(kwargs, dict):
        return None
    return next((f'{key}={kwargs[key]}' for key in ('depths', 'depth') if key in kwargs), None)


def resolve_directions(directions: DirectionsArg, default: Optional[DirectionTable],
                       depth: int) -> Optional[DirectionTable]:
    """Turn a model's ``directions`` argument (None, a table or a file path) into a checked table.

    ``None`` selects ``default``; a ``None`` result means a search supernet (every layer takes all its candidates).
    """
    if directions is None:
        return None if default is None else validate_directions(
            default, depth, source="the model's default directions (pass directions= for another depth)")
    if isinstance(directions, (str, os.PathLike)):
        table = load_directions(directions)
        n = len(table)
        hint = (f': build the model with the {n} layers of the supernet that searched them (LocalVim: depth={n}; '
                f'LocalVMamba: depths summing to {n})')
        searched = _searched_depth(directions)
        if searched:
            hint = f': build the model with the {n} layers of the supernet that searched them ({searched})'
        return validate_directions(table, depth, source=os.fspath(directions), depth_hint=hint)
    return validate_directions(directions, depth)


def scan_directions(model: nn.Module) -> Optional[list[list[str]]]:
    """The model's scan directions, one list per layer (LocalVim, LocalVMamba); None for a search supernet or another
    family. Saved in training checkpoints: two direction tables give weights of the same keys and shapes."""
    table = getattr(model, "directions", None)
    return None if table is None else [list(layer) for layer in table]


def directions_difference(model: nn.Module, ckpt: Mapping[str, Any]) -> Optional[str]:
    """Where the scan directions a training checkpoint records (`directions`) differ from `model`'s: `layer 3: [...]
    vs [...] here`, the layer counts, or a supernet vs a fixed table; None when they are the same or unrecorded."""
    if "directions" not in ckpt:
        return None
    saved, own = ckpt["directions"], scan_directions(model)
    if saved == own:
        return None
    if saved is None or own is None:
        return (f"{'a search supernet' if saved is None else 'a fixed direction table'} vs this model's "
                f"{'search supernet' if own is None else 'fixed table'}")
    if len(saved) != len(own):
        return f"{len(saved)} layers vs {len(own)} here"
    layer = next(i for i, (a, b) in enumerate(zip(saved, own)) if a != b)
    return f"layer {layer}: {saved[layer]} vs {own[layer]} here"
