"""Everything the trainer tells the orchestrator, through storage only (DESIGN.md §4).

`status.json` is rewritten by a background thread every few seconds and at once on
each phase change; metric records go to new `metrics/<attempt>-<n>.jsonl` chunks
(object stores do not append); events to `events/<attempt>-<n>.json`. A lock keeps
the heartbeat thread from overwriting a later status with an older snapshot.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from typing import Any

from brightrun import layout
from brightrun.protocol import (  # noqa: F401  (previous_attempts is re-exported for the trainer)
    MetricRecord,
    TrainerEvent,
    TrainerFailure,
    TrainerPhase,
    TrainerStatus,
    previous_attempts,
    utcnow,
)
from brightrun.storage import Storage

log = logging.getLogger(__name__)


def last_reported_step(storage: Storage) -> int:
    """The highest step any earlier attempt reported (status.json or its newest metric chunk).
    Both lag the real position by up to one heartbeat, so lost steps are a lower bound."""
    status = read_previous_status(storage)
    step = status.step if status else 0
    chunks = storage.list(layout.METRICS_DIR + "/")
    if chunks:
        try:
            lines = storage.get_bytes(chunks[-1]).decode().splitlines()
            step = max([step, *(MetricRecord.model_validate_json(line).step for line in lines if line)])
        except Exception as exc:  # a report, not a reason to fail
            log.warning("cannot read %s: %s", chunks[-1], exc)
    return step


def read_previous_status(storage: Storage) -> TrainerStatus | None:
    try:
        return TrainerStatus.model_validate(storage.get_json(layout.STATUS))
    except Exception:
        return None


class Reporter:
    def __init__(self, storage: Storage, job_id: str, attempt: int, interval: float = 5.0) -> None:
        self.storage = storage
        self.job_id = job_id
        self.attempt = attempt
        self.interval = interval
        self.status = TrainerStatus(phase=TrainerPhase.starting, attempt=attempt)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._metrics: list[MetricRecord] = []
        self._metric_chunks = 0
        self._events = 0
        self._last_metrics_flush = time.monotonic()

    # status -----------------------------------------------------------------
    def _write_status(self) -> None:
        self.status.updated_at = utcnow()
        self.storage.put_bytes(layout.STATUS, self.status.model_dump_json(indent=2).encode())

    def update(self, **fields: Any) -> None:
        with self._lock:
            for name, value in fields.items():
                setattr(self.status, name, value)

    def phase(self, phase: TrainerPhase, **fields: Any) -> None:
        log.info("phase: %s", phase.value)
        with self._lock:
            self.status.phase = phase
            for name, value in fields.items():
                setattr(self.status, name, value)
            self._write_status()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._beat, name="heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                with self._lock:
                    if not self._stop.is_set():
                        self._write_status()
            except Exception as exc:  # a missed heartbeat must not kill training
                log.warning("heartbeat not written: %s", exc)

    # metrics ----------------------------------------------------------------
    def metric(self, record: MetricRecord) -> None:
        self._metrics.append(record)
        if time.monotonic() - self._last_metrics_flush >= self.interval:
            self.flush_metrics()

    def flush_metrics(self) -> None:
        self._last_metrics_flush = time.monotonic()
        if not self._metrics:
            return
        self._metric_chunks += 1
        body = "".join(r.model_dump_json() + "\n" for r in self._metrics).encode()
        self.storage.put_bytes(layout.metrics_file(self.attempt, self._metric_chunks), body)
        self._metrics = []

    # events and terminal markers -------------------------------------------
    def event(self, type_: str, **payload: Any) -> None:
        self._events += 1
        log.info("event %s %s", type_, payload)
        event = TrainerEvent(type=type_, attempt=self.attempt, payload=payload)
        self.storage.put_bytes(
            layout.event_file(self.attempt, self._events), event.model_dump_json(indent=2).encode()
        )

    def failure(self, exc: BaseException) -> None:
        failed_in = self.status.phase
        failure = TrainerFailure(
            job_id=self.job_id,
            phase=failed_in,
            error=str(exc) or type(exc).__name__,
            error_type=type(exc).__name__,
            traceback="".join(traceback.format_exception(exc)),
            step=self.status.step,
            attempt=self.attempt,
        )
        self.storage.put_bytes(layout.FAILURE, failure.model_dump_json(indent=2).encode())
        self.phase(TrainerPhase.failed)


class QuietReporter(Reporter):
    """Ranks above 0 of a data-parallel run: the same calls as rank 0, nothing written."""

    def _write_status(self) -> None:
        pass

    def start(self) -> None:
        pass

    def flush_metrics(self) -> None:
        self._metrics = []

    def event(self, type_: str, **payload: Any) -> None:
        pass

    def failure(self, exc: BaseException) -> None:
        pass
