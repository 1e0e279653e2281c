"""THROWAWAY (engineer "ab"): the routes table A/B needs, until engineer "deploy"'s migration
0005 replaces this file at merge. Only `serving_routes` and the view `serving_routes_live`.

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

TABLE = "serving_routes"
VIEW = "serving_routes_live"


def upgrade() -> None:
    bind = op.get_bind()
    postgres = bind.dialect.name == "postgresql"
    op.create_table(
        TABLE,
        sa.Column(
            "id",
            sa.Uuid(),
            primary_key=True,
            **({"server_default": sa.text("gen_random_uuid()")} if postgres else {}),
        ),
        sa.Column("endpoint_id", sa.String(255), nullable=False),
        sa.Column("served_name", sa.String(40), nullable=False),
        sa.Column("artifact_id", sa.Uuid(), sa.ForeignKey("model_artifacts.id"), nullable=False),
        sa.Column("share_percent", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True)),
        sa.CheckConstraint("share_percent BETWEEN 0 AND 100", name="ck_serving_routes_share_percent"),
    )
    op.create_index("ix_serving_routes_endpoint_id", TABLE, ["endpoint_id", "ended_at"])
    op.execute(
        f"CREATE VIEW {VIEW} AS SELECT endpoint_id, served_name, artifact_id, share_percent, started_at "
        f"FROM {TABLE} WHERE ended_at IS NULL"
    )
    if postgres:
        roles = {
            r[0]
            for r in bind.execute(
                sa.text("SELECT rolname FROM pg_roles WHERE rolname IN ('anon', 'authenticated')")
            )
        }
        op.execute(f"ALTER TABLE {TABLE} ENABLE ROW LEVEL SECURITY")
        op.execute(f"ALTER VIEW {VIEW} SET (security_invoker = true)")
        for role in sorted(roles):
            op.execute(f"REVOKE ALL ON TABLE {TABLE} FROM {role}")
            op.execute(f"REVOKE ALL ON {VIEW} FROM {role}")
        if "authenticated" in roles:  # the app picks `model` from the view
            op.execute(f"GRANT SELECT ON TABLE {TABLE} TO authenticated")
            op.execute(f"GRANT SELECT ON {VIEW} TO authenticated")
            op.execute(
                f'CREATE POLICY "authenticated users can read {TABLE}" ON {TABLE} '
                "FOR SELECT TO authenticated USING (true)"
            )


def downgrade() -> None:
    op.execute(f"DROP VIEW IF EXISTS {VIEW}")
    op.drop_index("ix_serving_routes_endpoint_id", table_name=TABLE)
    op.drop_table(TABLE)
