"""The registry's repository: plain functions over an Engine or a Connection.

Every function takes `bind` first:
- an `Engine`: the function runs in its own transaction, retried with backoff if the
  connection is lost mid-way (a rolled-back transaction is safe to run again);
- a `Connection`: the function joins the caller's transaction (no commit, no retry), so
  several calls commit together, e.g. `with engine.begin() as conn: ...`.

Nothing ORM leaks out: functions return frozen dataclass views with string ids.

Status transitions (DESIGN.md §3): queued → preprocessing → model_loaded → training →
completed, or failed / cancelled from any non-terminal status. Moving a job to the status
it already has is an allowed no-op (flows retry; a resumed trainer reports `training`
again); anything else raises `IllegalTransition`.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import (
    Column,
    Connection,
    Engine,
    MetaData,
    Table,
    and_,
    func,
    insert,
    inspect,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from brightrun.errors import BrightrunError, InputError
from brightrun.registry import served_names
from brightrun.registry.db import retry_on_disconnect, training_file_values
from brightrun.registry.models import (
    TERMINAL_STATUSES,
    ArtifactType,
    DeploymentStatus,
    FeedbackExportWatermark,
    JobStatus,
    ModelArtifact,
    Split,
    TrainingFile,
    TrainingFileConversation,
    TrainingFileSource,
    TrainingJob,
    TrainingJobEvent,
    TrainingMetric,
    utcnow,
)

Bind = Engine | Connection
V = TypeVar("V")

jobs_t: Table = TrainingJob.__table__  # type: ignore[assignment]
files_t: Table = TrainingFile.__table__  # type: ignore[assignment]
file_convs_t: Table = TrainingFileConversation.__table__  # type: ignore[assignment]
artifacts_t: Table = ModelArtifact.__table__  # type: ignore[assignment]
metrics_t: Table = TrainingMetric.__table__  # type: ignore[assignment]
events_t: Table = TrainingJobEvent.__table__  # type: ignore[assignment]
watermarks_t: Table = FeedbackExportWatermark.__table__  # type: ignore[assignment]


# ---------------------------------------------------------------- errors


class JobNotFound(BrightrunError):
    def __init__(self, job_id: object) -> None:
        super().__init__(f"job {job_id} is not in the registry; `brightrun jobs list` shows the jobs")


class IllegalTransition(BrightrunError):
    def __init__(self, job_id: object, current: str, new: str) -> None:
        self.job_id, self.current, self.new = str(job_id), current, new
        allowed = sorted(ALLOWED_TRANSITIONS.get(JobStatus(current), ()))
        hint = f"allowed from {current}: {', '.join(allowed)}" if allowed else f"{current} is terminal"
        super().__init__(f"job {job_id}: cannot move from {current} to {new} ({hint})")


# ---------------------------------------------------------------- transitions

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


# ---------------------------------------------------------------- views


_JSON_FIELDS = frozenset({"metadata", "metrics", "hyperparameters", "lora_config", "payload"})


def _view(cls: type[V], row: Any) -> V:
    data = row._mapping
    values = {}
    for f in fields(cls):  # type: ignore[arg-type]
        value = data[f.name]
        if value is None and f.name in _JSON_FIELDS:
            value = {}  # a row written by the app's own SQL may leave a JSON column NULL
        values[f.name] = str(value) if isinstance(value, uuid.UUID) else value
    return cls(**values)


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


@dataclass(frozen=True)
class MetricRecord:
    step: int
    attempt: int = 0
    epoch: float | None = None
    loss: float | None = None
    eval_loss: float | None = None
    learning_rate: float | None = None
    grad_norm: float | None = None
    tokens_per_s: float | None = None
    recorded_at: datetime | None = None

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, attempt: int | None = None) -> MetricRecord:
        """From a trainer metrics record (extra keys ignored; `time`/`timestamp` accepted)."""
        recorded = data.get("recorded_at") or data.get("timestamp") or data.get("time")
        if isinstance(recorded, str):
            recorded = datetime.fromisoformat(recorded.replace("Z", "+00:00"))
        elif isinstance(recorded, int | float):
            from datetime import UTC

            recorded = datetime.fromtimestamp(recorded, UTC)

        def num(name: str) -> float | None:
            value = data.get(name)
            return None if value is None else float(value)

        return cls(
            step=int(data["step"]),
            attempt=int(attempt if attempt is not None else data.get("attempt", 0)),
            epoch=num("epoch"),
            loss=num("loss"),
            eval_loss=num("eval_loss"),
            learning_rate=num("learning_rate"),
            grad_norm=num("grad_norm"),
            tokens_per_s=num("tokens_per_s"),
            recorded_at=recorded,
        )


@dataclass(frozen=True)
class MetricPoint:
    training_job_id: str
    attempt: int
    step: int
    epoch: float | None
    loss: float | None
    eval_loss: float | None
    learning_rate: float | None
    grad_norm: float | None
    tokens_per_s: float | None
    recorded_at: datetime


@dataclass(frozen=True)
class TrainingFileView:
    """A `training_files` row. The app's own rows (Supabase) have only `id`, `name`,
    `json_file_path` (relative to its `training-files` bucket) and `total_training_pairs`;
    the pipeline's columns read None there."""

    id: str
    name: str | None
    source: str | None
    json_file_path: str | None
    sha256: str | None
    format: str | None
    size_bytes: int | None
    conversations: int | None
    total_training_pairs: int | None
    examples: int | None
    window_start: datetime | None
    window_end: datetime | None
    metadata: dict[str, Any]
    created_at: datetime | None


