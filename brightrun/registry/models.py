"""Registry tables (DESIGN.md §6), as SQLAlchemy 2 typed models.

The table and column names are the seed's: the existing Next.js dashboard reads them.
These models describe the schema for queries; the schema itself is only ever made by the
Alembic migrations in `infra/migrations` (`brightrun db upgrade`). JSON columns are JSONB
on Postgres; datetimes are timezone-aware UTC on every backend.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

JsonType = JSON().with_variant(JSONB(), "postgresql")


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamptz that always comes back timezone-aware UTC (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


class JobStatus(StrEnum):
    queued = "queued"
    preprocessing = "preprocessing"
    model_loaded = "model_loaded"
    training = "training"
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"


TERMINAL_STATUSES = frozenset({JobStatus.completed, JobStatus.failed, JobStatus.cancelled})


class ArtifactType(StrEnum):
    lora_adapter = "lora_adapter"
    merged_model = "merged_model"
    checkpoint = "checkpoint"
    gguf = "gguf"


class DeploymentStatus(StrEnum):
    """The seed's lifecycle of an adapter: stored → testing → production → archived."""

    stored = "stored"
    testing = "testing"
    production = "production"
    archived = "archived"


class TrainingFileSource(StrEnum):
    upload = "upload"
    feedback_export = "feedback_export"
    generated = "generated"


class Split(StrEnum):
    train = "train"
    validation = "validation"


class FeedbackValue(StrEnum):
    positive = "positive"
    negative = "negative"
    neutral = "neutral"


def _in(column: str, values: type[StrEnum]) -> str:
    return f"{column} IN ({', '.join(repr(v.value) for v in values)})"


