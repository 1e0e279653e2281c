"""Webhooks (DESIGN.md §7): signed, ordered, throttled, retried, and never raising."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket

import httpx

from tasks.notify import (
    ProgressThrottle,
    WebhookNotifier,
    build_payload,
    deliver,
    encode,
    sign,
)
from tests.webhook_server import webhook_receiver

SECRET = "s3cret-for-tests"


def test_signature_is_hmac_sha256_of_the_raw_body() -> None:
    body = encode(build_payload("job-1", "training", step=3, total_steps=10, loss=1.5))
    assert sign(SECRET, body) == hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    payload = json.loads(body)
    assert set(payload) == {
        "job_id",
        "status",
        "step",
        "total_steps",
        "metrics",
        "lora_artifact_path",
        "error_message",
        "timestamp",
        "estimated_completion_at",
    }
    assert payload["metrics"] == {"loss": 1.5, "learning_rate": None, "grad_norm": None, "epoch": None}
    assert payload["estimated_completion_at"] is None  # no step rate yet


def test_payload_carries_the_estimated_completion_time() -> None:
    from datetime import UTC, datetime, timedelta

    from tasks.reporting.progress import estimate_completion

    start = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    eta = estimate_completion(10, 40, start, start + timedelta(minutes=5))  # 2 steps a minute
    payload = json.loads(
        encode(build_payload("j", "training", step=10, total_steps=40, estimated_completion_at=eta))
    )
    assert datetime.fromisoformat(payload["estimated_completion_at"]) == start + timedelta(minutes=20)


def test_throttle_passes_status_changes_and_spaces_progress() -> None:
    now = [0.0]
    throttle = ProgressThrottle(10.0, clock=lambda: now[0])
    assert throttle.admit("training", progress=False)
    now[0] = 1.0
    assert not throttle.admit("training", progress=True)
    now[0] = 10.5
    assert throttle.admit("training", progress=True)
    now[0] = 11.0
    assert not throttle.admit("training", progress=True)
    assert throttle.admit("completed", progress=False)  # a status change is never held back


def test_notifier_delivers_in_order_with_valid_signatures() -> None:
    with webhook_receiver(SECRET) as receiver:
        notifier = WebhookNotifier(receiver.url, SECRET, progress_interval_s=3600)
        notifier.status_changed(build_payload("j", "queued"))
        notifier.status_changed(build_payload("j", "training"))
        for step in range(1, 6):
            notifier.progress(build_payload("j", "training", step=step, total_steps=5))
        notifier.status_changed(
            build_payload("j", "completed", step=5, total_steps=5, lora_artifact_path="x")
        )
        notifier.close()
    assert receiver.bad_signatures == 0
    # progress right after a status change is throttled away; statuses all arrive, in order
    assert receiver.statuses == ["queued", "training", "completed"]
    assert receiver.received[-1]["lora_artifact_path"] == "x"
    assert notifier.sent == 3 and notifier.failed == 0


def test_delivery_is_retried_after_server_errors() -> None:
    with webhook_receiver(SECRET, fail_first=2) as receiver, httpx.Client(timeout=5) as client:
        body = encode(build_payload("j", "failed", error_message="boom"))
        assert deliver(client, receiver.url, body, SECRET, attempts=3, sleep=lambda s: None)
    assert receiver.attempts == 3
    assert receiver.received[0]["error_message"] == "boom"


def test_rejected_signature_is_not_retried() -> None:
    with webhook_receiver("other-secret") as receiver, httpx.Client(timeout=5) as client:
        body = encode(build_payload("j", "queued"))
        assert not deliver(client, receiver.url, body, SECRET, attempts=4, sleep=lambda s: None)
    assert receiver.attempts == 1 and receiver.bad_signatures == 1


def test_dead_endpoint_never_raises() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    notifier = WebhookNotifier(f"http://127.0.0.1:{port}/hook", SECRET, attempts=2, backoff_s=0.01)
    notifier.status_changed(build_payload("j", "queued"))
    notifier.status_changed(build_payload("j", "failed"))
    notifier.close()
    assert notifier.sent == 0 and notifier.failed == 2


def test_without_url_or_secret_nothing_is_sent() -> None:
    notifier = WebhookNotifier(None, SECRET)
    notifier.status_changed(build_payload("j", "queued"))
    notifier.close()
    assert not notifier.enabled and notifier.sent == 0
