"""Issue 20: this registry's own id, one operator per job, and a webhook outbox.

- `registry_identity`: one row, a UUID made once here. Every pod this registry starts carries
  it (`BRIGHTRUN_REGISTRY_ID` in the pod's env), and its reaper touches only pods with it, so
  two registries on one RunPod account leave each other's pods alone.
- `job_leases`: who is operating a job now (a `resume`, a `cancel`, a flow's monitor) and
  until when. Taken with one INSERT or one conditional UPDATE, so it works through a
  transaction pooler (PgBouncer in transaction mode), where session advisory locks do not.
- `webhook_outbox`: every webhook delivery, kept until delivered or expired, so a receiver
  that was slow or down gets it from a later flow run.

New tables get row-level security on Postgres as 0003 gives the pipeline's tables; `anon`
and `authenticated` get nothing (none of them is for the dashboard).

Revision ID: 0009_leases_and_outbox
Revises: 0007_evaluation_sets
Create Date: 2026-12-02
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009_leases_and_outbox"
down_revision: str | None = "0007_evaluation_sets"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("registry_identity", "job_leases", "webhook_outbox")


def upgrade() -> None:
    identity = op.create_table(
        "registry_identity",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("registry_id", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    op.bulk_insert(identity, [{"id": 1, "registry_id": str(uuid.uuid4())}])
    op.create_table(
        "job_leases",
        sa.Column("job_id", sa.String(64), primary_key=True),
        sa.Column("holder", sa.String(255), nullable=False),
        sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "webhook_outbox",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("event", sa.String(64), nullable=False),
        sa.Column("job_id", sa.String(64), nullable=True),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("status", sa.String(16), nullable=False, server_default="pending"),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_webhook_outbox_pending", "webhook_outbox", ["status", "next_attempt_at"])
    if op.get_bind().dialect.name != "postgresql":
        return
    roles = {
        r[0]
        for r in op.get_bind().execute(
            sa.text("SELECT rolname FROM pg_roles WHERE rolname IN ('anon', 'authenticated')")
        )
    }
    for table in TABLES:
        op.execute(f'ALTER TABLE "{table}" ENABLE ROW LEVEL SECURITY')
        for role in sorted(roles):
            op.execute(f'REVOKE ALL ON TABLE "{table}" FROM {role}')


def downgrade() -> None:
    op.drop_index("ix_webhook_outbox_pending", table_name="webhook_outbox")
    for table in reversed(TABLES):
        op.drop_table(table)