NAMING = {
    "ix": "ix_%(column_0_N_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JsonType, uuid.UUID: Uuid()}


def _created() -> Mapped[datetime]:
    return mapped_column(UTCDateTime(), nullable=False, default=utcnow, server_default=func.now())


def _updated() -> Mapped[datetime]:
    # onupdate covers writes through SQLAlchemy; on Postgres a trigger (see the migration)
    # also covers the dashboard's own writes.
    return mapped_column(
        UTCDateTime(), nullable=False, default=utcnow, onupdate=utcnow, server_default=func.now()
    )


class TrainingFile(Base):
    """The app's `training_files` (the seed's names: `json_file_path`, `total_training_pairs`).

    On the customer's Supabase database the app owns this table and its rows; the migrations
    only add the pipeline's columns below where they are missing, as nullable columns, so an
    app row reads here with them None. `json_file_path` is relative to the app's
    `training-files` bucket for the app's rows, a full URI or path for the pipeline's.
    """

    __tablename__ = "training_files"
    __table_args__ = (
        CheckConstraint(_in("source", TrainingFileSource), name="source"),
        UniqueConstraint("sha256"),
        Index(None, "created_at"),
        Index(None, "source", "window_end"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    name: Mapped[str | None] = mapped_column(String(255))
    json_file_path: Mapped[str | None] = mapped_column(Text)
    total_training_pairs: Mapped[int | None] = mapped_column(Integer)
    # The pipeline's own columns (nullable on the app's table: its rows have none of them).
    source: Mapped[str | None] = mapped_column(String(32), default=TrainingFileSource.upload.value)
    sha256: Mapped[str | None] = mapped_column(String(64))
    format: Mapped[str | None] = mapped_column(String(64), default="brightrun-lora-v4")
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    conversations: Mapped[int | None] = mapped_column(Integer)
    examples: Mapped[int | None] = mapped_column(Integer)
    window_start: Mapped[datetime | None]
    window_end: Mapped[datetime | None]
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JsonType, default=dict)
    created_at: Mapped[datetime | None] = mapped_column(
        UTCDateTime(), default=utcnow, server_default=func.now()
    )
    updated_at: Mapped[datetime | None] = mapped_column(
        UTCDateTime(), default=utcnow, onupdate=utcnow, server_default=func.now()
    )
    # Issue 19 (migration 0010): review before training. Rows registered without a status
    # (curated, uploaded) are approved; a feedback export sets pending unless its policy approves.
    review_status: Mapped[str | None] = mapped_column(String(16), default="approved")
    reviewed_by: Mapped[str | None] = mapped_column(String(255))
    reviewed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    review_reason: Mapped[str | None] = mapped_column(Text)
    review_excluded: Mapped[list[str] | None] = mapped_column(JsonType)


class TrainingFileConversation(Base):
    """Which conversations (and which source rows) each training file holds, and in which split.

    The feedback export dedups against every earlier training file and validation split with it.
    """

    __tablename__ = "training_file_conversations"
    __table_args__ = (
        CheckConstraint(_in("split", Split), name="split"),
        Index(None, "conversation_id"),
        Index(None, "source_ref"),
    )

    training_file_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("training_files.id", ondelete="CASCADE"), primary_key=True
    )
    conversation_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    split: Mapped[str] = mapped_column(String(16), default=Split.train.value)
    source_ref: Mapped[str | None] = mapped_column(String(255))


class TrainingJob(Base):
    __tablename__ = "training_jobs"
    __table_args__ = (
        CheckConstraint(_in("status", JobStatus), name="status"),
        CheckConstraint("retry_count >= 0", name="retry_count"),
        CheckConstraint("progress_percent >= 0 AND progress_percent <= 100", name="progress_percent"),
        Index(None, "status"),
        Index(None, "created_at"),
        Index(None, "training_file_id"),
        Index(None, "created_by"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    job_name: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(32), default=JobStatus.queued.value)
    base_model: Mapped[str] = mapped_column(String(255))
    training_file_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("training_files.id", ondelete="SET NULL")
    )
    preset: Mapped[str | None] = mapped_column(String(64))
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)
    compute_backend: Mapped[str] = mapped_column(String(32), default="local")
    storage_prefix: Mapped[str | None] = mapped_column(Text)
    flow_run_id: Mapped[str | None] = mapped_column(String(64))
    current_step: Mapped[int] = mapped_column(Integer, default=0)
    total_steps: Mapped[int | None] = mapped_column(Integer)
    current_epoch: Mapped[float | None] = mapped_column(Float)
    current_loss: Mapped[float | None] = mapped_column(Float)
    progress_percent: Mapped[float] = mapped_column(Float, default=0.0)
    retry_count: Mapped[int] = mapped_column(Integer, default=0)
    actual_cost_usd: Mapped[float | None] = mapped_column(Float)
    estimated_cost_usd: Mapped[float | None] = mapped_column(Float)
    gpu_hours: Mapped[float | None] = mapped_column(Float)
    gpu_type: Mapped[str | None] = mapped_column(String(128))
    runpod_pod_id: Mapped[str | None] = mapped_column(String(128))
    runpod_endpoint_url: Mapped[str | None] = mapped_column(Text)
    # The latest metrics (loss, learning_rate, grad_norm, epoch...), rewritten as the run goes.
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JsonType, default=dict)
    estimated_completion_at: Mapped[datetime | None]
    lora_artifact_path: Mapped[str | None] = mapped_column(Text)
    training_log_path: Mapped[str | None] = mapped_column(Text)
    error_message: Mapped[str | None] = mapped_column(Text)
    # auth.users(id) on Supabase (a foreign key there), a plain UUID elsewhere.
    created_by: Mapped[uuid.UUID | None]
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JsonType, default=dict)
    started_at: Mapped[datetime | None]
    completed_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()


class ModelArtifact(Base):
    __tablename__ = "model_artifacts"
    __table_args__ = (
        CheckConstraint(_in("artifact_type", ArtifactType), name="artifact_type"),
        CheckConstraint(_in("deployment_status", DeploymentStatus), name="deployment_status"),
        UniqueConstraint("training_job_id", "artifact_type"),
        Index(None, "created_at"),
        Index(None, "base_model"),
        Index(None, "deployment_status"),
        Index(None, "served_name", unique=True),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    training_job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("training_jobs.id", ondelete="CASCADE"))
    # What the adapter is served and logged under (brightrun/registry/served_names.py);
    # nullable so that rows the app inserts itself stay valid (migration 0004_served_names).
    served_name: Mapped[str | None] = mapped_column(String(40))
    artifact_type: Mapped[str] = mapped_column(String(32), default=ArtifactType.lora_adapter.value)
    storage_path: Mapped[str] = mapped_column(Text)
    file_size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    sha256: Mapped[str | None] = mapped_column(String(64))
    base_model: Mapped[str | None] = mapped_column(String(255))
    lora_config: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)
    validation_loss: Mapped[float | None] = mapped_column(Float)
    validation_perplexity: Mapped[float | None] = mapped_column(Float)
    human_eval_score: Mapped[float | None] = mapped_column(Float)
    deployment_status: Mapped[str] = mapped_column(String(32), default=DeploymentStatus.stored.value)
    deployed_at: Mapped[datetime | None]
    created_by: Mapped[uuid.UUID | None]
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JsonType, default=dict)
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()


