"""The seed's exact names, onto the customer's Supabase database too.

Renames (ALTER ... RENAME COLUMN: rows, ids and constraints stay) what 0001 named
differently from the roadmap's SQL, adds the seed's missing columns, moves
`deployment_status` to the seed's values, and puts the pipeline's columns beside the app's
own `training_files` (nullable, only where missing) when the app made that table. On
Postgres it also creates the LexyBrain guide's view `lexybrain_training_data` and function
`get_lexybrain_feedback_stats(start, end)` where absent, and points `created_by` at
`auth.users(id)` where Supabase's `auth.users` exists.

The app's columns and rows are never dropped, renamed or rewritten: a column is renamed
only when the seed's name is absent (so it is ours), and columns added to the app's table
are nullable without a default (a catalog change on Postgres, no table rewrite).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the types: a migration must not change when models.py does.
JSON = sa.JSON().with_variant(JSONB(), "postgresql")
TS = sa.DateTime(timezone=True)
UUID = sa.Uuid()

OLD_DEPLOYMENT_STATUSES = ("stored", "deploying", "deployed", "failed", "archived")
DEPLOYMENT_STATUSES = ("stored", "testing", "production", "archived")
# 0001's values that the seed does not have, and the seed's value nearest to each.
DEPLOYMENT_STATUS_MAP = {"deploying": "testing", "deployed": "production", "failed": "archived"}

# (table, old name, seed name)
RENAMES: tuple[tuple[str, str, str], ...] = (
    ("training_files", "storage_path", "json_file_path"),
    ("training_files", "training_pairs", "total_training_pairs"),
    ("training_jobs", "pod_id", "runpod_pod_id"),
    ("model_artifacts", "job_id", "training_job_id"),
    ("model_artifacts", "size_bytes", "file_size_bytes"),
    ("model_artifacts", "perplexity", "validation_perplexity"),
    ("training_metrics_history", "job_id", "training_job_id"),
)

# Every column the pipeline reads in training_files; added (nullable) where the app's table lacks it.
TRAINING_FILE_COLUMNS: tuple[tuple[str, sa.types.TypeEngine], ...] = (
    ("name", sa.String(255)),
    ("json_file_path", sa.Text()),
    ("total_training_pairs", sa.Integer()),
    ("source", sa.String(32)),
    ("sha256", sa.String(64)),
    ("format", sa.String(64)),
    ("size_bytes", sa.BigInteger()),
    ("conversations", sa.Integer()),
    ("examples", sa.Integer()),
    ("window_start", TS),
    ("window_end", TS),
    ("metadata", JSON),
    ("created_at", TS),
    ("updated_at", TS),
)

VIEW = "lexybrain_training_data"
FUNCTION = "get_lexybrain_feedback_stats"

CREATE_VIEW = f"""
CREATE VIEW {VIEW} AS
SELECT
    req.id AS request_id,
    req.user_id,
    req.prompt,
    req.context,
    req.insight_type,
    req.requested_at,
    resp.id AS response_id,
    resp.output,
    resp.model_name,
    resp.model_version,
    resp.latency_ms,
    resp.success,
    resp.prompt_tokens,
    resp.completion_tokens,
    resp.created_at AS responded_at,
    fb.id AS feedback_id,
    fb.feedback,
    fb.notes AS feedback_notes,
    fb.created_at AS feedback_at
FROM lexybrain_requests req
JOIN lexybrain_responses resp ON resp.request_id = req.id
LEFT JOIN lexybrain_feedback fb ON fb.response_id = resp.id
"""

CREATE_FUNCTION = f"""
CREATE FUNCTION {FUNCTION}(start_date timestamptz, end_date timestamptz)
RETURNS TABLE (
    total_feedback bigint,
    positive_count bigint,
    negative_count bigint,
    neutral_count bigint,
    positive_rate numeric
)
LANGUAGE sql STABLE AS $$
    SELECT
        count(*),
        count(*) FILTER (WHERE feedback = 'positive'),
        count(*) FILTER (WHERE feedback = 'negative'),
        count(*) FILTER (WHERE feedback = 'neutral'),
        CASE WHEN count(*) = 0 THEN 0
             ELSE round(count(*) FILTER (WHERE feedback = 'positive')::numeric / count(*), 4)
        END
    FROM lexybrain_feedback
    WHERE created_at >= start_date AND created_at < end_date
