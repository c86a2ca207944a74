"""What the fault-injection entry scripts share: the repository on the path and tools/train.py run as the script
itself (signal_at.py, read_fails_at.py, loss_fails_at.py); the `N RANK` setting and a flag raised once the schedule
reaches iteration N (read_fails_at.py, loss_fails_at.py)."""
import os
import runpy
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

from classification.engine.scheduler import WarmupScheduler  # noqa: E402


def step_and_faulty_rank(variable: str) -> tuple[int, bool]:
    """Iteration N of the environment variable `variable` ("N RANK"), and whether this process is rank RANK."""
    n, rank = (int(value) for value in os.environ[variable].split())
    return n, os.environ.get("RANK", "0") == str(rank)


class Reached:
    """True once the optimizer step that brings the schedule to iteration `n` is done (WarmupScheduler.step is
    wrapped to watch it)."""

    def __init__(self, n: int):
        self.value, step = False, WarmupScheduler.step

        def step_and_watch(scheduler):
            step(scheduler)
            self.value = self.value or scheduler.t == n

        WarmupScheduler.step = step_and_watch

    def __bool__(self) -> bool:
        return self.value


def run_train() -> None:
    """tools/train.py with this script's arguments, as if started itself."""
    train = os.path.join(REPO, "tools", "train.py")
    sys.argv = [train, *sys.argv[1:]]
    runpy.run_path(train, run_name="__main__")
