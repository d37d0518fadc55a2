"""Scoring on several processes with torch.distributed: shard the batches, all-reduce the score sums.

Scores are sums over calibration batches, so each rank scores its shard (round-robin by global
batch index, which also keys the noise) and one SUM all-reduce gives every rank the full result.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import DeepCutsError, first_line
from .scores import Scores


@dataclass(frozen=True)
class World:
    """This process's rank among `size` processes (size 1 when not distributed)."""

    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        """Whether this process writes the outputs (rank 0)."""
        return self.rank == 0


def current_world() -> World:
    """The initialised default process group as a `World` (rank 0 of 1 when there is none)."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    return World()


def launched_by_torchrun() -> bool:
    """Whether the environment asks for more than one process (torchrun sets WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@contextlib.contextmanager
def process_group(device: str) -> Iterator[World]:
    """Join the torchrun process group (gloo on CPU, NCCL on CUDA) for the duration of a command.

    Does nothing when not launched by torchrun or when a group is already initialised.
    """
    if not launched_by_torchrun() or dist.is_initialized():
        yield current_world()
        return
    if not dist.is_available():
        raise DeepCutsError("this torch build has no torch.distributed; run with a single process")
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    try:
        dist.init_process_group(backend)
    except (RuntimeError, ValueError) as e:
        raise DeepCutsError(f"cannot join the torchrun process group ({backend}): {first_line(e)}") from e
    try:
        yield current_world()
    finally:
        dist.destroy_process_group()


def shard(indices: Sequence[int], world: World) -> list[int]:
    """The global batch indices this rank scores (round-robin, so shards differ by at most one)."""
    return [i for i in indices if i % world.size == world.rank]


def all_reduce_scores(scores: Scores, world: World) -> Scores:
    """The SUM of `scores` over all ranks (every rank gets it); `scores` itself is not changed."""
    if world.size == 1:
        return scores
    tensors = scores.to_tensors()
    names = sorted(tensors)
    flat = torch.cat([tensors[n].reshape(-1).float() for n in names]).to(_backend_device())
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    out, start = {}, 0
    for n in names:
        size = tensors[n].numel()
        out[n] = flat[start:start + size].view(tensors[n].shape).to(_device_of(scores))
        start += size
    total = Scores.from_tensors(out, scores.header())
    total.meta["batches"] = int(all_reduce_count(scores.meta.get("batches", 0), world))
    return total


def all_reduce_count(count: int, world: World) -> int:
    """The SUM of an integer over all ranks."""
    if world.size == 1:
        return count
    t = torch.tensor([count], dtype=torch.int64, device=_backend_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return int(t.item())


@contextlib.contextmanager
def main_first(world: World) -> Iterator[None]:
    """Run the block on rank 0 before the other ranks (e.g. so only rank 0 fills a model cache)."""
    if world.size > 1 and not world.is_main:
        dist.barrier()
    yield
    if world.size > 1 and world.is_main:
        dist.barrier()


def broadcast_flag(flag: bool, world: World) -> bool:
    """Rank 0's value of `flag` on every rank (so all ranks take the same decision)."""
    if world.size == 1:
        return flag
    t = torch.tensor([int(flag)], dtype=torch.int64, device=_backend_device())
    dist.broadcast(t, src=0)
    return bool(t.item())


def _device_of(scores: Scores) -> torch.device:
    tensors = list(scores.values()) or scores.unit_scores()["heads"]
    return tensors[0].device if tensors else torch.device("cpu")


def _backend_device() -> torch.device:
    """NCCL reduces CUDA tensors, gloo CPU tensors."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
