"""Evaluation spread over processes (``accelerate launch``, ``torchrun``): each process samples
whole batches of the prompts, and every process gathers every output, so the scores are computed
from the same images as in one process.

Batches are dealt whole because their composition moves float rounding: an image sampled in
another batch can differ by a level in a few pixels. Dealt whole, every output is the one a
one-process run with the same ``--batch-size`` makes, so the merged records equal its records.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Shards:
    """This process's place among the evaluating processes.

    Attributes:
        rank: this process's index, 0 for the one that writes the records.
        size: the number of processes.
    """

    rank: int = 0
    size: int = 1

    @classmethod
    def from_environment(cls) -> Shards:
        """One process unless a launcher set ``WORLD_SIZE`` above 1; then the process group is
        joined (gloo without a GPU; nccl with one, each process on the GPU of its ``LOCAL_RANK``)
        unless the launcher has joined it already."""
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return cls()
        import torch.distributed as dist

        if not dist.is_initialized():
            if torch.cuda.is_available():
                torch.cuda.set_device(cls.device())  # nccl gathers on the current GPU
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        return cls(dist.get_rank(), dist.get_world_size())

    @staticmethod
    def device(cuda: bool | None = None) -> str:
        """Where this process runs its model: the GPU of its ``LOCAL_RANK`` (one per process on a
        machine; 0 without a launcher) when there is one, else the CPU."""
        if not (torch.cuda.is_available() if cuda is None else cuda):
            return "cpu"
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"

    @property
    def main(self) -> bool:
        """Whether this process writes the records and reports progress."""
        return self.rank == 0

    def batches(self, n: int, batch_size: int) -> list[tuple[int, int]]:
        """This process's ``[lo, hi)`` of the batches a one-process run makes of ``n`` items, dealt
        round robin."""
        every = [(lo, min(lo + batch_size, n)) for lo in range(0, n, batch_size)]
        return every[self.rank::self.size]

    def gather(self, value) -> list:
        """Every process's ``value`` (any picklable object), in rank order, on every process."""
        if self.size == 1:
            return [value]
        import torch.distributed as dist

        out = [None] * self.size
        dist.all_gather_object(out, value)
        return out

    def gather_batches(self, mine: dict[int, object]) -> list:
        """The values of every batch, keyed by their first index on each process, in index order."""
        merged = {lo: v for part in self.gather(mine) for lo, v in part.items()}
        return [merged[lo] for lo in sorted(merged)]
