"""Several processes (torchrun + DistributedDataParallel) with the methods' semantics kept exact.

    torchrun --nproc_per_node=4 main.py --dataset coco --mod_scheme LL-Ct    # one machine, 4 GPUs
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=HOST:PORT main.py ...

The paper's batch stays the paper's batch: --batch_size is the global batch B. The data order is
one permutation of (seed, epoch) whatever the number of processes; global batch t is its rows
[t·B, (t+1)·B), and rank r reads the contiguous shard [r·c, (r+1)·c) of it, c = ceil(m / W) for a
batch of m rows (the last one may be short). Short shards are padded with sample id −1 so that
every rank runs the same steps with tensors of one shape.

Each rank forwards its shard, then the logits (and sample ids) of the whole global batch are
gathered on every rank (`gather_rows`, B·L floats per step), so every rank computes the loss of the
global batch exactly as one process would: the same k from the global B·L, the same large-loss
threshold R, the same LL-Cp relabels and ROLE estimator update. The method's per-sample state
therefore stays identical on every rank with no further communication, and ROLE's N×L estimator
never enters DDP's all-reduce. Evaluation shards the split into contiguous blocks and gathers
exactly its N rows, in dataset order.
"""
from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Iterator

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (rank 0 of 1 without torchrun)."""
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 writes the run folder and prints."""
        return self.rank == 0


SINGLE_PROCESS = World()


def world_from_environment() -> World:
    """The World torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK), or one process."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return SINGLE_PROCESS
    return World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))


def init_process_group(world: World, device: torch.device, timeout_s: float) -> None:
    """NCCL between GPUs, gloo on CPU; a no-op for one process."""
    if world.size == 1 or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))


def shard_size(num_rows: int, world_size: int) -> int:
    """c = ceil(num_rows / W): the rows each rank holds (padded) of a batch or a split."""
    return math.ceil(num_rows / world_size)


def shard_counts(num_rows: int, world_size: int) -> list[int]:
    """The real (unpadded) rows of each rank's contiguous shard."""
    size = shard_size(num_rows, world_size)
    return [max(0, min(size, num_rows - rank * size)) for rank in range(world_size)]


class TrainBatches:
    """Batch sampler of training: global batches of a (seed + epoch) permutation, rank r's
    contiguous shard of each, padded with −1 to c rows (see the module docstring).

    With one process it yields exactly the batches of a DistributedSampler + DataLoader(batch_size).
    """

    def __init__(self, num_rows: int, batch_size: int, seed: int, world: World = SINGLE_PROCESS):
        self.num_rows, self.batch_size, self.seed, self.world = num_rows, batch_size, seed, world
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(self.num_rows / self.batch_size)

    def global_batch_size(self, step: int) -> int:
        """m, the rows of global batch `step` (0-based)."""
        return min(self.batch_size, self.num_rows - step * self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)  # DistributedSampler's
        order = torch.randperm(self.num_rows, generator=generator).tolist()
        for first in range(0, self.num_rows, self.batch_size):
            batch = order[first:first + self.batch_size]
            size = shard_size(len(batch), self.world.size)
            shard = batch[self.world.rank * size:(self.world.rank + 1) * size]
            yield shard + [-1] * (size - len(shard))


class EvalBatches:
    """Batch sampler of evaluation: rank r's contiguous block of the split, in order, in batches
    (no padding: the blocks are gathered once, at the end)."""

    def __init__(self, num_rows: int, batch_size: int, world: World = SINGLE_PROCESS):
        self.num_rows, self.batch_size, self.world = num_rows, batch_size, world
        size = shard_size(num_rows, world.size)
        self.first = min(num_rows, world.rank * size)
        self.last = min(num_rows, (world.rank + 1) * size)

    def set_epoch(self, epoch: int) -> None:
        """Evaluation order does not depend on the epoch."""

    def __len__(self) -> int:
        return math.ceil((self.last - self.first) / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        for first in range(self.first, self.last, self.batch_size):
            yield list(range(first, min(first + self.batch_size, self.last)))


class _GatherRows(torch.autograd.Function):
    """All ranks' c×L rows, concatenated in rank order. Every rank computes the same loss from the
    gathered rows, so the gradient of its own rows is its slice of the local gradient; scaled by W
    because DDP averages the parameter gradients over the W ranks."""

    @staticmethod
    def forward(ctx, rows: Tensor, rank: int, world_size: int) -> Tensor:
        ctx.rank, ctx.world_size, ctx.num_rows = rank, world_size, rows.shape[0]
        parts = [torch.empty_like(rows) for _ in range(world_size)]
        dist.all_gather(parts, rows.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: Tensor):
        own = grad[ctx.rank * ctx.num_rows:(ctx.rank + 1) * ctx.num_rows]
        return own * ctx.world_size, None, None


@functools.lru_cache(maxsize=8)  # two sizes per run (full batches and the last one)
def real_rows_index(global_size: int, world_size: int, device: torch.device) -> Tensor:
    """Positions of the real rows among the W·c gathered ones (no host sync: built on the host,
    copied to the device once per size)."""
    size = shard_size(global_size, world_size)
    index = [rank * size + row for rank, count in enumerate(shard_counts(global_size, world_size))
             for row in range(count)]
    return torch.tensor(index, dtype=torch.long).to(device, non_blocking=True)


def gather_global_batch(logits: Tensor, sample_ids: Tensor, global_size: int,
                        world: World) -> tuple[Tensor, Tensor]:
    """(m×L logits, m sample ids) of the global batch from every rank's padded c-row shard, in the
    global batch's order; gradients flow back to this rank's rows."""
    if world.size == 1:
        return logits, sample_ids
    gathered_logits = _GatherRows.apply(logits, world.rank, world.size)
    id_parts = [torch.empty_like(sample_ids) for _ in range(world.size)]
    dist.all_gather(id_parts, sample_ids.contiguous())
    gathered_ids = torch.cat(id_parts)
    keep = real_rows_index(global_size, world.size, logits.device)
    return gathered_logits.index_select(0, keep), gathered_ids.index_select(0, keep)


def gather_blocks(outputs: Tensor, num_rows: int, world: World) -> Tensor:
    """The N×K rows of a split from every rank's contiguous block (evaluation), in dataset order."""
    if world.size == 1:
        return outputs
    size = shard_size(num_rows, world.size)
    padded = torch.zeros((size, *outputs.shape[1:]), dtype=outputs.dtype, device=outputs.device)
    padded[:len(outputs)] = outputs
    parts = [torch.empty_like(padded) for _ in range(world.size)]
    dist.all_gather(parts, padded)
    return torch.cat(parts)[:num_rows]


def barrier(world: World) -> None:
    """Wait for every rank (e.g. until rank 0 has written a checkpoint the others read)."""
    if world.size > 1:
        dist.barrier()


def destroy(world: World) -> None:
    if world.size > 1 and dist.is_initialized():
        dist.destroy_process_group()