@dataclass(frozen=True)
class ConversationRef:
    """One conversation of a training file: its split and the source row it came from."""

    conversation_id: str
    split: str = Split.train.value
    source_ref: str | None = None


@dataclass(frozen=True)
class Artifact:
    id: str
    training_job_id: str
    artifact_type: str
    storage_path: str
    file_size_bytes: int | None
    sha256: str | None
    base_model: str | None
    lora_config: dict[str, Any]
    validation_loss: float | None
    validation_perplexity: float | None
    human_eval_score: float | None
    deployment_status: str
    deployed_at: datetime | None
    created_by: str | None
    metadata: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    served_name: str | None  # NULL only on a row the app inserted itself


@dataclass(frozen=True)
class Watermark:
    name: str
    position: datetime
    last_id: str | None
    training_file_id: str | None
    updated_at: datetime


# ---------------------------------------------------------------- helpers


@contextlib.contextmanager
def _tx(bind: Bind) -> Iterator[Connection]:
    if isinstance(bind, Engine):
        with bind.begin() as conn:
            yield conn
    elif bind.in_transaction():
        yield bind
    else:
        with bind.begin():
            yield bind


def _uuid(value: str | uuid.UUID, what: str = "job") -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise InputError(f"{value!r} is not a valid {what} id (expected a UUID)") from None


def _insert(conn: Connection, table: Table) -> Any:
    """A dialect insert that supports ON CONFLICT (Postgres and SQLite both do)."""
    name = conn.dialect.name
    if name == "postgresql":
        return postgresql.insert(table)
    if name == "sqlite":
        return sqlite.insert(table)
    raise BrightrunError(f"the registry supports Postgres and SQLite, not {name}")


def _job_row(conn: Connection, job_id: uuid.UUID, *, lock: bool = False) -> Any:
    stmt = select(jobs_t).where(jobs_t.c.id == job_id)
    if lock and conn.dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    row = conn.execute(stmt).first()
    if row is None:
        raise JobNotFound(job_id)
    return row


# ---------------------------------------------------------------- jobs


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
    jid = _uuid(job_id) if job_id is not None else uuid.uuid4()
    now = utcnow()
    values = {
        "id": jid,
        "job_name": job_name,
        "status": JobStatus.queued.value,
        "base_model": base_model,
        "training_file_id": _uuid(training_file_id, "training file") if training_file_id else None,
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
        "created_by": _uuid(created_by, "user") if created_by else None,
        "metrics": {},
        "metadata": dict(metadata or {}),
        "created_at": now,
        "updated_at": now,
    }
    with _tx(bind) as conn:
        conn.execute(_insert(conn, jobs_t).values(**values).on_conflict_do_nothing(index_elements=["id"]))
        return _view(Job, _job_row(conn, jid))


