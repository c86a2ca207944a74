"""Scan directions registered from user code: their tables (checked, cached, flipped, parametrised) drive both model
families exactly as a hand-built gather/scatter does, through direction files, checkpoints, the dense backbones,
torch.fx and torch.compile; bad registrations are refused in one line."""
import re
import sys

import pytest
import timm
import torch

import classification  # noqa: F401  (registers the models)
from classification.dense import MM_LocalVSSM
from classification.models import list_directions, register_direction, unregister_direction
from classification.models import scan_maps
from classification.models.directions import save_directions
from classification.models.local_vim import MultiMamba
from classification.models.local_vmamba import SS2D
from classification.models.scan_maps import parse_direction, scan_index, scan_length, sequence_index
from test_local_vim import mixer_by_reference
from test_local_vmamba import model_by_reference, perturbed, ss2d_by_reference


def snake(grid):
    """Row-major with every odd row reversed (a zigzag / boustrophedon order)."""
    rows = torch.arange(grid[0] * grid[1]).view(grid).clone()
    rows[1::2] = rows[1::2].flip(1)
    return rows.reshape(-1)


def diagonal(grid):
    """Anti-diagonals i + j = 0, 1, ..., each from the top row down."""
    i, j = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing='ij')
    return torch.argsort(((i + j) * grid[0] + i).reshape(-1))


