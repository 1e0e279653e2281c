"""Endpoint deployments and serving routes (issue 24): what was deployed to which RunPod
Serverless endpoint, and which served names take what share of its traffic.

- `endpoint_deployments`: one row per deploy (or rollback, or A/B split) to an endpoint: the
  template, its env before and after (secrets redacted), the served names, the artifacts,
  the status (deploying | live | failed | restored | superseded) and the error. A partial
  unique index allows one `deploying` row per endpoint: that row is the deploy's lease, taken
  by an INSERT (atomic through PgBouncer's transaction mode, no session advisory lock);
  `lease_expires_at` lets a later deploy take over a lease whose holder died.
- `serving_routes`: endpoint, served name, artifact, share (0..100), started/ended; the live
  split is the rows with `ended_at IS NULL`.
- The view `serving_routes_live`: what the app reads to pick `model` per user.

Postgres (Supabase): RLS on both tables as 0003 does for the pipeline's tables; the app's
`authenticated` role may read the view (security_invoker) and the routes it reads.

Revision ID: 0005_endpoint_deployments
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_endpoint_deployments"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DEPLOYMENTS = "endpoint_deployments"
ROUTES = "serving_routes"
VIEW = "serving_routes_live"
STATUSES = ("deploying", "live", "failed", "restored", "superseded")
LEASE_INDEX = "uq_endpoint_deployments_one_deploying"

VIEW_SQL = f"""
CREATE VIEW {VIEW} AS
SELECT r.endpoint_id, r.served_name, r.share_percent, r.artifact_id, r.started_at
FROM {ROUTES} r
WHERE r.ended_at IS NULL
"""


def _json() -> sa.types.TypeEngine[object]:
    from sqlalchemy.dialects.postgresql import JSONB

    return sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    now = sa.text("CURRENT_TIMESTAMP")
    op.create_table(
        DEPLOYMENTS,
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("endpoint_id", sa.String(64), nullable=False),
        sa.Column("template_id", sa.String(64)),
        sa.Column("env_before", _json(), nullable=False, server_default=sa.text("'{}'")),
        sa.Column("env_after", _json(), nullable=False, server_default=sa.text("'{}'")),
        sa.Column("served_names", _json(), nullable=False, server_default=sa.text("'[]'")),
        sa.Column("artifact_ids", _json(), nullable=False, server_default=sa.text("'[]'")),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text()),
        sa.Column("error", sa.Text()),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True)),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False, server_default=now),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.CheckConstraint(
            "status IN (" + ", ".join(f"'{s}'" for s in STATUSES) + ")",
            name="status",
        ),
    )
    op.create_index(f"ix_{DEPLOYMENTS}_endpoint_id", DEPLOYMENTS, ["endpoint_id"])
    op.create_index(
        LEASE_INDEX,
        DEPLOYMENTS,
        ["endpoint_id"],
        unique=True,
        sqlite_where=sa.text("status = 'deploying'"),
        postgresql_where=sa.text("status = 'deploying'"),
    )
    op.create_table(
        ROUTES,
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("endpoint_id", sa.String(64), nullable=False),
        sa.Column("served_name", sa.String(40), nullable=False),
        sa.Column(
            "artifact_id",
            sa.Uuid(),
            sa.ForeignKey("model_artifacts.id"),
            nullable=False,
        ),
        sa.Column("share_percent", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False, server_default=now),
        sa.Column("ended_at", sa.DateTime(timezone=True)),
        sa.CheckConstraint("share_percent BETWEEN 0 AND 100", name="share_percent"),
    )
    op.create_index(f"ix_{ROUTES}_endpoint_id", ROUTES, ["endpoint_id"])
    op.create_index(f"ix_{ROUTES}_artifact_id", ROUTES, ["artifact_id"])
    op.execute(VIEW_SQL)

    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    roles = {
        r[0]
        for r in bind.execute(
            sa.text("SELECT rolname FROM pg_roles WHERE rolname IN ('anon', 'authenticated')")
        )
    }
    for table in (DEPLOYMENTS, ROUTES):
        op.execute(f'ALTER TABLE "{table}" ENABLE ROW LEVEL SECURITY')
        for role in sorted(roles):
            op.execute(f'REVOKE ALL ON TABLE "{table}" FROM {role}')
    op.execute(f"ALTER VIEW {VIEW} SET (security_invoker = true)")
    for role in sorted(roles):
        op.execute(f"REVOKE ALL ON {VIEW} FROM {role}")
    if "authenticated" in roles:
        # The app's signed-in users read the live split (through the view, as themselves).
        op.execute(f'GRANT SELECT ON TABLE "{ROUTES}" TO authenticated')
        op.execute(
            f'CREATE POLICY "authenticated users can read {ROUTES}" ON "{ROUTES}" '
            "FOR SELECT TO authenticated USING (true)"
        )
        op.execute(f"GRANT SELECT ON {VIEW} TO authenticated")


def downgrade() -> None:
    op.execute(f"DROP VIEW IF EXISTS {VIEW}")
    op.drop_table(ROUTES)
    op.drop_index(LEASE_INDEX, table_name=DEPLOYMENTS)
    op.drop_table(DEPLOYMENTS)
