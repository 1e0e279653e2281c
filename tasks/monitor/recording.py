"""What the monitor tells the registry, and how it survives the registry being away.

- `MonitorRecorder` is the port the flow wires to the registry, the Prefect UI and the webhook
  (tasks/job.py); `NullRecorder` logs only.
- `Outbox` wraps it: a write that fails (the database restarting, a network blip) is queued
  and replayed on the next poll, latest value only for progress and cost, so a registry
  outage never stops a healthy trainer and `current_step` catches up when it is back.
- `TrainerLog` hands the trainer's event objects and metric chunks to the recorder with a
  stable key each (the object's storage key), so the registry stores each exactly once
  whatever the number of restarts; its memory of what it read only saves storage reads.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from pydantic import ValidationError
from sqlalchemy import exc as sa_exc

from brightrun import layout
from brightrun.protocol import MetricRecord, TrainerEvent, TrainerStatus
from brightrun.registry.db import DatabaseUnavailable
from brightrun.storage import Storage, StorageError
from tasks.monitor.ledger import PodBill

log = logging.getLogger("tasks.monitor")

# A registry that is away (a database restarting, a network blip): queue and replay. Anything
# else (a constraint, a bug) is raised: the monitor's clean-up still terminates the pods.
REGISTRY_AWAY: tuple[type[BaseException], ...] = (
    DatabaseUnavailable,
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.TimeoutError,
    OSError,
)
OUTBOX_LIMIT = 50_000  # queued writes kept while the registry is away (then the oldest metrics go)
OUTBOX_LOG_EVERY_S = 60.0


class MonitorRecorder(Protocol):
    """Where the monitor reports; the flow wires it to the registry and Prefect artifacts.

    `key` makes a write idempotent: the registry stores one record per (job, key).
    """

    def event(self, type: str, attempt: int, payload: dict[str, Any], key: str | None = None) -> None: ...
    def status(self, status: TrainerStatus) -> None: ...
    def metrics(self, records: list[MetricRecord], key: str | None = None) -> None: ...
    def cost(self, actual_cost_usd: float, gpu_hours: float) -> None: ...
    def retries(self, count: int) -> None: ...


@dataclass(frozen=True)
class JobHistory:
    """What earlier monitor runs of the job recorded: its pods and their bills."""

    pods: list[PodBill] = field(default_factory=list)

    @property
    def last_attempt(self) -> int:
        return max((p.attempt for p in self.pods), default=0)


@runtime_checkable
class HistorySource(Protocol):
    def history(self) -> JobHistory: ...


class NullRecorder:
    def event(self, type: str, attempt: int, payload: dict[str, Any], key: str | None = None) -> None:
        log.info("event %s (attempt %d) %s", type, attempt, payload)

    def status(self, status: TrainerStatus) -> None:
        pass

    def metrics(self, records: list[MetricRecord], key: str | None = None) -> None:
        pass

    def cost(self, actual_cost_usd: float, gpu_hours: float) -> None:
        pass

    def retries(self, count: int) -> None:
        pass


class Outbox:
    """The recorder, with failed writes queued and replayed in order instead of raised."""

    def __init__(self, recorder: MonitorRecorder, clock: Callable[[], float] = time.monotonic) -> None:
        self.recorder = recorder
        self.clock = clock
        self.run_token = uuid.uuid4().hex[:12]  # keys this run's own events, so a replay is a no-op
        self._seq = 0
        self._queue: deque[tuple[str, tuple[Any, ...]]] = deque()
        self._latest: dict[str, tuple[Any, ...]] = {}  # status, cost, retries: only the last counts
        self._down_since: float | None = None
        self._logged_at = 0.0

    @property
    def pending(self) -> int:
        return len(self._queue) + len(self._latest)

    def event(self, type: str, attempt: int, payload: dict[str, Any], key: str | None = None) -> None:
        if key is None:
            self._seq += 1
            key = f"monitor:{self.run_token}:{self._seq}"
        self._send("event", (type, attempt, payload, key))

    def status(self, status: TrainerStatus) -> None:
        self._send("status", (status,), latest=True)

    def metrics(self, records: list[MetricRecord], key: str | None = None) -> None:
        self._send("metrics", (records, key))

    def cost(self, actual_cost_usd: float, gpu_hours: float) -> None:
        self._send("cost", (actual_cost_usd, gpu_hours), latest=True)

    def retries(self, count: int) -> None:
        self._send("retries", (count,), latest=True)

    def _send(self, method: str, args: tuple[Any, ...], *, latest: bool = False) -> None:
        if self.pending:  # keep the order: behind what is already waiting (flushed once a poll,
            self._enqueue(method, args, latest)  # so an absent registry delays a poll only once)
            return
        try:
            self._call(method, args)
        except REGISTRY_AWAY as exc:  # queue it: never stop a healthy trainer for the registry
            self._enqueue(method, args, latest)
            self._failed(exc)

    def _call(self, method: str, args: tuple[Any, ...]) -> None:
        if method == "event":
            type_, attempt, payload, key = args
            self.recorder.event(type_, attempt, payload, key=key)
        elif method == "metrics":
            records, key = args
            self.recorder.metrics(records, key=key)
        else:
            getattr(self.recorder, method)(*args)

    def _enqueue(self, method: str, args: tuple[Any, ...], latest: bool) -> None:
        if latest:
            self._latest[method] = args
            return
        self._queue.append((method, args))
        while len(self._queue) > OUTBOX_LIMIT:
            oldest = next((i for i, (m, _) in enumerate(self._queue) if m == "metrics"), 0)
            log.error("registry away too long: dropped a queued %s write", self._queue[oldest][0])
            del self._queue[oldest]

    def flush(self) -> bool:
        """Replay queued writes in order; True when nothing is left waiting."""
        while self._queue:
            method, args = self._queue[0]
            try:
                self._call(method, args)
            except REGISTRY_AWAY as exc:  # still away: try again next poll
                self._failed(exc)
                return False
            self._queue.popleft()
        for method in ("retries", "status", "cost"):
            args = self._latest.get(method)
            if args is None:
                continue
            try:
                self._call(method, args)
            except REGISTRY_AWAY as exc:
                self._failed(exc)
                return False
            del self._latest[method]
        if self._down_since is not None:
            log.warning(
                "registry writes work again after %.0fs; every queued write is recorded",
                self.clock() - self._down_since,
            )
            self._down_since = None
        return True

    def _failed(self, exc: BaseException) -> None:
        now = self.clock()
        if self._down_since is None:
            self._down_since = now
        if self._logged_at == 0.0 or now - self._logged_at >= OUTBOX_LOG_EVERY_S:
            self._logged_at = now
            log.error(
                "registry write failed (%s: %s); %d write(s) queued for %.0fs, the trainer keeps "
                "running and they are replayed when the registry answers",
                type(exc).__name__,
                exc,
                self.pending,
                now - self._down_since,
            )


class TrainerLog:
    """The trainer's event objects and metric chunks, handed to the recorder once per poll."""

    def __init__(self, storage: Storage, job: layout.JobLayout, recorder: MonitorRecorder) -> None:
        self.storage, self.job, self.recorder = storage, job, recorder
        self.seen: set[str] = set()  # saves re-reading; the registry's keys are the guarantee

    def poll(self) -> None:
        for directory in (layout.EVENTS_DIR, layout.METRICS_DIR):
            try:
                keys = self.storage.list(self.job.key(directory) + "/")
            except StorageError as exc:
                log.warning("could not list %s (%s); trying again next poll", directory, exc)
                continue
            for key in keys:
                if key in self.seen or key.endswith(".partial"):
                    continue
                try:
                    raw = self.storage.get_bytes(key)
                except StorageError as exc:  # listed but not readable yet: next poll
                    log.debug("not read yet: %s (%s)", key, exc)
                    continue
                self.seen.add(key)
                name = key.removeprefix(self.job.prefix + "/")
                try:
                    if directory == layout.EVENTS_DIR:
                        event = TrainerEvent.model_validate_json(raw)
                        payload = {**event.payload, "source": "trainer"}
                        self.recorder.event(event.type, event.attempt, payload, key=name)
                    else:
                        lines = raw.decode().splitlines()
                        records = [MetricRecord.model_validate_json(line) for line in lines if line.strip()]
                        if records:
                            self.recorder.metrics(records, key=name)
                except (ValidationError, UnicodeDecodeError) as exc:
                    log.error("the trainer wrote an unreadable %s (%s); skipped", key, exc)
