"""The EMA of the weights that --model-ema keeps: timm's ModelEmaV2, bit for bit, in multi-tensor ops.

ModelEmaV2.update takes `state_dict()` of both models (a detached alias of each tensor) and computes
`decay * ema + (1 - decay) * model` tensor by tensor: four ops and three temporaries per tensor, each op a kernel
launch on a GPU, for the 748 tensors of local_vim_tiny. The original code keeps that EMA, and runs, checkpoints and
exact resumes hold its values, so `ForeachModelEma` rounds the same products and sum in the same order with
multi-tensor ops: `ema * decay + model * (1 - decay)`, into the EMA's tensors. Other forms round otherwise
(tests/training/test_ema.py): `ema.add_(model, alpha=1 - decay)` and timm's ModelEmaV3 (a lerp) in float32; on the CPU
(torch 2.14) the in-place `torch._foreach_mul_(ema, decay)` in bfloat16 and float16, which multiplies by `decay`
rounded to the tensors' dtype where `decay * ema` and `torch._foreach_mul` multiply in float32.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Iterator, Optional

import torch
import torch.nn as nn
from timm.utils import ModelEmaV2

# On the CPU the multi-tensor ops take the tensors in chunks of at most this many elements, so that a chunk's tensors
# stay in the cache from one op to the next: ops over a whole model at once stream it from memory three times and are
# no faster than ModelEmaV2. Other devices take each group of tensors whole (a few kernel launches per op and group).
CPU_CHUNK_NUMEL = 2 ** 17

# The dtypes whose EMA tensors take `*= decay` in place: `torch._foreach_mul_` rounds `decay` to the tensors' dtype,
# for these the dtype that `decay * ema` multiplies in; the others (bfloat16, float16) take `torch._foreach_mul` and a
# copy.
SCALED_IN_PLACE = (torch.float32, torch.float64)

TensorPairs = tuple[list[torch.Tensor], list[torch.Tensor]]


class ForeachModelEma(ModelEmaV2):
    """ModelEmaV2 (its `.module`, `.set`, `.decay`, `.device` and state_dict form) whose `update` gives the same values
    with a few multi-tensor ops per device and dtype."""

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One EMA step towards `model`'s weights, as ModelEmaV2.update. Tensors that are not floating point (integer
        buffers) take ModelEmaV2's own expression; a model whose state_dict entries share memory (tied weights, a
        buffer that is a view of another), which ModelEmaV2 updates once per name, one after the other, takes
        ModelEmaV2's update whole."""
        ema_values = list(self.module.state_dict(keep_vars=True).values())
        if _shares_memory(ema_values):
            super().update(model)
            return
        groups: dict[tuple[torch.device, torch.dtype, torch.dtype], TensorPairs] = defaultdict(lambda: ([], []))
        for ema_v, model_v in zip(ema_values, model.state_dict(keep_vars=True).values()):
            if self.device is not None:
                model_v = model_v.to(device=self.device)
            if ema_v.is_floating_point():
                ema_group, model_group = groups[(ema_v.device, ema_v.dtype, model_v.dtype)]
                ema_group.append(ema_v)
                model_group.append(model_v)
            else:
                ema_v.copy_(self.decay * ema_v + (1. - self.decay) * model_v)
        for (device, ema_dtype, _), (ema_group, model_group) in groups.items():
            max_numel = CPU_CHUNK_NUMEL if device.type == "cpu" else None
            for ema_chunk, model_chunk in _chunks(ema_group, model_group, max_numel):
                scaled_model = torch._foreach_mul(model_chunk, 1. - self.decay)
                if ema_dtype in SCALED_IN_PLACE:
                    torch._foreach_mul_(ema_chunk, self.decay)
                    torch._foreach_add_(ema_chunk, scaled_model)
                else:
                    new_values = torch._foreach_mul(ema_chunk, self.decay)
                    torch._foreach_add_(new_values, scaled_model)
                    torch._foreach_copy_(ema_chunk, new_values)


def _shares_memory(tensors: list[torch.Tensor]) -> bool:
    """True when two of `tensors` (with elements) lie in one storage: the same tensor twice, or views of one."""
    storages = [t.untyped_storage().data_ptr() for t in tensors if t.numel()]
    return len(set(storages)) < len(storages)


def _chunks(ema_values: list[torch.Tensor], model_values: list[torch.Tensor],
            max_numel: Optional[int]) -> Iterator[TensorPairs]:
    """The paired lists in consecutive slices of at most `max_numel` elements each (a larger tensor alone); whole
    without a limit."""
    if max_numel is None:
        yield ema_values, model_values
        return
    start, numel = 0, 0
    for end, tensor in enumerate(ema_values):
        if numel and numel + tensor.numel() > max_numel:
            yield ema_values[start:end], model_values[start:end]
            start, numel = end, 0
        numel += tensor.numel()
    if start < len(ema_values):
        yield ema_values[start:], model_values[start:]
