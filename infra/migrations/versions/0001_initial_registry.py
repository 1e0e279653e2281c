"""Initial registry schema: jobs, training files, artifacts, metrics, events, watermarks,
and LexyHub's lexybrain_* tables where the LexyHub app has not made them already.

`training_files` too is made only where absent: on the customer's Supabase database it is
the app's own table (0002 adds the pipeline's columns beside the app's, nullable).

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the types: a migration must not change when models.py does.
JSON = sa.JSON().with_variant(JSONB(), "postgresql")
TS = sa.DateTime(timezone=True)
UUID = sa.Uuid()

JOB_STATUSES = ("queued", "preprocessing", "model_loaded", "training", "completed", "failed", "cancelled")
ARTIFACT_TYPES = ("lora_adapter", "merged_model", "checkpoint", "gguf")
DEPLOYMENT_STATUSES = ("stored", "deploying", "deployed", "failed", "archived")
FILE_SOURCES = ("upload", "feedback_export", "generated")
UPDATED_AT_TABLES = ("training_files", "training_jobs", "model_artifacts", "feedback_export_watermarks")


def _in(column: str, values: Sequence[str]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _now() -> sa.TextClause:
    return sa.text("CURRENT_TIMESTAMP")


def _uuid_default() -> dict[str, sa.TextClause]:
    # Rows written by the dashboard or SQL get ids too (the pipeline sets its own).
    return (
        {"server_default": sa.text("gen_random_uuid()")} if op.get_bind().dialect.name == "postgresql" else {}
    )


def _id() -> sa.Column:
    return sa.Column("id", UUID, primary_key=True, **_uuid_default())


def _created(name: str = "created_at") -> sa.Column:
    return sa.Column(name, TS, nullable=False, server_default=_now())


# The pipeline's own tables: a same-named table in the database is not ours (refused).
OWN_TABLES = (
    "training_jobs",
    "model_artifacts",
    "training_metrics_history",
    "training_job_events",
    "feedback_export_watermarks",
)
# The app's training_file_conversations (roadmap §1.2) is used as it is when it has these
# (conversation ids as text: the pipeline records ids that are not the app's uuids too).
CONVERSATION_LINK_COLUMNS = {"training_file_id": ("uuid",), "conversation_id": ("text", "character varying")}


def _refuse(table: str, difference: str) -> None:
    from brightrun.registry.migrations import InstallRefused

    raise InstallRefused(
        f"cannot install the registry: the database already has a table {table!r} that is not "
        f"brightrun's ({difference}); nothing was changed. Rename that table, or point "
        "BRIGHTRUN_DATABASE_URL at another database"
    )


def _check_existing(existing: set[str]) -> None:
    for table in OWN_TABLES:
        if table in existing:
            _refuse(table, "the pipeline creates this table itself")
    if "training_file_conversations" in existing:
        columns = {c["name"]: c for c in sa.inspect(op.get_bind()).get_columns("training_file_conversations")}
        for name, types in CONVERSATION_LINK_COLUMNS.items():
            if name not in columns:
                _refuse("training_file_conversations", f"it has no column {name}")
            actual = str(columns[name]["type"]).lower()
            if op.get_bind().dialect.name == "postgresql" and not actual.startswith(
                types + (("varchar",) if "text" in types else ())
            ):
                _refuse(
                    "training_file_conversations",
                    f"its {name} is {actual}, the pipeline needs {' or '.join(types)}",
                )


def upgrade() -> None:
    bind = op.get_bind()
    existing = set(sa.inspect(bind).get_table_names())
    _check_existing(existing)

    if "training_files" not in existing:
        _create_training_files()
    if "training_file_conversations" in existing:
        _adopt_training_file_conversations()
    else:
        _create_training_file_conversations()
    _create_pipeline_tables()
    _create_lexybrain_tables(existing)
    if bind.dialect.name == "postgresql":
        _create_updated_at_triggers(
            [t for t in UPDATED_AT_TABLES if t != "training_files" or "training_files" not in existing]
        )


def _create_training_files() -> None:
    op.create_table(
        "training_files",
        _id(),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("source", sa.String(32), nullable=False, server_default="upload"),
        sa.Column("storage_path", sa.Text, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("format", sa.String(64), nullable=False, server_default="brightrun-lora-v4"),
        sa.Column("size_bytes", sa.BigInteger),
        sa.Column("conversations", sa.Integer),
        sa.Column("training_pairs", sa.Integer),
        sa.Column("examples", sa.Integer),
        sa.Column("window_start", TS),
        sa.Column("window_end", TS),
        sa.Column("metadata", JSON, nullable=False, server_default=sa.text("'{}'")),
        _created(),
        _created("updated_at"),
        sa.CheckConstraint(_in("source", FILE_SOURCES), name="ck_training_files_source"),
        sa.UniqueConstraint("sha256", name="uq_training_files_sha256"),
    )
    op.create_index("ix_training_files_created_at", "training_files", ["created_at"])
    op.create_index("ix_training_files_source_window_end", "training_files", ["source", "window_end"])


def _adopt_training_file_conversations() -> None:
    """The app's junction table: the pipeline's columns beside the app's, where missing."""
    columns = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("training_file_conversations")}
    if "split" not in columns:
        # A constant default: a catalog change on Postgres, no rewrite of the app's rows.
        op.add_column(
            "training_file_conversations",
            sa.Column("split", sa.String(16), nullable=False, server_default="train"),
        )
    if "source_ref" not in columns:
        op.add_column("training_file_conversations", sa.Column("source_ref", sa.String(255)))