$$
"""


def _in(column: str, values: Sequence[str]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _columns(table: str) -> dict[str, dict]:
    return {c["name"]: c for c in sa.inspect(op.get_bind()).get_columns(table)}


def _indexes(table: str) -> set[str]:
    return {i["name"] for i in sa.inspect(op.get_bind()).get_indexes(table) if i["name"]}


def _pg() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def _has_auth_users() -> bool:
    return _pg() and op.get_bind().execute(sa.text("SELECT to_regclass('auth.users')")).scalar() is not None


def _rename(table: str, old: str, new: str) -> None:
    # Plain RENAME COLUMN on both backends (SQLite >= 3.25): no table rebuild.
    op.execute(f'ALTER TABLE {table} RENAME COLUMN "{old}" TO "{new}"')


def upgrade() -> None:
    for table, old, new in RENAMES:
        columns = _columns(table)
        if old in columns and new not in columns:
            _rename(table, old, new)

    # training_files: the pipeline's columns beside the app's (all nullable; none on our own
    # table is missing, so this only ever touches the app's).
    columns = _columns("training_files")
    for name, type_ in TRAINING_FILE_COLUMNS:
        if name not in columns:
            op.add_column("training_files", sa.Column(name, type_, nullable=True))
    indexes = _indexes("training_files")
    unique_sha = any(
        u["column_names"] == ["sha256"]
        for u in sa.inspect(op.get_bind()).get_unique_constraints("training_files")
    )
    if not unique_sha and "uq_training_files_sha256" not in indexes:
        op.create_index("uq_training_files_sha256", "training_files", ["sha256"], unique=True)
    if "ix_training_files_source_window_end" not in indexes:
        op.create_index("ix_training_files_source_window_end", "training_files", ["source", "window_end"])

    auth_users = _has_auth_users()
    op.add_column("training_jobs", sa.Column("runpod_endpoint_url", sa.Text))
    op.add_column("training_jobs", sa.Column("metrics", JSON, server_default=sa.text("'{}'")))
    op.add_column("training_jobs", sa.Column("estimated_completion_at", TS))
    op.add_column("training_jobs", sa.Column("training_log_path", sa.Text))
    op.add_column("training_jobs", sa.Column("created_by", UUID))
    op.create_index("ix_training_jobs_created_by", "training_jobs", ["created_by"])

    op.add_column("model_artifacts", sa.Column("human_eval_score", sa.Float))
    op.add_column("model_artifacts", sa.Column("deployed_at", TS))
    op.add_column("model_artifacts", sa.Column("created_by", UUID))
    if auth_users:  # Supabase: who started a job or made an adapter is one of its users
        for table in ("training_jobs", "model_artifacts"):
            op.create_foreign_key(
                op.f(f"fk_{table}_created_by_users"),
                table,
                "users",
                ["created_by"],
                ["id"],
                referent_schema="auth",
                ondelete="SET NULL",
            )
    _replace_deployment_status_check(DEPLOYMENT_STATUSES, DEPLOYMENT_STATUS_MAP)
    op.create_index("ix_model_artifacts_deployment_status", "model_artifacts", ["deployment_status"])
    # One production adapter per base model, refused by the database itself (promotion.py
    # archives the old one first, in the same transaction).
    production = sa.text("deployment_status = 'production' AND artifact_type = 'lora_adapter'")
    # A registry that already holds several (0001's `deployed`, set by hand) keeps the newest.
    op.execute(
        "UPDATE model_artifacts SET deployment_status = 'archived' "
        "WHERE deployment_status = 'production' AND artifact_type = 'lora_adapter' AND EXISTS ("
        "SELECT 1 FROM model_artifacts newer WHERE newer.base_model = model_artifacts.base_model "
        "AND newer.deployment_status = 'production' AND newer.artifact_type = 'lora_adapter' "
        "AND (newer.created_at, newer.id) > (model_artifacts.created_at, model_artifacts.id))"
    )
    op.create_index(
        "uq_model_artifacts_production_base_model",
        "model_artifacts",
        ["base_model"],
        unique=True,
        postgresql_where=production,
        sqlite_where=production,
    )
    op.create_index(
        "ix_training_metrics_history_training_job_id_step",
        "training_metrics_history",
        ["training_job_id", "step"],
    )

    if _pg():
        bind = op.get_bind()
        if bind.execute(sa.text(f"SELECT to_regclass('{VIEW}')")).scalar() is None:
            op.execute(CREATE_VIEW)
        if not bind.execute(
            sa.text(
                "SELECT 1 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                "WHERE p.proname = :f AND n.nspname = current_schema()"
            ),
            {"f": FUNCTION},
        ).first():
            op.execute(CREATE_FUNCTION)


def _replace_deployment_status_check(values: Sequence[str], remap: dict[str, str]) -> None:
    """Move `deployment_status` to `values`, rewriting the rows' old values by `remap`."""
    # 0001's CHECK got its name through the naming convention (doubled prefix): find it by
    # its text, and keep that name. op.f(): the name is final, no convention applied again.
    checks = sa.inspect(op.get_bind()).get_check_constraints("model_artifacts")
    name = next(
        (c["name"] for c in checks if "deployment_status" in c["sqltext"]),
        "ck_model_artifacts_deployment_status",
    )

    def rewrite_rows() -> None:
        for old, new in remap.items():
            op.execute(
                sa.text(
                    "UPDATE model_artifacts SET deployment_status = :new WHERE deployment_status = :old"
                ).bindparams(old=old, new=new)
            )

    if _pg():
        op.execute(f'ALTER TABLE model_artifacts DROP CONSTRAINT IF EXISTS "{name}"')
        rewrite_rows()
        op.execute(
            f'ALTER TABLE model_artifacts ADD CONSTRAINT "{name}" CHECK ({_in("deployment_status", values)})'
        )
        return
    # SQLite cannot alter a CHECK: rewrite the values with the old CHECK off, then Alembic's
    # batch mode copies the table, rows and ids intact, into one with the new CHECK (the only
    # copy this migration makes, and only on SQLite).
    op.execute("PRAGMA ignore_check_constraints = ON")
    try:
        rewrite_rows()
    finally:
        op.execute("PRAGMA ignore_check_constraints = OFF")
    with op.batch_alter_table("model_artifacts", recreate="always") as batch:
        batch.drop_constraint(op.f(name), type_="check")
        batch.create_check_constraint(op.f(name), _in("deployment_status", values))


