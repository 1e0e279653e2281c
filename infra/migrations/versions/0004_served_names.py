"""Served names: `model_artifacts.served_name`, the name an adapter is served and logged under.

Added nullable (a catalog change on Postgres, no table rewrite, and rows the app inserts
itself stay valid), then filled for every existing row from its job's name and its id
(`brightrun.registry.served_names`, frozen below), then a unique index. New rows get theirs
when registered (`repository.register_artifact`).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEX = "ix_model_artifacts_served_name"
MAX_LENGTH = 40


# A frozen copy of brightrun.registry.served_names.served_name: a migration must not change
# when the code does.
def _served_name(job_name: str, artifact_id: str) -> str:
    suffix = uuid.UUID(str(artifact_id)).hex[:8]
    stem = re.sub(r"[^a-z0-9]+", "-", (job_name or "").lower()).strip("-")[: MAX_LENGTH - 9].rstrip("-")
    return f"{stem or 'adapter'}-{suffix}"


def upgrade() -> None:
    op.add_column("model_artifacts", sa.Column("served_name", sa.String(MAX_LENGTH), nullable=True))
    conn = op.get_bind()
    artifacts = sa.table(
        "model_artifacts",
        sa.column("id", sa.Uuid()),
        sa.column("training_job_id", sa.Uuid()),
        sa.column("served_name", sa.String(MAX_LENGTH)),
    )
    jobs = sa.table("training_jobs", sa.column("id", sa.Uuid()), sa.column("job_name", sa.String(255)))
    rows = conn.execute(
        sa.select(artifacts.c.id, jobs.c.job_name)
        .select_from(artifacts.outerjoin(jobs, artifacts.c.training_job_id == jobs.c.id))
        .where(artifacts.c.served_name.is_(None))
    ).all()
    for artifact_id, job_name in rows:
        conn.execute(
            sa.update(artifacts)
            .where(artifacts.c.id == artifact_id)
            .values(served_name=_served_name(job_name or "", str(artifact_id)))
        )
    op.create_index(INDEX, "model_artifacts", ["served_name"], unique=True)


def downgrade() -> None:
    op.drop_index(INDEX, table_name="model_artifacts")
    with op.batch_alter_table("model_artifacts") as batch:
        batch.drop_column("served_name")
