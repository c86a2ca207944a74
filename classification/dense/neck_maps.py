"""What the necks of mmdet 3.x and mmseg 1.x take and give, read from their config dicts without building them: the
channels a neck is set for (and the ``--cfg-options`` that set it for other maps), and the channels and strides of the
maps it gives on. The det/seg checks of map_fit follow our backbone's maps through a neck, or through a list
of necks, which mmengine chains (each takes the maps the one before gives).

Judged: the necks of :data:`MAP_LIST_NECKS` (``in_channels``: one entry per map, in order; FPN and its kin read
only those of their maps start_level to end_level; MultiLevelNeck takes one map, or at least one per ``scales``
entry), HRFPN (as many maps, of sum(in_channels) channels in all), SSDNeck (its ``in_channels`` also begin its
``out_channels``), ICNeck (three maps), YOLOV3Neck (its ``in_channels`` deepest map first), BFP, DyHead and
Feature2Pyramid (every map of one width), DilatedEncoder and CTResNetNeck (the last map only); RFP, which takes the
image before the maps, is refused on ours; SimpleFPN, which takes one bare map of the backbone, is judged by map_fit.
MLANeck needs maps of one size, PAFPN, FPG, YOLOXPAFPN, CSPNeXtPAFPN, YOLOV3Neck, DyHead and HRFPN strides that
double (:func:`size_misfit`), GlobalAveragePooling a tuple, not a list (:func:`list_misfit`). Any other neck, and
settings a neck refuses itself, are passed over (None). The maps a neck gives on are known for those
:func:`neck_gives` names; a neck (or a head) after any other is not judged."""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Sequence

# Necks whose in_channels are the channels of the maps they get, one entry per map in the order given (they assert
# that they get as many maps as entries, and their convolutions refuse other channels).
MAP_LIST_NECKS = ('FPN', 'PAFPN', 'FPN_DropBlock', 'ChannelMapper', 'MultiLevelNeck', 'FPG', 'FPN_CARAFE', 'NASFPN',
                  'NASFCOS_FPN', 'SSH', 'YOLOXPAFPN', 'CSPNeXtPAFPN', 'MLANeck', 'JPU')
# Of those, the necks that refuse a list: their in_channels must be a tuple.
TUPLE_NECKS = ('JPU',)
# Of those, the necks that read only the in_channels entries of their maps start_level to end_level (FPN and its
# kin): the others may be of any width, though they must be there (FPN asserts as many maps as entries).
LEVEL_CHANNEL_NECKS = ('FPN', 'PAFPN', 'FPN_DropBlock', 'FPG', 'FPN_CARAFE', 'NASFPN', 'NASFCOS_FPN')


# Necks that combine their maps at fixed sizes: MLANeck adds them as they are (so they must be of one size); PAFPN's
# bottom-up path and DyHead add each map, halved by a stride-2 convolution, to the next, YOLOX's, RTMDet's and YOLOv3's
# necks concatenate each map, upsampled by 2, with the one before, HRFPN concatenates its map i, upsampled by 2**i,
# with the first, and FPG's grid fuses each map with both neighbours (so their strides must double from one map to the
# next); the words that say how, by neck.
ONE_SIZE_NECKS = ('MLANeck',)
# Of the doubling necks, those that combine only their maps start_level to end_level (as FPN reads them).
LEVEL_NECKS = ('PAFPN', 'FPG')
DOUBLING_NECKS = dict(dict.fromkeys(('PAFPN', 'YOLOXPAFPN', 'CSPNeXtPAFPN', 'YOLOV3Neck'),
                                    'combines each map with the next at twice its stride'),
                      DyHead='adds each map, halved by a stride-2 convolution, to the next',
                      FPG='fuses each map with the one before, halved by a stride-2 convolution, and the next, '
                          'upsampled by 2',
                      HRFPN='upsamples its map i by 2**i onto the first')

# Necks that pool a tuple of maps, or one bare map, and raise a TypeError on a list (as our backbones give): mmdet's
# GlobalAveragePooling, the neck of its ReID models.
TUPLE_INPUT_NECKS = ('GlobalAveragePooling',)


class NeckMaps(NamedTuple):
    """The maps a neck gives: their channels and their strides, each None where not known here."""
    channels: Optional[list[int]]
    strides: Optional[list[int]]


