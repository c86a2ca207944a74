"""How a training run (`trainer.Run`) stops before its end: each function saves what it can, logs how to continue and
returns the exception that ends the run.

Stops in the middle of an epoch (a stop signal, a batch a rank cannot read, a loss that is not finite) write
`last.pth.tar` at the step reached, and every rank calls them, so that every rank stops at the same step; a run that
stops without saving (a second Ctrl-C, a dead loader worker), or whose save fails (a full disk), says what
`last.pth.tar` already holds (`saved_so_far`).
"""
from __future__ import annotations

import os
import signal
from typing import TYPE_CHECKING, Callable, Optional, TypeVar

from ..common.checkpoint_io import CheckpointError, epoch_position, load_checkpoint
from ..data import DataError
from .checkpoint import LAST
from .cli import RunInterrupted, TrainingDiverged
from .distributed import all_gather_objects

if TYPE_CHECKING:  # trainer.py and train_loop.py import this module
    from .train_loop import EpochProgress
    from .trainer import Run

T = TypeVar("T")


def save_on_every_rank(run: Run, write: Callable[[], T]) -> T:
    """Call `write`, a checkpoint write of the main rank (`manager.save_last`, `manager.update`), on every rank and
    return its result. A write that fails (a full disk) raises on every rank rank 0's CheckpointError, which also says
    what `last.pth.tar` still holds (`saved_so_far`: writes are atomic, so the previous save, whole) and that
    --resume continues from there: no rank goes on into a collective that rank 0 has left."""
    failed, result = None, None
    try:
        result = write()
    except CheckpointError as err:
        failed = f"{err}; {saved_so_far(run, resume_hint=True)}"
    # no rank exits before the file is written (a launcher ends all ranks when one exits), and each hears if it failed
    failed = next((text for text in all_gather_objects(failed) if text is not None), None)
    if failed is not None:
        raise CheckpointError(failed)
    return result


def _save_mid_epoch(run: Run, epoch: int, progress: EpochProgress) -> None:
    """Write `last.pth.tar` at `progress` of `epoch` (every rank calls it; `save_on_every_rank`)."""
    save_on_every_rank(run, lambda: run.manager.save_last(run.checkpoint_payload(epoch, progress)))


def stop_mid_epoch(run: Run, epoch: int, progress: EpochProgress, signum: int) -> RunInterrupted:
    """Write `last.pth.tar` at `progress` of `epoch` (every rank calls it); returns the exception that ends the
    run."""
    run.log.info(f"{signal.Signals(signum).name}: stopping in epoch {epoch} after "
                 f"{run.epoch_position(progress.step)}, saving {run.manager.path(LAST)}")
    _save_mid_epoch(run, epoch, progress)
    return interrupted(run, signum)


def stop_for_unread_batch(run: Run, epoch: int, progress: EpochProgress, error: Optional[Exception]) -> Exception:
    """Save the training of `epoch` up to `progress` when one of its steps is done (every rank calls it), log
    how to continue, and return the error to raise: this rank's `error` reading its next batch, or, on a rank
    that read its batch, a DataError pointing at the rank that could not."""
    last, resume = run.manager.path(LAST), None
    if progress.step > 0:
        trained = epoch_position(progress.step, None, run.cfg.grad_accum_steps)
        saved = f"its training up to {trained} is saved"
        try:
            _save_mid_epoch(run, epoch, progress)
        except CheckpointError as err:  # raised on every rank alike; the run still ends with the reading's error
            resume = f"saving its training up to {trained} failed: {err}"
    else:
        saved = "the epochs before it are saved"
    if resume is None:
        resume = (f"{saved}: once the cause is fixed, continue with --resume {last}" if os.path.isfile(last)
                  else "nothing was trained yet")
    resume = all_gather_objects(resume)[0]  # rank 0 writes the checkpoints: what its folder holds, on every rank
    run.log.error(f"Reading the training data of epoch {epoch} failed after "
                  f"{run.epoch_position(progress.step)}; {resume}")
    if error is not None:
        return error
    return DataError(f"another rank could not read its training batch {progress.step} of epoch {epoch} (its "
                     f"error names the cause)")