def column_windows(grid, k):
    """k x k windows in row-major order, each read column-major; the grid zero-padded to multiples of k."""
    rows, cols = -(-grid[0] // k) * k, -(-grid[1] // k) * k
    padded = torch.full((rows, cols), grid[0] * grid[1], dtype=torch.long)
    padded[:grid[0], :grid[1]] = torch.arange(grid[0] * grid[1]).view(grid)
    return padded.view(rows // k, k, cols // k, k).permute(0, 2, 3, 1).reshape(-1)


USER_DIRECTIONS = {'snake': (snake, False), 'diag': (diagonal, False), 'cw': (column_windows, True)}


@pytest.fixture(autouse=True)
def registered():
    """The user directions registered for each test, and removed after it (the registry is process-wide)."""
    for name, (fn, parametrized) in USER_DIRECTIONS.items():
        register_direction(name, fn, parametrized=parametrized)
    yield
    for name in list(scan_maps._REGISTRY):
        if name not in scan_maps._BUILTIN:
            unregister_direction(name)


def test_tables_flips_lengths_and_the_list_of_names():
    grid = (3, 4)
    assert scan_index('snake', grid).tolist() == [0, 1, 2, 3, 7, 6, 5, 4, 8, 9, 10, 11]
    assert scan_index('snake_flip', grid).tolist() == [11, 10, 9, 8, 4, 5, 6, 7, 3, 2, 1, 0]
    assert scan_index('diag', grid).tolist() == [0, 1, 4, 2, 5, 8, 3, 6, 9, 7, 10, 11]
    padding = 12
    assert scan_index('cw2', grid).tolist() == [0, 4, 1, 5, 2, 6, 3, 7, 8, padding, 9, padding, 10, padding, 11,
                                                padding]
    assert scan_length('cw2', grid) == 16 and scan_length('cw3_flip', grid) == 18 and scan_length('snake', grid) == 12
    assert parse_direction('cw7_flip') == ('cw', 7, True) and parse_direction('snake') == ('snake', 0, False)
    assert scan_index('h', grid).tolist() == list(range(12))                      # built-ins unchanged
    assert list_directions() == ['h', 'v', 'wK', 'snake', 'diag', 'cwK']
    with pytest.raises(ValueError, match=r"valid directions are h, h_flip, v, v_flip, wK, wK_flip \(.*\), and the "
                                         r"registered snake, snake_flip, diag, diag_flip, cwK, cwK_flip \(a direction "
                                         r"of your own: register_direction, and in the tools name its module in "
                                         r"LOCALMAMBA_DIRECTION_MODULES\)$"):
        parse_direction('spiral')
    for bad in ('cw', 'cw0', 'cw02', 'snake2', 'snake_flip_flip'):
        with pytest.raises(ValueError, match='unknown scan direction'):
            parse_direction(bad)


def identity_table(grid):
    return torch.arange(grid[0] * grid[1])


@pytest.mark.parametrize('name, fn, kwargs, match', [
    ('Zig', identity_table, {}, 'name must be lowercase letters'),
    ('zig_flip', identity_table, {}, "not ending in '_flip'"),
    ('2zig', identity_table, {}, 'starting with a letter'),
    ('h', identity_table, {}, "'h' is a built-in direction"),
    ('w', identity_table, {'parametrized': True}, "'w' is a built-in direction"),
    ('w3', identity_table, {}, 'w3 would make names that the registered wK makes too'),
    ('cw4', identity_table, {}, 'cw4 would make names that the registered cwK makes too'),
    ('zig2', lambda grid, k: identity_table(grid), {'parametrized': True}, 'may not end in a digit'),
    ('snake', identity_table, {}, "'snake' is already registered"),
    ('zig', 'not a function', {}, 'index_fn must be callable'),
    ('zig', lambda grid: identity_table(grid)[:-1], {}, r"'zig' on grid \(4, 6\): the table misses token\(s\) \[23\]"),
    ('zig', lambda grid: torch.cat([identity_table(grid), torch.tensor([5, 5])]), {}, r'repeats token\(s\) \[5\]'),
    ('zig', lambda grid: torch.cat([identity_table(grid), torch.tensor([5])]), {}, r'repeats token\(s\) \[5\]'),
    ('zig', lambda grid: identity_table(grid) - 1, {}, r'values must be token indices 0..23 or 24 .*found \[-1\]'),
    ('zig', lambda grid: identity_table(grid) + 2, {}, r'found \[25\]'),
    ('zig', lambda grid: identity_table(grid).float(), {}, 'must return a 1-D integer tensor, got 1-D torch.float32'),
    ('zig', lambda grid: identity_table(grid) < 1, {}, 'must return a 1-D integer tensor, got 1-D torch.bool'),
    ('zig', lambda grid: identity_table(grid).view(grid), {}, 'must return a 1-D integer tensor, got 2-D'),
    ('zig', lambda grid: list(range(24)), {}, 'must return a 1-D integer tensor, got list'),
    ('zig', lambda grid: 1 / 0, {}, r'index_fn failed on the \(4, 6\) grid .*: ZeroDivisionError'),
    ('zig', lambda grid: identity_table(grid), {'parametrized': True}, 'index_fn failed on the'),   # takes no K
])
def test_bad_registrations_are_refused_in_one_line(name, fn, kwargs, match):
    with pytest.raises(ValueError, match=match) as error:
        register_direction(name, fn, **kwargs)
    assert '\n' not in str(error.value)
    assert 'zig' not in list_directions()


def spiral(grid):
    """Clockwise from the top-left corner inwards; defined on square grids only (a square reshape)."""
    cells = torch.arange(grid[0] * grid[1]).view(grid[0], grid[0])
    order = []
    while cells.numel():
        order.append(cells[0])
        cells = cells[1:].t().flip(0)          # the rest, turned so that its right column becomes the top row
    return torch.cat(order)


def test_a_direction_of_some_grids_only_registers_on_its_probe_grid_and_fails_elsewhere_by_name():
    with pytest.raises(ValueError, match=r"index_fn failed on the \(4, 6\) grid \(probe_grid= gives one"):
        register_direction('spiral', spiral)
    register_direction('spiral', spiral, probe_grid=(3, 3))
    assert scan_index('spiral', (3, 3)).tolist() == [0, 1, 2, 5, 8, 7, 6, 3, 4]
    model = timm.create_model('local_vim_tiny', img_size=32, patch_size=16, embed_dim=16, depth=1,
                              directions=[['spiral']])
    with pytest.raises(ValueError, match=r"^scan direction 'spiral' on grid \(2, 3\): index_fn failed: RuntimeError"):
        model(torch.randn(1, 3, 32, 48))     # a raw reshape error before, naming neither the direction nor the grid
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 1000)


def test_a_parametrised_name_clashing_with_a_registered_one_is_refused():
    register_direction('zz3', identity_table)
    with pytest.raises(ValueError, match='zzK would make names that the registered zz3 makes too'):
        register_direction('zz', lambda grid, k: identity_table(grid), parametrized=True)


def test_a_table_wrong_on_another_grid_is_refused_when_built():
    register_direction('fixed24', lambda grid: torch.arange(24))          # right on the 4 x 6 probe grid only
    with pytest.raises(ValueError, match=r"'fixed24_flip' on grid \(3, 5\): values must be .* found \[16, 17"):
        sequence_index(('h', 'fixed24_flip'), (3, 5))
    model = timm.create_model('local_vim_tiny', img_size=48, patch_size=16, embed_dim=16, depth=1,
                              directions=[['fixed24']])
    with pytest.raises(ValueError, match=r"on grid \(3, 3\)"):
        model(torch.randn(1, 3, 48, 48))


def test_registering_again_is_a_no_op_and_overwrite_replaces_the_cached_tables():
    register_direction('snake', snake)                                    # the same function: nothing changes
    before = sequence_index(('snake', 'h'), (2, 3)).tolist()
    assert before == [[0, 1, 2, 5, 4, 3], [0, 1, 2, 3, 4, 5]]
    register_direction('snake', lambda grid: snake(grid).flip(0), overwrite=True)
    assert sequence_index(('snake', 'h'), (2, 3)).tolist() == [[3, 4, 5, 2, 1, 0], [0, 1, 2, 3, 4, 5]]
    unregister_direction('snake')
    with pytest.raises(ValueError, match='unknown scan direction'):
        sequence_index(('snake',), (2, 3))
    with pytest.raises(ValueError, match="'v' is a built-in direction"):
        unregister_direction('v')
    with pytest.raises(ValueError, match=r"^unregister_direction: 'snake' is not registered \(registered: diag, cw\)$"):
        unregister_direction('snake')        # the built-ins, which cannot be unregistered, are not listed


@pytest.mark.parametrize('directions,grid,cls', [
    (('snake', 'diag_flip', 'cw2'), (3, 5), None),               # non-square; cw2 pads inside the sequence
    (('cw3_flip', 'snake_flip', 'h'), (4, 6), 12),               # middle class token
])
def test_localvim_mixer_equals_the_gather_scatter_reference(directions, grid, cls):
    for name in directions:                                       # the model reads exactly the user's tables
        fn, parametrized = USER_DIRECTIONS.get(parse_direction(name).kind, (None, False))
        if fn is not None:
            direction = parse_direction(name)
            table = fn(grid, direction.window) if parametrized else fn(grid)
            assert scan_index(name, grid).tolist() == (table.flip(0) if direction.flip else table).tolist()
    torch.manual_seed(0)
    mixer = perturbed(MultiMamba(12, directions, d_state=5))
    hidden = torch.randn(2, grid[0] * grid[1] + (cls is not None), 12)
    torch.testing.assert_close(mixer(hidden, grid, cls), mixer_by_reference(mixer, hidden, grid, cls),
                               rtol=1e-4, atol=1e-5)


def test_localvmamba_block_and_model_equal_the_gather_scatter_reference():
    torch.manual_seed(0)
    op = perturbed(SS2D(8, ('diag', 'cw3', 'snake_flip'), d_state=4))
    x = torch.randn(2, 5, 7, 8)
    torch.testing.assert_close(op(x), ss2d_by_reference(op, x), rtol=1e-4, atol=1e-5)
    model = perturbed(timm.create_model('local_vssm_tiny', dims=(8, 16), depths=(1, 2), num_classes=5,
                                        drop_path_rate=0., directions=[['snake', 'cw2'], ['diag_flip'],
                                                                       ['h', 'cw3_flip', 'snake']])).eval()
    image = torch.randn(2, 3, 36, 28)                                         # grids 9x7, 5x4
    torch.testing.assert_close(model(image), model_by_reference(model, image), rtol=1e-4, atol=1e-5)


def test_directions_files_checkpoints_and_dense_backbones_take_registered_names(tmp_path):
    table = [['snake', 'cw2_flip'], ['diag', 'h']]
    path = tmp_path / 'directions.yaml'
    save_directions(path, table, supernet='local_vim_tiny_search', topk=2)
    torch.manual_seed(0)
    model = timm.create_model('local_vim_tiny', img_size=32, patch_size=8, embed_dim=16, depth=2, num_classes=3,
                              directions=str(path)).eval()
    assert model.directions == tuple(map(tuple, table))
    torch.save({'state_dict': model.state_dict()}, tmp_path / 'ckpt.pth')
    reloaded = timm.create_model('local_vim_tiny', img_size=32, patch_size=8, embed_dim=16, depth=2, num_classes=3,
                                 directions=table, pretrained=True,
                                 pretrained_cfg_overlay=dict(file=str(tmp_path / 'ckpt.pth'))).eval()
    image = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(image), model(image), rtol=0, atol=0)
    backbone = MM_LocalVSSM(out_indices=(0, 1), dims=8, depths=(1, 1), directions=[['snake', 'cw2'], ['diag']])
    assert [tuple(f.shape) for f in backbone(torch.randn(1, 3, 40, 24))] == [(1, 8, 10, 6), (1, 16, 5, 3)]


