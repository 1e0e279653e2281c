"""Webhooks you can trust (issue 20, item 7): delivery id, timestamp, a signature over both,
freshness and replay checks, and the registry's outbox for a receiver that was slow or down."""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from pathlib import Path

import pytest

from brightrun.registry import make_engine, outbox, upgrade
from brightrun.registry import repository as repo
from brightrun.registry.models import utcnow
from tasks.notify import (
    ID_HEADER,
    SIGNATURE_HEADER,
    SIGNATURE_V2_HEADER,
    TIMESTAMP_HEADER,
    WebhookNotifier,
    build_payload,
    delivery_headers,
    encode,
    sign,
    verify,
)
from tasks.webhooks import deliver_pending
from tests.webhook_server import webhook_receiver

SECRET = "s3cret-for-tests"


@pytest.fixture
def engine(tmp_path: Path):
    engine = make_engine(f"sqlite:///{tmp_path / 'r.db'}")
    upgrade(engine)
    yield engine
    engine.dispose()


def test_a_delivery_is_verified_once_and_only_while_fresh() -> None:
    body = encode(build_payload("job-1", "completed"))
    sent_at = int(time.time())
    headers = delivery_headers(SECRET, body, "wh_1", sent_at)
    assert headers[SIGNATURE_HEADER] == sign(SECRET, body)  # the seed's, for the dashboard
    assert headers[SIGNATURE_V2_HEADER] == sign(SECRET, f"wh_1.{sent_at}.".encode() + body)
    seen: set[str] = set()
    assert verify(SECRET, body, headers, seen_ids=seen)
    assert not verify(SECRET, body, headers, seen_ids=seen)  # replayed: same id
    # The reproduction: a `completed` captured 40 minutes earlier, replayed as is.
    assert not verify(SECRET, body, headers, now=sent_at + 40 * 60)
    assert verify(SECRET, body, headers, now=sent_at + 4 * 60)  # within the 5-minute default
    assert not verify(SECRET, body, headers, now=sent_at + 90, tolerance_seconds=60)
    # A replay with a new timestamp (or id) breaks the signature.
    forged = {**headers, TIMESTAMP_HEADER: str(int(time.time()))}
    assert not verify(SECRET, body, forged, now=sent_at + 40 * 60)
    assert not verify(SECRET, body, {**headers, ID_HEADER: "wh_2"})
    assert not verify(SECRET, body + b" ", headers)
    assert not verify("other-secret", body, headers)
    assert not verify(SECRET, body, {k: v for k, v in headers.items() if k != TIMESTAMP_HEADER})


def test_a_slow_receiver_gets_each_status_once_and_the_terminal_one_later(engine, caplog) -> None:
    """The reproduction: a receiver slower than the timeout got `queued` three times and never
    `completed`. Now retries carry one id (deduped), and what the run could not deliver waits
    in the outbox for a later run."""
    with webhook_receiver(SECRET, delay_s=0.8) as receiver:
        notifier = WebhookNotifier(
            receiver.url,
            SECRET,
            timeout_s=0.3,
            attempts=3,
            backoff_s=0.01,
            outbox=engine,
            expiry_seconds=3600,
        )
        for status in ("queued", "training", "completed"):
            notifier.status_changed(build_payload("job-slow", status))
        sender = notifier._thread
        with caplog.at_level(logging.WARNING, logger="brightrun.webhook"):
            notifier.close(timeout_s=1.0)
        assert "retried by a later run" in caplog.text
        assert sender is not None
        sender.join(timeout=30)  # its last tries (each timed out here, processed there)
        assert receiver.statuses == ["queued", "training", "completed"]  # once each, in order
        assert receiver.duplicates >= 1  # retries of one delivery id, taken once
        # The sender never saw an answer in time: every status waits in the outbox.
        later = utcnow() + timedelta(hours=2)  # past any backoff
        assert {e.event for e in outbox.due(engine, later)} == {"queued", "training", "completed"}
        receiver.delay_s = 0.0  # the receiver recovers; a later run (`brightrun reap`) retries
        run = deliver_pending(engine, SECRET, timeout_s=5, now=later)
        assert run.delivered == 3 and run.expired == 0
        assert receiver.statuses == ["queued", "training", "completed"]  # the receiver deduped
    assert outbox.due(engine, later + timedelta(days=1)) == []


def test_an_undeliverable_status_expires_logged_and_recorded_on_its_job(engine, caplog) -> None:
    job = repo.create_job(engine, job_name="lost", base_model="tiny")
    dead = "http://127.0.0.1:9/hook"  # nothing listens
    notifier = WebhookNotifier(dead, SECRET, attempts=1, outbox=engine, expiry_seconds=60)
    notifier.status_changed(build_payload(str(job.id), "completed"))
    notifier.close(timeout_s=10)
    (entry,) = outbox.due(engine, utcnow() + timedelta(hours=2))
    assert entry.event == "completed" and entry.attempts == 1
    with caplog.at_level(logging.ERROR, logger="brightrun.webhook"):
        run = deliver_pending(engine, SECRET, timeout_s=1, now=utcnow() + timedelta(hours=2))
    assert run.expired == 1 and outbox.status_of(engine, entry.id) == outbox.EXPIRED
    assert "LOST" in caplog.text and entry.id in caplog.text
    (lost,) = repo.list_events(engine, job.id, type="webhook_lost")
    assert lost.payload["delivery_id"] == entry.id and lost.payload["status"] == "completed"