@retry_on_disconnect
def get_job(bind: Bind, job_id: str | uuid.UUID) -> Job:
    with _tx(bind) as conn:
        return _view(Job, _job_row(conn, _uuid(job_id)))


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
    with _tx(bind) as conn:
        return [_view(Job, row) for row in conn.execute(stmt)]


@retry_on_disconnect
def transition_job(
    bind: Bind, job_id: str | uuid.UUID, new_status: str | JobStatus, *, error_message: str | None = None
) -> Job:
    """Move a job to `new_status` (see the module docstring for the rules).

    Compare-and-set on the current status, so two writers racing cannot both move the job
    from the same status. Sets `started_at` when the job leaves `queued`, `completed_at`
    when it reaches a terminal status, `error_message` when given (failed / cancelled).
    """
    jid = _uuid(job_id)
    target = JobStatus(new_status)
    with _tx(bind) as conn:
        for _ in range(5):
            row = _job_row(conn, jid, lock=True)
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
                    row = _job_row(conn, jid)
                return _view(Job, row)
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
                return _view(Job, _job_row(conn, jid))
        raise BrightrunError(f"job {jid}: its status kept changing under this update; try again")


@retry_on_disconnect
def reopen_failed_job(bind: Bind, job_id: str | uuid.UUID) -> Job:
    """`brightrun resume` of a job that failed for an orchestration reason (an API or database
    outage, its flow killed): back to `queued`, error and end time cleared, everything else
    (progress, cost, retries, events) kept. Compare-and-set on `failed`; the caller decides
    whether the failure is resumable."""
    jid = _uuid(job_id)
    with _tx(bind) as conn:
        result = conn.execute(
            update(jobs_t)
            .where(and_(jobs_t.c.id == jid, jobs_t.c.status == JobStatus.failed.value))
            .values(status=JobStatus.queued.value, error_message=None, completed_at=None, updated_at=utcnow())
        )
        row = _job_row(conn, jid)
        if result.rowcount != 1:
            raise IllegalTransition(jid, row.status, JobStatus.queued.value)
        return _view(Job, row)


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
        changes["training_file_id"] = _uuid(changes["training_file_id"], "training file")
    jid = _uuid(job_id)
    with _tx(bind) as conn:
        _job_row(conn, jid)
        conn.execute(update(jobs_t).where(jobs_t.c.id == jid).values(**changes, updated_at=utcnow()))
        return _view(Job, _job_row(conn, jid))


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
    jid = _uuid(job_id)
    with _tx(bind) as conn:
        row = _job_row(conn, jid)
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
        return _view(Job, _job_row(conn, jid))


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
    jid = _uuid(job_id)
    values: dict[str, Any] = {"updated_at": utcnow()}
    for name, value in (
        ("actual_cost_usd", actual_cost_usd),
        ("gpu_hours", gpu_hours),
        ("estimated_cost_usd", estimated_cost_usd),
    ):
        if value is not None:
            values[name] = float(value)
    with _tx(bind) as conn:
        _job_row(conn, jid)
        conn.execute(update(jobs_t).where(jobs_t.c.id == jid).values(**values))
        return _view(Job, _job_row(conn, jid))


@retry_on_disconnect
def increment_retry_count(bind: Bind, job_id: str | uuid.UUID) -> int:
    """Atomically add one resume to the job; returns the new count."""
    jid = _uuid(job_id)
    with _tx(bind) as conn:
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
            "training_job_id": _uuid(e.job_id),
            "type": e.type,
            "attempt": e.attempt,
            "payload": dict(e.payload),
            "source_key": e.source_key,
            # Batch order is event order: events without a time get distinct, increasing ones.
            "created_at": e.created_at or now + timedelta(microseconds=i),
        }
        for i, e in enumerate(events)
    ]
    with _tx(bind) as conn:
        stmt = _insert(conn, events_t).on_conflict_do_nothing(
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
        events_t.c.training_job_id == _uuid(job_id)
    )
    if type is not None:
        stmt = stmt.where(events_t.c.type == type)
    stmt = stmt.order_by(events_t.c.created_at, events_t.c.id)
    if limit is not None:
        stmt = stmt.limit(limit)
    with _tx(bind) as conn:
        return [_view(JobEvent, row) for row in conn.execute(stmt)]


