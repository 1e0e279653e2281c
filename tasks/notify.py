"""Webhook notifications compatible with the existing dashboard (DESIGN.md §7).

On every status change, and at most every `progress_interval_s` of progress, POST

    {job_id, status, step, total_steps, metrics{loss, learning_rate, grad_norm, epoch},
     lora_artifact_path, error_message, timestamp, estimated_completion_at}

with `X-Webhook-Signature: hex(HMAC-SHA256(secret, raw body))` (the seed's, which the dashboard
verifies) and, since issue 20, `X-Webhook-Id` (one per delivery, the same on every retry),
`X-Webhook-Timestamp` (epoch seconds of this attempt) and `X-Webhook-Signature-V2:
hex(HMAC-SHA256(secret, "<id>.<timestamp>." + raw body))`, which `verify` checks for freshness
(5 minutes by default) and replays (by id), as Stripe and Svix do. Status changes are kept in the
registry's outbox (brightrun/registry/outbox.py) until delivered or expired, and retried by
later runs (tasks/webhooks.py); a progress update that fails is logged and dropped (the next
one supersedes it). `estimated_completion_at` (ISO
time, or null until a step rate is known; tasks/reporting/progress.py `estimate_completion`) is an
addition to DESIGN.md §7: a receiver that ignores unknown keys is unaffected. Deliveries run on a
background thread in order, so a slow or dead endpoint never stalls the monitor loop; each
is retried with exponential backoff and a failure is logged, never raised.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Mapping, MutableSet
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

log = logging.getLogger("brightrun.webhook")
SIGNATURE_HEADER = "X-Webhook-Signature"
ID_HEADER = "X-Webhook-Id"
TIMESTAMP_HEADER = "X-Webhook-Timestamp"
SIGNATURE_V2_HEADER = "X-Webhook-Signature-V2"
DEFAULT_TOLERANCE_SECONDS = 300.0


def sign(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def sign_v2(secret: str, delivery_id: str, timestamp: int, body: bytes) -> str:
    """The signature over the delivery's id, its timestamp and the body: a replay cannot
    change either without the secret."""
    return sign(secret, f"{delivery_id}.{timestamp}.".encode() + body)


def verify_signature(secret: str, body: bytes, signature: str) -> bool:
    """The seed's check (the raw body only): no freshness, no replay protection."""
    return hmac.compare_digest(sign(secret, body), signature)


def verify(
    secret: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    tolerance_seconds: float = DEFAULT_TOLERANCE_SECONDS,
    seen_ids: MutableSet[str] | None = None,
    now: float | None = None,
) -> bool:
    """A receiver's check: the V2 signature over id, timestamp and body; a timestamp within
    `tolerance_seconds` of now (either way); and, with `seen_ids` (the receiver's memory of
    ids, kept at least as long as the tolerance), an id not seen before, which it then adds."""
    lowered = {k.lower(): v for k, v in headers.items()}
    delivery_id = lowered.get(ID_HEADER.lower(), "")
    signature = lowered.get(SIGNATURE_V2_HEADER.lower(), "")
    try:
        timestamp = int(lowered.get(TIMESTAMP_HEADER.lower(), ""))
    except ValueError:
        return False
    if not delivery_id or not hmac.compare_digest(sign_v2(secret, delivery_id, timestamp, body), signature):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance_seconds:
        return False
    if seen_ids is not None:
        if delivery_id in seen_ids:
            return False
        seen_ids.add(delivery_id)
    return True


def new_delivery_id() -> str:
    return f"wh_{uuid.uuid4().hex}"


def delivery_headers(
    secret: str, body: bytes, delivery_id: str, timestamp: int | None = None
) -> dict[str, str]:
    ts = int(time.time()) if timestamp is None else timestamp
    return {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: sign(secret, body),
        ID_HEADER: delivery_id,
        TIMESTAMP_HEADER: str(ts),
        SIGNATURE_V2_HEADER: sign_v2(secret, delivery_id, ts, body),
    }


