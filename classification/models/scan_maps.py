"""Scan orders of a token grid: which token each sequence position reads (and, by the same table, where it goes back).

Tokens of an ``H x W`` grid are numbered row-major (``i * W + j``). A direction maps the grid to a 1-D sequence:

======== ===================================================================================================
``h``      row-major (identity)
``v``      column-major: sequence position ``j * H + i`` holds token ``(i, j)``
``wK``     ``K x K`` windows, windows in row-major order and row-major inside each window; the grid is first
           zero-padded at the bottom/right to multiples of ``K``, so padding zeros sit *inside* the sequence at
           window edges and the sequence has ``ceil(H/K)*K * ceil(W/K)*K`` positions
``*_flip`` the whole (padded) sequence reversed
======== ===================================================================================================

Every map is an index table: position ``s`` of the sequence reads token ``index[s]``, where the value ``H * W``
stands for a padding zero. :func:`sequence_index` stacks the tables of a layer's directions for the fused mixer ops
(``localmamba_ssm.multi_scan_inner_fn``), which gather, scan and scatter back by them in one go (the scatter is the
exact inverse for any grid; the original's ``v`` reverse was only right for square grids); under
``torch.compile`` it is an opaque op that copies the cached table (computed once per grid, outside the graph).
"""
from __future__ import annotations

import functools
import re
from typing import Callable, NamedTuple, Optional, Sequence, TypeVar

import torch

T = TypeVar('T')

Grid = tuple[int, int]

_DIRECTION_RE = re.compile(r'(?:(h)|(v)|w([1-9][0-9]*))(_flip)?')     # one name per window size (w2, never w02)
VALID_DIRECTIONS_HELP = "h, h_flip, v, v_flip, wK, wK_flip (K >= 1 a window size, e.g. w2, w7_flip)"


class Direction(NamedTuple):
    """A parsed direction name: ``kind`` is 'h', 'v' or 'w'; ``window`` is K for 'w' (else 0)."""
    kind: str
    window: int
    flip: bool


def parse_direction(name: str) -> Direction:
    """Parse a direction name such as ``'v_flip'`` or ``'w7'``; raise ``ValueError`` listing the valid choices."""
    match = _DIRECTION_RE.fullmatch(name) if isinstance(name, str) else None
    if match is None:
        raise ValueError(f'unknown scan direction {name!r}: valid directions are {VALID_DIRECTIONS_HELP}')
    horizontal, vertical, window, flip = match.groups()
    kind = 'h' if horizontal else 'v' if vertical else 'w'
    return Direction(kind, int(window) if window else 0, flip is not None)


def _check_grid(grid: Sequence[int]) -> Grid:
    if len(grid) != 2 or int(grid[0]) < 1 or int(grid[1]) < 1:
        raise ValueError(f'grid must be (H, W) with H, W >= 1, got {tuple(grid)}')
    return int(grid[0]), int(grid[1])


