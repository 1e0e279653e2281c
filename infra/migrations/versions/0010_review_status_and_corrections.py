"""Issue 19: review before training, and reviewers' corrections.

- `training_files` gets `review_status` (pending | approved | rejected), `reviewed_by`,
  `reviewed_at`, `review_reason` and `review_excluded` (the example ids an "approve with
  exclusions" leaves out, JSON). Rows that exist already (curated and uploaded files, earlier
  exports, the app's own rows) keep NULL, which reads as approved, so nothing that trained
  before stops training; a new feedback export sets `pending` itself unless the review
  policy approves it. Added only where missing: on Supabase the app owns `training_files`.
- `feedback_corrections`: a reviewer's corrected answer for a rated response, who wrote it
  and when, and the training file that first exported it.

New tables get row-level security on Postgres as 0003 gives the pipeline's tables; `anon`
and `authenticated` get nothing (the dashboard does not read corrections).

Revision ID: 0010_review_status
Revises: 0009_leases_and_outbox
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010_review_status"
down_revision: str | None = "0009_leases_and_outbox"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(sa.dialects.postgresql.JSONB(), "postgresql")
TS = sa.DateTime(timezone=True)
REVIEW_COLUMNS: list[tuple[str, sa.types.TypeEngine]] = [
    ("review_status", sa.String(16)),
    ("reviewed_by", sa.String(255)),
    ("reviewed_at", TS),
    ("review_reason", sa.Text()),
    ("review_excluded", JSON),
]
CORRECTIONS = "feedback_corrections"


def _columns(table: str) -> set[str]:
    return {c["name"] for c in sa.inspect(op.get_bind()).get_columns(table)}


def upgrade() -> None:
    existing = _columns("training_files")
    for name, type_ in REVIEW_COLUMNS:
        if name not in existing:
            op.add_column("training_files", sa.Column(name, type_, nullable=True))
    # Rows from before reviews keep NULL, which reads as approved (`review.is_accepted`): no
    # UPDATE of the app's rows, whose own triggers would stamp them as changed.
    op.create_table(
        CORRECTIONS,
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("response_id", sa.String(64), nullable=False),
        sa.Column("corrected_text", sa.Text(), nullable=False),
        sa.Column("reviewer", sa.String(255), nullable=False),
        sa.Column("created_at", TS, nullable=False, server_default=sa.func.now()),
        sa.Column("exported_in", sa.String(64), nullable=True),
    )
    op.create_index("ix_feedback_corrections_response_id", CORRECTIONS, ["response_id"])
    if op.get_bind().dialect.name != "postgresql":
        return
    roles = {
        r[0]
        for r in op.get_bind().execute(
            sa.text("SELECT rolname FROM pg_roles WHERE rolname IN ('anon', 'authenticated')")
        )
    }
    op.execute(f'ALTER TABLE "{CORRECTIONS}" ENABLE ROW LEVEL SECURITY')
    for role in sorted(roles):
        op.execute(f'REVOKE ALL ON TABLE "{CORRECTIONS}" FROM {role}')


def downgrade() -> None:
    op.drop_index("ix_feedback_corrections_response_id", table_name=CORRECTIONS)
    op.drop_table(CORRECTIONS)
    with op.batch_alter_table("training_files") as batch:
        for name, _ in reversed(REVIEW_COLUMNS):
            batch.drop_column(name)