# ---------------------------------------------------------------- metrics

_METRIC_VALUES = ("epoch", "loss", "eval_loss", "learning_rate", "grad_norm", "tokens_per_s")
_METRIC_COLUMNS = ("id", "training_job_id", "attempt", "step", *_METRIC_VALUES, "recorded_at")


def merge_metric_records(records: Iterable[MetricRecord | Mapping[str, Any]]) -> list[MetricRecord]:
    """One record per (attempt, step): a later record's non-null values win.

    A train record and an eval record of the same step become one row.
    """
    merged: dict[tuple[int, int], MetricRecord] = {}
    for rec in records:
        r = rec if isinstance(rec, MetricRecord) else MetricRecord.from_mapping(rec)
        key = (r.attempt, r.step)
        old = merged.get(key)
        if old is None:
            merged[key] = r
            continue
        updates = {name: getattr(r, name) for name in (*_METRIC_VALUES, "recorded_at")}
        merged[key] = MetricRecord(
            step=r.step,
            attempt=r.attempt,
            **{k: (v if v is not None else getattr(old, k)) for k, v in updates.items()},
        )
    return list(merged.values())


@retry_on_disconnect
def add_metrics(
    bind: Bind, job_id: str | uuid.UUID, records: Iterable[MetricRecord | Mapping[str, Any]]
) -> int:
    """Write a batch of metric rows; re-sending a (attempt, step) merges into its row.

    Postgres: COPY into a temporary table, then one INSERT ... ON CONFLICT (100k rows in
    well under a second of server time). SQLite: one executemany. Returns the rows written.
    """
    jid = _uuid(job_id)
    merged = merge_metric_records(records)
    if not merged:
        return 0
    now = utcnow()
    with _tx(bind) as conn:
        if conn.dialect.name == "postgresql":
            _copy_metrics(conn, jid, merged, now)
        else:
            rows = [
                {
                    "id": uuid.uuid4(),
                    "training_job_id": jid,
                    "attempt": r.attempt,
                    "step": r.step,
                    **{name: getattr(r, name) for name in _METRIC_VALUES},
                    "recorded_at": r.recorded_at or now,
                }
                for r in merged
            ]
            stmt = _insert(conn, metrics_t)
            stmt = stmt.on_conflict_do_update(
                index_elements=["training_job_id", "attempt", "step"],
                set_={
                    name: func.coalesce(getattr(stmt.excluded, name), metrics_t.c[name])
                    for name in (*_METRIC_VALUES, "recorded_at")
                },
            )
            conn.execute(stmt, rows)
    return len(merged)