def _cached_table(maxsize: int) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Cache an index-table builder per arguments, the ``maxsize`` most recently used tables (a detector trained at
    many input sizes would otherwise keep the tables of every size it met); tables are built outside inference mode,
    so that one first made under ``torch.inference_mode`` (evaluation) can later serve a training step. The cached
    function's ``cache_info`` is the wrapper's."""
    def decorate(build: Callable[..., T]) -> Callable[..., T]:
        cached = functools.lru_cache(maxsize=maxsize)(build)

        @functools.wraps(build)
        def wrapper(*args):
            with torch.inference_mode(False):
                return cached(*args)

        wrapper.cache_info = cached.cache_info
        return wrapper

    return decorate


# Cached tables: per (direction, grid) on the CPU, and per layer's (directions, grid, class token, device) stacked on
# its device; a model at one input size needs one entry per distinct direction set and grid (LocalVMamba-T: 15).
DIRECTION_TABLES_KEPT = 1024
LAYER_TABLES_KEPT = 128


def scan_length(name: str, grid: Grid) -> int:
    """Sequence length of a direction on a grid (grows with window padding), by arithmetic alone (no table is built,
    so it is safe under fake tensors)."""
    kind, window, _ = parse_direction(name)
    height, width = _check_grid(grid)
    if kind != 'w':
        return height * width
    return -(-height // window) * window * (-(-width // window) * window)


@_cached_table(DIRECTION_TABLES_KEPT)
def scan_index(name: str, grid: Grid) -> torch.Tensor:
    """Index table of one direction: (L_k,) int64; value ``H*W`` marks a padding zero."""
    kind, window, flip = parse_direction(name)
    height, width = _check_grid(grid)
    tokens = torch.arange(height * width).view(height, width)
    if kind == 'h':
        index = tokens.reshape(-1)
    elif kind == 'v':
        index = tokens.t().reshape(-1)
    else:
        rows, cols = -(-height // window), -(-width // window)
        padded = torch.full((rows * window, cols * window), height * width, dtype=torch.long)
        padded[:height, :width] = tokens
        index = padded.view(rows, window, cols, window).permute(0, 2, 1, 3).reshape(-1)
    return index.flip(0) if flip else index


def sequence_index(names: Sequence[str], grid: Sequence[int], cls_position: Optional[int] = None,
                   device: Optional[torch.device] = None) -> torch.Tensor:
    """Token-row index of several directions for the fused mixer ops: (K, L_max) int64.

    Position ``s`` of sequence ``k`` reads token row ``index[k, s]``; the value T (the number of token rows) reads a
    zero, both for window padding and for the end padding to the longest direction. Token rows are the grid tokens
    in row-major order; with a class token at row ``cls_position`` (the middle one), grid token i is row
    ``i + (i >= cls_position)`` and the class token is inserted at sequence position ``cls_position`` of every
    direction, as the original does. Cached per arguments.

    Under ``torch.compile`` the table comes from the opaque op ``localmamba::sequence_index`` (a copy of the cached
    table; its shape is known without building it), so that no table is built inside the graph and a model may ask
    for many tables in one graph (``assume_constant_result`` mixes up the second one with the first).
    """
    names, grid = tuple(names), _check_grid(grid)
    device = torch.device('cpu') if device is None else torch.device(device)
    if torch.compiler.is_compiling():
        return _sequence_index_op(','.join(names), grid[0], grid[1], -1 if cls_position is None else cls_position,
                                  device)
    return _sequence_index(names, grid, cls_position, device)


@torch.library.custom_op('localmamba::sequence_index', mutates_args=())
def _sequence_index_op(names: str, height: int, width: int, cls_position: int, device: torch.device) -> torch.Tensor:
    """:func:`sequence_index` as an op of a compiled graph (names comma-joined, no class token as -1)."""
    table = _sequence_index(tuple(names.split(',')), (height, width), None if cls_position < 0 else cls_position,
                            torch.device(device))
    return table.clone()


@_sequence_index_op.register_fake
def _(names: str, height: int, width: int, cls_position: int, device: torch.device) -> torch.Tensor:
    length = max(scan_length(name, (height, width)) for name in names.split(',')) + (cls_position >= 0)
    return torch.empty(len(names.split(',')), length, dtype=torch.long, device=device)


@_cached_table(LAYER_TABLES_KEPT)
def _sequence_index(names: tuple[str, ...], grid: Grid, cls_position: Optional[int],
                    device: torch.device) -> torch.Tensor:
    tables = []
    for name in names:
        table = scan_index(name, grid)
        if cls_position is not None:
            table = table + (table >= cls_position).long()              # padding H*W becomes T = H*W + 1 too
            table = torch.cat([table[:cls_position], torch.tensor([cls_position]), table[cls_position:]])
        tables.append(table)
    num_rows = grid[0] * grid[1] + (cls_position is not None)
    stacked = torch.full((len(tables), max(t.numel() for t in tables)), num_rows, dtype=torch.long)
    for k, table in enumerate(tables):
        stacked[k, :table.numel()] = table
    return stacked.to(device)
