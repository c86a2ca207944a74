"""Whether a det/seg model's necks and heads are set for the maps our backbone gives, checked on its config before
mmengine builds it: the channels each neck (or each of a list of necks) takes, the ``in_index`` / ``in_channels`` of the
segmentation heads, the maps the pixel decoder of a MaskFormer or Mask2Former head reads, the in_channels of the
detection heads that take one entry per map (SSD's, YOLOv3's), and the strides of the detection heads' anchors, points
and RoI extractors; and, for a distributed training run, maps of our backbone that nothing reads. Each check returns the
one-line error with the ``--cfg-options`` that fit (None when all fits); mmdet and mmseg would end in a bare
AssertionError, an IndexError or a convolution's channel error after building the datasets, or train silently wrong.
What each neck takes and gives is :mod:`.neck_maps`'s."""
from __future__ import annotations

from typing import Any, Iterator, NamedTuple, Optional, Sequence

from .neck_maps import (Misfit, NeckMaps, judges, list_misfit, maps_read, neck_gives, neck_misfit, option_list,
                        positive_int, positive_ints, size_misfit)
from .run_inputs import is_backbone, keyed_dicts, type_name


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
    """A neck (or a MaskFormer or Mask2Former head) at ``key`` that takes a list of maps, after mmdet's MM_LocalVim of
    one map, which it passes on bare."""
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


class BackbonePicks(NamedTuple):
    """How the backbone's ``out_indices`` (at ``key``; a tuple in the config where ``tuple_form``) pick the maps it
    gives: the ``unit`` ('layer' or 'stage') index of each map, in the order given."""
    key: str
    unit: str
    indices: list[int]
    tuple_form: bool


class GivenMaps(NamedTuple):
    """The channels of the maps a backbone or a neck gives, the words that say so in a line, their strides (None
    where not known here), and how the backbone's out_indices pick them (None for a neck's maps)."""
    channels: list[int]
    words: str
    strides: Optional[list[int]] = None
    picks: Optional[BackbonePicks] = None


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
    channels, strides, source, first = maps.channels, maps.strides, f'{where}.backbone', necks[0][0]
    for key, neck in necks:
        kind = type_name(neck)
        if kind == 'SimpleFPN':
            problem = _simple_fpn_problem(where, key, neck, maps, given) if key == first else None
            if problem or key != first:
                return problem, None
        elif bare_map and key == first and judges(kind):
            return _bare_map_problem(where, key, neck, given), None
        as_list = list_misfit(kind) if key == first and not bare_map else None    # our backbones give a list
        name = f'{key} ({kind})'
        problem = (_misfit_line(name, neck_misfit(kind, neck, key, channels, source), given)
                   or _misfit_line(name, size_misfit(kind, strides, neck), f'{given}, of strides {strides}')
                   or _misfit_line(name, as_list, f'{given}, as a list'))
        if problem:
            return problem, None
        gives = neck_gives(kind, neck, NeckMaps(channels, strides), len(channels))
        if gives is None or not gives.channels:
            return None, None
        channels, strides, source = gives.channels, gives.strides, key
        given = _neck_gives_words(key, kind, gives.channels)
    return None, GivenMaps(channels, given, strides)


# mmdet's MaskFormer and Mask2Former heads (mmseg's wrap them) and the pixel decoders each builds: they take every
# map they get, whatever their in_index, and build their pixel decoder on their in_channels.
MASK_HEAD_DECODERS = dict(MaskFormerHead=('PixelDecoder', 'TransformerEncoderPixelDecoder'),
                          Mask2FormerHead=('MSDeformAttnPixelDecoder',))
# MSDeformAttnPixelDecoder's strides when its config sets none.
DEFORM_DECODER_STRIDES = [4, 8, 16, 32]


class DecoderReads(NamedTuple):
    """What a pixel decoder of ``entries`` in_channels entries reads, as Python indices (below 0: from the end):
    ``maps``, each with the in_channels entry of the same index; ``strides``, the entries of its strides (one per
    level of its encoder); ``levels``, the number of those levels (None for a decoder without)."""
    maps: list[int]
    strides: list[int]
    levels: Optional[int]


