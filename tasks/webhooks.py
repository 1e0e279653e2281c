"""Retry the webhook outbox (issue 20): deliveries an earlier run could not make.

`brightrun reap` and the `reap_pods` flow (every 5 minutes) call `deliver_pending`: each due
entry gets one POST (same delivery id as before, so the receiver dedupes, fresh timestamp);
a failure is due again after a backoff (1, 2, 4 ... minutes, at most an hour); an entry past
its expiry (`BRIGHTRUN_WEBHOOK_EXPIRY_SECONDS`, 24 h) is marked `expired`, logged as an error
and recorded on its job as a `webhook_lost` event.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import httpx
from sqlalchemy.engine import Engine

from brightrun.registry import outbox
from tasks.notify import deliver_reason

if TYPE_CHECKING:
    from brightrun.resources import Resources

log = logging.getLogger("brightrun.webhook")


@dataclass(frozen=True)
class OutboxRun:
    delivered: int = 0
    failed: int = 0
    expired: int = 0


def deliver_pending(
    engine: Engine, secret: str | None, *, timeout_s: float = 10.0, now: datetime | None = None
) -> OutboxRun:
    """One pass over the due outbox entries; never raises for a receiver's failure."""
    entries = outbox.due(engine, now)
    if not entries:
        return OutboxRun()
    if not secret:
        log.error(
            "%d webhook(s) waiting in the outbox, but BRIGHTRUN_WEBHOOK_SECRET is not set", len(entries)
        )
        return OutboxRun()
    delivered = failed = expired = 0
    with httpx.Client(timeout=timeout_s) as client:
        for entry in entries:
            reason = deliver_reason(client, entry.url, entry.body, secret, attempts=1, delivery_id=entry.id)
            if reason is None:
                outbox.mark_delivered(engine, entry.id)
                delivered += 1
                continue
            if outbox.mark_failed(engine, entry, reason, now) == outbox.EXPIRED:
                expired += 1
                _record_loss(engine, entry, reason)
            else:
                failed += 1
    return OutboxRun(delivered, failed, expired)


def _record_loss(engine: Engine, entry: outbox.OutboxEntry, reason: str) -> None:
    log.error(
        "webhook %s (%s of job %s) to %s LOST: undelivered until it expired after %d attempt(s); last: %s",
        entry.id,
        entry.event,
        entry.job_id,
        entry.url,
        entry.attempts + 1,
        reason,
    )
    if not entry.job_id:
        return
    from brightrun.registry import repository as repo

    try:
        repo.add_event(
            engine,
            entry.job_id,
            "webhook_lost",
            delivery_id=entry.id,
            status=entry.event,
            url=entry.url,
            attempts=entry.attempts + 1,
            reason=reason,
        )
    except Exception as exc:  # the log line above stands
        log.warning("webhook %s: loss not recorded on job %s (%s)", entry.id, entry.job_id, exc)


def deliver_pending_with(resources: Resources) -> OutboxRun:
    """`deliver_pending` over the registry of `resources`; never raises."""
    settings = resources.settings
    secret = settings.webhook_secret
    try:
        return deliver_pending(
            resources.registry,
            secret.get_secret_value() if secret else None,
            timeout_s=settings.webhook_timeout_seconds,
        )
    except Exception as exc:
        log.warning("webhook outbox not retried this time: %s", exc)
        return OutboxRun()
