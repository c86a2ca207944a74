"""Where a run stopped in the middle of an epoch stands, as every message says it: under --grad-accum-steps a run's
`step` counts batches, not optimizer steps, and the messages of a checkpoint read back (the search's note, the
converter's, the evaluation's) called batch 22 of an accumulating run its "step 22" (optimizer step 11)."""
from types import SimpleNamespace

import pytest
import torch

from classification.common.checkpoint_io import epoch_position, saved_epoch_position
from classification.engine.checkpoint import CheckpointManager, convert_checkpoint
from classification.engine.stopping import saved_so_far
from classification.search.extract import unfinished_search


@pytest.mark.parametrize("args, position", [
    ((4, 10, 1), "step 4 of 10"),
    ((4, None, 1), "step 4"),
    ((4, 10, 2), "batch 4 of 10 (optimizer step 2 of 5)"),
    ((5, 12, 3), "batch 5 of 12 (optimizer step 1 of 4)"),     # a batch into the second optimizer step
    ((4, None, 2), "batch 4 (optimizer step 2)"),
])
def test_epoch_position(args, position):
    assert epoch_position(*args) == position


def test_a_checkpoint_position_reads_its_runs_accumulation_and_defaults_to_one():
    ckpt = {"epoch": 1, "step": 22, "steps_per_epoch": 44, "config": {"grad_accum_steps": 2}}
    assert saved_epoch_position(ckpt) == "batch 22 of 44 (optimizer step 11 of 22)"
    assert saved_epoch_position(ckpt, with_length=False) == "batch 22 (optimizer step 11)"
    assert saved_epoch_position({"step": 22, "steps_per_epoch": 44}) == "step 22 of 44"
    assert saved_epoch_position({"step": 3, "config": {"grad_accum_steps": None}}) == "step 3"


def test_an_unfinished_search_of_an_accumulating_run_names_the_batch():
    ckpt = {"epoch": 1, "step": 22, "steps_per_epoch": 44, "config": {"epochs": 3, "grad_accum_steps": 2}}
    assert unfinished_search(ckpt) == ("saved in the middle of epoch 1 of epochs 0-2, after its batch 22 (optimizer "
                                       "step 11)")


def test_the_converters_note_of_an_accumulating_run_names_the_batch(tmp_path):
    src = tmp_path / "last.pth.tar"
    torch.save({"model": {"head.weight": torch.ones(2, 2)}, "epoch": 3, "step": 8, "steps_per_epoch": 44,
                "config": {"grad_accum_steps": 4}}, src)
    tensors, note = convert_checkpoint(str(src), str(tmp_path / "released.ckpt"))
    assert tensors == 1
    assert note == (f"{src} was saved in the middle of epoch 3, after its batch 8 of 44 (optimizer step 2 of 11): the "
                    f"weights are of a part of that epoch")


def test_what_an_accumulating_runs_last_checkpoint_holds_names_the_batch(tmp_path):
    manager = CheckpointManager(str(tmp_path))
    manager.save_last({"epoch": 0, "step": 6})
    run = SimpleNamespace(manager=manager, cfg=SimpleNamespace(grad_accum_steps=3))
    assert saved_so_far(run) == (f"{manager.path('last.pth.tar')} holds the run up to after batch 6 (optimizer step 2) "
                                 f"of epoch 0; the training after it is lost")