def _decoder_reads(decoder: dict, entries: int) -> Optional[DecoderReads]:
    """The maps and strides that the pixel decoder ``decoder`` (a config dict) of ``entries`` in_channels entries
    reads: PixelDecoder and TransformerEncoderPixelDecoder the first entries - 1 maps and the last one;
    MSDeformAttnPixelDecoder its maps 0 to entries - 1 and, one per level of its encoder (num_levels), the strides of
    the deepest (with more levels than entries, the levels go on below 0, from the end). None where not known."""
    if type_name(decoder) != 'MSDeformAttnPixelDecoder':
        return DecoderReads(list(range(entries - 1)) + [-1], [], None)
    attention = decoder
    for key in ('encoder', 'layer_cfg', 'self_attn_cfg'):
        attention = attention.get(key) if isinstance(attention, dict) else None
    levels = positive_int(attention.get('num_levels')) if isinstance(attention, dict) else None
    if levels is None:
        return None
    return DecoderReads(list(range(min(entries - levels, 0), entries)), list(range(entries - levels, entries)), levels)


def _unread_maps(reads: DecoderReads, count: int) -> list[int]:
    """The indices, from 0, of the maps of ``count`` given that a pixel decoder reading ``reads`` (all in range)
    passes over."""
    read = {i % count for i in reads.maps}
    return [i for i in range(count) if i not in read]


def _unread_words(unread: list[int], picks: BackbonePicks) -> str:
    """'it would leave <stages 2, 3> unread' (the maps ``unread`` of those the backbone's out_indices ``picks``), and
    where at least two would be read, the --cfg-options that give only those (the head's other way out follows)."""
    many = 's' if len(unread) > 1 else ''
    words = f'it would leave {picks.unit}{many} {", ".join(str(picks.indices[i]) for i in unread)} unread'
    read = [index for i, index in enumerate(picks.indices) if i not in unread]
    if len(read) < 2:
        return words
    return (f'{words}: give only the maps it reads (--cfg-options {picks.key}={option_list(read, picks.tuple_form)}), '
            f'or read them all')


def _doubling(strides: Sequence[int], count: int) -> list[int]:
    """``strides`` doubled on from the last entry to ``count`` entries (from 4 where empty)."""
    values = list(strides) or [DEFORM_DECODER_STRIDES[0]]
    while len(values) < count:
        values.append(values[-1] * 2)
    return values[:count]


def _mask_head_problem(where: str, head: dict, given: GivenMaps) -> Optional[str]:
    """The line for the MaskFormer or Mask2Former head ``head`` at ``where`` whose pixel decoder cannot read the
    maps ``given`` to it, or would leave some unread: a map it reads missing or of other channels than its in_channels
    entry, an in_channels entry it reads missing (Mask2Former with more levels than twice its entries), an entry of
    its strides missing (one per in_channels entry it reads, whether or not the maps' strides are known here: its
    forward ends in an IndexError), or a map of our backbone that it passes over (more maps than in_channels entries:
    it runs, but the map's output norm and the layers only it needs get no gradient, and DistributedDataParallel stops
    on them); None where it reads them, or for settings not known here. A neck's maps after those it reads are left
    alone (FPN's and SimpleFPN's extra levels pool the last one, without parameters). The values of its strides do not
    change what it computes (where the maps' strides are not known, the line doubles its last one on)."""
    expected, decoder = positive_ints(head.get('in_channels')), head.get('pixel_decoder')
    if not expected or not isinstance(decoder, dict) or type_name(decoder) not in MASK_HEAD_DECODERS[type_name(head)]:
        return None
    reads = _decoder_reads(decoder, len(expected))
    if reads is None:
        return None
    channels, count = given.channels, len(given.channels)
    strides = _square_strides(decoder.get('strides', DEFORM_DECODER_STRIDES)) if reads.levels else None
    takes_maps = all(-count <= i < count and -len(expected) <= i and channels[i] == expected[i] for i in reads.maps)
    takes_strides = strides is None or all(-len(strides) <= i < len(strides) for i in reads.strides)
    unread = _unread_maps(reads, count) if takes_maps and given.picks else []
    if takes_maps and takes_strides and not unread:
        return None
    fix = [] if list(expected) == channels else [
        f'{where}.in_channels={option_list(channels, isinstance(head["in_channels"], tuple))}']
    takes = f'takes {len(expected)} map{"s" if len(expected) > 1 else ""} of in_channels {list(expected)}'
    gives = given.words
    if reads.levels and reads.levels > 2 * count:
        takes += f' into {reads.levels} levels (at most twice as many as maps)'
        fix += [f'{where}.num_transformer_feat_level={count}',
                f'{where}.pixel_decoder.encoder.layer_cfg.self_attn_cfg.num_levels={count}']
    if strides is not None and len(strides) < count:     # after the fix it reads every map, each at a stride
        if not takes_strides:
            takes += f' and pixel_decoder.strides {strides} (one per map)'
        if given.strides is None:
            gives += ', of strides not known here (the values of pixel_decoder.strides only scale its sampling points)'
        fix.append(f'{where}.pixel_decoder.strides={option_list(given.strides or _doubling(strides, count))}')
    if unread:
        gives += f', and {_unread_words(unread, given.picks)}'
    return _fit_problem(f'{where} ({type_name(head)})', takes, gives, ' '.join(fix))


