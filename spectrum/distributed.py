"""Several processes, one scan: under `torchrun` each rank scores its share and rank 0 writes.

The same code path runs in one process (a world of size 1). Work is shared by shards when
there are at least as many shards as ranks (each rank then reads, or downloads, only its own
shards), otherwise by matrices; either way greedily by bytes, largest first.
"""

from __future__ import annotations

import heapq
import os
from dataclasses import dataclass
from typing import Sequence, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's place among the processes `torchrun` started."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> "World":
        size = int(os.environ.get("WORLD_SIZE", "1"))
        if size <= 1:
            return cls()
        return cls(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))

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
    import torch
    import torch.distributed as dist

    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if use_cuda and torch.cuda.is_available() and world.local_rank < torch.cuda.device_count():
        torch.cuda.set_device(world.local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="gloo")
    if use_cuda and device in ("auto", "cuda"):
        return f"cuda:{world.local_rank}"
    return device


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
    dist.all_gather_object(values, value)
    return values


def leave(world: World) -> None:
    """Leave the process group once everyone is done."""
    if world.size == 1:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
