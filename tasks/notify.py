"""Webhook notifications compatible with the existing dashboard (DESIGN.md §7).

On every status change, and at most every `progress_interval_s` of progress, POST

    {job_id, status, step, total_steps, metrics{loss, learning_rate, grad_norm, epoch},
     lora_artifact_path, error_message, timestamp, estimated_completion_at}

with `X-Webhook-Signature: hex(HMAC-SHA256(secret, raw body))`. `estimated_completion_at` (ISO
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
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

log = logging.getLogger("brightrun.webhook")
SIGNATURE_HEADER = "X-Webhook-Signature"


def sign(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, signature: str) -> bool:
    return hmac.compare_digest(sign(secret, body), signature)


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
) -> bool:
    """POST once with retries on network errors, 5xx and 429; True when the receiver took it."""
    headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(secret, body)}
    for attempt in range(1, attempts + 1):
        try:
            response = client.post(url, content=body, headers=headers)
            if response.status_code < 300:
                return True
            retryable = response.status_code >= 500 or response.status_code == 429
            reason = f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            retryable, reason = True, f"{type(exc).__name__}: {exc}"
        if not retryable or attempt == attempts:
            log.warning("webhook %s not delivered after %d attempt(s): %s", url, attempt, reason)
            return False
        sleep(backoff_s * 2 ** (attempt - 1))
    return False


@dataclass
class WebhookNotifier:
    """Queue-backed, ordered, never-raising webhook sender for one job."""

    url: str | None
    secret: str | None
    progress_interval_s: float = 10.0
    attempts: int = 4
    backoff_s: float = 0.5
    timeout_s: float = 10.0
    sent: int = 0
    failed: int = 0
    _queue: queue.Queue[bytes | None] = field(default_factory=queue.Queue)
    _thread: threading.Thread | None = None
    _throttle: ProgressThrottle = field(init=False)

    def __post_init__(self) -> None:
        self._throttle = ProgressThrottle(self.progress_interval_s)

    @property
    def enabled(self) -> bool:
        return bool(self.url and self.secret)

    def status_changed(self, payload: dict[str, Any]) -> None:
        if self._throttle.admit(payload["status"], progress=False):
            self._enqueue(payload)

    def progress(self, payload: dict[str, Any]) -> None:
        if self._throttle.admit(payload["status"], progress=True):
            self._enqueue(payload)

    def _enqueue(self, payload: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="brightrun-webhook", daemon=True)
            self._thread.start()
        self._queue.put(encode(payload))

    def _run(self) -> None:
        assert self.url and self.secret
        with httpx.Client(timeout=self.timeout_s) as client:
            while (body := self._queue.get()) is not None:
                try:
                    ok = deliver(
                        client, self.url, body, self.secret, attempts=self.attempts, backoff_s=self.backoff_s
                    )
                except Exception:  # a webhook must never take the job down
                    log.exception("webhook delivery crashed")
                    ok = False
                if ok:
                    self.sent += 1
                else:
                    self.failed += 1

    def close(self, timeout_s: float = 30.0) -> None:
        """Deliver what is queued (bounded wait), then stop the sender."""
        if self._thread is None:
            return
        self._queue.put(None)
        self._thread.join(timeout_s)
        self._thread = None