def _create_training_file_conversations() -> None:
    op.create_table(
        "training_file_conversations",
        sa.Column(
            "training_file_id",
            UUID,
            sa.ForeignKey("training_files.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("conversation_id", sa.String(255), primary_key=True),
        sa.Column("split", sa.String(16), nullable=False, server_default="train"),
        sa.Column("source_ref", sa.String(255)),
        sa.CheckConstraint(
            _in("split", ("train", "validation")), name="ck_training_file_conversations_split"
        ),
    )
    op.create_index(
        "ix_training_file_conversations_conversation_id", "training_file_conversations", ["conversation_id"]
    )
    op.create_index(
        "ix_training_file_conversations_source_ref", "training_file_conversations", ["source_ref"]
    )


def _create_pipeline_tables() -> None:

    op.create_table(
        "training_jobs",
        _id(),
        sa.Column("job_name", sa.String(255), nullable=False),
        sa.Column("status", sa.String(32), nullable=False, server_default="queued"),
        sa.Column("base_model", sa.String(255), nullable=False),
        sa.Column("training_file_id", UUID, sa.ForeignKey("training_files.id", ondelete="SET NULL")),
        sa.Column("preset", sa.String(64)),
        sa.Column("hyperparameters", JSON, nullable=False, server_default=sa.text("'{}'")),
        sa.Column("compute_backend", sa.String(32), nullable=False, server_default="local"),
        sa.Column("storage_prefix", sa.Text),
        sa.Column("flow_run_id", sa.String(64)),
        sa.Column("current_step", sa.Integer, nullable=False, server_default="0"),
        sa.Column("total_steps", sa.Integer),
        sa.Column("current_epoch", sa.Float),
        sa.Column("current_loss", sa.Float),
        sa.Column("progress_percent", sa.Float, nullable=False, server_default="0"),
        sa.Column("retry_count", sa.Integer, nullable=False, server_default="0"),
        sa.Column("actual_cost_usd", sa.Float),
        sa.Column("estimated_cost_usd", sa.Float),
        sa.Column("gpu_hours", sa.Float),
        sa.Column("gpu_type", sa.String(128)),
        sa.Column("pod_id", sa.String(128)),
        sa.Column("lora_artifact_path", sa.Text),
        sa.Column("error_message", sa.Text),
        sa.Column("metadata", JSON, nullable=False, server_default=sa.text("'{}'")),
        sa.Column("started_at", TS),
        sa.Column("completed_at", TS),
        _created(),
        _created("updated_at"),
        sa.CheckConstraint(_in("status", JOB_STATUSES), name="ck_training_jobs_status"),
        sa.CheckConstraint("retry_count >= 0", name="ck_training_jobs_retry_count"),
        sa.CheckConstraint(
            "progress_percent >= 0 AND progress_percent <= 100", name="ck_training_jobs_progress_percent"
        ),
    )
    op.create_index("ix_training_jobs_status", "training_jobs", ["status"])
    op.create_index("ix_training_jobs_created_at", "training_jobs", ["created_at"])
    op.create_index("ix_training_jobs_training_file_id", "training_jobs", ["training_file_id"])

    op.create_table(
        "model_artifacts",
        _id(),
        sa.Column("job_id", UUID, sa.ForeignKey("training_jobs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("artifact_type", sa.String(32), nullable=False, server_default="lora_adapter"),
        sa.Column("storage_path", sa.Text, nullable=False),
        sa.Column("size_bytes", sa.BigInteger),
        sa.Column("sha256", sa.String(64)),
        sa.Column("base_model", sa.String(255)),
        sa.Column("lora_config", JSON, nullable=False, server_default=sa.text("'{}'")),
        sa.Column("validation_loss", sa.Float),
        sa.Column("perplexity", sa.Float),
        sa.Column("deployment_status", sa.String(32), nullable=False, server_default="stored"),
        sa.Column("metadata", JSON, nullable=False, server_default=sa.text("'{}'")),
        _created(),
        _created("updated_at"),
        sa.CheckConstraint(_in("artifact_type", ARTIFACT_TYPES), name="ck_model_artifacts_artifact_type"),
        sa.CheckConstraint(
            _in("deployment_status", DEPLOYMENT_STATUSES), name="ck_model_artifacts_deployment_status"
        ),
        sa.UniqueConstraint("job_id", "artifact_type", name="uq_model_artifacts_job_id_artifact_type"),
    )
    op.create_index("ix_model_artifacts_created_at", "model_artifacts", ["created_at"])
    op.create_index("ix_model_artifacts_base_model", "model_artifacts", ["base_model"])

    op.create_table(
        "training_metrics_history",
        _id(),
        sa.Column("job_id", UUID, sa.ForeignKey("training_jobs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False, server_default="0"),
        sa.Column("step", sa.Integer, nullable=False),
        sa.Column("epoch", sa.Float),
        sa.Column("loss", sa.Float),
        sa.Column("eval_loss", sa.Float),
        sa.Column("learning_rate", sa.Float),
        sa.Column("grad_norm", sa.Float),
        sa.Column("tokens_per_s", sa.Float),
        _created("recorded_at"),
        sa.UniqueConstraint(
            "job_id", "attempt", "step", name="uq_training_metrics_history_job_id_attempt_step"
        ),
    )
    op.create_index(
        "ix_training_metrics_history_job_id_recorded_at",
        "training_metrics_history",
        ["job_id", "recorded_at"],
    )

    op.create_table(
        "training_job_events",
        _id(),
        sa.Column("job_id", UUID, sa.ForeignKey("training_jobs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False, server_default="0"),
        sa.Column("payload", JSON, nullable=False, server_default=sa.text("'{}'")),
        sa.Column("source_key", sa.String(255)),
        _created(),
        sa.UniqueConstraint("job_id", "source_key", name="uq_training_job_events_job_id_source_key"),
    )
    op.create_index(
        "ix_training_job_events_job_id_created_at", "training_job_events", ["job_id", "created_at"]
    )
    op.create_index("ix_training_job_events_type", "training_job_events", ["type"])

    op.create_table(
        "feedback_export_watermarks",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("position", TS, nullable=False),
        sa.Column("last_id", sa.String(64)),
        sa.Column("training_file_id", UUID, sa.ForeignKey("training_files.id", ondelete="SET NULL")),
        _created("updated_at"),
    )


def _create_lexybrain_tables(existing: set[str]) -> None:
    # LexyHub's tables: in production the LexyHub app owns them; never touch existing ones.
    if "lexybrain_requests" not in existing:
        op.create_table(
            "lexybrain_requests",
            _id(),
            sa.Column("user_id", UUID),
            sa.Column("prompt", sa.Text),
            sa.Column("context", JSON),
            sa.Column("insight_type", sa.String(64)),
            _created("requested_at"),
        )
        op.create_index("ix_lexybrain_requests_requested_at", "lexybrain_requests", ["requested_at"])
    if "lexybrain_responses" not in existing:
        op.create_table(
            "lexybrain_responses",
            _id(),
            sa.Column("request_id", UUID, sa.ForeignKey("lexybrain_requests.id", ondelete="CASCADE")),
            sa.Column("output", JSON),
            sa.Column("model_name", sa.String(255)),
            sa.Column("model_version", sa.String(255)),
            sa.Column("latency_ms", sa.Integer),
            sa.Column("success", sa.Boolean),
            sa.Column("prompt_tokens", sa.Integer),
            sa.Column("completion_tokens", sa.Integer),
            _created(),
        )
        op.create_index("ix_lexybrain_responses_request_id", "lexybrain_responses", ["request_id"])
        op.create_index("ix_lexybrain_responses_created_at", "lexybrain_responses", ["created_at"])
    if "lexybrain_feedback" not in existing:
        op.create_table(
            "lexybrain_feedback",
            _id(),
            sa.Column("response_id", UUID, sa.ForeignKey("lexybrain_responses.id", ondelete="CASCADE")),
            sa.Column("user_id", UUID),
            sa.Column("feedback", sa.String(16), nullable=False),
            sa.Column("notes", sa.Text),
            _created(),
            sa.CheckConstraint(
                _in("feedback", ("positive", "negative", "neutral")), name="ck_lexybrain_feedback_feedback"
            ),
        )
        op.create_index("ix_lexybrain_feedback_response_id", "lexybrain_feedback", ["response_id"])
        op.create_index("ix_lexybrain_feedback_created_at", "lexybrain_feedback", ["created_at"])


def _create_updated_at_triggers(tables: Sequence[str]) -> None:
    # updated_at also moves when the dashboard or plain SQL updates a row. Never on the
    # app's own training_files: its updates are the app's business.
    op.execute(
        """
        CREATE OR REPLACE FUNCTION brightrun_set_updated_at() RETURNS trigger AS $$
        BEGIN
            NEW.updated_at = now();
            RETURN NEW;
        END;
        $$ LANGUAGE plpgsql
        """
    )
    for table in tables:
        op.execute(
            f"CREATE TRIGGER trg_{table}_updated_at BEFORE UPDATE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION brightrun_set_updated_at()"
        )


def _training_files_is_ours() -> bool:
    """True when this migration made `training_files` (its sha256 is NOT NULL only then)."""
    columns = {c["name"]: c for c in sa.inspect(op.get_bind()).get_columns("training_files")}
    return "sha256" in columns and not columns["sha256"]["nullable"]


def _conversation_links_are_ours() -> bool:
    columns = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("training_file_conversations")}
    return columns == {"training_file_id", "conversation_id", "split", "source_ref"}


def downgrade() -> None:
    # The lexybrain_* tables stay: they may be LexyHub's, and their rows are user data; so
    # does the app's own training_files.
    bind = op.get_bind()
    ours = _training_files_is_ours()
    if bind.dialect.name == "postgresql":
        for table in UPDATED_AT_TABLES:
            op.execute(f"DROP TRIGGER IF EXISTS trg_{table}_updated_at ON {table}")
        op.execute("DROP FUNCTION IF EXISTS brightrun_set_updated_at()")
    for table in (
        "feedback_export_watermarks",
        "training_job_events",
        "training_metrics_history",
        "model_artifacts",
        "training_jobs",
        # The app's own junction table stays (0001 only added columns to it).
        *(("training_file_conversations",) if ours or _conversation_links_are_ours() else ()),
        *(("training_files",) if ours else ()),
    ):
        op.drop_table(table)