class TrainingMetric(Base):
    """One row per (job, attempt, step): train and eval records of one step merge into it.

    (training_job_id, attempt, step) is the idempotency key: re-ingesting a record is a no-op.
    """

    __tablename__ = "training_metrics_history"
    __table_args__ = (
        UniqueConstraint("training_job_id", "attempt", "step"),
        Index(None, "training_job_id", "recorded_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    training_job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("training_jobs.id", ondelete="CASCADE"))
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    step: Mapped[int] = mapped_column(Integer)
    epoch: Mapped[float | None] = mapped_column(Float)
    loss: Mapped[float | None] = mapped_column(Float)
    eval_loss: Mapped[float | None] = mapped_column(Float)
    learning_rate: Mapped[float | None] = mapped_column(Float)
    grad_norm: Mapped[float | None] = mapped_column(Float)
    tokens_per_s: Mapped[float | None] = mapped_column(Float)
    recorded_at: Mapped[datetime] = _created()


class TrainingJobEvent(Base):
    __tablename__ = "training_job_events"
    __table_args__ = (
        # source_key makes re-ingesting the same trainer event file a no-op (NULLs never collide).
        UniqueConstraint("training_job_id", "source_key"),
        Index(None, "training_job_id", "created_at"),
        Index(None, "type"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    training_job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("training_jobs.id", ondelete="CASCADE"))
    type: Mapped[str] = mapped_column(String(64))
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    payload: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)
    source_key: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = _created()


class FeedbackExportWatermark(Base):
    """How far an export has read: the (created_at, id) of the last feedback row exported."""

    __tablename__ = "feedback_export_watermarks"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    position: Mapped[datetime]
    last_id: Mapped[str | None] = mapped_column(String(64))
    training_file_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("training_files.id", ondelete="SET NULL")
    )
    updated_at: Mapped[datetime] = _updated()


# --- Evaluation sets (issue 25, migration 0007_evaluation_sets): the fixed exam.


class EvaluationSet(Base):
    """One registered version of a named evaluation set; its content is stored once under
    `evalsets/<sha256>.json` in `storage_url` (brightrun/registry/evalsets.py)."""

    __tablename__ = "evaluation_sets"
    __table_args__ = (
        CheckConstraint("version >= 1", name="version"),
        CheckConstraint("conversation_count >= 1", name="conversation_count"),
        UniqueConstraint("name", "version"),
        UniqueConstraint("sha256"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(128))
    version: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    storage_key: Mapped[str] = mapped_column(Text)
    storage_url: Mapped[str] = mapped_column(Text)
    conversation_count: Mapped[int] = mapped_column(Integer)
    source_description: Mapped[str] = mapped_column(Text, default="")
    created_by: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = _created()


class EvaluationSetConversation(Base):
    """A conversation of an evaluation set, by fingerprint (tasks/evalsets/fingerprint.py)."""

    __tablename__ = "evaluation_set_conversations"
    __table_args__ = (Index(None, "fingerprint"),)

    evaluation_set_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("evaluation_sets.id", ondelete="CASCADE"), primary_key=True
    )
    fingerprint: Mapped[str] = mapped_column(String(64), primary_key=True)
    conversation_id: Mapped[str] = mapped_column(String(255))


# --- LexyHub's inference log (the export flow's sources). Owned by the LexyHub app in
# production; the migrations create these only where absent (tests, the embedded default).


class LexybrainRequest(Base):
    __tablename__ = "lexybrain_requests"
    __table_args__ = (Index(None, "requested_at"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID | None]
    prompt: Mapped[str | None] = mapped_column(Text)
    context: Mapped[dict[str, Any] | None] = mapped_column(JsonType)
    insight_type: Mapped[str | None] = mapped_column(String(64))
    requested_at: Mapped[datetime] = _created()


class LexybrainResponse(Base):
    __tablename__ = "lexybrain_responses"
    __table_args__ = (Index(None, "request_id"), Index(None, "created_at"))

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    request_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("lexybrain_requests.id", ondelete="CASCADE")
    )
    output: Mapped[dict[str, Any] | None] = mapped_column(JsonType)
    model_name: Mapped[str | None] = mapped_column(String(255))
    model_version: Mapped[str | None] = mapped_column(String(255))
    latency_ms: Mapped[int | None] = mapped_column(Integer)
    success: Mapped[bool | None] = mapped_column(Boolean)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = _created()


class LexybrainFeedback(Base):
    __tablename__ = "lexybrain_feedback"
    __table_args__ = (
        CheckConstraint(_in("feedback", FeedbackValue), name="feedback"),
        Index(None, "response_id"),
        Index(None, "created_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    response_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("lexybrain_responses.id", ondelete="CASCADE")
    )
    user_id: Mapped[uuid.UUID | None]
    feedback: Mapped[str] = mapped_column(String(16))
    notes: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _created()


LEXYBRAIN_TABLES = ("lexybrain_requests", "lexybrain_responses", "lexybrain_feedback")


# Issue 20 (migration 0009): this registry's id, job leases, the webhook outbox.
class RegistryIdentity(Base):
    """One row: the id every pod this registry starts carries, so its reaper knows its own."""

    __tablename__ = "registry_identity"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    registry_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = _created()


class JobLease(Base):
    """Who operates a job now (a resume, a cancel, a flow's monitor), until `expires_at`."""

    __tablename__ = "job_leases"

    job_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(255))
    acquired_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())


