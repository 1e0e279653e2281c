"""`endpoint_deployments`: what was deployed to which endpoint, and the endpoint's lease.

A deploy holds its endpoint by inserting its row as `deploying`: a partial unique index
(migration 0005) lets one such row exist per endpoint, so of two deploys at once the second
INSERT fails and that deploy is refused. An INSERT is atomic in one transaction, so this
works through PgBouncer's transaction mode (no session advisory lock). A lease whose holder
died expires (`lease_expires_at`) and is closed as `failed` by the next deploy.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from brightrun.errors import BrightrunError
from brightrun.registry.models import EndpointDeployment, EndpointDeploymentStatus, utcnow

table = EndpointDeployment.__table__
Status = EndpointDeploymentStatus


class DeployInProgress(BrightrunError):
    """Another deploy holds the endpoint."""

    exit_code = 2


def begin(
    engine: Engine,
    endpoint_id: str,
    *,
    template_id: str,
    env_before: dict[str, str],
    env_after: dict[str, str],
    served_names: Sequence[str],
    artifact_ids: Sequence[str],
    reason: str | None,
    lease_seconds: float,
) -> str:
    """Take the endpoint's lease (DeployInProgress if another deploy holds it); the row's id."""
    now = utcnow()
    with engine.begin() as conn:
        conn.execute(
            update(table)
            .where(
                table.c.endpoint_id == endpoint_id,
                table.c.status == Status.deploying.value,
                table.c.lease_expires_at < now,
            )
            .values(status=Status.failed.value, finished_at=now, error="lease expired: its deploy died")
        )
    row_id = uuid.uuid4()
    try:
        with engine.begin() as conn:
            conn.execute(
                table.insert().values(
                    id=row_id,
                    endpoint_id=endpoint_id,
                    template_id=template_id,
                    env_before=env_before,
                    env_after=env_after,
                    served_names=list(served_names),
                    artifact_ids=list(artifact_ids),
                    status=Status.deploying.value,
                    reason=reason,
                    lease_expires_at=now + timedelta(seconds=lease_seconds),
                    started_at=now,
                )
            )
    except IntegrityError:
        holder = current_deploy(engine, endpoint_id)
        since = f" since {holder['started_at']:%Y-%m-%d %H:%M:%S} UTC" if holder else ""
        raise DeployInProgress(
            f"another deploy to endpoint {endpoint_id} is in progress{since} "
            f"({', '.join(holder['served_names']) if holder else 'unknown'}); wait for it and try again"
        ) from None
    return str(row_id)


def current_deploy(bind: Engine | Connection, endpoint_id: str) -> dict[str, Any] | None:
    with bind.connect() if isinstance(bind, Engine) else _same(bind) as conn:
        row = conn.execute(
            select(table).where(table.c.endpoint_id == endpoint_id, table.c.status == Status.deploying.value)
        ).first()
    return dict(row._mapping) if row else None


class _same:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def __enter__(self) -> Connection:
        return self.conn

    def __exit__(self, *exc: object) -> None:
        return None


def finish(conn: Connection, deployment_id: str, status: Status, error: str | None = None) -> None:
    conn.execute(
        update(table)
        .where(table.c.id == uuid.UUID(deployment_id))
        .values(status=status.value, error=error, finished_at=utcnow(), lease_expires_at=None)
    )


def supersede_live(conn: Connection, endpoint_id: str, *, keep: str) -> None:
    conn.execute(
        update(table)
        .where(
            table.c.endpoint_id == endpoint_id,
            table.c.status == Status.live.value,
            table.c.id != uuid.UUID(keep),
        )
        .values(status=Status.superseded.value)
    )


def deployments(bind: Engine, endpoint_id: str) -> list[dict[str, Any]]:
    """The endpoint's deployments, newest first."""
    with bind.connect() as conn:
        rows = conn.execute(
            select(table).where(table.c.endpoint_id == endpoint_id).order_by(table.c.started_at.desc())
        ).all()
    return [dict(r._mapping) for r in rows]