def downgrade() -> None:
    # The view and the function stay: they may be the app's (created where absent).
    op.drop_index("ix_training_metrics_history_training_job_id_step", "training_metrics_history")
    op.drop_index("ix_model_artifacts_deployment_status", "model_artifacts")
    op.drop_index("uq_model_artifacts_production_base_model", "model_artifacts")
    _replace_deployment_status_check(
        OLD_DEPLOYMENT_STATUSES, {"testing": "deploying", "production": "deployed"}
    )
    for column in ("created_by", "deployed_at", "human_eval_score"):
        _drop_column("model_artifacts", column)
    op.drop_index("ix_training_jobs_created_by", "training_jobs")
    for column in (
        "created_by",
        "training_log_path",
        "estimated_completion_at",
        "metrics",
        "runpod_endpoint_url",
    ):
        _drop_column("training_jobs", column)
    files_ours = not _columns("training_files")["sha256"]["nullable"]
    for table, old, new in reversed(RENAMES):
        if table == "training_files" and not files_ours:
            continue  # the app's table keeps its columns
        columns = _columns(table)
        if new in columns and old not in columns:
            _rename(table, new, old)


def _drop_column(table: str, column: str) -> None:
    if _pg():
        op.drop_column(table, column)
    else:
        op.execute(f'ALTER TABLE {table} DROP COLUMN "{column}"')
