"""ForeachModelEma (--model-ema) against timm's ModelEmaV2, which the original code keeps: the same weights bit for bit
after updates towards changing weights, and the comparison tells apart the updates that round otherwise."""
from __future__ import annotations

import copy
from typing import Callable

import pytest
import timm
import torch
import torch.nn as nn
from timm.utils import ModelEmaV2, ModelEmaV3

import classification  # noqa: F401  (registers the models)
from classification.engine import ema as ema_module
from classification.engine.ema import ForeachModelEma


def tiny_local_vssm() -> nn.Module:
    return timm.create_model("local_vssm_tiny_search", dims=(8, 16), depths=(1, 1), num_classes=10, drop_path_rate=0.)


def tiny_local_vim() -> nn.Module:
    return timm.create_model("local_vim_tiny", img_size=16, patch_size=4, embed_dim=16, depth=2, num_classes=10,
                             directions=[["h", "w3_flip"], ["v", "w2", "h_flip"]])


class WithBatchNorm(nn.Module):
    """An integer buffer (BatchNorm's num_batches_tracked); with `shared`, also a weight that the state_dict names
    twice (tied) and a buffer that is a view of another."""

    def __init__(self, shared: bool = False):
        super().__init__()
        self.embed = nn.Linear(6, 6)
        self.norm = nn.BatchNorm1d(6)
        self.head = nn.Linear(6, 6)
        if shared:
            self.head.weight = self.embed.weight
            self.register_buffer("table", torch.randn(4, 3))
            self.register_buffer("row", self.table[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "table"):
            self.table.add_(1.0)
        return self.head(self.norm(self.embed(x)))


class AddAlphaEma(ModelEmaV2):
    """The one-op-fewer update `ema = ema * decay + model * (1 - decay)` as `add_(alpha=)`: a fused multiply-add."""

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        ema_values = list(self.module.state_dict().values())
        torch._foreach_mul_(ema_values, self.decay)
        torch._foreach_add_(ema_values, list(model.state_dict().values()), alpha=1. - self.decay)


def ema_after_steps(model: nn.Module, make_ema: Callable[[nn.Module], nn.Module], steps: int = 6) -> dict:
    """The EMA's state_dict after `steps` updates, each after random changes of the weights (the same every call)
    and, for a model with BatchNorm, a forward pass in training mode (its running statistics and step count change)."""
    model = copy.deepcopy(model)
    ema = make_ema(model)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _ in range(steps):
            for param in model.parameters():
                param.add_(torch.randn(param.shape, generator=generator).to(param.dtype), alpha=0.05)
            if isinstance(model, WithBatchNorm):
                model.train()(torch.randn(4, 6, generator=generator))
            ema.update(model)
    return ema.module.state_dict()


def differing_tensors(got: dict, expected: dict) -> list[str]:
    """The names whose tensors are not equal bit for bit (or differ in dtype)."""
    assert list(got) == list(expected)
    return [name for name, tensor in expected.items()
            if got[name].dtype != tensor.dtype or not torch.equal(got[name], tensor)]


@pytest.mark.parametrize("decay", [0.9998, 0.9])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("make_model", [tiny_local_vssm, tiny_local_vim])
def test_foreach_ema_is_model_ema_v2_bit_for_bit(make_model, dtype, decay):
    model = make_model().to(dtype)
    expected = ema_after_steps(model, lambda m: ModelEmaV2(m, decay=decay))
    assert differing_tensors(ema_after_steps(model, lambda m: ForeachModelEma(m, decay=decay)), expected) == []


@pytest.mark.parametrize("chunk_numel", [1000, 1], ids=["few_tensors", "one_tensor"])
def test_foreach_ema_is_model_ema_v2_bit_for_bit_in_small_chunks(monkeypatch, chunk_numel):
    """Chunks of a few tensors each on the CPU (the tiny models fit one chunk of the default size), or of one tensor
    each: the last tensor then is a chunk of its own, which must be updated too."""
    monkeypatch.setattr(ema_module, "CPU_CHUNK_NUMEL", chunk_numel)
    model = tiny_local_vssm()
    expected = ema_after_steps(model, lambda m: ModelEmaV2(m, decay=0.9998))
    assert differing_tensors(ema_after_steps(model, lambda m: ForeachModelEma(m, decay=0.9998)), expected) == []


@pytest.mark.parametrize("shared", [False, True], ids=["integer_buffer", "tied_weight_and_view"])
def test_foreach_ema_keeps_model_ema_v2_integer_buffers_and_shared_memory(shared):
    """ModelEmaV2 computes an integer buffer's EMA in float32 and truncates it (the step count 1, ..., 6 gives 0, 1, 2,
    ..., 5 at decay 0.5), and updates the entries of shared memory once per name, one after the other: a tied weight
    twice a step, a view's elements once as the view and once as part of its base."""
    torch.manual_seed(0)
    model = WithBatchNorm(shared)
    expected = ema_after_steps(model, lambda m: ModelEmaV2(m, decay=0.5))
    got = ema_after_steps(model, lambda m: ForeachModelEma(m, decay=0.5))
    assert differing_tensors(got, expected) == []
    assert expected["norm.num_batches_tracked"].item() == 5


@pytest.mark.parametrize("make_other_ema", [lambda m: AddAlphaEma(m, decay=0.9998),
                                            lambda m: ModelEmaV3(m, decay=0.9998, foreach=True)],
                         ids=["add_alpha", "ModelEmaV3"])
def test_comparison_tells_apart_updates_that_round_otherwise(make_other_ema):
    """The float32 comparison above fails for the update with `add_(alpha=)` and for timm's ModelEmaV3 (a lerp)."""
    model = tiny_local_vssm()
    expected = ema_after_steps(model, lambda m: ModelEmaV2(m, decay=0.9998))
    assert differing_tensors(ema_after_steps(model, make_other_ema), expected) != []
