"""A real local HTTP server that receives webhooks and verifies them as a careful receiver
does: the seed's raw-body signature (the dashboard's check) and the V2 one over id, timestamp
and body, fresh within the tolerance, each delivery id accepted once (a repeat is answered
2xx, so the sender stops, but not recorded twice)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from tasks.notify import ID_HEADER, SIGNATURE_HEADER, verify, verify_signature
from tests.fixtures.http import serve_http


@dataclass
class WebhookReceiver:
    secret: str
    url: str = ""
    fail_first: int = 0  # answer 503 to this many requests first (to exercise retries)
    attempts: int = 0
    received: list[dict[str, Any]] = field(default_factory=list)
    bad_signatures: int = 0
    duplicates: int = 0
    delay_s: float = 0.0  # answer this much later (a slow receiver)
    seen_ids: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def statuses(self) -> list[str]:
        with self.lock:
            return [p["status"] for p in self.received]


@contextmanager
def webhook_receiver(secret: str, fail_first: int = 0, delay_s: float = 0.0) -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver(secret=secret, fail_first=fail_first, delay_s=delay_s)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if receiver.delay_s:
                time.sleep(receiver.delay_s)
            with receiver.lock:
                receiver.attempts += 1
                if receiver.attempts <= receiver.fail_first:
                    self.send_response(503)
                    self.end_headers()
                    return
                headers = dict(self.headers.items())
                if self.headers.get(ID_HEADER) in receiver.seen_ids:
                    receiver.duplicates += 1  # taken before: acknowledged, not processed again
                elif not verify_signature(
                    receiver.secret, body, self.headers.get(SIGNATURE_HEADER, "")
                ) or not verify(receiver.secret, body, headers, seen_ids=receiver.seen_ids):
                    receiver.bad_signatures += 1
                    self.send_response(401)
                    self.end_headers()
                    return
                else:
                    receiver.received.append(json.loads(body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    with serve_http(Handler) as base:
        receiver.url = f"{base}/hook"
        yield receiver
