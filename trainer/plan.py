"""What a step means for this run, said before the first step and checked on resume
(brightrun/steps.py has the rule: a step is `batch_size x gradient_accumulation_steps`
assistant targets, whatever the packing)."""

from __future__ import annotations

import logging
from typing import Any

from brightrun.errors import BrightrunError
from brightrun.spec import TrainingSettings
from brightrun.steps import describe_plan, steps_per_epoch

log = logging.getLogger("trainer")


def report_plan(stream: Any, training: TrainingSettings, total_steps: int, reporter: Any | None) -> None:
    """The "steps per epoch" line; `reporter` (rank 0's) also records it as a `step_plan` event.
    A preference stream counts records: each is one trained example already."""
    targets = getattr(stream, "total_targets", len(stream.examples))
    batch, accumulation = training.batch_size, training.gradient_accumulation_steps
    log.info("%s", describe_plan(targets, len(stream.examples), batch, accumulation, total_steps))
    if reporter is not None:
        reporter.event(
            "step_plan",
            steps_per_epoch=steps_per_epoch(targets, batch, accumulation),
            trained_examples=targets,
            sequences=len(stream.examples),
            micro_batches_per_epoch=stream.batches_per_epoch,
            total_steps=total_steps,
        )


def check_plan(state: Any, stream: Any, total_steps: int) -> None:
    """A checkpoint's data position only means something in the plan it was written in:
    resumed in another (another step rule, batch size or data) it would train some examples
    twice and skip others, so it is refused, on every rank alike."""
    planned = state.micro_batches_per_epoch
    if (planned is not None and planned != stream.batches_per_epoch) or state.total_steps != total_steps:
        raise BrightrunError(
            f"checkpoint {state.step} was written for {state.total_steps} steps "
            f"({planned or 'unrecorded'} micro-batches an epoch), but this trainer plans "
            f"{total_steps} steps ({stream.batches_per_epoch} micro-batches an epoch): the data, "
            "the batch settings or the step rule (a step counts assistant targets since issue 25) "
            "changed since; start the job again from step 0 (a new job id)"
        )