def _keyed_heads(where: str, node: dict, head_keys: Sequence[str]) -> Iterator[tuple[str, str, dict]]:
    """(head key, config key, config dict) of each head at ``head_keys`` of the model ``node`` at ``where``: one dict,
    or each dict of a list of them (keyed by its index)."""
    for head_key in head_keys:
        heads = node.get(head_key)
        keyed = ([(f'{where}.{head_key}.{i}', head) for i, head in enumerate(heads)]
                 if isinstance(heads, (list, tuple)) else [(f'{where}.{head_key}', heads)])
        yield from ((head_key, key, head) for key, head in keyed if isinstance(head, dict))


def _heads_problem(where: str, node: dict, given: GivenMaps, bare_map: bool = False) -> Optional[str]:
    """The first ``decode_head`` / ``auxiliary_head`` (one, or a list) of the segmentor ``node`` at ``where`` whose
    ``in_index`` / ``in_channels`` do not take the maps ``given`` to the heads (by the backbone, or by the neck); of a
    MaskFormer or Mask2Former head among them, or a detector's ``panoptic_head`` (one of those two), whose pixel
    decoder does not read them (``bare_map``: one map, which mmdet's MM_LocalVim gives bare, not in a list)."""
    for head_key, head_where, head in _keyed_heads(where, node, ('decode_head', 'auxiliary_head', 'panoptic_head')):
        if type_name(head) in MASK_HEAD_DECODERS:
            problem = (_bare_map_problem(where, head_where, head, given.words) if bare_map
                       else _mask_head_problem(head_where, head, given))
            if problem:
                return problem
            continue
        if head_key == 'panoptic_head':
            continue
        in_index, in_channels = head.get('in_index', -1), head.get('in_channels')
        fix = _head_fix(head_where, in_index, in_channels, given.channels)
        if fix:
            takes = 'map' if isinstance(in_index, int) else 'maps'
            return _fit_problem(f'{head_where} ({type_name(head)})', f'takes the {takes} in_index {in_index} '
                                f'of in_channels {in_channels}', given.words, fix)
    return None


# mmdet's detection heads whose in_channels hold one entry per map they get, in the order given: SSD's (PISA's is
# one), which zips them with its anchor generator's levels, and YOLOv3's (YOLOV3Neck's maps, the deepest first).
MAP_LIST_HEADS = ('SSDHead', 'PISASSDHead', 'YOLOV3Head')


def _list_head_problem(where: str, node: dict, given: GivenMaps) -> Optional[str]:
    """The ``bbox_head`` of :data:`MAP_LIST_HEADS` of the detector ``node`` at ``where`` whose in_channels are not
    the channels of the maps ``given`` to it (by the neck, or by the backbone); None where they are, or for any other
    head. Of the same number of maps the line's ``--cfg-options`` set them; of another it says what to change."""
    head, key = node.get('bbox_head'), f'{where}.bbox_head'
    if not isinstance(head, dict) or type_name(head) not in MAP_LIST_HEADS:
        return None
    expected = head.get('in_channels')
    if not isinstance(expected, (list, tuple)) or list(expected) == given.channels:
        return None
    label, takes = f'{key} ({type_name(head)})', f'takes {len(expected)} maps of in_channels {list(expected)}'
    fix = f'{key}.in_channels={option_list(given.channels, isinstance(expected, tuple))}'
    if len(expected) == len(given.channels):
        return _fit_problem(label, takes, given.words, fix)
    return (f'{label} {takes}, but {given.words}: give it {len(expected)} maps, or set {fix} and its other per-map '
            f'settings (its prior generator\'s levels, its strides) to {len(given.channels)} entries')


