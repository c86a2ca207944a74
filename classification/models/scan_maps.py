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
stands for a padding zero. :func:`register_direction` adds a direction of one's own (any table that reads every
token exactly once), with its ``_flip`` and, if asked, a ``K`` parameter as ``wK`` has; modules named in the
environment variable ``LOCALMAMBA_DIRECTION_MODULES`` are imported the first time a name is not known, so that a
process started by a tool (training, extraction, torchrun's ranks) knows the same directions.
:func:`sequence_index` stacks the tables of a layer's directions for the fused mixer ops
(``localmamba_ssm.multi_scan_inner_fn``), which gather, scan and scatter back by them in one go (the scatter is the
exact inverse for any grid; the original's ``v`` reverse was only right for square grids); under
``torch.compile`` it is an opaque op that copies the cached table (computed once per grid, outside the graph).
"""
import contextlib
import functools
import importlib
import os
import re
from typing import Callable, Iterator, NamedTuple, Optional, Sequence, TypeVar

import torch
from torch._subclasses.fake_tensor import unset_fake_temporarily

T = TypeVar('T')

Grid = tuple[int, int]
# A direction's table builder: (grid) -> (L,) integer table, or (grid, K) -> table for a parametrised one.
IndexFn = Callable[..., torch.Tensor]

FLIP_SUFFIX = '_flip'
DIRECTION_MODULES_ENV = 'LOCALMAMBA_DIRECTION_MODULES'
# The grid (and K) a registered table is checked on when it is registered; every grid is checked when first built.
PROBE_GRID, PROBE_PARAMETER = (4, 6), 2

_NAME_RE = re.compile(r'[a-z][a-z0-9_]*')
_PARAMETER_RE = re.compile(r'(.*[^0-9])([1-9][0-9]*)')                 # one name per K (w2, never w02)


class Direction(NamedTuple):
    """A parsed direction name: ``kind`` is the registered name ('h', 'v', 'w' or one registered by the user);
    ``window`` is the name's integer parameter (K of 'wK'; 0 for an unparametrised direction)."""
    kind: str
    window: int
    flip: bool


class _Registered(NamedTuple):
    index_fn: IndexFn
    parametrized: bool
    length_fn: Optional[Callable[..., int]]     # built-ins only: the length by arithmetic (user tables are built)


def _row_major(grid: Grid) -> torch.Tensor:
    return torch.arange(grid[0] * grid[1])


def _column_major(grid: Grid) -> torch.Tensor:
    return torch.arange(grid[0] * grid[1]).view(grid).t().reshape(-1)


def _windows(grid: Grid, window: int) -> torch.Tensor:
    height, width = grid
    rows, cols = -(-height // window), -(-width // window)
    padded = torch.full((rows * window, cols * window), height * width, dtype=torch.long)
    padded[:height, :width] = torch.arange(height * width).view(height, width)
    return padded.view(rows, window, cols, window).permute(0, 2, 1, 3).reshape(-1)


def _windows_length(grid: Grid, window: int) -> int:
    return -(-grid[0] // window) * window * (-(-grid[1] // window) * window)


_BUILTIN: dict[str, _Registered] = {
    'h': _Registered(_row_major, False, lambda grid: grid[0] * grid[1]),
    'v': _Registered(_column_major, False, lambda grid: grid[0] * grid[1]),
    'w': _Registered(_windows, True, _windows_length),
}
_REGISTRY: dict[str, _Registered] = dict(_BUILTIN)
_imported_modules: set[str] = set()


def _lookup(base: str) -> Optional[tuple[str, int]]:
    """(registered name, parameter) of an unflipped name, None if no registration makes it."""
    entry = _REGISTRY.get(base)
    if entry is not None and not entry.parametrized:
        return base, 0
    match = _PARAMETER_RE.fullmatch(base)
    if match is not None and match[1] in _REGISTRY and _REGISTRY[match[1]].parametrized:
        return match[1], int(match[2])
    return None


class DirectionModuleError(ImportError):
    """A module named in ``LOCALMAMBA_DIRECTION_MODULES`` that cannot be imported (the message names it)."""


def import_direction_modules() -> None:
    """Import the modules named (comma-separated) in ``LOCALMAMBA_DIRECTION_MODULES``, each once, so that their
    ``register_direction`` calls run; done by itself the first time a direction name is not known."""
    for module in filter(None, (m.strip() for m in os.environ.get(DIRECTION_MODULES_ENV, '').split(','))):
        if module in _imported_modules:
            continue
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise DirectionModuleError(f'{DIRECTION_MODULES_ENV}: cannot import {module!r} ({err}); it must be '
                                       f'importable (on PYTHONPATH) by every process that builds a model') from err
        _imported_modules.add(module)


def list_directions() -> list[str]:
    """The registered directions, parametrised ones as ``nameK`` (each also exists as ``*_flip``)."""
    import_direction_modules()
    return [name + 'K' if entry.parametrized else name for name, entry in _REGISTRY.items()]


def _valid_directions_help() -> str:
    own = [f'{name}K' if entry.parametrized else name for name, entry in _REGISTRY.items() if name not in _BUILTIN]
    registered = f", and the registered {', '.join(f'{n}, {n}{FLIP_SUFFIX}' for n in own)}" if own else ''
    return f'h, h_flip, v, v_flip, wK, wK_flip (K >= 1 a window size, e.g. w2, w7_flip){registered}'


def parse_direction(name: str) -> Direction:
    """Parse a direction name such as ``'v_flip'`` or ``'w7'``; raise ``ValueError`` listing the valid choices."""
    found = None
    if isinstance(name, str):
        flip = name.endswith(FLIP_SUFFIX)
        base = name[:-len(FLIP_SUFFIX)] if flip else name
        found = _lookup(base)
        if found is None and os.environ.get(DIRECTION_MODULES_ENV):
            import_direction_modules()
            found = _lookup(base)
    if found is None:
        raise ValueError(f'unknown scan direction {name!r}: valid directions are {_valid_directions_help()} (a '
                         f'direction of your own: register_direction, and in the tools name its module in '
                         f'{DIRECTION_MODULES_ENV})')
    return Direction(found[0], found[1], flip)


def _check_grid(grid: Sequence[int]) -> Grid:
    if len(grid) != 2 or int(grid[0]) < 1 or int(grid[1]) < 1:
        raise ValueError(f'grid must be (H, W) with H, W >= 1, got {tuple(grid)}')
    return int(grid[0]), int(grid[1])


@contextlib.contextmanager
def _not_traced() -> Iterator[None]:
    """Run the block unrecorded by a ``torch.jit.trace`` in progress: a table built during a trace is then a constant
    of the graph, as it is when the trace finds it cached (its check run would otherwise see two graphs)."""
    state = torch._C._get_tracing_state()
    if state is None:  # no trace (setting none would fail where tracing is excluded, as in a compiled graph's op)
        yield
        return
    torch._C._set_tracing_state(None)
    try:
        yield
    finally:
        torch._C._set_tracing_state(state)


def _cached_table(maxsize: int) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Cache an index-table builder per arguments, the ``maxsize`` most recently used tables (a detector trained at
    many input sizes would otherwise keep the tables of every size it met); tables are built outside inference mode,
    so that one first made under ``torch.inference_mode`` (evaluation) can later serve a training step, outside any
    fake-tensor mode (a compiled graph's shape function may ask for a registered table's length), outside torch.func
    transforms (a table first made under ``grad`` / ``vmap`` was cached wrapped, and a later ``torch.jit.trace`` could
    not take it) and unrecorded by ``torch.jit.trace``. The cached function's ``cache_info`` and ``cache_clear`` are
    the wrapper's."""
    def decorate(build: Callable[..., T]) -> Callable[..., T]:
        cached = functools.lru_cache(maxsize=maxsize)(build)

        @functools.wraps(build)
        def wrapper(*args):
            with torch.inference_mode(False), unset_fake_temporarily(), _not_traced(), torch._C._DisableFuncTorch():
                return cached(*args)

        wrapper.cache_info = cached.cache_info
        wrapper.cache_clear = cached.cache_clear
        return wrapper

    return decorate


# Cached tables: per (direction, grid) on the CPU, and per layer's (directions, grid, class token, device) stacked on
# its device; a model at one input size needs one entry per distinct direction set and grid (LocalVim-T: 15,
# LocalVMamba-T: 14).
DIRECTION_TABLES_KEPT = 1024
LAYER_TABLES_KEPT = 128


def scan_length(name: str, grid: Grid) -> int:
    """Sequence length of a direction on a grid (grows with window padding): by arithmetic alone for the built-in
    directions (no table is built, so it is safe under fake tensors), from the (cached) table for registered ones."""
    kind, window, _ = parse_direction(name)
    grid = _check_grid(grid)
    length_fn = _REGISTRY[kind].length_fn
    if length_fn is None:
        return scan_index(name, grid).numel()
    return length_fn(grid, window) if window else length_fn(grid)


def _checked_table(table: object, grid: Grid, name: str) -> torch.Tensor:
    """A registered direction's table as (L,) int64 on the CPU, or ValueError saying in one line what is wrong."""
    where = f'scan direction {name!r} on grid {grid}'
    num_tokens = grid[0] * grid[1]
    if not isinstance(table, torch.Tensor):
        raise ValueError(f'{where}: index_fn must return a 1-D integer tensor, got {type(table).__name__}')
    if table.dim() != 1 or table.dtype.is_floating_point or table.dtype.is_complex or table.dtype == torch.bool:
        raise ValueError(f'{where}: index_fn must return a 1-D integer tensor, got {table.dim()}-D {table.dtype}')
    table = table.detach().to('cpu', torch.long).clone()
    wrong = table[(table < 0) | (table > num_tokens)]
    if wrong.numel():
        raise ValueError(f'{where}: values must be token indices 0..{num_tokens - 1} or {num_tokens} (a padding '
                         f'zero), found {wrong[:5].tolist()}')
    counts = torch.bincount(table, minlength=num_tokens + 1)[:num_tokens]
    for problem, tokens in (('misses', counts == 0), ('repeats', counts > 1)):
        if tokens.any():
            listed = tokens.nonzero().view(-1)
            raise ValueError(f'{where}: the table {problem} token(s) {listed[:5].tolist()}'
                             f'{" ..." if listed.numel() > 5 else ""} (each of the {num_tokens} tokens must be read '
                             f'exactly once)')
    return table


@_cached_table(DIRECTION_TABLES_KEPT)
def scan_index(name: str, grid: Grid) -> torch.Tensor:
    """Index table of one direction: (L_k,) int64; value ``H*W`` marks a padding zero."""
    kind, window, flip = parse_direction(name)
    grid = _check_grid(grid)
    entry = _REGISTRY[kind]
    if kind in _BUILTIN:
        index = entry.index_fn(grid, window) if entry.parametrized else entry.index_fn(grid)
    else:
        index = _checked_table(_call_index_fn(entry, grid, window, name), grid, name)
    return index.flip(0) if flip else index


def _call_index_fn(entry: _Registered, grid: Grid, window: int, name: str) -> object:
    """A registered ``index_fn``'s table of ``grid``; its failure becomes one ValueError naming the direction and
    the grid."""
    try:
        return entry.index_fn(grid, window) if entry.parametrized else entry.index_fn(grid)
    except Exception as err:
        raise ValueError(f'scan direction {name!r} on grid {grid}: index_fn failed: {type(err).__name__}: {err}') \
            from err


def register_direction(name: str, index_fn: IndexFn, *, parametrized: bool = False, overwrite: bool = False,
                       probe_grid: Sequence[int] = PROBE_GRID) -> None:
    """Register a scan direction ``name`` and its reverse ``name_flip`` for every model, file and search.

    ``index_fn(grid)`` returns the (L,) integer table of an ``(H, W)`` grid: position ``s`` reads token
    ``table[s]`` (row-major ``i * W + j``), ``H * W`` reads a padding zero; each token appears exactly once. With
    ``parametrized``, the names ``{name}K`` (K >= 1, as ``wK``) call ``index_fn(grid, K)``. ``name`` is lowercase
    letters, digits and ``_`` (not ending in ``_flip``; a parametrised one not in a digit) and may not make a name
    that another registration makes. The table is checked on ``probe_grid`` (default 4 x 6; K = 2) now (give a grid
    it is defined on, e.g. a square one for a spiral), and on each grid when first built (tables are cached per grid;
    an ``index_fn`` that fails there is a ValueError naming the direction and grid). Registering the same function
    again does nothing; ``overwrite`` replaces another (compile a model again after replacing a direction it uses:
    compiled graphs keep the table lengths they were traced with). Raises ``ValueError`` saying what is wrong.
    """
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or name.endswith(FLIP_SUFFIX):
        raise ValueError(f'register_direction: name must be lowercase letters, digits and _, starting with a letter '
                         f'and not ending in {FLIP_SUFFIX!r} (the reverse is made by itself), got {name!r}')
    if not callable(index_fn):
        raise ValueError(f'register_direction({name!r}): index_fn must be callable, got {type(index_fn).__name__}')
    if parametrized and name[-1].isdigit():
        raise ValueError(f'register_direction({name!r}): a parametrised name may not end in a digit (its names are '
                         f'{name}K)')
    if name in _BUILTIN:
        raise ValueError(f'register_direction: {name!r} is a built-in direction')
    new = _Registered(index_fn, parametrized, None)
    if _REGISTRY.get(name) == new:
        return
    if name in _REGISTRY and not overwrite:
        raise ValueError(f'register_direction: {name!r} is already registered (overwrite=True replaces it)')
    clash = _clashing_registration(name, parametrized)
    if clash is not None:
        raise ValueError(f'register_direction: {name}{"K" if parametrized else ""} would make names that the '
                         f'registered {clash} makes too')
    grid = _check_grid(probe_grid)
    probe = f'{name}{PROBE_PARAMETER}' if parametrized else name
    try:
        table = index_fn(grid, PROBE_PARAMETER) if parametrized else index_fn(grid)
    except Exception as err:
        raise ValueError(f'register_direction({name!r}): index_fn failed on the {grid} grid (probe_grid= gives '
                         f'one it is defined on): {type(err).__name__}: {err}') from err
    _checked_table(table, grid, probe)
    _REGISTRY[name] = new
    _clear_tables()


def _clashing_registration(name: str, parametrized: bool) -> Optional[str]:
    """Another registration (shown as ``name`` or ``nameK``) that makes one of the names ``name`` would make."""
    if not parametrized:
        found = _lookup(name)                                   # 'w3' is made by wK
        return f'{found[0]}K' if found is not None and found[0] != name else None
    for other, entry in _REGISTRY.items():
        match = _PARAMETER_RE.fullmatch(other)
        if other != name and not entry.parametrized and match is not None and match[1] == name:
            return other                                        # a fixed 'zw3' is made by zwK
    return None


def unregister_direction(name: str) -> None:
    """Remove a direction registered with :func:`register_direction` (its cached tables too)."""
    if name in _BUILTIN:
        raise ValueError(f'unregister_direction: {name!r} is a built-in direction')
    if name not in _REGISTRY:
        own = [other for other in _REGISTRY if other not in _BUILTIN]
        raise ValueError(f'unregister_direction: {name!r} is not registered (registered: {", ".join(own) or "none"})')
    del _REGISTRY[name]
    _clear_tables()


def _clear_tables() -> None:
    scan_index.cache_clear()
    _sequence_index.cache_clear()


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
    for many tables in one graph (``assume_constant_result`` mixes up the second one with the first). An ONNX export
    gets the cached table itself, a constant of the ONNX graph (the exporter has no form for the opaque op).
    """
    names, grid = tuple(names), _check_grid(grid)
    device = torch.device('cpu') if device is None else torch.device(device)
    if torch.compiler.is_compiling() and not torch.onnx.is_in_onnx_export():
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