def build_payload(
    job_id: str,
    status: str,
    *,
    step: int = 0,
    total_steps: int = 0,
    loss: float | None = None,
    learning_rate: float | None = None,
    grad_norm: float | None = None,
    epoch: float | None = None,
    lora_artifact_path: str | None = None,
    error_message: str | None = None,
    timestamp: datetime | None = None,
    estimated_completion_at: datetime | None = None,
) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "status": status,
        "step": step,
        "total_steps": total_steps,
        "metrics": {"loss": loss, "learning_rate": learning_rate, "grad_norm": grad_norm, "epoch": epoch},
        "lora_artifact_path": lora_artifact_path,
        "error_message": error_message,
        "timestamp": (timestamp or datetime.now(UTC)).isoformat(),
        "estimated_completion_at": estimated_completion_at.isoformat() if estimated_completion_at else None,
    }


def encode(payload: dict[str, Any]) -> bytes:
    """The exact bytes that are signed and sent (the receiver verifies these, not a re-encoding)."""
    return json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()


@dataclass
class ProgressThrottle:
    """Status changes always pass; progress passes at most once per `interval_s`."""

    interval_s: float
    clock: Callable[[], float] = time.monotonic
    _last_progress: float | None = None
    _last_status: str | None = None

    def admit(self, status: str, *, progress: bool) -> bool:
        now = self.clock()
        if status != self._last_status or not progress:
            self._last_status = status
            self._last_progress = now
            return True
        if self._last_progress is None or now - self._last_progress >= self.interval_s:
            self._last_progress = now
            return True
        return False


def deliver(
    client: httpx.Client,
    url: str,
    body: bytes,
    secret: str,
    *,
    attempts: int = 4,
    backoff_s: float = 0.5,
    sleep: Callable[[float], None] = time.sleep,
    delivery_id: str | None = None,
) -> bool:
    """POST with retries on network errors, 5xx and 429; True when the receiver took it."""
    return (
        deliver_reason(
            client,
            url,
            body,
            secret,
            attempts=attempts,
            backoff_s=backoff_s,
            sleep=sleep,
            delivery_id=delivery_id,
        )
        is None
    )


def deliver_reason(
    client: httpx.Client,
    url: str,
    body: bytes,
    secret: str,
    *,
    attempts: int = 4,
    backoff_s: float = 0.5,
    sleep: Callable[[float], None] = time.sleep,
    delivery_id: str | None = None,
) -> str | None:
    """As `deliver`; None when delivered, else why not. Every retry carries the same id (the
    receiver dedupes one that timed out here but arrived there) and a fresh timestamp."""
    delivery_id = delivery_id or new_delivery_id()
    reason = "not tried"
    for attempt in range(1, attempts + 1):
        try:
            response = client.post(url, content=body, headers=delivery_headers(secret, body, delivery_id))
            if response.status_code < 300:
                return None
            retryable = response.status_code >= 500 or response.status_code == 429
            reason = f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            retryable, reason = True, f"{type(exc).__name__}: {exc}"
        if not retryable or attempt == attempts:
            log.warning(
                "webhook %s (%s) not delivered after %d attempt(s): %s", url, delivery_id, attempt, reason
            )
            return reason
        sleep(backoff_s * 2 ** (attempt - 1))
    return reason


