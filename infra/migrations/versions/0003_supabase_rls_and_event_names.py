"""Supabase for real (issue 22): row-level security on the pipeline's tables, the view and
the function made safe, and `training_job_events.job_id` renamed `training_job_id`.

- Every table the pipeline made in the schema gets RLS. `anon` loses every default grant
  (Supabase grants it everything `postgres` creates in `public`, and the Data API serves it
  to anyone holding the app's public key); `authenticated` keeps SELECT on the jobs, their
  metrics and the model artifacts, under a read-only policy (the roadmap's dashboard reads
  them), and nothing else. The pipeline connects as the owner (or `service_role`, which has
  BYPASSRLS), so RLS never stands in its way.
- The view `lexybrain_training_data`, where 0002 made it, runs with the reader's rights
  (`security_invoker`), so LexyHub's own RLS applies through it; `anon` may not read it.
- The function `get_lexybrain_feedback_stats`, where 0002 made it, is SECURITY INVOKER with a
  fixed search_path; so is the pipeline's trigger function.
- The app's own tables, view and function are left exactly as they are.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

VIEW = "lexybrain_training_data"
FUNCTION = "get_lexybrain_feedback_stats"
# The tables only the pipeline ever makes (0001 refuses to install over a same-named one).
PIPELINE_TABLES = (
    "training_jobs",
    "model_artifacts",
    "training_metrics_history",
    "training_job_events",
    "feedback_export_watermarks",
    "brightrun_alembic_version",
)
# What the dashboard reads (roadmap: "authenticated users can read model artifacts").
DASHBOARD_READS = ("training_jobs", "training_metrics_history", "model_artifacts")
ANON_ROLES = ("anon", "authenticated")
# The columns 0002's view has: a view of that name with others is the app's.
OUR_VIEW_COLUMNS = [
    "request_id", "user_id", "prompt", "context", "insight_type", "requested_at", "response_id",
    "output", "model_name", "model_version", "latency_ms", "success", "prompt_tokens",
    "completion_tokens", "responded_at", "feedback_id", "feedback", "feedback_notes", "feedback_at",
]  # fmt: skip
OUR_PIPELINE_CONVERSATION_COLUMNS = {"training_file_id", "conversation_id", "split", "source_ref"}


def _columns(table: str) -> list[str]:
    return [c["name"] for c in sa.inspect(op.get_bind()).get_columns(table)]


def _scalar(sql: str, **params: object) -> object:
    return op.get_bind().execute(sa.text(sql), params).scalar()


def _roles() -> set[str]:
    rows = op.get_bind().execute(
        sa.text("SELECT rolname FROM pg_roles WHERE rolname IN ('anon', 'authenticated')")
    )
    return {r[0] for r in rows}


def _our_tables() -> list[str]:
    tables = list(PIPELINE_TABLES)
    files = {c["name"]: c for c in sa.inspect(op.get_bind()).get_columns("training_files")}
    if "sha256" in files and not files["sha256"]["nullable"]:
        tables.append("training_files")  # ours only when 0001 made it (see 0001)
    if set(_columns("training_file_conversations")) == OUR_PIPELINE_CONVERSATION_COLUMNS:
        tables.append("training_file_conversations")
    return tables


def upgrade() -> None:
    columns = _columns("training_job_events")
    if "job_id" in columns and "training_job_id" not in columns:
        # RENAME COLUMN: rows, the foreign key, the unique key and the index stay.
        op.execute('ALTER TABLE training_job_events RENAME COLUMN "job_id" TO "training_job_id"')
    if op.get_bind().dialect.name != "postgresql":
        return  # RLS, roles and security_invoker are Postgres's

    roles = _roles()
    for table in _our_tables():
        op.execute(f'ALTER TABLE "{table}" ENABLE ROW LEVEL SECURITY')
        for role in sorted(roles):
            op.execute(f'REVOKE ALL ON TABLE "{table}" FROM {role}')
        if table in DASHBOARD_READS and "authenticated" in roles:
            op.execute(f'GRANT SELECT ON TABLE "{table}" TO authenticated')
            op.execute(
                f'CREATE POLICY "authenticated users can read {table}" ON "{table}" '
                "FOR SELECT TO authenticated USING (true)"
            )

    schema = _scalar("SELECT current_schema()")
    view_oid = _scalar("SELECT to_regclass(:v)::oid", v=VIEW)
    if view_oid is not None and _columns(VIEW) == OUR_VIEW_COLUMNS:
        op.execute(f"ALTER VIEW {VIEW} SET (security_invoker = true)")
        if "anon" in roles:
            op.execute(f"REVOKE ALL ON {VIEW} FROM anon")
    ours = _scalar(
        "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
        "WHERE p.proname = :f AND n.nspname = current_schema() "
        "AND pg_get_function_result(p.oid) LIKE '%positive_rate%'",
        f=FUNCTION,
    )
    if ours:
        op.execute(
            f"ALTER FUNCTION {FUNCTION}(timestamptz, timestamptz) "
            f'SECURITY INVOKER SET search_path = "{schema}", pg_temp'
        )
    op.execute("ALTER FUNCTION brightrun_set_updated_at() SET search_path = pg_catalog, pg_temp")


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        roles = _roles()
        for table in _our_tables():
            if table in DASHBOARD_READS and "authenticated" in roles:
                op.execute(f'DROP POLICY IF EXISTS "authenticated users can read {table}" ON "{table}"')
            op.execute(f'ALTER TABLE "{table}" DISABLE ROW LEVEL SECURITY')
        if _scalar("SELECT to_regclass(:v)", v=VIEW) is not None and _columns(VIEW) == OUR_VIEW_COLUMNS:
            op.execute(f"ALTER VIEW {VIEW} RESET (security_invoker)")
    columns = _columns("training_job_events")
    if "training_job_id" in columns and "job_id" not in columns:
        op.execute('ALTER TABLE training_job_events RENAME COLUMN "training_job_id" TO "job_id"')
