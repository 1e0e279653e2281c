"""How a job's monitoring ended: the outcome the flow records, and why a failure happened."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from brightrun.protocol import TrainerFailure, TrainerResult


class OutcomeKind(StrEnum):
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"
    budget_exceeded = "budget_exceeded"


class FailureKind(StrEnum):
    """Why a job failed, so `brightrun resume` can tell a retry worth making from one that is not."""

    training = "training"  # the trainer's own failure (divergence, bad data): resuming repeats it
    input = "input"  # the request or the dataset was refused before training
    orchestration = "orchestration"  # API or database outage, restarts spent, flow killed: resumable
    budget = "budget"  # a cost or duration cap: raise it before resuming
    stopped = "stopped"  # Ctrl-C at the terminal (tasks/monitor/user_stop.py): resumable


@dataclass
class Outcome:
    kind: OutcomeKind
    reason: str = ""
    result: TrainerResult | None = None
    failure: TrainerFailure | None = None
    attempts: int = 0  # the job's highest attempt number (attempts of earlier runs included)
    retry_count: int = 0  # replacement attempts the job has had (earlier runs included)
    actual_cost_usd: float = 0.0  # every pod the job ever had, each counted once
    gpu_hours: float = 0.0
    pod_ids: list[str] = field(default_factory=list)
    failure_kind: FailureKind | None = None
    # Pods RunPod never confirmed terminated (its API stayed down): the reaper's to finish.
    unterminated_pods: list[str] = field(default_factory=list)