@dataclass
class WebhookNotifier:
    """Queue-backed, ordered, never-raising webhook sender for one job."""

    url: str | None
    secret: str | None
    progress_interval_s: float = 10.0
    attempts: int = 4
    backoff_s: float = 0.5
    timeout_s: float = 10.0
    # The registry's outbox (issue 20): status changes are kept there until delivered, and
    # later runs retry what this one could not deliver until `expiry_seconds`.
    outbox: Engine | None = None
    expiry_seconds: float = 86400.0
    sent: int = 0
    failed: int = 0
    _queue: queue.Queue[tuple[str, bytes, bool] | None] = field(default_factory=queue.Queue)
    _thread: threading.Thread | None = None
    _throttle: ProgressThrottle = field(init=False)

    def __post_init__(self) -> None:
        self._throttle = ProgressThrottle(self.progress_interval_s)

    @property
    def enabled(self) -> bool:
        return bool(self.url and self.secret)

    def status_changed(self, payload: dict[str, Any]) -> None:
        if self._throttle.admit(payload["status"], progress=False):
            self._enqueue(payload, keep=True)

    def progress(self, payload: dict[str, Any]) -> None:
        if self._throttle.admit(payload["status"], progress=True):
            self._enqueue(payload, keep=False)

    def _enqueue(self, payload: dict[str, Any], *, keep: bool) -> None:
        if not self.enabled:
            return
        assert self.url
        body, delivery_id = encode(payload), new_delivery_id()
        kept = False
        if keep and self.outbox is not None:
            from brightrun.registry import outbox

            try:
                outbox.keep(
                    self.outbox,
                    delivery_id=delivery_id,
                    url=self.url,
                    event=str(payload.get("status")),
                    job_id=payload.get("job_id"),
                    body=body,
                    expiry_seconds=self.expiry_seconds,
                )
                kept = True
            except Exception as exc:  # the registry away: this run's tries are all it gets
                log.warning("webhook %s not kept in the outbox (%s): sent from memory only", delivery_id, exc)
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="brightrun-webhook", daemon=True)
            self._thread.start()
        self._queue.put((delivery_id, body, kept))

    def _run(self) -> None:
        assert self.url and self.secret
        with httpx.Client(timeout=self.timeout_s) as client:
            while (item := self._queue.get()) is not None:
                delivery_id, body, kept = item
                try:
                    reason = deliver_reason(
                        client,
                        self.url,
                        body,
                        self.secret,
                        attempts=self.attempts,
                        backoff_s=self.backoff_s,
                        delivery_id=delivery_id,
                    )
                except Exception as exc:  # a webhook must never take the job down
                    log.exception("webhook delivery crashed")
                    reason = f"{type(exc).__name__}: {exc}"
                self._settle(delivery_id, reason, kept)

    def _settle(self, delivery_id: str, reason: str | None, kept: bool) -> None:
        from brightrun.registry import outbox

        if reason is None:
            self.sent += 1
        else:
            self.failed += 1
        if not kept:
            if reason is not None:
                log.warning("webhook %s to %s lost (not kept for a retry): %s", delivery_id, self.url, reason)
            return
        assert self.outbox is not None
        try:
            if reason is None:
                outbox.mark_delivered(self.outbox, delivery_id)
                return
            entry = outbox.entry(self.outbox, delivery_id)
            if entry is not None:
                outbox.mark_failed(self.outbox, entry, reason)
            log.warning("webhook %s to %s kept in the outbox; a later run retries it", delivery_id, self.url)
        except Exception as exc:  # the row stays pending: a later run retries it (the receiver dedupes)
            log.warning("webhook %s: could not update the outbox (%s)", delivery_id, exc)

    def close(self, timeout_s: float = 30.0) -> None:
        """Deliver what is queued (bounded wait), then stop the sender. What is not delivered
        by then stays in the outbox (status changes) for a later run, and is logged."""
        if self._thread is None:
            return
        self._queue.put(None)
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            waiting = self._queue.qsize()
            log.warning(
                "webhook %s: receiver still busy after %.0fs; %d more update(s) waiting. Status changes stay "
                "in the registry's outbox and are retried by a later run (`brightrun reap`, the reap_pods "
                "schedule) until they expire; progress updates are dropped",
                self.url,
                timeout_s,
                waiting,
            )
        self._thread = None


def send_kept(
    client: httpx.Client,
    url: str,
    body: bytes,
    secret: str,
    *,
    outbox: Engine | None,
    event: str,
    job_id: str | None,
    expiry_seconds: float = 86400.0,
) -> bool:
    """One status-change delivery through the outbox: kept first, then sent; what is not
    delivered now stays pending for a later run. True when delivered now."""
    from brightrun.registry import outbox as box

    delivery_id = new_delivery_id()
    kept = False
    if outbox is not None:
        try:
            box.keep(
                outbox,
                delivery_id=delivery_id,
                url=url,
                event=event,
                job_id=job_id,
                body=body,
                expiry_seconds=expiry_seconds,
            )
            kept = True
        except Exception as exc:
            log.warning("webhook %s not kept in the outbox (%s): sent from memory only", delivery_id, exc)
    reason = deliver_reason(client, url, body, secret, delivery_id=delivery_id)
    if not kept:
        if reason is not None:
            log.warning("webhook %s to %s lost (not kept for a retry): %s", delivery_id, url, reason)
        return reason is None
    assert outbox is not None
    try:
        if reason is None:
            box.mark_delivered(outbox, delivery_id)
        else:
            entry = box.entry(outbox, delivery_id)
            if entry is not None:
                box.mark_failed(outbox, entry, reason)
            log.warning("webhook %s to %s kept in the outbox; a later run retries it", delivery_id, url)
    except Exception as exc:  # stays pending: retried later, deduped by the receiver
        log.warning("webhook %s: could not update the outbox (%s)", delivery_id, exc)
    return reason is None