class Misfit(NamedTuple):
    """How a neck is set for other maps than it gets: what it ``takes`` (words), and the ``--cfg-options`` items that
    fit it, or (``fix`` empty) what to do where no setting of the neck can."""
    takes: str
    fix: str = ''
    advice: str = ''


def option_list(values: Sequence[int], tuple_form: bool = False) -> str:
    """``values`` as one ``--cfg-options`` value: [1,2,3], or (1,2,3) with ``tuple_form``."""
    text = ','.join(str(v) for v in values)
    return f'({text})' if tuple_form else f'[{text}]'


def positive_int(value: Any) -> Optional[int]:
    """``value`` when it is a positive int (not a bool), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def positive_ints(value: Any) -> Optional[list[int]]:
    """A config's list (or tuple) of positive ints as a list; None for anything else."""
    if not isinstance(value, (list, tuple)) or not value or not all(positive_int(v) for v in value):
        return None
    return list(value)


def _one_width(channels: Sequence[int]) -> Optional[int]:
    """The width of every map of ``channels``; None when they differ."""
    return channels[0] if len(set(channels)) == 1 else None


def _give_maps(source: str, count: str) -> str:
    """The advice to give a neck ``count`` (words) maps: through the backbone's out_indices where ``source`` (the
    config key of what gives the neck its maps) is the backbone, else from the neck before it."""
    return f'give {source}.out_indices {count} entries' if source.endswith('backbone') else f'give it {count} maps'


def _used_entries(neck: dict, values: Sequence[int]) -> list[int]:
    """The entries of ``values`` (one per map) that the neck ``neck`` reads: of :data:`LEVEL_CHANNEL_NECKS` those
    start_level to end_level (all for settings the neck refuses itself), of any other neck all."""
    levels = _levels(neck, len(values)) if neck['type'] in LEVEL_CHANNEL_NECKS else None
    return list(values[levels[0]:levels[1]]) if levels else list(values)


def _list_misfit(neck: dict, key: str, channels: list[int], source: str) -> Optional[Misfit]:
    """A neck of :data:`MAP_LIST_NECKS` whose in_channels are not ``channels`` (in the entries it reads; the line
    sets them all); SSH's out_channels and num_scales count the maps too."""
    expected = neck.get('in_channels')
    if not isinstance(expected, (list, tuple)) or (
            len(expected) == len(channels) and _used_entries(neck, expected) == _used_entries(neck, channels)):
        return None
    takes = f'takes {len(expected)} maps of in_channels {list(expected)}'
    fix = f'{key}.in_channels={option_list(channels, neck["type"] in TUPLE_NECKS)}'
    if neck['type'] == 'SSH' and len(expected) != len(channels):
        return _scales_misfit(neck, key, takes, fix, channels)
    return Misfit(takes, fix)


def _multi_level_misfit(neck: dict, key: str, channels: list[int], source: str) -> Optional[Misfit]:
    """mmseg's MultiLevelNeck: its in_channels as those of :data:`MAP_LIST_NECKS`; it resizes the map i it gets by
    scales[i], so it takes one map (for every entry) or at least one per entry."""
    scales, count = neck.get('scales', [0.5, 1, 2, 4]), len(channels)
    if not isinstance(scales, (list, tuple)) or not 1 < count < len(scales):
        return _list_misfit(neck, key, channels, source)
    outs = len(scales)
    takes = f'takes one map, or {outs} (one per scales entry: {list(scales)})'
    return Misfit(takes, advice=f'{_give_maps(source, f"1 or {outs}")}, or set {key}.scales to {count} entries')


def _scales_misfit(neck: dict, key: str, takes: str, fix: str, channels: list[int]) -> Misfit:
    """SSH or YOLOV3Neck set for another number of maps: num_scales and out_channels (one entry per map) change too;
    out_channels of one width are kept at it, others are left to the user."""
    count, widths = len(channels), neck.get('out_channels')
    width = _one_width(widths) if positive_ints(widths) else None
    if width is None:
        return Misfit(takes, advice=f'set {key}.num_scales={count}, {fix} and {key}.out_channels to {count} widths '
                                    f'(one per map)')
    return Misfit(takes, f'{key}.num_scales={count} {fix} {key}.out_channels={option_list([width] * count)}')