def neck_input_problem(model_cfg: Any, bare_single_map: bool = False) -> Optional[str]:
    """A neck or a segmentation head set for other maps than it gets (another number, or other channels), e.g. after
    a change of the backbone's out_indices or width: mmdet's FPN and mmseg's heads end in a bare AssertionError, an
    IndexError or a convolution's channel error, after the datasets are built. Checked: the necks that
    :mod:`.neck_maps` judges (the in_channels of FPN and its kin, BFP, DyHead, YOLOv3's, SSD's, ICNet's, ...; RFP,
    which no backbone of ours can feed; GlobalAveragePooling, which refuses our list of maps), SimpleFPN (one map of
    ``backbone_channel``), a list of necks (each takes the maps the one before gives), and the ``in_index`` /
    ``in_channels`` of ``decode_head`` and ``auxiliary_head`` (of a MaskFormer or Mask2Former head, which takes every
    map, the maps its pixel decoder reads: :func:`_mask_head_problem`; a detector's ``panoptic_head`` too), and the
    in_channels of a detector's ``bbox_head`` of :data:`MAP_LIST_HEADS` (SSD's, YOLOv3's), against the maps of the
    backbone, or of the neck where :func:`.neck_maps.neck_gives` knows them (after any other neck the heads are not
    judged), named by their keys under ``model`` (``model_cfg``). ``bare_single_map``: MM_LocalVim gives one map bare,
    not in a list (mmdet's registration), which only SimpleFPN takes (MaskFormer's and Mask2Former's heads neither)."""
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
        picks = BackbonePicks(f'{where}.backbone.out_indices', maps.unit, list(maps.indices),
                              isinstance(backbone.get('out_indices'), tuple))
        given: Optional[GivenMaps] = GivenMaps(maps.channels, words, maps.strides, picks)
        bare_map = bare_single_map and name == 'MM_LocalVim' and len(maps.channels) == 1
        if node.get('neck') is not None:
            problem, given = _follow_necks(where, _neck_chain(node['neck'], f'{where}.neck'), maps, words, bare_map)
            if problem:
                return problem
            bare_map = False
        problem = (_heads_problem(where, node, given, bare_map) or _list_head_problem(where, node, given)
                   if given else None)
        if problem:
            return problem
    return None


def neck_strides(neck: Any, strides: Sequence[int]) -> Optional[list[int]]:
    """The strides of the maps the neck ``neck`` gives from maps of ``strides``: a config dict, or a list of them
    (each takes the maps the one before gives). Known (:func:`.neck_maps.neck_gives`): FPN and its kin (PAFPN,
    FPN_DropBlock, FPG, FPN_CARAFE, NASFPN), ChannelMapper, SimpleFPN, HRFPN, NASFCOS_FPN; the necks that keep their
    maps' sizes (BFP, DyHead, SSH, YOLOXPAFPN, CSPNeXtPAFPN, MLANeck), YOLOV3Neck (in reversed order); DilatedEncoder
    and CTResNetNeck (of the last map); mmseg's MultiLevelNeck, JPU, Feature2Pyramid and ICNeck. None for any other
    neck (SSDNeck's extra maps shrink by a few pixels, not by a factor), or settings a neck refuses itself."""
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


class MapReaders(NamedTuple):
    """What reads our backbone's maps first (a neck, or the segmentation heads): its words in a line, its config keys,
    and the maps it reads (indices into those given, from 0)."""
    words: str
    keys: list[str]
    read: list[int]


