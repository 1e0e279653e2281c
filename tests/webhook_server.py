"""A real local HTTP server that receives webhooks and verifies their signatures."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from tasks.notify import SIGNATURE_HEADER, verify
from tests.fixtures.http import serve_http


@dataclass
class WebhookReceiver:
    secret: str
    url: str = ""
    fail_first: int = 0  # answer 503 to this many requests first (to exercise retries)
    attempts: int = 0
    received: list[dict[str, Any]] = field(default_factory=list)
    bad_signatures: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def statuses(self) -> list[str]:
        with self.lock:
            return [p["status"] for p in self.received]


@contextmanager
def webhook_receiver(secret: str, fail_first: int = 0) -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver(secret=secret, fail_first=fail_first)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with receiver.lock:
                receiver.attempts += 1
                if receiver.attempts <= receiver.fail_first:
                    self.send_response(503)
                    self.end_headers()
                    return
                if not verify(receiver.secret, body, self.headers.get(SIGNATURE_HEADER, "")):
                    receiver.bad_signatures += 1
                    self.send_response(401)
                    self.end_headers()
                    return
                receiver.received.append(json.loads(body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    with serve_http(Handler) as base:
        receiver.url = f"{base}/hook"
        yield receiver
