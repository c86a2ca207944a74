"""The one line for DistributedDataParallel's stop on trained parameters that got no gradient, whatever the cause.

With ``find_unused_parameters=False`` (mmengine's default) DDP waits, after each backward, for a gradient of every
parameter it reduces; when some got none it stops the next iteration with a long RuntimeError ("Expected to have
finished reduction in the prior iteration ...") that gives their indices, or, under ``TORCH_DISTRIBUTED_DEBUG=INFO`` or
``DETAIL``, their names too. The line names them, grouped by module, and the ways out. The map check of
:func:`.map_fit.unread_maps_problem` refuses the one cause seen in a config before anything is built; this one catches
every cause (a neck's extra levels or convolutions nothing reads, a head reading fewer maps, a module a user froze in
its forward), once the run stopped.
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Any, Optional, Sequence

import torch

DDP_STOP = 'Expected to have finished reduction in the prior iteration'
# The advice DDP gives only when it was built with find_unused_parameters=False and without static_graph.
NOT_FINDING_UNUSED = 'You can enable unused parameter detection'
INDICES = re.compile(r'Parameter indices which did not receive grad for rank (\d+): ([\d ]+)')
NAMES = re.compile(r'Parameters which did not receive grad for rank (\d+): ([^\n]+)')
# Groups named in the line before "and N more".
SHOWN_GROUPS = 4
# Relative names listed in a group; a larger group gives its count.
LISTED_NAMES = 4


class NoGradParametersError(RuntimeError):
    """DistributedDataParallel stopped on parameters that got no gradient; the message is the one line to show."""


def ddp_parameter_names(wrapped: torch.nn.Module) -> list[str]:
    """The names of the parameters DistributedDataParallel ``wrapped`` reduces, in the order of the indices its
    errors give: its module's modules in ``named_modules()`` order, each one's own parameters that require a gradient
    and are not in ``_ddp_params_and_buffers_to_ignore`` (DDP checks '.name' for the root module's), a shared
    parameter under its first name. ``wrapped`` may be the bare module."""
    module = getattr(wrapped, 'module', wrapped)
    ignored = getattr(wrapped, 'parameters_to_ignore', set())
    seen: set[int] = set()
    names = []
    for module_name, child in module.named_modules():
        for param_name, param in child.named_parameters(recurse=False):
            key = f'{module_name}.{param_name}'
            if param.requires_grad and key not in ignored and id(param) not in seen:
                seen.add(id(param))
                names.append(key if module_name else param_name)
    return names


def _no_grad_names(text: str, trainable: Sequence[str]) -> Optional[tuple[str, list[str]]]:
    """The rank and the names (in ``trainable``'s order) of the parameters that DDP's error ``text`` says got no
    gradient: those it names (debug mode), else those of its indices; None when ``text`` names neither, or an index
    past ``trainable``."""
    named = NAMES.search(text)
    if named:
        names = {name.strip().lstrip('.') for name in named.group(2).split(',')}
        order = {name: i for i, name in enumerate(trainable)}
        return named.group(1), sorted(names, key=lambda name: (order.get(name, len(order)), name))
    indexed = INDICES.search(text)
    if not indexed:
        return None
    indices = [int(i) for i in indexed.group(2).split()]
    if not indices or max(indices) >= len(trainable):
        return None
    return indexed.group(1), [trainable[i] for i in sorted(set(indices))]


def _group_key(name: str, unused_under: Counter, trainable_under: Counter) -> str:
    """The outermost module above ``name`` whose trainable parameters all got no gradient, else the module that holds
    ``name`` ('' for one of the root module's own)."""
    parts = name.split('.')
    for depth in range(1, len(parts)):
        prefix = '.'.join(parts[:depth])
        if unused_under[prefix] == trainable_under[prefix]:
            return prefix
    return '.'.join(parts[:-1])


def _prefix_counts(names: Sequence[str]) -> Counter:
    """How many of ``names`` each module prefix ('a', 'a.b', ... of 'a.b.c') holds."""
    counts: Counter = Counter()
    for name in names:
        parts = name.split('.')
        counts.update('.'.join(parts[:depth]) for depth in range(1, len(parts)))
    return counts


def group_names(names: Sequence[str], trainable: Sequence[str]) -> list[tuple[str, int]]:
    """``names`` (parameters that got no gradient, in ``trainable``'s order) as short texts with the count of
    parameters each covers: each under the outermost module all of whose ``trainable`` parameters are among them
    (``neck.fpn_convs.4 (conv.weight, conv.bias)``), numbered siblings of the same parameters together
    (``neck.lateral_convs.{0,1,2} (conv.weight, conv.bias)``), a root module's own parameter alone."""
    unused_under, trainable_under = _prefix_counts(names), _prefix_counts(trainable)
    groups: dict[str, list[str]] = {}
    for name in names:
        key = _group_key(name, unused_under, trainable_under)
        groups.setdefault(key or name, []).append(name[len(key) + 1:] if key else '')
    merged: list[tuple[str, list[str], list[str]]] = []     # (parent, last parts of the keys, relative names)
    for key, relative in groups.items():
        parent, _, last = key.rpartition('.')
        siblings = bool(merged) and merged[-1][0] == parent and merged[-1][2] == relative
        if siblings and last.isdigit() and merged[-1][1][-1].isdigit():
            merged[-1][1].append(last)
        else:
            merged.append((parent, [last], relative))
    texts = []
    for parent, lasts, relative in merged:
        where = lasts[0] if len(lasts) == 1 else '{' + ','.join(lasts) + '}'
        where = f'{parent}.{where}' if parent else where
        if relative == ['']:
            texts.append((where, len(lasts)))
            continue
        each = ' each' if len(lasts) > 1 else ''
        listed = ', '.join(relative) if len(relative) <= LISTED_NAMES else f'{len(relative)} parameters{each}'
        texts.append((f'{where} ({listed})', len(lasts) * len(relative)))
    return texts


def no_grad_parameters_problem(text: str, wrapped: Any, option: str = 'find_unused_parameters') -> Optional[str]:
    """The one line for DDP's stop on parameters that got no gradient (``text``: the RuntimeError's message) in a
    run of the DistributedDataParallel ``wrapped``: their names, grouped, and the ways out (``option``: the
    ``--cfg-options`` key of :func:`.map_fit.find_unused_option`); None for any other error, for DDP's stop with
    find_unused_parameters or static_graph set (other causes), or when the parameters cannot be named."""
    if DDP_STOP not in text or NOT_FINDING_UNUSED not in text or not isinstance(wrapped, torch.nn.Module):
        return None
    trainable = ddp_parameter_names(wrapped)
    found = _no_grad_names(text, trainable)
    if found is None:
        return None
    rank, names = found
    groups = group_names(names, trainable)
    shown = ', '.join(group for group, _ in groups[:SHOWN_GROUPS])
    rest = sum(count for _, count in groups[SHOWN_GROUPS:])
    more = f' and {rest} more parameter{"s" if rest > 1 else ""}' if rest else ''
    plural = 's' if len(names) > 1 else ''
    return (f'DistributedDataParallel stopped: {len(names)} trained parameter{plural} got no gradient in the previous '
            f'iteration on rank {rank}: {shown}{more}; change the config so that those modules are used or not built, '
            f'or set --cfg-options {option}=True')