def _head_reads(where: str, node: dict, count: int) -> Optional[MapReaders]:
    """The heads of the segmentor ``node`` at ``where`` that take the ``count`` maps of our backbone by their int or
    list ``in_index``, and the maps they read together; None where a head's in_index is not of those kinds or out of
    range, for a MaskFormer or Mask2Former head (judged by :func:`_mask_head_problem`), or without a head."""
    read: set[int] = set()
    keys, names = [], []
    for _, head_where, head in _keyed_heads(where, node, ('decode_head', 'auxiliary_head')):
        if type_name(head) in MASK_HEAD_DECODERS:
            return None
        in_index = head.get('in_index', -1)
        indices = [in_index] if isinstance(in_index, int) else in_index
        if not (isinstance(indices, (list, tuple)) and all(isinstance(i, int) and -count <= i < count
                                                           for i in indices)):
            return None
        read.update(i % count for i in indices)
        keys.append(head_where)
        names.append(f'{head_where} ({type_name(head)}, in_index {in_index})')
    return MapReaders(' and '.join(names), keys, sorted(read)) if keys else None


def _first_readers(where: str, node: dict, count: int) -> Optional[MapReaders]:
    """What reads the ``count`` maps of the backbone of the model ``node`` at ``where`` first: its first neck where
    :func:`.neck_maps.maps_read` knows what it reads, else, without a neck, the segmentation heads
    (:func:`_head_reads`); None where that is not known here."""
    necks = _neck_chain(node.get('neck'), f'{where}.neck')
    if not necks:
        return _head_reads(where, node, count) if node.get('neck') is None else None
    key, neck = necks[0]
    read = maps_read(type_name(neck), neck, count)
    return None if read is None else MapReaders(f'{key} ({type_name(neck)})', [key], read)


def _wrapper_finds_unused(cfg: Any) -> bool:
    """Whether the distributed wrapper that mmengine's Runner builds from ``cfg`` finds unused parameters itself
    (``find_unused_parameters``, or a ``model_wrapper_cfg`` that sets it or is not DistributedDataParallel)."""
    wrapper = cfg.get('model_wrapper_cfg')
    if isinstance(wrapper, dict):
        return (bool(wrapper.get('find_unused_parameters'))
                or wrapper.get('type', 'MMDistributedDataParallel') != 'MMDistributedDataParallel')
    return bool(cfg.get('find_unused_parameters'))


def find_unused_option(cfg: Any) -> str:
    """The ``--cfg-options`` key that turns on DDP's search for unused parameters in a run of ``cfg``: mmengine reads
    the top-level ``find_unused_parameters`` only when the config sets no ``model_wrapper_cfg``."""
    wrapper = cfg.get('model_wrapper_cfg') if cfg is not None else None
    return 'model_wrapper_cfg.find_unused_parameters' if isinstance(wrapper, dict) else 'find_unused_parameters'


def unread_maps_problem(cfg: Any) -> Optional[str]:
    """A distributed training run (``cfg.launcher`` not 'none') whose backbone gives maps that nothing after it reads:
    its first neck passes them over (FPN's ``start_level`` / ``end_level``, DilatedEncoder's and CTResNetNeck's last
    map only), or, without a neck, no segmentation head's ``in_index`` takes them. Their output norms get no gradient,
    and DistributedDataParallel, which mmengine builds with ``find_unused_parameters=False``, stops at the second
    iteration naming parameter indices. None where every map is read, where that is not known here, in one process,
    or where the wrapper finds unused parameters itself."""
    from .backbones import backbone_maps

    if cfg.get('launcher', 'none') == 'none' or _wrapper_finds_unused(cfg):
        return None
    for where, node in keyed_dicts(cfg.get('model'), 'model'):
        backbone = node.get('backbone')
        if not (isinstance(backbone, dict) and is_backbone(backbone)):
            continue
        maps = backbone_maps(type_name(backbone), backbone)
        readers = _first_readers(where, node, len(maps.indices)) if maps is not None else None
        if readers is None or len(readers.read) == len(maps.indices):
            continue
        unread = [index for i, index in enumerate(maps.indices) if i not in readers.read]
        units = f'{maps.unit}{"s" if len(unread) > 1 else ""}'
        gives = _backbone_gives(where, backbone, maps, f'{maps.channels} channels')
        verb = 'read' if len(readers.keys) > 1 else 'reads'
        return (f'{readers.words} {verb} {len(readers.read)} of the maps, but {gives}: the output norms of {units} '
                f'{", ".join(map(str, unread))} get no gradient, and DistributedDataParallel stops on them at the '
                f'second iteration: give {where}.backbone.out_indices only the maps read (and set '
                f'{" and ".join(readers.keys)} for them), or set --cfg-options {find_unused_option(cfg)}=True')
    return None
