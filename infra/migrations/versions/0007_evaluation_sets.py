"""Evaluation sets (issue 25): the fixed exam every candidate and production adapter sit.

- `evaluation_sets`: one row per registered version of a named set: its content's sha256
  (unique: the same conversations are never registered twice), where that content is stored
  (`evalsets/<sha256>.json`), how many conversations, where they came from, who made it.
- `evaluation_set_conversations`: one fingerprint per conversation of a set (a hash of its
  normalised user and assistant turns, `tasks/evalsets/fingerprint.py`), indexed, so the
  dataset stage finds a training file's overlap with every registered set in one query.

Both are the pipeline's own tables: on Postgres they get row-level security as 0003 gives
the others (`anon` and `authenticated` nothing: the exam is not the dashboard's to read).

Revision ID: 0007_evaluation_sets
Revises: 0005_endpoint_deployments
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_evaluation_sets"
down_revision: str | None = "0005_endpoint_deployments"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("evaluation_sets", "evaluation_set_conversations")
UUID = sa.Uuid()
TS = sa.DateTime(timezone=True)


def _uuid_default() -> dict[str, sa.TextClause]:
    return (
        {"server_default": sa.text("gen_random_uuid()")} if op.get_bind().dialect.name == "postgresql" else {}
    )


def upgrade() -> None:
    op.create_table(
        "evaluation_sets",
        sa.Column("id", UUID, primary_key=True, **_uuid_default()),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("storage_key", sa.Text, nullable=False),
        sa.Column("storage_url", sa.Text, nullable=False),
        sa.Column("conversation_count", sa.Integer, nullable=False),
        sa.Column("source_description", sa.Text, nullable=False, server_default=""),
        sa.Column("created_by", sa.String(255)),
        sa.Column("created_at", TS, nullable=False, server_default=sa.text("CURRENT_TIMESTAMP")),
        sa.CheckConstraint("version >= 1", name="ck_evaluation_sets_version"),
        sa.CheckConstraint("conversation_count >= 1", name="ck_evaluation_sets_conversation_count"),
        sa.UniqueConstraint("name", "version", name="uq_evaluation_sets_name_version"),
        sa.UniqueConstraint("sha256", name="uq_evaluation_sets_sha256"),
    )
    op.create_table(
        "evaluation_set_conversations",
        sa.Column(
            "evaluation_set_id",
            UUID,
            sa.ForeignKey(
                "evaluation_sets.id",
                ondelete="CASCADE",
                name="fk_evaluation_set_conversations_set",  # 63 characters at most
            ),
            primary_key=True,
        ),
        sa.Column("fingerprint", sa.String(64), primary_key=True),
        sa.Column("conversation_id", sa.String(255), nullable=False),
    )
    op.create_index(
        "ix_evaluation_set_conversations_fingerprint", "evaluation_set_conversations", ["fingerprint"]
    )
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
    op.drop_index("ix_evaluation_set_conversations_fingerprint", table_name="evaluation_set_conversations")
    op.drop_table("evaluation_set_conversations")
    op.drop_table("evaluation_sets")