@pytest.mark.parametrize('bad', ['', 3, None])
def test_saving_unregistered_names_still_refuses_what_is_no_name(tmp_path, bad):
    """``check_names=False`` (a supernet's searched names, not registered here) takes any name, but not an empty
    string or a value that is no string: the file would not read back as directions."""
    path = tmp_path / 'directions.yaml'
    save_directions(path, [['h'], ['v', 'elsewhere_registered']], check_names=False)
    with pytest.raises(ValueError, match=rf'layer 1 holds {re.escape(repr(bad))}, not a direction name'):
        save_directions(path, [['h'], ['v', bad]], check_names=False)


def test_fx_and_compile_run_registered_tables():
    torch.manual_seed(0)
    model = timm.create_model('local_vim_tiny', img_size=24, patch_size=8, embed_dim=16, depth=2, num_classes=4,
                              drop_path_rate=0., directions=[['snake', 'cw2'], ['cw2_flip', 'diag']]).eval()
    image = torch.randn(2, 3, 24, 24)                                         # a 3x3 grid: cw2 pads to 16
    with torch.no_grad():
        expected = model(image)
        torch.testing.assert_close(torch.fx.symbolic_trace(model)(image), expected, rtol=0, atol=0)
        scan_maps.scan_index.cache_clear()                    # the compiled graph's shapes ask for the lengths first
        scan_maps._sequence_index.cache_clear()
        torch._dynamo.reset()
        compiled = torch.compile(model, fullgraph=True, backend='eager')
        torch.testing.assert_close(compiled(image), expected, rtol=1e-5, atol=1e-6)


def test_modules_named_in_the_environment_register_their_directions(tmp_path, monkeypatch):
    (tmp_path / 'my_scans.py').write_text(
        'import torch\n'
        'from classification.models import register_direction\n'
        'register_direction("spiral_demo", lambda grid: torch.arange(grid[0] * grid[1]).flip(0))\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv(scan_maps.DIRECTION_MODULES_ENV, ' my_scans , ')
    monkeypatch.setattr(scan_maps, '_imported_modules', set())
    try:
        assert scan_index('spiral_demo_flip', (2, 2)).tolist() == [0, 1, 2, 3]
        assert 'spiral_demo' in list_directions()
    finally:
        sys.modules.pop('my_scans', None)
    monkeypatch.setenv(scan_maps.DIRECTION_MODULES_ENV, 'no_such_scans_module')
    with pytest.raises(ImportError, match=f"{scan_maps.DIRECTION_MODULES_ENV}: cannot import 'no_such_scans_module'"):
        parse_direction('zigzag')