def _yolov3_misfit(neck: dict, key: str, channels: list[int], source: str) -> Optional[Misfit]:
    """YOLOV3Neck, whose in_channels start at the last (deepest) map it gets."""
    expected, deepest_first = neck.get('in_channels'), channels[::-1]
    if not isinstance(expected, (list, tuple)) or list(expected) == deepest_first:
        return None
    takes = f'takes {len(expected)} maps of in_channels {list(expected)} (the deepest first)'
    fix = f'{key}.in_channels={option_list(deepest_first)}'
    return Misfit(takes, fix) if len(expected) == len(channels) else _scales_misfit(neck, key, takes, fix, channels)


def _one_width_advice(kind: str) -> str:
    """What to do where a neck that takes maps of one width (BFP, DyHead, Feature2Pyramid) gets several widths."""
    return f"it takes maps of one width: put a neck that gives them before it (neck=[dict(type='FPN', ...), " \
           f"dict(type='{kind}', ...)])"


def _bfp_misfit(neck: dict, key: str, channels: list[int], source: str) -> Optional[Misfit]:
    """BFP, which takes num_levels maps of in_channels each (and refines at refine_level, below num_levels)."""
    width, levels, refine = neck.get('in_channels'), neck.get('num_levels'), neck.get('refine_level', 2)
    one, count = _one_width(channels), len(channels)
    if not (positive_int(width) and positive_int(levels)) or (one == width and levels == count):
        return None
    takes = f'takes {levels} maps of in_channels {width}'
    if one is None:
        return Misfit(takes, advice=_one_width_advice('BFP'))
    items = [f'{key}.in_channels={one}'] if one != width else []
    items += [f'{key}.num_levels={count}'] if levels != count else []
    items += [f'{key}.refine_level={count - 1}'] if isinstance(refine, int) and refine >= count else []
    return Misfit(takes, ' '.join(items))


def _dyhead_misfit(neck: dict, key: str, channels: list[int], source: str) -> Optional[Misfit]:
    """DyHead, which takes any number of maps of in_channels each."""
    width, one = neck.get('in_channels'), _one_width(channels)
    if not positive_int(width) or one == width:
        return None
    takes = f'takes maps of in_channels {width}'
    return Misfit(takes, f'{key}.in_channels={one}') if one else Misfit(takes, advice=_one_width_advice('DyHead'))


def _feature2pyramid_misfit(neck: dict, key: str, channels: list[int], source: str) -> Optional[Misfit]:
    """mmseg's Feature2Pyramid, which takes one map of embed_dim channels per rescales entry (four: its forward
    picks four resamplings); of another number the backbone ``source`` is told to give four."""
    width, rescales, one = neck.get('embed_dim'), neck.get('rescales', [4, 2, 1, 0.5]), _one_width(channels)
    if not positive_int(width) or not isinstance(rescales, (list, tuple)):
        return None
    if one == width and len(rescales) == len(channels):
        return None
    takes = f'takes {len(rescales)} maps of embed_dim {width} channels (one per rescales entry)'
    count = len(rescales)
    if count != len(channels):
        return Misfit(takes, advice=_give_maps(source, str(count)))
    return Misfit(takes, f'{key}.embed_dim={one}') if one else Misfit(takes, advice=_one_width_advice(neck['type']))


def _last_map_misfit(neck: dict, key: str, channels: list[int], source: str) -> Optional[Misfit]:
    """DilatedEncoder and CTResNetNeck, which take only the last map they get, in_channels wide."""
    width = neck.get('in_channels')
    if not positive_int(width) or width == channels[-1]:
        return None
    return Misfit(f'takes the last map, of in_channels {width}', f'{key}.in_channels={channels[-1]}')


def _hrfpn_misfit(neck: dict, key: str, channels: list[int], source: str) -> Optional[Misfit]:
    """HRFPN, which concatenates its maps before one 1x1 convolution of sum(in_channels) channels: it takes one map
    per in_channels entry, of those channels in all, split among the maps in any way."""
    expected = neck.get('in_channels')
    if positive_ints(expected) and len(expected) == len(channels) and sum(expected) == sum(channels):
        return None
    return _list_misfit(neck, key, channels, source)


def _ssd_misfit(neck: dict, key: str, channels: list[int], source: str) -> Optional[Misfit]:
    """mmdet's SSDNeck, which passes its maps on and adds maps after the last: its in_channels (one entry per map)
    must also begin its out_channels, a sequence of the same kind (SSDNeck compares them with ==), so both change."""
    expected, outs = neck.get('in_channels'), neck.get('out_channels')
    if (not (positive_ints(expected) and positive_ints(outs)) or len(outs) <= len(expected)
            or list(expected) == channels):
        return None
    tuple_form = isinstance(outs, tuple)
    extra = list(outs[len(expected):])
    return Misfit(f'takes {len(expected)} maps of in_channels {list(expected)}',
                  f'{key}.in_channels={option_list(channels, tuple_form)} '
                  f'{key}.out_channels={option_list(channels + extra, tuple_form)}')


