"""THROWAWAY (engineer "ab"): the routes of an endpoint, to the interface agreed with engineer
"deploy", whose version replaces this file at merge. A route is one served name taking a
share of an endpoint's traffic; live while `ended_at` is NULL."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, Uuid, insert, select, update
from sqlalchemy.orm import Session

from brightrun.errors import InputError

serving_routes = Table(
    "serving_routes",
    MetaData(),
    Column("id", Uuid(), primary_key=True),
    Column("endpoint_id", String(255), nullable=False),
    Column("served_name", String(40), nullable=False),
    Column("artifact_id", Uuid(), nullable=False),
    Column("share_percent", Integer, nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("ended_at", DateTime(timezone=True)),
)


@dataclass(frozen=True)
class Route:
    endpoint_id: str
    served_name: str
    artifact_id: str
    share_percent: int
    started_at: datetime


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def live_routes(session: Session, endpoint_id: str) -> list[Route]:
    rows = session.execute(
        select(serving_routes)
        .where(serving_routes.c.endpoint_id == endpoint_id, serving_routes.c.ended_at.is_(None))
        .order_by(serving_routes.c.share_percent.desc(), serving_routes.c.served_name)
    ).all()
    return [
        Route(r.endpoint_id, r.served_name, str(r.artifact_id), r.share_percent, _aware(r.started_at))
        for r in rows
    ]


def end_routes(session: Session, endpoint_id: str, *, now: datetime | None = None) -> int:
    result = session.execute(
        update(serving_routes)
        .where(serving_routes.c.endpoint_id == endpoint_id, serving_routes.c.ended_at.is_(None))
        .values(ended_at=now or datetime.now(UTC))
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def open_split(
    session: Session,
    endpoint_id: str,
    routes: Sequence[tuple[str, str, int]],
    *,
    now: datetime | None = None,
) -> list[Route]:
    """End the live routes and open these (served name, artifact id, share percent)."""
    if sum(share for _, _, share in routes) != 100:
        raise InputError(f"the shares of endpoint {endpoint_id} must add up to 100, not {routes}")
    now = now or datetime.now(UTC)
    end_routes(session, endpoint_id, now=now)
    for name, artifact_id, share in routes:
        session.execute(
            insert(serving_routes).values(
                id=uuid.uuid4(),
                endpoint_id=endpoint_id,
                served_name=name,
                artifact_id=uuid.UUID(artifact_id),
                share_percent=share,
                started_at=now,
            )
        )
    return live_routes(session, endpoint_id)
