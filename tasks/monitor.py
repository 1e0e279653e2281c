"""The monitor loop: run one training job to an outcome on any compute backend (DESIGN.md §3, §4).

Each poll reads the pod's state, then the trainer's storage (heartbeat, terminal markers,
new events and metric chunks) — pod first, so a pod seen exited has nothing left to
write. An attempt ends as:

- completed: `result.json` exists;
- failed: `failure.json` exists (the trainer's own, deterministic failure: not retried);
- interrupted: the pod exited or vanished without a marker, or its heartbeat went silent
  past `heartbeat_timeout_seconds` (staleness is measured on this machine's clock, from
  the last time `status.json` changed, so pod clock skew does not matter).

An interruption terminates what is left of the pod and starts a new attempt (the trainer
resumes from `checkpoints/LATEST` by itself), up to `max_restarts`. Cost is Σ costPerHr x
uptime over every pod of the job; reaching `max_cost_usd` stops the job. Every exit path —
success, failure, cancellation, budget, an exception, KeyboardInterrupt — terminates every
pod of the job in a `finally`.

While waiting the loop sleeps: one provider call and five small storage calls per poll.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from brightrun import layout
from brightrun.compute import Compute, PodInfo, PodState
from brightrun.errors import BrightrunError
from brightrun.protocol import (
    MetricRecord,
    TrainerEvent,
    TrainerFailure,
    TrainerResult,
    TrainerStatus,
    previous_attempts,
)
from brightrun.spec import ProvisioningPolicy
from brightrun.storage import Storage
from tasks.provision import provision

log = logging.getLogger(__name__)


class JobRecorder(Protocol):
    """Where the monitor reports; the flow wires it to the registry and Prefect artifacts."""

    def event(self, type: str, attempt: int, payload: dict[str, Any]) -> None: ...
    def status(self, status: TrainerStatus) -> None: ...
    def metrics(self, records: list[MetricRecord]) -> None: ...
    def cost(self, actual_cost_usd: float, gpu_hours: float) -> None: ...
    def retries(self, count: int) -> None: ...


class NullRecorder:
    def event(self, type: str, attempt: int, payload: dict[str, Any]) -> None:
        log.info("event %s (attempt %d) %s", type, attempt, payload)

    def status(self, status: TrainerStatus) -> None:
        pass

    def metrics(self, records: list[MetricRecord]) -> None:
        pass

    def cost(self, actual_cost_usd: float, gpu_hours: float) -> None:
        pass

    def retries(self, count: int) -> None:
        pass


class OutcomeKind(StrEnum):
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"
    budget_exceeded = "budget_exceeded"


@dataclass
class Outcome:
    kind: OutcomeKind
    reason: str = ""
    result: TrainerResult | None = None
    failure: TrainerFailure | None = None
    attempts: int = 0
    retry_count: int = 0
    actual_cost_usd: float = 0.0
    gpu_hours: float = 0.0
    pod_ids: list[str] = field(default_factory=list)


CancelCheck = Callable[[], bool] | threading.Event


@dataclass
class _PodLedger:
    """Cost accounting of one pod: billed from creation until seen gone or terminated."""

    pod_id: str
    cost_per_hr: float
    gpu_count: int
    created: float
    ended: float | None = None
    uptime: float = 0.0
    terminated: bool = False

    def seconds(self, now: float) -> float:
        return max(self.uptime, (self.ended if self.ended is not None else now) - self.created)


class _Ingest:
    """Trainer events and metric chunks not yet handed to the recorder (each object is immutable)."""

    def __init__(self, storage: Storage, job: layout.JobLayout, recorder: JobRecorder) -> None:
        self.storage, self.job, self.recorder = storage, job, recorder
        self.seen: set[str] = set()

    def poll(self) -> None:
        for directory in (layout.EVENTS_DIR, layout.METRICS_DIR):
            for key in self.storage.list(self.job.key(directory) + "/"):
                if key in self.seen or key.endswith(".partial"):
                    continue
                try:
                    raw = self.storage.get_bytes(key)
                except Exception as exc:  # a half-visible object: try again next poll
                    log.debug("not read yet: %s (%s)", key, exc)
                    continue
                self.seen.add(key)
                if directory == layout.EVENTS_DIR:
                    event = TrainerEvent.model_validate_json(raw)
                    self.recorder.event(event.type, event.attempt, {**event.payload, "source": "trainer"})
                else:
                    lines = raw.decode().splitlines()
                    records = [MetricRecord.model_validate_json(line) for line in lines if line.strip()]
                    if records:
                        self.recorder.metrics(records)


def _cancelled(cancel: CancelCheck | None) -> bool:
    if cancel is None:
        return False
    if isinstance(cancel, threading.Event):
        return cancel.is_set()
    return bool(cancel())


def _wait(cancel: CancelCheck | None, seconds: float) -> None:
    if isinstance(cancel, threading.Event):
        cancel.wait(seconds)
    else:
        time.sleep(seconds)


def run_job(
    *,
    compute: Compute,
    storage: Storage,
    job_id: str,
    spec_uri: str,
    policy: ProvisioningPolicy,
    env: Mapping[str, str] | None = None,
    recorder: JobRecorder | None = None,
    cancel: CancelCheck | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Outcome:
    """Run the job to an outcome; every pod of the job is terminated before this returns."""
    recorder = recorder or NullRecorder()
    job = layout.JobLayout(job_id)
    ingest = _Ingest(storage, job, recorder)
    ledgers: dict[str, _PodLedger] = {}
    started = clock()
    attempt = 0
    retry_count = 0
    outcome: Outcome | None = None

    def totals(now: float) -> tuple[float, float]:
        cost = sum(lg.cost_per_hr * lg.seconds(now) / 3600 for lg in ledgers.values())
        gpu_hours = sum(lg.gpu_count * lg.seconds(now) / 3600 for lg in ledgers.values())
        return round(cost, 6), round(gpu_hours, 6)

    def finish(kind: OutcomeKind, reason: str = "", **extra: Any) -> Outcome:
        cost, hours = totals(clock())
        return Outcome(
            kind=kind,
            reason=reason,
            attempts=attempt,
            retry_count=retry_count,
            actual_cost_usd=cost,
            gpu_hours=hours,
            pod_ids=list(ledgers),
            **extra,
        )

    def end_pod(pod_id: str, reason: str) -> None:
        ledger = ledgers.get(pod_id)
        if ledger is not None and ledger.terminated:
            return
        compute.terminate(pod_id)
        if ledger is not None:
            ledger.terminated = True
            if ledger.ended is None:
                ledger.ended = clock()
        recorder.event("pod_terminated", attempt, {"pod_id": pod_id, "reason": reason})

    try:
        # A job picked up again (`brightrun resume`, a retried flow) continues its attempt
        # numbers, so no trainer overwrites an earlier attempt's events or metric chunks; a pod
        # a dead orchestrator left running is stopped first (SIGTERM: it commits a checkpoint).
        attempt = previous_attempts(storage, job.prefix + "/")
        for leftover in compute.list_pods(job_id):
            if leftover.state != PodState.terminated:
                compute.terminate(leftover.pod_id)
                recorder.event(
                    "pod_terminated", attempt, {"pod_id": leftover.pod_id, "reason": "left by an earlier run"}
                )
        while True:
            # ---- a new attempt ------------------------------------------------------------------
            if _cancelled(cancel):
                return (outcome := finish(OutcomeKind.cancelled, "cancelled before a pod started"))
            attempt += 1
            launched_status = _read_status(storage, job)
            pod = provision(
                compute,
                job_id=job_id,
                attempt=attempt,
                spec_uri=spec_uri,
                env=env or {},
                policy=policy,
                interruptions=retry_count,
                on_event=lambda type_, payload, n=attempt: recorder.event(type_, n, payload),
            )
            launched = clock()
            ledgers[pod.pod_id] = _PodLedger(pod.pod_id, pod.cost_per_hr, policy.gpu_count, launched)
            if retry_count:
                recorder.event(
                    "resumed",
                    attempt,
                    {
                        "pod_id": pod.pod_id,
                        "retry_count": retry_count,
                        "from_checkpoint": _latest(storage, job),
                    },
                )
            last_beat_value = launched_status.updated_at if launched_status else None
            last_beat_at: float | None = None  # no heartbeat from this attempt yet
            running_seen = False
            interruption: str | None = None

            # ---- poll the attempt ---------------------------------------------------------------
            while interruption is None:
                if _cancelled(cancel):
                    with contextlib.suppress(Exception):
                        storage.put_bytes(job.cancel, b"cancelled by the orchestrator")
                    end_pod(pod.pod_id, "cancelled")
                    recorder.event("cancelled", attempt, {"pod_id": pod.pod_id})
                    return (outcome := finish(OutcomeKind.cancelled, "cancelled"))

                info = compute.get(pod.pod_id)
                now = clock()
                _account(ledgers[pod.pod_id], info, now)
                if info.state == PodState.running and not running_seen:
                    running_seen = True
                    recorder.event(
                        "pod_running",
                        attempt,
                        {"pod_id": pod.pod_id, "gpu_type": info.gpu_type, "spot": info.spot},
                    )

                status = _read_status(storage, job)
                if status is not None and (last_beat_value is None or status.updated_at != last_beat_value):
                    last_beat_value, last_beat_at = status.updated_at, now
                    recorder.status(status)
                ingest.poll()

                if storage.exists(job.result):
                    result = TrainerResult.model_validate_json(storage.get_bytes(job.result))
                    end_pod(pod.pod_id, "completed")
                    ingest.poll()
                    return (outcome := finish(OutcomeKind.completed, result=result))
                if storage.exists(job.failure):
                    failure = TrainerFailure.model_validate_json(storage.get_bytes(job.failure))
                    end_pod(pod.pod_id, "trainer failed")
                    ingest.poll()
                    return (
                        outcome := finish(
                            OutcomeKind.failed,
                            f"the trainer failed in {failure.phase}: {failure.error_type}: {failure.error}",
                            failure=failure,
                        )
                    )

                cost, hours = totals(now)
                recorder.cost(cost, hours)
                if cost >= policy.max_cost_usd:
                    recorder.event(
                        "budget_exceeded", attempt, {"actual_cost_usd": cost, "max": policy.max_cost_usd}
                    )
                    end_pod(pod.pod_id, "budget exceeded")
                    return (
                        outcome := finish(
                            OutcomeKind.budget_exceeded,
                            f"the job reached its cost cap: ${cost:.2f} >= provisioning.max_cost_usd="
                            f"{policy.max_cost_usd}",
                        )
                    )
                if now - started >= policy.max_duration_hours * 3600:
                    end_pod(pod.pod_id, "max duration")
                    return (
                        outcome := finish(
                            OutcomeKind.failed,
                            f"the job ran past provisioning.max_duration_hours={policy.max_duration_hours}",
                        )
                    )

                if info.state in (PodState.exited, PodState.terminated):
                    interruption = f"pod {info.state.value}" + (
                        f" (exit code {info.exit_code})" if info.exit_code is not None else ""
                    )
                elif last_beat_at is not None and now - last_beat_at > policy.heartbeat_timeout_seconds:
                    interruption = f"heartbeat silent for {now - last_beat_at:.0f}s"
                elif last_beat_at is None and now - launched > policy.startup_timeout_seconds:
                    interruption = (
                        f"no heartbeat within {policy.startup_timeout_seconds:.0f}s of the pod's start"
                    )
                else:
                    _wait(cancel, policy.poll_interval_seconds)

            # ---- interrupted: clean up, maybe go again ------------------------------------------
            recorder.event(
                "interrupted",
                attempt,
                {
                    "pod_id": pod.pod_id,
                    "reason": interruption,
                    "step": status.step if status else None,
                    "last_checkpoint": _latest(storage, job),
                },
            )
            end_pod(pod.pod_id, "interrupted")
            retry_count += 1
            recorder.retries(retry_count)
            if retry_count > policy.max_restarts:
                return (
                    outcome := finish(
                        OutcomeKind.failed,
                        f"gave up after {policy.max_restarts} restarts (provisioning.max_restarts); "
                        f"last interruption: {interruption}",
                    )
                )
    finally:
        _terminate_all(compute, job_id, ledgers, recorder, attempt, clock)
        if outcome is not None:
            recorder.cost(outcome.actual_cost_usd, outcome.gpu_hours)


def _account(ledger: _PodLedger, info: PodInfo, now: float) -> None:
    if info.cost_per_hr:
        ledger.cost_per_hr = info.cost_per_hr
    ledger.uptime = max(ledger.uptime, info.uptime_seconds)
    if info.state in (PodState.exited, PodState.terminated) and ledger.ended is None:
        ledger.ended = now


def _terminate_all(
    compute: Compute,
    job_id: str,
    ledgers: dict[str, _PodLedger],
    recorder: JobRecorder,
    attempt: int,
    clock: Callable[[], float],
) -> None:
    """Terminate every pod of the job: the ones we created, and any the provider lists by name
    (a create that timed out may still have made one)."""
    pod_ids = dict.fromkeys(ledgers)
    try:
        pod_ids.update(
            dict.fromkeys(p.pod_id for p in compute.list_pods(job_id) if p.state != PodState.terminated)
        )
    except Exception as exc:
        log.error("could not list the pods of job %s (%s); the reaper will find any left", job_id, exc)
    for pod_id in pod_ids:
        for try_ in range(3):
            try:
                compute.terminate(pod_id)
                break
            except Exception as exc:
                log.error("terminating pod %s of job %s failed (try %d): %s", pod_id, job_id, try_ + 1, exc)
                time.sleep(1.0 * (try_ + 1))
        ledger = ledgers.get(pod_id)
        if ledger is not None and not ledger.terminated:
            ledger.terminated = True
            if ledger.ended is None:
                ledger.ended = clock()
            with contextlib.suppress(Exception):
                recorder.event("pod_terminated", attempt, {"pod_id": pod_id, "reason": "cleanup"})


def _read_status(storage: Storage, job: layout.JobLayout) -> TrainerStatus | None:
    try:
        return TrainerStatus.model_validate_json(storage.get_bytes(job.status))
    except Exception:  # absent, or replaced while we read it
        return None


def _latest(storage: Storage, job: layout.JobLayout) -> int | None:
    try:
        return int(storage.get_bytes(job.latest).decode().strip())
    except Exception:
        return None


class JobFailed(BrightrunError):
    """Raised by callers that want an exception for a non-completed outcome."""