def _copy_metrics(conn: Connection, job_id: uuid.UUID, records: list[MetricRecord], now: datetime) -> None:
    cols = ", ".join(_METRIC_COLUMNS)
    updates = ", ".join(
        f"{name} = COALESCE(EXCLUDED.{name}, training_metrics_history.{name})"
        for name in (*_METRIC_VALUES, "recorded_at")
    )
    raw = conn.connection.driver_connection
    assert raw is not None
    with raw.cursor() as cur:
        cur.execute(
            "CREATE TEMP TABLE IF NOT EXISTS _brightrun_metrics_in "
            "(LIKE training_metrics_history INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        )
        with cur.copy(f"COPY _brightrun_metrics_in ({cols}) FROM STDIN") as copy:
            for r in records:
                copy.write_row(
                    (
                        uuid.uuid4(),
                        job_id,
                        r.attempt,
                        r.step,
                        r.epoch,
                        r.loss,
                        r.eval_loss,
                        r.learning_rate,
                        r.grad_norm,
                        r.tokens_per_s,
                        r.recorded_at or now,
                    )
                )
        cur.execute(
            f"INSERT INTO training_metrics_history ({cols}) SELECT {cols} FROM _brightrun_metrics_in "
            f"ON CONFLICT (training_job_id, attempt, step) DO UPDATE SET {updates}"
        )
        cur.execute("DELETE FROM _brightrun_metrics_in")


@retry_on_disconnect
def list_metrics(
    bind: Bind, job_id: str | uuid.UUID, *, attempt: int | None = None, limit: int | None = None
) -> list[MetricPoint]:
    """Ordered by attempt then step."""
    stmt = select(metrics_t).where(metrics_t.c.training_job_id == _uuid(job_id))
    if attempt is not None:
        stmt = stmt.where(metrics_t.c.attempt == attempt)
    stmt = stmt.order_by(metrics_t.c.attempt, metrics_t.c.step)
    if limit is not None:
        stmt = stmt.limit(limit)
    with _tx(bind) as conn:
        return [_view(MetricPoint, row) for row in conn.execute(stmt)]


# ---------------------------------------------------------------- training files


@retry_on_disconnect
def register_training_file(
    bind: Bind,
    *,
    name: str,
    json_file_path: str,
    sha256: str,
    source: str = TrainingFileSource.upload.value,
    format: str = "brightrun-lora-v4",
    size_bytes: int | None = None,
    conversations: int | None = None,
    total_training_pairs: int | None = None,
    examples: int | None = None,
    window_start: datetime | None = None,
    window_end: datetime | None = None,
    metadata: Mapping[str, Any] | None = None,
    conversation_refs: Sequence[ConversationRef] = (),
) -> tuple[TrainingFileView, bool]:
    """Register a training file, idempotent on its sha256: returns (file, created).

    `json_file_path` is where the file is (a full URI or path: the pipeline's rows are not
    relative to the app's bucket).

    `conversation_refs` records which conversations (and source rows) the file holds and
    in which split, for later dedup (`exported_conversations`). Registering the same
    content again returns the first row and changes nothing.
    """
    TrainingFileSource(source)
    fid = uuid.uuid4()
    now = utcnow()
    values = {
        "id": fid,
        "name": name,
        "source": source,
        "json_file_path": json_file_path,
        "sha256": sha256,
        "format": format,
        "size_bytes": size_bytes,
        "conversations": conversations,
        "total_training_pairs": total_training_pairs,
        "examples": examples,
        "window_start": window_start,
        "window_end": window_end,
        "metadata": dict(metadata or {}),
        "created_at": now,
        "updated_at": now,
    }
    with _tx(bind) as conn:
        row_values = _fill_app_columns(conn, {k: v for k, v in values.items() if v is not None})
        target = _with_app_columns([n for n in row_values if n not in files_t.c])
        result = conn.execute(
            _insert(conn, target)
            # Unknown values are left out, not NULL: the app's own table may have NOT NULL
            # columns with defaults (e.g. total_training_pairs DEFAULT 0).
            .values(**row_values)
            .on_conflict_do_nothing(index_elements=["sha256"])
            .returning(target.c.id)
        ).first()
        created = result is not None
        if created and conversation_refs:
            conn.execute(
                insert(file_convs_t),
                [
                    {
                        "training_file_id": fid,
                        "conversation_id": ref.conversation_id,
                        "split": Split(ref.split).value,
                        "source_ref": ref.source_ref,
                    }
                    for ref in {r.conversation_id: r for r in conversation_refs}.values()
                ],
            )
        row = conn.execute(select(files_t).where(files_t.c.sha256 == sha256)).one()
        return _view(TrainingFileView, row), created


class TrainingFileColumnsUnfilled(InputError):
    """The app's training_files requires columns nobody gave a value for: nothing was written."""


def required_columns(conn: Connection, table: str) -> list[str]:
    """The table's NOT NULL columns without a default (nor identity or generated value)."""
    return [
        c["name"]
        for c in inspect(conn).get_columns(table)
        if not c["nullable"]
        and c.get("default") is None
        and not c.get("identity")
        and not c.get("computed")
        and c.get("autoincrement") is not True
    ]


def _with_app_columns(extra: Sequence[str]) -> Table:
    """training_files with the app's own columns too (untyped: the server casts the values)."""
    if not extra:
        return files_t
    return Table(
        "training_files", MetaData(), *(c._copy() for c in files_t.c), *(Column(name) for name in extra)
    )


def _fill_app_columns(conn: Connection, values: dict[str, Any]) -> dict[str, Any]:
    """`values` plus what the app's own training_files requires: the columns the pipeline
    knows (the app's bucket, JSONL path and counts, by the seed's names), then the
    configured ones (`created_by` from BRIGHTRUN_SERVICE_USER_ID, then
    BRIGHTRUN_TRAINING_FILE_DEFAULTS). Raises TrainingFileColumnsUnfilled, naming every
    column still without a value, before anything is written."""
    table = inspect(conn).get_columns("training_files")
    present = {c["name"] for c in table}
    path = str(values.get("json_file_path", ""))
    known: dict[str, Any] = {
        "jsonl_file_path": path,
        "total_conversations": values.get("conversations", 0),
        "total_training_pairs": values.get("total_training_pairs", 0),
        "description": f"{values.get('source', 'upload')} {values.get('name', '')}".strip(),
    }
    if path.startswith("s3://"):
        known["storage_bucket"] = path.removeprefix("s3://").split("/", 1)[0]
    configured = training_file_values(conn.engine)
    filled = dict(values)
    for name in required_columns(conn, "training_files"):
        if name in filled:
            continue
        if name in configured:
            filled[name] = configured[name]
        elif name in known:
            filled[name] = known[name]
    # Configured values also fill nullable columns (created_by is nullable in the seed).
    for name, value in configured.items():
        if name in present and name not in filled:
            filled[name] = value
    missing = [n for n in required_columns(conn, "training_files") if n not in filled]
    if missing:
        raise TrainingFileColumnsUnfilled(
            f"the app's training_files requires {', '.join(missing)}, which the pipeline cannot fill; "
            "set them in BRIGHTRUN_TRAINING_FILE_DEFAULTS, a JSON object, e.g. "
            + json.dumps(dict.fromkeys(missing, "..."))
            + " (nothing was written)"
        )
    # created_by comes from the service user: our own (SQLite) table has no such column.
    unknown = [n for n in configured if n not in present and n != "created_by"]
    if unknown:
        raise TrainingFileColumnsUnfilled(
            f"BRIGHTRUN_TRAINING_FILE_DEFAULTS names {', '.join(unknown)}, which training_files does not "
            "have; remove them (nothing was written)"
        )
    return filled


class TrainingFileNotFound(InputError):
    def __init__(self, file_id: object) -> None:
        super().__init__(f"training file {file_id} is not in the registry's training_files table")


@retry_on_disconnect
def get_training_file(bind: Bind, file_id: str | uuid.UUID) -> TrainingFileView:
    with _tx(bind) as conn:
        row = conn.execute(select(files_t).where(files_t.c.id == _uuid(file_id, "training file"))).first()
        if row is None:
            raise TrainingFileNotFound(file_id)
        return _view(TrainingFileView, row)


# The app keeps its training files in this Supabase Storage bucket; its rows' json_file_path
# is relative to it (the roadmap's start-job fetches `training-files/<json_file_path>`).
APP_TRAINING_FILES_BUCKET = "training-files"


def training_file_location(json_file_path: str, bucket_url: str = f"s3://{APP_TRAINING_FILES_BUCKET}") -> str:
    """Where a `json_file_path` points: a URI or absolute path as it is (the pipeline's own
    rows); a relative path (the app's rows) under `bucket_url`, the app's `training-files`
    bucket (with the configured S3 endpoint, e.g. Supabase Storage's S3 gateway)."""
    path = json_file_path.strip()
    if not path:
        raise InputError("the training file's json_file_path is empty")
    if "://" in path or path.startswith("/"):
        return path
    bucket = bucket_url.rstrip("/")
    prefix = f"{APP_TRAINING_FILES_BUCKET}/"
    if path.startswith(prefix) and bucket.endswith("/" + APP_TRAINING_FILES_BUCKET):
        path = path[len(prefix) :]  # some app rows repeat the bucket name
    return f"{bucket}/{path.lstrip('/')}"


def check_app_path(training_file: TrainingFileView, *, allow_local_paths: bool = False) -> None:
    """The app's own rows (no `source`) name a path in its training-files bucket. One that is
    an absolute path or a URL would make the pipeline read a file of the worker's machine or
    fetch from anywhere on the app user's say: refused unless BRIGHTRUN_FETCH_ALLOW_LOCAL_PATHS."""
    path = (training_file.json_file_path or "").strip()
    if training_file.source is None and not allow_local_paths and ("://" in path or path.startswith("/")):
        shown = path.split("?", 1)[0]
        raise InputError(
            f"training file {training_file.id}: json_file_path {shown!r} is an absolute path or a URL, "
            "not a path in the app's training-files bucket; set BRIGHTRUN_FETCH_ALLOW_LOCAL_PATHS=true "
            "to allow it"
        )


@retry_on_disconnect
def resolve_training_file(
    bind: Bind,
    file_id: str | uuid.UUID,
    *,
    bucket_url: str = f"s3://{APP_TRAINING_FILES_BUCKET}",
    allow_local_paths: bool = False,
) -> tuple[TrainingFileView, str]:
    """A job started from a `training_file_id` (the app's way): the row and the dataset's URI.

    Raises `TrainingFileNotFound` (exit 2) for an unknown id and InputError for a row
    without a `json_file_path`, or an app row whose path is absolute or a URL (`check_app_path`).
    """
    training_file = get_training_file(bind, file_id)
    if not training_file.json_file_path:
        raise InputError(f"training file {file_id} has no json_file_path: nothing to train on")
    check_app_path(training_file, allow_local_paths=allow_local_paths)
    return training_file, training_file_location(training_file.json_file_path, bucket_url)


@retry_on_disconnect
def list_training_files(
    bind: Bind, *, source: str | None = None, limit: int | None = 100
) -> list[TrainingFileView]:
    """Newest first."""
    stmt = select(files_t).order_by(files_t.c.created_at.desc(), files_t.c.id)
    if source is not None:
        stmt = stmt.where(files_t.c.source == TrainingFileSource(source).value)
    if limit is not None:
        stmt = stmt.limit(limit)
    with _tx(bind) as conn:
        return [_view(TrainingFileView, row) for row in conn.execute(stmt)]


@retry_on_disconnect
def exported_conversations(bind: Bind, *, split: str | None = None) -> dict[str, ConversationRef]:
    """Every conversation recorded in any training file (optionally one split), by id.

    Source refs are included: dedup on either `conversation_id` or `source_ref`.
    """
    stmt = select(file_convs_t.c.conversation_id, file_convs_t.c.split, file_convs_t.c.source_ref)
    if split is not None:
        stmt = stmt.where(file_convs_t.c.split == Split(split).value)
    with _tx(bind) as conn:
        out: dict[str, ConversationRef] = {}
        for cid, sp, ref in conn.execute(stmt):
            # A conversation ever used for validation stays validation-only.
            if cid not in out or sp == Split.validation.value:
                out[cid] = ConversationRef(conversation_id=cid, split=sp, source_ref=ref)
        return out


# ---------------------------------------------------------------- artifacts


@retry_on_disconnect
def register_artifact(
    bind: Bind,
    *,
    training_job_id: str | uuid.UUID,
    storage_path: str,
    artifact_type: str = ArtifactType.lora_adapter.value,
    file_size_bytes: int | None = None,
    sha256: str | None = None,
    base_model: str | None = None,
    lora_config: Mapping[str, Any] | None = None,
    validation_loss: float | None = None,
    validation_perplexity: float | None = None,
    human_eval_score: float | None = None,
    created_by: str | uuid.UUID | None = None,
    metadata: Mapping[str, Any] | None = None,
    set_job_artifact_path: bool = True,
) -> Artifact:
    """Insert or refresh the job's artifact of this type: one row per (job, type), always.

    Concurrent calls converge on one row (INSERT ... ON CONFLICT DO UPDATE). In the same
    transaction, a `lora_adapter` sets the job's `lora_artifact_path`. `deployment_status`
    starts `stored` and is never reset by a re-registration.
    """
    jid = _uuid(training_job_id)
    ArtifactType(artifact_type)
    now = utcnow()
    values = {
        "storage_path": storage_path,
        "file_size_bytes": file_size_bytes,
        "sha256": sha256,
        "base_model": base_model,
        "lora_config": dict(lora_config or {}),
        "validation_loss": validation_loss,
        "validation_perplexity": validation_perplexity,
        "human_eval_score": human_eval_score,
        "created_by": _uuid(created_by, "user") if created_by else None,
        "metadata": dict(metadata or {}),
    }
    with _tx(bind) as conn:
        job = _job_row(conn, jid)
        artifact_id = uuid.uuid4()
        stmt = _insert(conn, artifacts_t).values(
            id=artifact_id,
            training_job_id=jid,
            artifact_type=artifact_type,
            # Set once: a re-registration (the update below) keeps the name it was served as.
            served_name=served_names.served_name(job.job_name, artifact_id),
            deployment_status=DeploymentStatus.stored.value,
            created_at=now,
            updated_at=now,
            **values,
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=["training_job_id", "artifact_type"], set_={**values, "updated_at": now}
        )
        conn.execute(stmt)
        if set_job_artifact_path and artifact_type == ArtifactType.lora_adapter.value:
            conn.execute(
                update(jobs_t)
                .where(jobs_t.c.id == jid)
                .values(lora_artifact_path=storage_path, updated_at=now)
            )
        row = conn.execute(
            select(artifacts_t).where(
                and_(artifacts_t.c.training_job_id == jid, artifacts_t.c.artifact_type == artifact_type)
            )
        ).one()
        return _view(Artifact, row)


@retry_on_disconnect
def list_artifacts(
    bind: Bind,
    *,
    training_job_id: str | uuid.UUID | None = None,
    artifact_type: str | None = None,
    deployment_status: str | None = None,
    limit: int | None = 100,
) -> list[Artifact]:
    """Newest first."""
    stmt = select(artifacts_t).order_by(artifacts_t.c.created_at.desc(), artifacts_t.c.id)
    if training_job_id is not None:
        stmt = stmt.where(artifacts_t.c.training_job_id == _uuid(training_job_id))
    if artifact_type is not None:
        stmt = stmt.where(artifacts_t.c.artifact_type == ArtifactType(artifact_type).value)
    if deployment_status is not None:
        stmt = stmt.where(artifacts_t.c.deployment_status == DeploymentStatus(deployment_status).value)
    if limit is not None:
        stmt = stmt.limit(limit)
    with _tx(bind) as conn:
        return [_view(Artifact, row) for row in conn.execute(stmt)]


# ---------------------------------------------------------------- export watermark


@retry_on_disconnect
def get_watermark(bind: Bind, name: str = "feedback_export") -> Watermark | None:
    with _tx(bind) as conn:
        row = conn.execute(select(watermarks_t).where(watermarks_t.c.name == name)).first()
        return _view(Watermark, row) if row is not None else None


@retry_on_disconnect
def advance_watermark(
    bind: Bind,
    name: str = "feedback_export",
    *,
    position: datetime,
    last_id: str | None = None,
    training_file_id: str | uuid.UUID | None = None,
) -> Watermark:
    """Move the watermark forward to (position, last_id); never backward.

    A call with an earlier or equal position changes nothing and returns the current one.
    Pass a Connection to commit it with the training file registration.
    """
    fid = _uuid(training_file_id, "training file") if training_file_id else None
    with _tx(bind) as conn:
        stmt = select(watermarks_t).where(watermarks_t.c.name == name)
        if conn.dialect.name == "postgresql":
            stmt = stmt.with_for_update()
        row = conn.execute(stmt).first()
        now = utcnow()
        if row is None:
            conn.execute(
                _insert(conn, watermarks_t)
                .values(name=name, position=position, last_id=last_id, training_file_id=fid, updated_at=now)
                .on_conflict_do_nothing(index_elements=["name"])
            )
        else:
            current = _view(Watermark, row)
            if (position, last_id or "") > (current.position, current.last_id or ""):
                conn.execute(
                    update(watermarks_t)
                    .where(watermarks_t.c.name == name)
                    .values(position=position, last_id=last_id, training_file_id=fid, updated_at=now)
                )
        return _view(Watermark, conn.execute(select(watermarks_t).where(watermarks_t.c.name == name)).one())
