"""How many optimizer steps a job runs: the one formula the trainer plans with and the
orchestrator prices with (two formulas that rounded differently made estimates disagree
with the run).

A step means the same supervision whatever the packing (issue 25). The unit is the trained
example of the per-pair recipe: one assistant target (TRL's SFTTrainer row when not packing).
A prepared sequence merges a conversation's turns and so holds several targets. A run is a
stream of micro-batches of exactly `batch_size` targets (the epoch's last one possibly
fewer); an epoch is `ceil(targets / batch_size)` micro-batches; an optimizer step takes
`gradient_accumulation_steps` of them, so an epoch is `ceil(targets / (batch_size x
gradient_accumulation_steps))` steps, the seed's "epochs at batch x accumulation". `epochs`
may be fractional and is rounded up to whole micro-batches; `max_steps` wins over `epochs`.
The number of GPUs does not enter: data-parallel ranks split each step's micro-batches.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from brightrun.prepared import IGNORE_INDEX


def target_spans(labels: Sequence[int]) -> list[tuple[int, int]]:
    """(start, end) of each assistant target: a run of trained labels. The first position is
    never a prediction target (nothing precedes it), so a run there starts at 1."""
    spans: list[tuple[int, int]] = []
    start: int | None = None
    for i, label in enumerate(labels):
        trained = label != IGNORE_INDEX and i > 0
        if trained and start is None:
            start = i
        elif not trained and start is not None:
            spans.append((start, i))
            start = None
    if start is not None:
        spans.append((start, len(labels)))
    return spans


def count_targets(labels: Sequence[int]) -> int:
    return len(target_spans(labels))


def micro_batches_per_epoch(targets: int, batch_size: int) -> int:
    """Micro-batches of one epoch over `targets` trained examples (assistant targets)."""
    return max(1, math.ceil(targets / batch_size))


def steps_per_epoch(targets: int, batch_size: int, gradient_accumulation_steps: int) -> int:
    return math.ceil(micro_batches_per_epoch(targets, batch_size) / gradient_accumulation_steps)


def plan_steps(
    batches_per_epoch: int, epochs: float, max_steps: int | None, gradient_accumulation_steps: int
) -> tuple[int, int]:
    """(total optimizer steps, total micro-batches)."""
    if max_steps is not None:
        return max_steps, max_steps * gradient_accumulation_steps
    total_micro = max(1, math.ceil(epochs * batches_per_epoch))
    return math.ceil(total_micro / gradient_accumulation_steps), total_micro


def total_steps(
    targets: int,
    *,
    batch_size: int,
    gradient_accumulation_steps: int,
    epochs: float,
    max_steps: int | None,
) -> int:
    """Optimizer steps for `targets` trained examples (assistant targets of the train split)."""
    steps, _ = plan_steps(
        micro_batches_per_epoch(targets, batch_size), epochs, max_steps, gradient_accumulation_steps
    )
    return steps


def tokens_per_micro_batch(targets: int, sequences: int | None, tokens: int, batch_size: int) -> float:
    """Mean tokens of a micro-batch: `batch_size` targets' share of the tokens, plus the
    prefix a straddling sequence repeats (about half a sequence at each boundary that falls
    inside one; calibrated on the 242 curated conversations, within 15 % of that extra)."""
    if targets <= 0:
        return 0.0
    own = tokens / targets * batch_size
    if sequences is None or sequences <= 0 or sequences >= targets:
        return own
    return own + 0.5 * (tokens / sequences) * (1 - sequences / targets)


def describe_plan(
    targets: int, sequences: int, batch_size: int, gradient_accumulation_steps: int, total: int
) -> str:
    """The "steps per epoch" line a job prints before its first step."""
    per_step = batch_size * gradient_accumulation_steps
    return (
        f"steps per epoch: {steps_per_epoch(targets, batch_size, gradient_accumulation_steps)} "
        f"({targets} trained examples (assistant targets) in {sequences} sequences, "
        f"{per_step} examples per step = batch_size {batch_size} x gradient_accumulation_steps "
        f"{gradient_accumulation_steps}, whatever the packing); {total} steps in all"
    )
