"""Data parallelism over every GPU of a pod, through torch.distributed.

Launched by torchrun (`python -m torch.distributed.run --standalone --nproc-per-node=N -m
trainer --spec URI`), which sets RANK, WORLD_SIZE and LOCAL_RANK; without them the trainer
is one process and nothing here does anything.

Why no DistributedDataParallel wrapper: each optimizer step's micro-batches are dealt out
to the ranks (rank r takes micro-batches first+r, first+r+N, ...), so a rank may have more
micro-batches than another, or none (gradient accumulation below the world size, the
last step of a run); DDP needs every rank in every backward. Only the LoRA weights train,
so gathering their per-micro-batch gradients once per optimizer step is all the
communication there is (`sum_in_order`). Every rank then holds the same summed gradient,
clips it the same way and takes the same optimizer step: weights and optimizer state stay
identical without broadcasts, and rank 0's checkpoint is every rank's checkpoint.

The global batch does not depend on the number of processes, and each micro-batch's
dropout draws from a generator seeded by (seed, micro-batch index), and the gradients are
added in micro-batch order, so a run at world size N computes bit for bit what one process
computes (on the CPU; CUDA kernels that are not deterministic aside), and a checkpoint
taken at one world size resumes exactly at another (the change is recorded as an event).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

log = logging.getLogger(__name__)

# Rank 0 evaluates and uploads while the others wait at their next collective.
COLLECTIVE_TIMEOUT = timedelta(minutes=60)


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def micro_batches(self, first: int, last: int) -> range:
        """This rank's share of the micro-batches [first, last) of one optimizer step."""
        return range(first + self.rank, last, self.size)


def world_from_env() -> World:
    size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if size <= 1:
        return World()
    return World(
        rank=int(os.environ.get("RANK", "0")),
        size=size,
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )


def start(world: World) -> None:
    """Join the process group: NCCL between GPUs, gloo on the CPU."""
    if not world.distributed:
        return
    import torch
    import torch.distributed as dist

    if torch.cuda.is_available():
        torch.cuda.set_device(world.local_rank)
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend=backend, timeout=COLLECTIVE_TIMEOUT)
    log.info("rank %d of %d joined the %s process group", world.rank, world.size, backend)


def stop(world: World) -> None:
    if not world.distributed:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def device(world: World) -> Any:
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda", world.local_rank)
    return torch.device("cpu")


def take_gradients(params: list[Any]) -> Any:
    """This micro-batch's gradient as one flat tensor (in the parameters' dtype); the
    parameters' gradients are cleared for the next micro-batch."""
    import torch

    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
    for p in params:
        p.grad = None
    return flat


def sum_in_order(world: World, params: list[Any], grads: list[Any], losses: list[float], count: int) -> float:
    """The step's gradient and loss, summed over its `count` micro-batches in micro-batch
    order, on every rank; returns the loss, leaves the gradient in `.grad`.

    Why gather rather than all-reduce: one process accumulates micro-batch gradients one
    after the other, ((g1 + g2) + g3) + g4; an all-reduce of per-rank sums adds them as
    (g1 + g3) + (g2 + g4), and Adam's normalisation turns that last-bit difference into
    visible drift where gradients nearly cancel (measured 8e-5 after 10 steps). Gathering
    every micro-batch's gradient and adding them in order gives bit for bit the single
    process's sum, whatever the world size; it costs gradient-accumulation / world-size
    LoRA-sized buffers per rank (LoRA r=16 on Llama 3 8B: 168 MB each)."""
    if not world.distributed:
        total = 0.0
        for value in losses:
            total += value
        return total
    import torch
    import torch.distributed as dist

    slots = math.ceil(count / world.size)
    size = sum(p.numel() for p in params)
    mine = torch.zeros(slots, size, dtype=params[0].dtype, device=params[0].device)
    mine_loss = torch.zeros(slots, dtype=torch.float64, device=params[0].device)
    for slot, (flat, value) in enumerate(zip(grads, losses, strict=True)):
        mine[slot] = flat
        mine_loss[slot] = value
    everyone = [torch.empty_like(mine) for _ in range(world.size)]
    everyone_loss = [torch.empty_like(mine_loss) for _ in range(world.size)]
    dist.all_gather(everyone, mine)
    dist.all_gather(everyone_loss, mine_loss)
    total_grad: Any = None
    step_loss = 0.0
    for k in range(count):  # micro-batch first+k was rank k % size's slot k // size
        rank, slot = k % world.size, k // world.size
        grad = everyone[rank][slot]
        total_grad = grad.clone() if total_grad is None else total_grad + grad
        step_loss += float(everyone_loss[rank][slot])
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = total_grad[offset : offset + n].view_as(p).clone()
        offset += n
    return step_loss


def agree(world: World, *flags: bool) -> tuple[bool, ...]:
    """Each flag true on any rank becomes true on all (stop, cancel, checkpoint now...), so
    every rank takes the same branch and none waits forever in a collective."""
    if not world.distributed:
        return flags
    import torch
    import torch.distributed as dist

    tensor = torch.tensor([1.0 if f else 0.0 for f in flags], device=device(world))
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tuple(bool(v) for v in tensor.tolist())


def broadcast(world: World, value: Any) -> Any:
    """Rank 0's `value` on every rank (a small picklable object)."""
    if not world.distributed:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def seed_micro_batch(seed: int, micro_batch: int) -> None:
    """Dropout of micro-batch m draws from (seed, m): the same masks whichever rank, world size
    or attempt computes it, so resume and world-size changes need no RNG hand-over."""
    import torch

    torch.manual_seed((seed * 1_000_003 + micro_batch) % (2**63))
