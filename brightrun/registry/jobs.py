"""Training jobs and their events: creation, status transitions (DESIGN.md §3), progress,
cost and retries, and the append-only event log.

Status transitions: queued → preprocessing → model_loaded → training → completed, or
failed / cancelled from any non-terminal status. Moving a job to the status it already has
is an allowed no-op (flows retry; a resumed trainer reports `training` again); anything else
raises `IllegalTransition`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    Table,
    and_,
    select,
    update,
)

from brightrun.errors import BrightrunError
from brightrun.registry.binding import Bind, dialect_insert, row_view, to_uuid, transaction
from brightrun.registry.db import retry_on_disconnect
from brightrun.registry.models import (
    TERMINAL_STATUSES,
    JobStatus,
    TrainingJob,
    TrainingJobEvent,
    utcnow,
)

jobs_t: Table = TrainingJob.__table__  # type: ignore[assignment]
events_t: Table = TrainingJobEvent.__table__  # type: ignore[assignment]


class JobNotFound(BrightrunError):
    def __init__(self, job_id: object) -> None:
        super().__init__(f"job {job_id} is not in the registry; `brightrun jobs list` shows the jobs")


class IllegalTransition(BrightrunError):
    def __init__(self, job_id: object, current: str, new: str) -> None:
        self.job_id, self.current, self.new = str(job_id), current, new
        allowed = sorted(ALLOWED_TRANSITIONS.get(JobStatus(current), ()))
        hint = f"allowed from {current}: {', '.join(allowed)}" if allowed else f"{current} is terminal"
        super().__init__(f"job {job_id}: cannot move from {current} to {new} ({hint})")


ALLOWED_TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.queued: frozenset({JobStatus.preprocessing, JobStatus.failed, JobStatus.cancelled}),
    JobStatus.preprocessing: frozenset({JobStatus.model_loaded, JobStatus.failed, JobStatus.cancelled}),
    JobStatus.model_loaded: frozenset({JobStatus.training, JobStatus.failed, JobStatus.cancelled}),
    JobStatus.training: frozenset({JobStatus.completed, JobStatus.failed, JobStatus.cancelled}),
    JobStatus.completed: frozenset(),
    JobStatus.failed: frozenset(),
    JobStatus.cancelled: frozenset(),
}


def is_allowed_transition(current: str, new: str) -> bool:
    """Pure rule: same status (no-op) or an edge of the lifecycle."""
    cur, nxt = JobStatus(current), JobStatus(new)
    return cur == nxt or nxt in ALLOWED_TRANSITIONS[cur]


@dataclass(frozen=True)
class Job:
    id: str
    job_name: str
    status: str
    base_model: str
    training_file_id: str | None
    preset: str | None
    hyperparameters: dict[str, Any]
    compute_backend: str
    storage_prefix: str | None
    flow_run_id: str | None
    current_step: int
    total_steps: int | None
    current_epoch: float | None
    current_loss: float | None
    progress_percent: float
    retry_count: int
    actual_cost_usd: float | None
    estimated_cost_usd: float | None
    gpu_hours: float | None
    gpu_type: str | None
    runpod_pod_id: str | None
    runpod_endpoint_url: str | None
    metrics: dict[str, Any]
    estimated_completion_at: datetime | None
    lora_artifact_path: str | None
    training_log_path: str | None
    error_message: str | None
    created_by: str | None
    metadata: dict[str, Any]
    started_at: datetime | None
    completed_at: datetime | None
    created_at: datetime
    updated_at: datetime

    @property
    def is_terminal(self) -> bool:
        return JobStatus(self.status) in TERMINAL_STATUSES


@dataclass(frozen=True)
class JobEvent:
    id: str
    job_id: str
    type: str
    attempt: int
    payload: dict[str, Any]
    source_key: str | None
    created_at: datetime


@dataclass(frozen=True)
class NewEvent:
    """An event to append; `source_key` (e.g. the trainer's event object key) dedups re-ingestion."""

    job_id: str | uuid.UUID
    type: str
    attempt: int = 0
    payload: Mapping[str, Any] = field(default_factory=dict)
    created_at: datetime | None = None
    source_key: str | None = None


def job_row(conn: Connection, job_id: uuid.UUID, *, lock: bool = False) -> Any:
    stmt = select(jobs_t).where(jobs_t.c.id == job_id)
    if lock and conn.dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    row = conn.execute(stmt).first()
    if row is None:
        raise JobNotFound(job_id)
    return row


@retry_on_disconnect
def create_job(
    bind: Bind,
    *,
    job_name: str,
    base_model: str,
    job_id: str | uuid.UUID | None = None,
    training_file_id: str | uuid.UUID | None = None,
    preset: str | None = None,
    hyperparameters: Mapping[str, Any] | None = None,
    compute_backend: str = "local",
    storage_prefix: str | None = None,
    flow_run_id: str | None = None,
    total_steps: int | None = None,
    estimated_cost_usd: float | None = None,
    created_by: str | uuid.UUID | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Job:
    """Insert a `queued` job. Passing the same `job_id` again returns the existing job.

    `created_by` is who started it (an `auth.users` id on Supabase), or None.
    """
    jid = to_uuid(job_id) if job_id is not None else uuid.uuid4()
    now = utcnow()
    values = {
        "id": jid,
        "job_name": job_name,
        "status": JobStatus.queued.value,
        "base_model": base_model,
        "training_file_id": to_uuid(training_file_id, "training file") if training_file_id else None,
        "preset": preset,
        "hyperparameters": dict(hyperparameters or {}),
        "compute_backend": compute_backend,
        "storage_prefix": storage_prefix,
        "flow_run_id": flow_run_id,
        "current_step": 0,
        "total_steps": total_steps,
        "progress_percent": 0.0,
        "retry_count": 0,
        "estimated_cost_usd": estimated_cost_usd,
        "created_by": to_uuid(created_by, "user") if created_by else None,
        "metrics": {},
        "metadata": dict(metadata or {}),
        "created_at": now,
        "updated_at": now,
    }
    with transaction(bind) as conn:
        conn.execute(
            dialect_insert(conn, jobs_t).values(**values).on_conflict_do_nothing(index_elements=["id"])
        )
        return row_view(Job, job_row(conn, jid))


@retry_on_disconnect
def get_job(bind: Bind, job_id: str | uuid.UUID) -> Job:
    with transaction(bind) as conn:
        return row_view(Job, job_row(conn, to_uuid(job_id)))


@retry_on_disconnect
def list_jobs(
    bind: Bind, *, status: str | Iterable[str] | None = None, limit: int | None = 50, offset: int = 0
) -> list[Job]:
    """Newest first."""
    stmt = select(jobs_t).order_by(jobs_t.c.created_at.desc(), jobs_t.c.id)
    if status is not None:
        wanted = [status] if isinstance(status, str) else list(status)
        stmt = stmt.where(jobs_t.c.status.in_([JobStatus(s).value for s in wanted]))
    if limit is not None:
        stmt = stmt.limit(limit).offset(offset)
    with transaction(bind) as conn:
        return [row_view(Job, row) for row in conn.execute(stmt)]


@retry_on_disconnect
def transition_job(
    bind: Bind, job_id: str | uuid.UUID, new_status: str | JobStatus, *, error_message: str | None = None
) -> Job:
    """Move a job to `new_status` (see the module docstring for the rules).

    Compare-and-set on the current status, so two writers racing cannot both move the job
    from the same status. Sets `started_at` when the job leaves `queued`, `completed_at`
    when it reaches a terminal status, `error_message` when given (failed / cancelled).
    """
    jid = to_uuid(job_id)
    target = JobStatus(new_status)
    with transaction(bind) as conn:
        for _ in range(5):
            row = job_row(conn, jid, lock=True)
            current = row.status
            if not is_allowed_transition(current, target):
                raise IllegalTransition(jid, current, target.value)
            if current == target.value:
                if error_message is not None and error_message != row.error_message:
                    conn.execute(
                        update(jobs_t)
                        .where(jobs_t.c.id == jid)
                        .values(error_message=error_message, updated_at=utcnow())
                    )
                    row = job_row(conn, jid)
                return row_view(Job, row)
            now = utcnow()
            values: dict[str, Any] = {"status": target.value, "updated_at": now}
            if current == JobStatus.queued.value and row.started_at is None:
                values["started_at"] = now
            if target in TERMINAL_STATUSES:
                values["completed_at"] = now
                if target == JobStatus.completed:
                    values["progress_percent"] = 100.0
            if error_message is not None:
                values["error_message"] = error_message
            result = conn.execute(
                update(jobs_t).where(and_(jobs_t.c.id == jid, jobs_t.c.status == current)).values(**values)
            )
            if result.rowcount == 1:
                return row_view(Job, job_row(conn, jid))
        raise BrightrunError(f"job {jid}: its status kept changing under this update; try again")


@retry_on_disconnect
def reopen_failed_job(bind: Bind, job_id: str | uuid.UUID) -> Job:
    """`brightrun resume` of a job that failed for an orchestration reason (an API or database
    outage, its flow killed): back to `queued`, error and end time cleared, everything else
    (progress, cost, retries, events) kept. Compare-and-set on `failed`; the caller decides
    whether the failure is resumable."""
    jid = to_uuid(job_id)
    with transaction(bind) as conn:
        result = conn.execute(
            update(jobs_t)
            .where(and_(jobs_t.c.id == jid, jobs_t.c.status == JobStatus.failed.value))
            .values(status=JobStatus.queued.value, error_message=None, completed_at=None, updated_at=utcnow())
        )
        row = job_row(conn, jid)
        if result.rowcount != 1:
            raise IllegalTransition(jid, row.status, JobStatus.queued.value)
        return row_view(Job, row)


_UPDATABLE = frozenset(
    {
        "job_name",
        "training_file_id",
        "preset",
        "hyperparameters",
        "compute_backend",
        "storage_prefix",
        "flow_run_id",
        "total_steps",
        "estimated_cost_usd",
        "gpu_type",
        "runpod_pod_id",
        "runpod_endpoint_url",
        "lora_artifact_path",
        "training_log_path",
        "estimated_completion_at",
        "metadata",
    }
)


@retry_on_disconnect
def update_job(bind: Bind, job_id: str | uuid.UUID, **changes: Any) -> Job:
    """Set descriptive fields (runpod_pod_id, gpu_type, flow_run_id, training_log_path...).

    Status, progress, cost and retries have their own functions so their rules hold.
    """
    unknown = set(changes) - _UPDATABLE
    if unknown:
        raise ValueError(f"update_job cannot set {sorted(unknown)}; allowed: {sorted(_UPDATABLE)}")
    if "training_file_id" in changes and changes["training_file_id"] is not None:
        changes["training_file_id"] = to_uuid(changes["training_file_id"], "training file")
    jid = to_uuid(job_id)
    with transaction(bind) as conn:
        job_row(conn, jid)
        conn.execute(update(jobs_t).where(jobs_t.c.id == jid).values(**changes, updated_at=utcnow()))
        return row_view(Job, job_row(conn, jid))


@retry_on_disconnect
def update_job_progress(
    bind: Bind,
    job_id: str | uuid.UUID,
    *,
    current_step: int | None = None,
    total_steps: int | None = None,
    current_epoch: float | None = None,
    current_loss: float | None = None,
    progress_percent: float | None = None,
    metrics: Mapping[str, Any] | None = None,
    estimated_completion_at: datetime | None = None,
) -> Job:
    """Record training progress; `progress_percent` defaults to step / total_steps (0-100).

    `metrics` (the latest loss, learning_rate, grad_norm, epoch...) is merged into the job's
    `metrics` JSON (the dashboard reads it); `estimated_completion_at` is the current ETA.
    """
    jid = to_uuid(job_id)
    with transaction(bind) as conn:
        row = job_row(conn, jid)
        values: dict[str, Any] = {"updated_at": utcnow()}
        for name, value in (
            ("current_step", current_step),
            ("total_steps", total_steps),
            ("current_epoch", current_epoch),
            ("current_loss", current_loss),
            ("estimated_completion_at", estimated_completion_at),
        ):
            if value is not None:
                values[name] = value
        if metrics:
            latest = {k: v for k, v in metrics.items() if v is not None}
            values["metrics"] = {**(row.metrics or {}), **latest}
        step = current_step if current_step is not None else row.current_step
        total = total_steps if total_steps is not None else row.total_steps
        if progress_percent is None and total:
            progress_percent = 100.0 * step / total
        if progress_percent is not None:
            values["progress_percent"] = max(0.0, min(100.0, float(progress_percent)))
        conn.execute(update(jobs_t).where(jobs_t.c.id == jid).values(**values))
        return row_view(Job, job_row(conn, jid))


@retry_on_disconnect
def set_job_cost(
    bind: Bind,
    job_id: str | uuid.UUID,
    *,
    actual_cost_usd: float | None = None,
    gpu_hours: float | None = None,
    estimated_cost_usd: float | None = None,
) -> Job:
    """Overwrite the job's cost figures (totals so far, not increments)."""
    jid = to_uuid(job_id)
    values: dict[str, Any] = {"updated_at": utcnow()}
    for name, value in (
        ("actual_cost_usd", actual_cost_usd),
        ("gpu_hours", gpu_hours),
        ("estimated_cost_usd", estimated_cost_usd),
    ):
        if value is not None:
            values[name] = float(value)
    with transaction(bind) as conn:
        job_row(conn, jid)
        conn.execute(update(jobs_t).where(jobs_t.c.id == jid).values(**values))
        return row_view(Job, job_row(conn, jid))


@retry_on_disconnect
def increment_retry_count(bind: Bind, job_id: str | uuid.UUID) -> int:
    """Atomically add one resume to the job; returns the new count."""
    jid = to_uuid(job_id)
    with transaction(bind) as conn:
        result = conn.execute(
            update(jobs_t)
            .where(jobs_t.c.id == jid)
            .values(retry_count=jobs_t.c.retry_count + 1, updated_at=utcnow())
            .returning(jobs_t.c.retry_count)
        ).first()
        if result is None:
            raise JobNotFound(jid)
        return int(result[0])


# ---------------------------------------------------------------- events


@retry_on_disconnect
def add_events(bind: Bind, events: Sequence[NewEvent]) -> int:
    """Append events in one batch; those whose (job, source_key) is already there are skipped.

    Returns the number of rows inserted.
    """
    if not events:
        return 0
    now = utcnow()
    rows = [
        {
            "id": uuid.uuid4(),
            "training_job_id": to_uuid(e.job_id),
            "type": e.type,
            "attempt": e.attempt,
            "payload": dict(e.payload),
            "source_key": e.source_key,
            # Batch order is event order: events without a time get distinct, increasing ones.
            "created_at": e.created_at or now + timedelta(microseconds=i),
        }
        for i, e in enumerate(events)
    ]
    with transaction(bind) as conn:
        stmt = dialect_insert(conn, events_t).on_conflict_do_nothing(
            index_elements=["training_job_id", "source_key"]
        )
        result = conn.execute(stmt.returning(events_t.c.id), rows)
        return len(result.all())


def add_event(bind: Bind, job_id: str | uuid.UUID, type: str, *, attempt: int = 0, **payload: Any) -> None:
    add_events(bind, [NewEvent(job_id=job_id, type=type, attempt=attempt, payload=payload)])


@retry_on_disconnect
def list_events(
    bind: Bind, job_id: str | uuid.UUID, *, type: str | None = None, limit: int | None = None
) -> list[JobEvent]:
    """Oldest first."""
    # The column says training_job_id (the seed's name); JobEvent keeps its `job_id` field.
    columns = [c for c in events_t.c if c.name != "training_job_id"]
    stmt = select(*columns, events_t.c.training_job_id.label("job_id")).where(
        events_t.c.training_job_id == to_uuid(job_id)
    )
    if type is not None:
        stmt = stmt.where(events_t.c.type == type)
    stmt = stmt.order_by(events_t.c.created_at, events_t.c.id)
    if limit is not None:
        stmt = stmt.limit(limit)
    with transaction(bind) as conn:
        return [row_view(JobEvent, row) for row in conn.execute(stmt)]
