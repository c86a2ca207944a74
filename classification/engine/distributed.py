"""Process-group setup from torchrun / Slurm variables, and the few collectives the engine needs.

A plain `python tools/train.py` (no WORLD_SIZE, no --slurm) runs as one process without any process group, so no
environment variable is required. Under torchrun (WORLD_SIZE > 1) the backend is nccl on CUDA and gloo on CPU.
"""
from __future__ import annotations

import os
import pickle
import socket
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import torch
import torch.distributed as dist

from ..common.error_text import describe_error
from .config import ConfigError


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands: global rank, world size, rank within its node, and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def parse_device(name: str) -> torch.device:
    """`--device` as a torch device: auto (CUDA when present), cpu, cuda or cuda:N. Another name, CUDA without a GPU
    or an index past the GPUs is refused (ConfigError, one line)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {name!r} is not one of auto, cpu, cuda, cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name} was asked for but CUDA is not available here (use --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def _resolve_device(name: str, local_rank: int) -> torch.device:
    """:func:`parse_device`, with plain `cuda` taking GPU `local_rank` (mod the count), made the current device."""
    device = parse_device(name)
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    return device


def _refuse_shared_gpus(per_node: int) -> None:
    """ConfigError (one line) when torchrun started more processes on this node than it sees CUDA devices: the ranks
    past the last GPU would share one, which NCCL refuses only after the rendezvous. (Slurm tasks are not checked:
    a task bound to its own GPU sees one device whatever its local rank.)"""
    count = torch.cuda.device_count()
    if per_node > count:
        raise ConfigError(f"{per_node} processes on this node but {count} CUDA devices visible: each process needs a "
                          f"GPU of its own; launch at most {count} (tools/dist_train.sh GPUS; CUDA_VISIBLE_DEVICES "
                          f"chooses which GPUs), or give --device cpu")


SLURM_TASK_VARIABLES = ("SLURM_PROCID", "SLURM_NTASKS")


def _slurm_int(name: str) -> int:
    """The integer value of the srun variable `name` (ConfigError, one line, when it is not one)."""
    value = os.environ[name]
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"--slurm: {name}={value!r} is not an integer") from None


def _slurm_master_address(nodes: str) -> str:
    """The first host of the Slurm node list `nodes`, as `scontrol show hostnames` expands it."""
    hint = "set MASTER_ADDR to the address of the job's first node"
    try:
        proc = subprocess.run(["scontrol", "show", "hostnames", nodes], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise ConfigError(f"--slurm: cannot run 'scontrol show hostnames {nodes}' to find the master node ({err}); "
                          f"{hint}") from None
    hosts = proc.stdout.split()
    if proc.returncode != 0 or not hosts:
        why = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}, no host name"])[-1]
        raise ConfigError(f"--slurm: 'scontrol show hostnames {nodes}' failed ({why}); {hint}")
    return hosts[0]


SLURM_PORTS = (20000, 30000)   # the job ports: below Linux's ephemeral range (32768-60999) of outgoing connections


def slurm_job_port(job_id: Optional[str]) -> str:
    """The master port of a Slurm job with no --dist-port or MASTER_PORT: one of `SLURM_PORTS` picked by its job id,
    the same in all its tasks and different for jobs that share a node (two jobs with ids 10,000 apart aside);
    29500, torch's default, without a numeric job id."""
    if not (job_id or "").isdigit():
        return "29500"
    low, high = SLURM_PORTS
    return str(low + int(job_id) % (high - low))


def _slurm_environment(port: Optional[str]) -> tuple[int, int, int]:
    """Fill MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK from the SLURM_* variables of an srun task; outside srun
    (a variable missing) or without a master address, ConfigError (one line). The port: MASTER_PORT, else `port`,
    else `slurm_job_port`."""
    missing = [name for name in (*SLURM_TASK_VARIABLES, "SLURM_NODELIST") if name not in os.environ]
    if "MASTER_ADDR" in os.environ and "SLURM_NODELIST" in missing:
        missing.remove("SLURM_NODELIST")
    if missing:
        raise ConfigError(f"--slurm runs as an srun task (tools/slurm_train.sh), but {', '.join(missing)} "
                          f"{'is' if len(missing) == 1 else 'are'} not set; without Slurm, launch with "
                          f"tools/dist_train.sh and no --slurm")
    rank, world = (_slurm_int(name) for name in SLURM_TASK_VARIABLES)
    local = _slurm_int("SLURM_LOCALID") if "SLURM_LOCALID" in os.environ else rank % max(torch.cuda.device_count(), 1)
    if "MASTER_ADDR" not in os.environ:
        os.environ["MASTER_ADDR"] = _slurm_master_address(os.environ["SLURM_NODELIST"])
    if port is None:
        port = slurm_job_port(os.environ.get("SLURM_JOB_ID"))
    os.environ.setdefault("MASTER_PORT", str(port))
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(local))
    return rank, world, local


