"""Objects the trainer writes and the orchestrator reads (DESIGN.md §4)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from brightrun import layout

if TYPE_CHECKING:
    from brightrun.storage import Storage

_ATTEMPT_IN_NAME = re.compile(r"^(\d+)-\d+\.jsonl?$")


def utcnow() -> datetime:
    return datetime.now(UTC)


class TrainerPhase(StrEnum):
    starting = "starting"
    loading_data = "loading_data"
    loading_model = "loading_model"  # -> job status model_loaded once past it
    training = "training"
    checkpointing = "checkpointing"
    evaluating = "evaluating"
    uploading = "uploading"
    completed = "completed"
    interrupted = "interrupted"  # SIGTERM honoured: checkpoint committed, exit 0
    failed = "failed"


class TrainerStatus(BaseModel):
    """`status.json`: the trainer's heartbeat, rewritten every few seconds."""

    phase: TrainerPhase
    attempt: int = Field(ge=1)
    step: int = 0
    total_steps: int = 0
    epoch: float = 0.0
    loss: float | None = None
    learning_rate: float | None = None
    grad_norm: float | None = None
    tokens_per_s: float | None = None
    last_checkpoint_step: int | None = None
    updated_at: datetime = Field(default_factory=utcnow)


class MetricRecord(BaseModel):
    """One line of `metrics/<attempt>-<n>.jsonl`."""

    step: int
    epoch: float
    loss: float | None = None
    eval_loss: float | None = None
    learning_rate: float | None = None
    grad_norm: float | None = None
    tokens_processed: int = 0
    trained_tokens: int = 0
    padding_tokens: int = 0
    tokens_per_s: float | None = None
    peak_memory_mb: float | None = None
    mfu: float | None = None
    # DPO/KTO (training.objective): mean implicit rewards beta * log(pi / pi_ref), their
    # margin, the share of pairs ranked right, and KTO's KL reference point.
    rewards_chosen: float | None = None
    rewards_rejected: float | None = None
    reward_margin: float | None = None
    reward_accuracy: float | None = None
    kl: float | None = None
    attempt: int = 1
    time: datetime = Field(default_factory=utcnow)


class TrainerEvent(BaseModel):
    """`events/<attempt>-<n>.json`: finer events for `training_job_events`."""

    type: str  # resumed, checkpoint_committed, checkpoint_rejected, interrupted...
    attempt: int
    payload: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime = Field(default_factory=utcnow)


class ManifestEntry(BaseModel):
    sha256: str
    size: int


class Manifest(BaseModel):
    """`MANIFEST.json`, written last in a checkpoint or adapter directory."""

    files: dict[str, ManifestEntry]
    step: int | None = None
    created_at: datetime = Field(default_factory=utcnow)

    @property
    def total_size(self) -> int:
        return sum(entry.size for entry in self.files.values())


class EvalReport(BaseModel):
    """`eval.json`."""

    eval_loss: float
    perplexity: float
    eval_tokens: int
    samples: list[dict[str, str]] = Field(default_factory=list)  # prompt, reference, generated
    # DPO/KTO: the held-out preference metrics (loss is then the preference loss).
    preference: dict[str, float] | None = None


class TrainerResult(BaseModel):
    """`result.json`: terminal marker of a successful run."""

    job_id: str
    steps: int
    epochs: float
    train_loss: float | None
    eval_loss: float | None
    perplexity: float | None
    adapter_prefix: str  # relative to the job prefix, e.g. "adapter"
    adapter_size_bytes: int
    train_seconds: float
    tokens_per_s: float | None = None
    attempts: int = 1
    finished_at: datetime = Field(default_factory=utcnow)


class TrainerFailure(BaseModel):
    """`failure.json`: terminal marker of a failed run."""

    job_id: str
    phase: TrainerPhase
    error: str
    error_type: str
    traceback: str | None = None
    step: int | None = None
    attempt: int = 1
    failed_at: datetime = Field(default_factory=utcnow)


def previous_attempts(storage: Storage, job_prefix: str = "") -> int:
    """The highest attempt number any trainer process of a job left in storage (0 if none).

    `job_prefix` is "" for the trainer's storage (rooted at its job) and `jobs/<id>/` for the
    orchestrator's. Every attempt writes `status.json` at start, so one that died at once
    still counts; events and metric chunk names carry the attempt too.
    """
    highest = 0
    try:
        highest = TrainerStatus.model_validate(storage.get_json(job_prefix + layout.STATUS)).attempt
    except Exception:  # missing or unreadable: look at the chunk names only
        highest = 0
    for directory in (layout.EVENTS_DIR, layout.METRICS_DIR):
        for key in storage.list(f"{job_prefix}{directory}/"):
            match = _ATTEMPT_IN_NAME.match(key.rsplit("/", 1)[-1])
            if match:
                highest = max(highest, int(match.group(1)))
    return highest