def _icneck_misfit(neck: dict, key: str, channels: list[int], source: str) -> Optional[Misfit]:
    """mmseg's ICNeck (ICNet's cascade feature fusion), which takes three maps of in_channels, of any sizes (it
    resizes the deepest onto the middle one, and their fusion onto the first)."""
    expected = neck.get('in_channels', (64, 256, 256))
    if not positive_ints(expected) or len(expected) != 3 or list(expected) == channels:
        return None
    takes = f'takes 3 maps of in_channels {list(expected)}'
    if len(channels) != 3:
        return Misfit(takes, advice=_give_maps(source, '3'))
    return Misfit(takes, f'{key}.in_channels={option_list(channels)}')


def _rfp_misfit(neck: dict, key: str, channels: list[int], source: str) -> Misfit:
    """mmdet's RFP (DetectoRS's recursive FPN), which takes the image before the maps (a DetectoRS_ResNet with
    output_img=True gives it) and runs its rfp_backbone on it again: no backbone of ours gives the image."""
    return Misfit('takes the image before the maps (DetectoRS_ResNet with output_img=True gives it) and runs its '
                  'rfp_backbone on it', advice=f"use an FPN in its place (type='FPN', in_channels="
                                               f"{option_list(channels)}, without RFP's rfp_steps, rfp_backbone and "
                                               f"aspp_out_channels)")


_MISFITS: dict[str, Callable[[dict, str, list[int], str], Optional[Misfit]]] = dict(
    dict.fromkeys(MAP_LIST_NECKS, _list_misfit), MultiLevelNeck=_multi_level_misfit, YOLOV3Neck=_yolov3_misfit,
    BFP=_bfp_misfit, HRFPN=_hrfpn_misfit, SSDNeck=_ssd_misfit, ICNeck=_icneck_misfit, RFP=_rfp_misfit,
    DyHead=_dyhead_misfit, Feature2Pyramid=_feature2pyramid_misfit,
    DilatedEncoder=_last_map_misfit, CTResNetNeck=_last_map_misfit)


def judges(kind: str) -> bool:
    """True for a neck class whose settings :func:`neck_misfit` judges."""
    return kind in _MISFITS


def neck_misfit(kind: str, neck: dict, key: str, channels: list[int], source: str) -> Optional[Misfit]:
    """How the neck ``neck`` of class ``kind`` at the config key ``key`` is set for other maps than the maps of
    ``channels`` that ``source`` (a config key) gives it; None when it takes them, or is not judged here."""
    judge = _MISFITS.get(kind)
    return judge(dict(neck, type=kind), key, list(channels), source) if judge and channels else None


def size_misfit(kind: str, strides: Optional[Sequence[int]], neck: Optional[dict] = None) -> Optional[Misfit]:
    """How the neck class ``kind`` (its config ``neck``) cannot combine maps of ``strides`` (of
    :data:`ONE_SIZE_NECKS` or :data:`DOUBLING_NECKS`); None where it can, or where the strides are not known. A
    PAFPN or FPG combines only its maps ``start_level`` to ``end_level`` (:data:`LEVEL_NECKS`): the others may be of
    any stride."""
    if kind in LEVEL_NECKS and strides:
        levels = _levels(neck or {}, len(strides))
        strides = strides[levels[0]:levels[1]] if levels else None   # None: settings the neck refuses itself
    if not strides or len(strides) < 2:
        return None
    if kind in ONE_SIZE_NECKS and len(set(strides)) > 1:
        return Misfit('adds its maps together, so they must be of one size',
                      advice='feed it the maps of a plain backbone (MM_LocalVim: all of stride 16), or use a neck '
                             'that resizes its maps (FPN)')
    if kind in DOUBLING_NECKS and any(b != 2 * a for a, b in zip(strides, strides[1:])):
        return Misfit(f'{DOUBLING_NECKS[kind]}, so their strides must double from one map to the next',
                      advice="feed it the maps of MM_LocalVSSM's stages, or of a neck that gives such maps (SimpleFPN "
                             "after MM_LocalVim)")
    return None