def init_distributed(device: str = "auto", slurm: bool = False, dist_port: Optional[str] = None,
                     threads: int = 0) -> DistEnv:
    """Join the process group when launched by torchrun or srun; otherwise describe a single process.

    `threads` > 0 sets the number of CPU threads of this process.
    """
    if threads > 0:
        torch.set_num_threads(threads)
    if slurm:
        rank, world, local = _slurm_environment(dist_port)
    else:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
    if world > 1 and device.startswith("cuda:"):
        raise ConfigError(f"--device {device} would put all {world} processes on one GPU: give --device cuda (each "
                          f"process takes GPU LOCAL_RANK; CUDA_VISIBLE_DEVICES chooses which GPUs)")
    dev = _resolve_device(device, local)
    if world > 1 and not slurm and dev.type == "cuda":
        _refuse_shared_gpus(max(int(os.environ.get("LOCAL_WORLD_SIZE", "0")), local + 1))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world)
    return DistEnv(rank=rank, world_size=world, local_rank=local, device=dev)


def shutdown() -> None:
    """Leave the process group, if any."""
    if dist.is_initialized():
        dist.destroy_process_group()


# The tensors of each helper's last collective, held until the process ends. When a gloo thread drops the last
# reference to a finished collective's tensor, freeing it takes the GIL; a rank that went from its last collective
# straight to the process group's teardown, which joins those threads while holding the GIL, deadlocked there (torch
# 2.8: one rank of a finished two-process run never exited, 5 runs in 51 on a loaded 2-core machine; not seen on
# 2.10 or later). A tensor still referenced here is not freed by that thread.
_LAST_COLLECTIVE: dict[str, tuple[torch.Tensor, ...]] = {}


def all_reduce(values: list[float], device: torch.device, op: str = "sum") -> list[float]:
    """``values`` summed (``op="sum"``) or their maximum (``"max"``) over all ranks, elementwise, in float64; the
    values themselves in a single process."""
    if op not in ("sum", "max"):
        raise ValueError(f"all_reduce takes op 'sum' or 'max', not {op!r}")
    if not dist.is_initialized():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=getattr(dist.ReduceOp, op.upper()))
    _LAST_COLLECTIVE["all_reduce"] = (t,)
    return t.tolist()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a list of numbers over all ranks (float64); identity in a single process."""
    return all_reduce(values, device, "sum")


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's picklable `obj`, in rank order; `[obj]` in a single process."""
    if not dist.is_initialized():
        return [obj]
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    payload = torch.frombuffer(bytearray(pickle.dumps(obj)), dtype=torch.uint8).to(device)
    size = torch.tensor([payload.numel()], dtype=torch.int64, device=device)
    sizes = [torch.empty_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    longest = max(int(n) for n in sizes)
    padded = torch.zeros(longest, dtype=torch.uint8, device=device)
    padded[:payload.numel()] = payload
    gathered = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(gathered, padded)
    _LAST_COLLECTIVE["all_gather_objects"] = (size, *sizes, padded, *gathered)
    return [pickle.loads(t[:int(n)].cpu().numpy().tobytes()) for t, n in zip(gathered, sizes)]


def barrier() -> None:
    """Wait for all ranks (no-op in a single process)."""
    if dist.is_initialized():
        dist.barrier()


def _failures(error: Optional[Exception]) -> list[tuple[int, str, str]]:
    """(rank, host, first line of its error) of every rank whose `error` is not None, in rank order; every rank calls
    it (a collective)."""
    text = None if error is None else (describe_error(error).strip().splitlines() or [type(error).__name__])[0]
    reports = all_gather_objects((socket.gethostname(), text))
    return [(rank, host, text) for rank, (host, text) in enumerate(reports) if text is not None]


def share_refusal(error: Optional[Exception]) -> None:
    """Raise on every rank, as a ConfigError of its line, the error of the first rank that has one (a check that only
    rank 0 makes, such as the run folder's lock); without it the other ranks would wait in their next collective
    until rank 0's exit broke it."""
    refusals = _failures(error)
    if refusals:
        raise ConfigError(refusals[0][2])


@contextmanager
def agreed_setup(what: str) -> Iterator[None]:
    """Run the block, set-up that each rank does on its own (no collective in it), then agree on how it ended: a rank
    whose block raised raises its error as it is, every other rank a ConfigError naming the first rank that failed,
    its host and its error, where it would have waited in its next collective for a rank that had stopped. `what`
    names the set-up in that line. In a single process: the block alone."""
    if not dist.is_initialized():
        yield
        return
    error = None
    try:
        yield
    except Exception as err:
        error = err
    failures = _failures(error)
    if error is not None:
        raise error
    if failures:
        rank, host, text = failures[0]
        raise ConfigError(f"rank {rank} on {host} failed while {what}, so every rank stops: {text}")