def stop_for_non_finite_loss(run: Run, epoch: int, progress: EpochProgress, loss: Optional[float]) -> Exception:
    """Save the training of `epoch` up to `progress` (every rank calls it: the weights before the step whose
    loss is not finite), log how to continue, and return the error to raise: naming this rank's `loss`, or,
    where this rank's was finite (None), another rank's."""
    last, failed = run.manager.path(LAST), None
    if progress.step > 0:
        try:
            _save_mid_epoch(run, epoch, progress)
        except CheckpointError as err:  # raised on every rank alike; the run still ends as diverged
            failed = err
    where = f"epoch {epoch} after {run.epoch_position(progress.step)}"
    if run.non_finite_steps > 1:
        where += f", {run.non_finite_steps} steps in a row"
    if failed is not None:  # last.pth.tar holds an earlier state, from which a lower --lr takes another way
        saved, advice = f"saving the run before it failed: {failed}", "lower --lr or add --clip-grad-norm"
    elif os.path.isfile(last):
        saved = f"{last} holds the run before it"
        # last.pth.tar holds this epoch's steps before it, or, at its first step, the end of the epoch before
        advice = _divergence_advice(run, last, epoch if progress.step > 0 else epoch - 1)
    else:
        saved, advice = "nothing was saved yet", "lower --lr or add --clip-grad-norm"
    # rank 0 writes the checkpoints: what its folder holds, on every rank (a node without that file system has none)
    saved, advice = all_gather_objects((saved, advice))[0]
    run.log.error(f"The training loss is not finite in {where}; the step was not taken and {saved}")
    what = f"the training loss is {loss}" if loss is not None else "another rank's training loss is not finite"
    return TrainingDiverged(f"{what} in {where} (the step was not taken; {saved}): {advice}")


def _divergence_advice(run: Run, last: str, before_epoch: int) -> str:
    """How to go on after a non-finite loss, the run saved in `last`. `--resume` of `last` continues exactly: the
    same weights meet the same batch and give the same loss, whatever the new --lr. The way on is the latest kept
    checkpoint of an epoch before `before_epoch` (whose ends are not `last`'s state) with --rewind, or, under fp16
    autocast, `last` in another precision."""
    earlier = run.manager.latest(before_epoch)
    rewind = (f"--resume {earlier[1]} --rewind (the end of epoch {earlier[0]})" if earlier
              else "a fresh run (no epoch checkpoint was kept)")
    advice = (f"--resume {last} would meet the same loss again (the same weights and batch), so continue from "
              f"{rewind} with a lower --lr or --clip-grad-norm")
    if run.scaler is not None:  # fp16 autocast
        advice += f", or --resume {last} with --amp-dtype bfloat16 or without --amp"
    return advice


def saved_so_far(run: Run, resume_hint: bool = False) -> str:
    """What `last.pth.tar` holds, for a run that stops without saving: `<path> holds the run up to ...; the
    training after it is lost` (with `resume_hint`, and that --resume continues from it), or that nothing was
    saved yet."""
    last = run.manager.path(LAST)
    if os.path.isfile(last):  # written atomically: the one before an abandoned write, whole
        ckpt = load_checkpoint(last, mmap=True)
        epoch, step = ckpt["epoch"], ckpt.get("step")
    elif run.manager.saved is not None:  # the main rank wrote it, on a disk that this rank's node does not share
        epoch, step = run.manager.saved
    else:
        return "nothing was saved yet"
    end = (f"after {epoch_position(step, None, run.cfg.grad_accum_steps)} of epoch {epoch}" if step is not None
           else f"epoch {epoch}")
    return f"{last} holds the run up to {end}; the training after it is lost" + (
        f": --resume {last} continues from there" if resume_hint else "")


def aborted(run: Run) -> RunInterrupted:
    """After a second Ctrl-C, which stops at once (a checkpoint being written is abandoned): log what
    `last.pth.tar` holds, as the first Ctrl-C's line said it would save the run's progress there."""
    if run.env.is_main:
        run.log.warning(f"Second Ctrl-C: stopped at once, without saving; {saved_so_far(run)}")
    return interrupted(run, signal.SIGINT)


def interrupted(run: Run, signum: int) -> RunInterrupted:
    """The exception that ends the run stopped by `signum`, naming `last.pth.tar` if there is one."""
    last = run.manager.path(LAST)
    return RunInterrupted(last if os.path.isfile(last) else None, signum)