def list_misfit(kind: str) -> Optional[Misfit]:
    """How the neck class ``kind`` cannot take a list of maps (of :data:`TUPLE_INPUT_NECKS`); None where it can."""
    if kind not in TUPLE_INPUT_NECKS:
        return None
    return Misfit('pools a tuple of maps or one bare map', advice=f"put a neck that gives a tuple of maps before it "
                                                                  f"(neck=[dict(type='FPN', ...), dict(type='{kind}', "
                                                                  f"...)])")


def _pyramid(strides: list[int], outs: int) -> list[int]:
    """``strides`` and then, up to ``outs`` maps, each extra map half the size of the one before."""
    strides = list(strides)
    while len(strides) < outs:
        strides.append(strides[-1] * 2)
    return strides


def _levels(neck: dict, count: int) -> Optional[tuple[int, int, int]]:
    """(first map, map after the last, number of maps given) of an FPN-like neck that builds its pyramid on the maps
    ``start_level`` to ``end_level`` (-1: the last; both inclusive) of ``count``, or None for settings it refuses."""
    start, end, outs = neck.get('start_level', 0), neck.get('end_level', -1), positive_int(neck.get('num_outs'))
    if not (isinstance(start, int) and isinstance(end, int) and outs):
        return None
    stop = count if end in (-1, count - 1) else end + 1
    if not 0 <= start < stop <= count or outs < stop - start or (stop < count and outs != stop - start):
        return None
    return start, stop, outs


def _widths(neck: dict, outs: int, setting: str = 'out_channels') -> Optional[list[int]]:
    """``outs`` maps of the int ``setting`` channels each, or None when it is not an int."""
    width = positive_int(neck.get(setting))
    return [width] * outs if width else None


def _fpn_gives(neck: dict, maps: NeckMaps, count: int) -> Optional[NeckMaps]:
    """FPN and its kin (PAFPN, FPN_DropBlock, FPG, FPN_CARAFE; NASFPN, whose cells take exactly five): the maps
    ``start_level`` to ``end_level``, then maps halved in size up to ``num_outs``, out_channels wide each."""
    levels = _levels(neck, count)
    if levels is None or (neck['type'] == 'NASFPN' and levels[2] != 5):
        return None
    start, stop, outs = levels
    strides = _pyramid(maps.strides[start:stop], outs) if maps.strides else None
    return NeckMaps(_widths(neck, outs), strides)


def _nasfcos_gives(neck: dict, maps: NeckMaps, count: int) -> Optional[NeckMaps]:
    """NASFCOS_FPN: its cells take three maps and give maps of the sizes of the maps 1, 2 and 3 it gets, then maps
    halved in size up to ``num_outs``."""
    levels = _levels(neck, count)
    if levels is None or count < 4 or levels[1] - levels[0] != 3:
        return None
    strides = _pyramid(maps.strides[1:4], levels[2]) if maps.strides else None
    return NeckMaps(_widths(neck, levels[2]), strides)


def _channel_mapper_gives(neck: dict, maps: NeckMaps, count: int) -> Optional[NeckMaps]:
    """ChannelMapper: every map, then maps halved in size up to ``num_outs``."""
    outs = positive_int(neck.get('num_outs', count))
    if not outs:
        return None
    return NeckMaps(_widths(neck, outs), _pyramid(maps.strides, outs) if maps.strides else None)


