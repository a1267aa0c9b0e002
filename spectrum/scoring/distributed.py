"""Several processes, one scan: under `torchrun` each rank scores its share and rank 0 writes.

The same code path runs in one process (a world of size 1). Work is shared by shards when
there are at least as many shards as ranks (each rank then reads, or downloads, only its own
shards), otherwise by matrices; either way greedily by bytes, largest first.

A process joins a group only when torchrun started it (`TORCHELASTIC_RUN_ID` is set) or when
`SPECTRUM_DISTRIBUTED=1` says to: torchrun's variables (`WORLD_SIZE`, `RANK`, ...) inherited
from a training job that runs spectrum would otherwise make it wait for peers that never come.
Joining waits at most `SPECTRUM_DISTRIBUTED_TIMEOUT` seconds (default 300) for the other ranks.
"""

from __future__ import annotations

import heapq
import logging
import os
from dataclasses import dataclass
from typing import Sequence, TypeVar

from ..errors import SpectrumError, UsageError

T = TypeVar("T")

LOG = logging.getLogger("spectrum")

DISTRIBUTED_ENV = "SPECTRUM_DISTRIBUTED"  # "1": join the group the torchrun variables describe, without torchrun
TIMEOUT_ENV = "SPECTRUM_DISTRIBUTED_TIMEOUT"  # seconds to wait for the other ranks to join
DEFAULT_JOIN_SECONDS = 300
_TORCHRUN_ENV = "TORCHELASTIC_RUN_ID"  # set by torchrun in every process it starts
_ignored_reported = False  # the warning about inherited torchrun variables is given once a process
_group = None  # the group the ranks exchange their scores in (see `join`)


def launched_together() -> bool:
    """Whether this process is one of several started together: by torchrun, or `SPECTRUM_DISTRIBUTED=1`."""
    return bool(os.environ.get(_TORCHRUN_ENV)) or os.environ.get(DISTRIBUTED_ENV, "").strip() == "1"


def _whole_number(variable: str, default: int | None = None) -> int:
    """A torchrun variable as a whole number; UsageError naming it when it is missing or not one."""
    text = os.environ.get(variable, "").strip()
    if not text and default is not None:
        return default
    if not text:
        raise UsageError(f"{variable} is not set, but WORLD_SIZE is {os.environ.get('WORLD_SIZE')}; start the "
                         "processes with torchrun, which sets it, or unset WORLD_SIZE to scan in one process")
    if not (text.isascii() and text.isdigit()):
        raise UsageError(f"{variable}={text!r} is not a whole number; start the processes with torchrun, "
                         "or unset it to scan in one process")
    return int(text)


@dataclass(frozen=True)
class World:
    """This process's place among the processes `torchrun` started."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> "World":
        """The world torchrun's variables describe when `launched_together`; otherwise a world of one
        (with one warning when inherited torchrun variables are ignored)."""
        global _ignored_reported
        if not launched_together():
            inherited = os.environ.get("WORLD_SIZE", "").strip()
            if inherited not in ("", "1") and not _ignored_reported:
                _ignored_reported = True
                LOG.warning("WORLD_SIZE=%s is set, but this process was not started by torchrun (no %s); "
                            "ignoring the torchrun variables and scanning in this one process (set %s=1 to join "
                            "the group they describe)", inherited, _TORCHRUN_ENV, DISTRIBUTED_ENV)
            return cls()
        size = _whole_number("WORLD_SIZE", default=1)
        if size <= 1:
            return cls()
        rank = _whole_number("RANK")
        if rank >= size:
            raise UsageError(f"RANK={rank} is not below WORLD_SIZE={size}; start the processes with torchrun")
        return cls(rank, size, _whole_number("LOCAL_RANK", default=0))

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def join(world: World, device: str) -> str:
    """Join the process group; returns this rank's device (`cuda:<local rank>` for auto/cuda with GPUs).

    The group is gloo's, on CUDA ranks too: the ranks only exchange their scores (a few kB of Python
    objects) and a barrier, which NCCL would route through each rank's current GPU (cuda:0 for all
    of them unless set) for no gain. A CUDA rank's current device is set to its own GPU all the same.
    """
    if world.size == 1:
        return device
    from datetime import timedelta

    import torch
    import torch.distributed as dist
    from torch.distributed.constants import default_pg_timeout

    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if use_cuda and torch.cuda.is_available() and world.local_rank < torch.cuda.device_count():
        torch.cuda.set_device(world.local_rank)
    global _group
    if not dist.is_initialized():
        seconds = join_timeout()
        try:
            dist.init_process_group(backend="gloo", timeout=timedelta(seconds=seconds))
        except (RuntimeError, ValueError, OSError) as err:  # torch's DistError and its store errors
            where = ":".join(os.environ.get(name, "?") for name in ("MASTER_ADDR", "MASTER_PORT"))
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise SpectrumError(
                f"rank {world.rank} of {world.size} could not join the other processes at {where} within "
                f"{seconds:g} s ({reason}); start every rank with torchrun (or set {TIMEOUT_ENV} to wait longer)"
            ) from err
        # Ranks may finish their shares far apart: the scores are exchanged under torch's usual timeout.
        _group = dist.new_group(backend="gloo", timeout=default_pg_timeout)
    if use_cuda and device in ("auto", "cuda"):
        return f"cuda:{world.local_rank}"
    return device


def join_timeout() -> float:
    """Seconds `join` waits for the other ranks: `$SPECTRUM_DISTRIBUTED_TIMEOUT`, default 300."""
    text = os.environ.get(TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_JOIN_SECONDS
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds < 1e7:
        raise UsageError(f"{TIMEOUT_ENV}={text!r} is not a number of seconds; use e.g. 300, or unset it")
    return seconds


def _balanced(sizes: Sequence[int], parts: int) -> list[int]:
    """Owner of each item: largest first to the least loaded part (ties: lowest part)."""
    owners = [0] * len(sizes)
    loads = [(0, part) for part in range(parts)]
    for index in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        load, part = heapq.heappop(loads)
        owners[index] = part
        heapq.heappush(loads, (load + sizes[index], part))
    return owners


def share(world: World, matrices: list[T], shard_of, size_of) -> list[T]:
    """This rank's part of `matrices` (all of them in a world of one)."""
    if world.size == 1:
        return matrices
    shards = list(dict.fromkeys(shard_of(matrix) for matrix in matrices))
    if len(shards) >= world.size:
        shard_bytes = [sum(size_of(m) for m in matrices if shard_of(m) == shard) for shard in shards]
        owner = dict(zip(shards, _balanced(shard_bytes, world.size)))
        return [matrix for matrix in matrices if owner[shard_of(matrix)] == world.rank]
    owners = _balanced([size_of(matrix) for matrix in matrices], world.size)
    return [matrix for matrix, rank in zip(matrices, owners) if rank == world.rank]


def gather(world: World, value: T) -> list[T]:
    """Every rank's value, in rank order, on every rank."""
    if world.size == 1:
        return [value]
    import torch.distributed as dist

    values: list = [None] * world.size
    dist.all_gather_object(values, value, group=_group)
    return values


def leave(world: World) -> None:
    """Leave the process group once everyone is done."""
    if world.size == 1:
        return
    import torch.distributed as dist

    global _group
    if dist.is_initialized():
        dist.barrier(group=_group)
        dist.destroy_process_group()
        _group = None
