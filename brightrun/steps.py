"""How many optimizer steps a job runs: the one formula the trainer plans with and the
orchestrator prices with (two formulas that rounded differently made estimates disagree
with the run).

A run is a stream of micro-batches of `batch_size` examples (packed or padded); an epoch is
`ceil(examples / batch_size)` micro-batches; `epochs` may be fractional and is rounded up
to whole micro-batches; an optimizer step takes `gradient_accumulation_steps` of them, the
last step possibly fewer. `max_steps` wins over `epochs`. The number of GPUs does not
enter: data-parallel ranks split each step's micro-batches, the global batch is the same.
"""

from __future__ import annotations

import math


def micro_batches_per_epoch(examples: int, batch_size: int) -> int:
    return max(1, math.ceil(examples / batch_size))


def plan_steps(
    batches_per_epoch: int, epochs: float, max_steps: int | None, gradient_accumulation_steps: int
) -> tuple[int, int]:
    """(total optimizer steps, total micro-batches)."""
    if max_steps is not None:
        return max_steps, max_steps * gradient_accumulation_steps
    total_micro = max(1, math.ceil(epochs * batches_per_epoch))
    return math.ceil(total_micro / gradient_accumulation_steps), total_micro


def total_steps(
    examples: int,
    *,
    batch_size: int,
    gradient_accumulation_steps: int,
    epochs: float,
    max_steps: int | None,
) -> int:
    """Optimizer steps for `examples` training sequences (the prepared train split)."""
    steps, _ = plan_steps(
        micro_batches_per_epoch(examples, batch_size), epochs, max_steps, gradient_accumulation_steps
    )
    return steps