class WebhookOutboxEntry(Base):
    """One webhook delivery, kept until delivered or expired (retried across flow runs)."""

    __tablename__ = "webhook_outbox"
    __table_args__ = (Index("ix_webhook_outbox_pending", "status", "next_attempt_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    url: Mapped[str] = mapped_column(Text)
    event: Mapped[str] = mapped_column(String(64))
    job_id: Mapped[str | None] = mapped_column(String(64))
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime())
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    status: Mapped[str] = mapped_column(String(16), default="pending", server_default="pending")
    last_error: Mapped[str | None] = mapped_column(Text)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


# Issue 19 (migration 0010): a reviewer's corrected answer for a rated response.
class FeedbackCorrection(Base):
    """The SFT target and the preference pair's chosen side for `response_id` (the original
    answer is the rejected side). `exported_in`: the training file that first carried it."""

    __tablename__ = "feedback_corrections"
    __table_args__ = (Index("ix_feedback_corrections_response_id", "response_id"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    response_id: Mapped[str] = mapped_column(String(64))
    corrected_text: Mapped[str] = mapped_column(Text)
    reviewer: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = _created()
    exported_in: Mapped[str | None] = mapped_column(String(64))


# ---------------------------------------------------------------- serving (issue 24, migration 0005)


class EndpointDeploymentStatus(StrEnum):
    deploying = "deploying"  # the endpoint's lease: one per endpoint (a partial unique index)
    live = "live"
    failed = "failed"  # refused or failed before the endpoint's env changed
    restored = "restored"  # failed after the env changed; the env before was put back
    superseded = "superseded"  # a later deploy to the endpoint replaced it


class EndpointDeployment(Base):
    """One deploy (rollback, split) to a RunPod Serverless endpoint; env values redacted."""

    __tablename__ = "endpoint_deployments"
    __table_args__ = (
        CheckConstraint(_in("status", EndpointDeploymentStatus), name="status"),
        Index(None, "endpoint_id"),
        Index(
            "uq_endpoint_deployments_one_deploying",
            "endpoint_id",
            unique=True,
            sqlite_where=text("status = 'deploying'"),
            postgresql_where=text("status = 'deploying'"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    endpoint_id: Mapped[str] = mapped_column(String(64))
    template_id: Mapped[str | None] = mapped_column(String(64))
    env_before: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)
    env_after: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)
    served_names: Mapped[list[str]] = mapped_column(JsonType, default=list)
    artifact_ids: Mapped[list[str]] = mapped_column(JsonType, default=list)
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    lease_expires_at: Mapped[datetime | None]
    started_at: Mapped[datetime] = _created()
    finished_at: Mapped[datetime | None]


class ServingRoute(Base):
    """A served name's share of an endpoint's traffic; live while `ended_at` is NULL."""

    __tablename__ = "serving_routes"
    __table_args__ = (
        CheckConstraint("share_percent BETWEEN 0 AND 100", name="share_percent"),
        Index(None, "endpoint_id"),
        Index(None, "artifact_id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    endpoint_id: Mapped[str] = mapped_column(String(64))
    served_name: Mapped[str] = mapped_column(String(40))
    artifact_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("model_artifacts.id"))
    share_percent: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = _created()
    ended_at: Mapped[datetime | None]