def _simple_fpn_gives(neck: dict, maps: NeckMaps, count: int) -> Optional[NeckMaps]:
    """SimpleFPN: its one map of stride s as maps of strides s/4, s/2, s, 2s, then halved up to ``num_outs``."""
    outs = positive_int(neck.get('num_outs'))
    if count != 1 or not outs:
        return None
    stride = maps.strides[0] if maps.strides else None
    strides = _pyramid([stride // 4, stride // 2, stride, stride * 2], outs) if stride and stride % 4 == 0 else None
    return NeckMaps(_widths(neck, outs), strides)


def _hrfpn_gives(neck: dict, maps: NeckMaps, count: int) -> Optional[NeckMaps]:
    """HRFPN: the maps, upsampled by 2, 4, ... onto the first, make one map of its stride s, pooled into maps of
    strides s, 2s, 4s, ... (``num_outs``); the strides only for maps that double from one to the next, and stride 1."""
    outs = positive_int(neck.get('num_outs', 5))
    if not outs:
        return None
    doubling = maps.strides and all(s == maps.strides[0] * 2 ** i for i, s in enumerate(maps.strides))
    strides = [maps.strides[0] * 2 ** i for i in range(outs)] if doubling and neck.get('stride', 1) == 1 else None
    return NeckMaps(_widths(neck, outs), strides)


def _same_maps_gives(neck: dict, maps: NeckMaps, count: int) -> Optional[NeckMaps]:
    """Necks that give one map per map they get, of its size: BFP (of its channels too), DyHead, YOLOXPAFPN,
    CSPNeXtPAFPN and MLANeck (out_channels wide), SSH (out_channels, a list)."""
    kind = neck['type']
    if kind == 'BFP':
        channels = maps.channels
    elif kind == 'SSH':
        channels = positive_ints(neck.get('out_channels'))
    else:
        channels = _widths(neck, count)
    return NeckMaps(channels, maps.strides)


def _resized(strides: Sequence[int], factors: Sequence[float]) -> Optional[list[int]]:
    """Each of ``strides`` for its map resized by its factor of ``factors`` (2: twice the size, half the stride);
    None where one is not a whole number."""
    resized = [stride / factor for stride, factor in zip(strides, factors)]
    return [int(s) for s in resized] if all(s >= 1 and s == int(s) for s in resized) else None


def _scale_factors(value: Any) -> Optional[list[float]]:
    """A config's list (or tuple) of positive resize factors as a list; None for anything else."""
    numbers = isinstance(value, (list, tuple)) and value and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in value)
    return list(value) if numbers else None


def _multi_level_gives(neck: dict, maps: NeckMaps, count: int) -> Optional[NeckMaps]:
    """mmseg's MultiLevelNeck: one map per ``scales`` entry, out_channels wide, the map i it gets resized by
    scales[i] (one map it gets serves every entry); fewer maps than entries, but more than one, it refuses."""
    scales = _scale_factors(neck.get('scales', [0.5, 1, 2, 4]))
    if scales is None or 1 < count < len(scales):
        return None
    strides = maps.strides * len(scales) if maps.strides and count == 1 else maps.strides
    return NeckMaps(_widths(neck, len(scales)), _resized(strides, scales) if strides else None)


def _jpu_gives(neck: dict, maps: NeckMaps, count: int) -> Optional[NeckMaps]:
    """mmseg's JPU: the maps ``start_level`` to ``end_level`` (exclusive; -1: to the last) as it gets them, but the
    last of them, which it replaces by their joint upsampling at the first one's size, mid_channels wide per entry
    of ``dilations``."""
    start, end = neck.get('start_level', 0), neck.get('end_level', -1)
    width, dilations = positive_int(neck.get('mid_channels', 512)), neck.get('dilations', (1, 2, 4, 8))
    stop = count if end == -1 else end
    if not (isinstance(start, int) and isinstance(stop, int) and 0 <= start < stop <= count and width
            and isinstance(dilations, tuple) and dilations):
        return None
    channels = maps.channels[start:stop - 1] + [width * len(dilations)] if maps.channels else None
    strides = maps.strides[start:stop - 1] + maps.strides[start:start + 1] if maps.strides else None
    return NeckMaps(channels, strides)


# The resize factors of Feature2Pyramid's four maps, in the order its forward applies them, by the set of rescales
# that builds them (its rescales only choose which resamplings it builds).
FEATURE2PYRAMID_FACTORS = {frozenset((4, 2, 1, 0.5)): (4, 2, 1, 0.5), frozenset((2, 1, 0.5, 0.25)): (2, 1, 0.5, 0.25)}


def _feature2pyramid_gives(neck: dict, maps: NeckMaps, count: int) -> Optional[NeckMaps]:
    """mmseg's Feature2Pyramid: its four maps, embed_dim wide, resized by 4, 2, 1 and 0.5 (by 2, 1, 0.5 and 0.25
    where rescales has no 4); other rescales it refuses."""
    rescales = _scale_factors(neck.get('rescales', [4, 2, 1, 0.5]))
    factors = FEATURE2PYRAMID_FACTORS.get(frozenset(rescales or ()))
    if factors is None or count != len(factors) or len(rescales) != count:
        return None
    return NeckMaps(_widths(neck, count, 'embed_dim'), _resized(maps.strides, factors) if maps.strides else None)


def _yolov3_gives(neck: dict, maps: NeckMaps, count: int) -> Optional[NeckMaps]:
    """YOLOV3Neck: one map per map it gets, the deepest first, out_channels (a list) wide."""
    return NeckMaps(positive_ints(neck.get('out_channels')), maps.strides[::-1] if maps.strides else None)


def _dilated_encoder_gives(neck: dict, maps: NeckMaps, count: int) -> Optional[NeckMaps]:
    """DilatedEncoder: one map, of the last map's size, out_channels wide."""
    return NeckMaps(_widths(neck, 1), maps.strides[-1:] if maps.strides else None)


def _ct_resnet_gives(neck: dict, maps: NeckMaps, count: int) -> Optional[NeckMaps]:
    """CTResNetNeck: the last map, doubled in size by each deconvolution (of kernel 4: the only size that doubles
    exactly), num_deconv_filters[-1] wide."""
    filters, kernels = positive_ints(neck.get('num_deconv_filters')), positive_ints(neck.get('num_deconv_kernels'))
    if not filters:
        return None
    last = maps.strides[-1] if maps.strides else None
    exact = last and kernels and set(kernels) == {4} and last % 2 ** len(filters) == 0
    return NeckMaps(filters[-1:], [last // 2 ** len(filters)] if exact else None)


def _ssd_gives(neck: dict, maps: NeckMaps, count: int) -> Optional[NeckMaps]:
    """SSDNeck: its maps, then one map per extra out_channels entry; their strides are not known here (a convolution
    of padding 0, or of SSD512's last kernel 4, shrinks its map by a few pixels, not by a factor)."""
    return NeckMaps(positive_ints(neck.get('out_channels')), None)


def _icneck_gives(neck: dict, maps: NeckMaps, count: int) -> Optional[NeckMaps]:
    """mmseg's ICNeck: three maps, out_channels wide, of the sizes of the second, the first and the first map it
    gets (the deepest fused onto the second, then onto the first)."""
    if count != 3:
        return None
    width = positive_int(neck.get('out_channels', 128))
    strides = [maps.strides[1], maps.strides[0], maps.strides[0]] if maps.strides else None
    return NeckMaps([width] * 3 if width else None, strides)


_GIVES: dict[str, Callable[[dict, NeckMaps, int], Optional[NeckMaps]]] = dict(
    dict.fromkeys(('FPN', 'PAFPN', 'FPN_DropBlock', 'FPG', 'FPN_CARAFE', 'NASFPN'), _fpn_gives),
    **dict.fromkeys(('BFP', 'DyHead', 'SSH', 'YOLOXPAFPN', 'CSPNeXtPAFPN', 'MLANeck'), _same_maps_gives),
    NASFCOS_FPN=_nasfcos_gives, ChannelMapper=_channel_mapper_gives, SimpleFPN=_simple_fpn_gives,
    HRFPN=_hrfpn_gives, YOLOV3Neck=_yolov3_gives, DilatedEncoder=_dilated_encoder_gives,
    CTResNetNeck=_ct_resnet_gives, MultiLevelNeck=_multi_level_gives, JPU=_jpu_gives,
    Feature2Pyramid=_feature2pyramid_gives, SSDNeck=_ssd_gives, ICNeck=_icneck_gives)


LAST_MAP_NECKS = ('DilatedEncoder', 'CTResNetNeck')


def maps_read(kind: str, neck: dict, count: int) -> Optional[list[int]]:
    """The maps, of ``count`` it gets, that the neck ``neck`` of class ``kind`` builds on where it passes some over:
    those of FPN and its kin from ``start_level`` to ``end_level``, the last one of :data:`LAST_MAP_NECKS`; None where
    it reads them all, for a neck not known here, or for settings it refuses."""
    if kind in LAST_MAP_NECKS:
        return [count - 1] if count else None
    if kind not in LEVEL_CHANNEL_NECKS:
        return None
    levels = _levels(neck, count)
    return list(range(levels[0], levels[1])) if levels else None


def neck_gives(kind: str, neck: dict, maps: NeckMaps, count: int) -> Optional[NeckMaps]:
    """The maps the neck ``neck`` of class ``kind`` gives when it gets ``count`` maps (``maps``: their channels and
    strides, each None where not known); None for a neck not known here, or settings it refuses."""
    gives = _GIVES.get(kind)
    return gives(dict(neck, type=kind), maps, count) if gives and count else None
