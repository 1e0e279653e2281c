"""The webhook outbox (issue 20): every status-change delivery is kept in the registry until
the receiver took it or it expired, so a receiver that was slow or down when the job ended
still gets the terminal status from a later run (`tasks.webhooks.deliver_pending`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from brightrun.registry.models import WebhookOutboxEntry, utcnow

PENDING, DELIVERED, EXPIRED = "pending", "delivered", "expired"
MAX_BACKOFF_SECONDS = 3600.0
FIRST_BACKOFF_SECONDS = 60.0


@dataclass(frozen=True)
class OutboxEntry:
    id: str
    url: str
    event: str
    job_id: str | None
    body: bytes
    attempts: int
    expires_at: datetime


def backoff_after(attempts: int) -> float:
    """Seconds before the next try after `attempts` failed ones: 1, 2, 4 ... minutes, at most an hour."""
    return min(FIRST_BACKOFF_SECONDS * 2 ** max(0, attempts - 1), MAX_BACKOFF_SECONDS)


def keep(
    engine: Engine,
    *,
    delivery_id: str,
    url: str,
    event: str,
    job_id: str | None,
    body: bytes,
    expiry_seconds: float,
    now: datetime | None = None,
) -> None:
    now = now or utcnow()
    with engine.begin() as conn:
        conn.execute(
            sa.insert(WebhookOutboxEntry.__table__).values(
                id=delivery_id,
                url=url,
                event=event,
                job_id=job_id,
                body=body.decode(),
                created_at=now,
                expires_at=now + timedelta(seconds=expiry_seconds),
                next_attempt_at=now,
                attempts=0,
                status=PENDING,
            )
        )


def _entry(r: Mapping[str, Any]) -> OutboxEntry:
    return OutboxEntry(
        id=r["id"],
        url=r["url"],
        event=r["event"],
        job_id=r["job_id"],
        body=str(r["body"]).encode(),
        attempts=int(r["attempts"]),
        expires_at=r["expires_at"],
    )


def entry(engine: Engine, delivery_id: str) -> OutboxEntry | None:
    table = WebhookOutboxEntry.__table__
    with engine.begin() as conn:
        row = conn.execute(sa.select(table).where(table.c.id == delivery_id)).mappings().first()
    return None if row is None else _entry(row)


def due(engine: Engine, now: datetime | None = None, limit: int = 50) -> list[OutboxEntry]:
    """Pending deliveries whose next try is due, oldest first (so a job's statuses keep order)."""
    now = now or utcnow()
    table = WebhookOutboxEntry.__table__
    with engine.begin() as conn:
        rows = conn.execute(
            sa.select(table)
            .where(table.c.status == PENDING, table.c.next_attempt_at <= now)
            .order_by(table.c.created_at, table.c.id)
            .limit(limit)
        ).mappings()
        return [_entry(r) for r in rows]


def mark_delivered(engine: Engine, delivery_id: str) -> None:
    table = WebhookOutboxEntry.__table__
    with engine.begin() as conn:
        conn.execute(
            sa.update(table)
            .where(table.c.id == delivery_id)
            .values(status=DELIVERED, delivered_at=utcnow(), attempts=table.c.attempts + 1)
        )


def mark_failed(engine: Engine, entry: OutboxEntry, error: str, now: datetime | None = None) -> str:
    """Record a failed try: due again after the backoff, or `expired` past its expiry. Returns
    the entry's new status."""
    now = now or utcnow()
    attempts = entry.attempts + 1
    status = EXPIRED if now >= entry.expires_at else PENDING
    table = WebhookOutboxEntry.__table__
    with engine.begin() as conn:
        conn.execute(
            sa.update(table)
            .where(table.c.id == entry.id)
            .values(
                status=status,
                attempts=attempts,
                last_error=error[:2000],
                next_attempt_at=now + timedelta(seconds=backoff_after(attempts)),
            )
        )
    return status


def status_of(engine: Engine, delivery_id: str) -> str | None:
    table = WebhookOutboxEntry.__table__
    with engine.begin() as conn:
        return conn.execute(sa.select(table.c.status).where(table.c.id == delivery_id)).scalar()
