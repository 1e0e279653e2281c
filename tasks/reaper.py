"""The reaper: terminate pods no job should hold (DESIGN.md §3).

The last line of defence when a flow process died without its `finally`: a pod of ours
(named `brightrun-<job_id>-a<n>`) is terminated when its job is terminal in the registry,
when its job's heartbeat has been silent too long, or when its job is unknown and the pod
never sent a heartbeat. The decision is a pure function over lookups, so it is tested
without a provider or a database.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from brightrun import layout
from brightrun.compute import Compute, PodInfo, PodState
from brightrun.errors import InputError
from brightrun.protocol import TrainerStatus, utcnow
from brightrun.storage import Storage

log = logging.getLogger(__name__)

TERMINAL = frozenset({"completed", "failed", "cancelled"})
DEFAULT_STALE_AFTER_SECONDS = 900.0
DEFAULT_STARTUP_GRACE_SECONDS = 1800.0

JobStatusLookup = Callable[[str], str | None]  # job id -> registry status, None: no such job
HeartbeatLookup = Callable[[str], float | None]  # job id -> seconds since the last heartbeat


@dataclass(frozen=True)
class ReapDecision:
    pod: PodInfo
    reason: str


def pods_to_reap(
    pods: list[PodInfo],
    job_status: JobStatusLookup,
    heartbeat_age: HeartbeatLookup,
    *,
    stale_after_seconds: float = DEFAULT_STALE_AFTER_SECONDS,
    startup_grace_seconds: float = DEFAULT_STARTUP_GRACE_SECONDS,
) -> list[ReapDecision]:
    decisions = []
    for pod in pods:
        if pod.state == PodState.terminated or not pod.job_id:
            continue
        status = job_status(pod.job_id)
        age = heartbeat_age(pod.job_id)
        # A pod that has not run long enough may simply not have written its first heartbeat.
        young = (
            pod.state in (PodState.running, PodState.pending) and pod.uptime_seconds < startup_grace_seconds
        )
        if status in TERMINAL:
            decisions.append(ReapDecision(pod, f"job {pod.job_id} is {status}"))
        elif (
            age is not None
            and age > stale_after_seconds
            and (pod.state == PodState.exited or pod.uptime_seconds > stale_after_seconds)
        ):
            decisions.append(
                ReapDecision(pod, f"job {pod.job_id}'s heartbeat has been silent for {age:.0f}s")
            )
        elif age is None and not young:
            what = "unknown to the registry" if status is None else status
            decisions.append(ReapDecision(pod, f"job {pod.job_id} ({what}) never sent a heartbeat"))
    return decisions


def storage_heartbeat_age(storage: Storage, now: Callable[[], datetime] = utcnow) -> HeartbeatLookup:
    """Seconds since the job's `status.json` was written (by the trainer's clock)."""

    def age(job_id: str) -> float | None:
        try:
            status = TrainerStatus.model_validate_json(storage.get_bytes(layout.JobLayout(job_id).status))
        except Exception:
            return None
        return max(0.0, (now() - status.updated_at).total_seconds())

    return age


def registry_job_status(bind: object) -> JobStatusLookup:
    """Job status from the registry (brightrun.registry.repository); None for an unknown job."""
    from brightrun.registry import repository as repo

    def status(job_id: str) -> str | None:
        try:
            return repo.get_job(bind, job_id).status  # type: ignore[arg-type]
        except (repo.JobNotFound, InputError):  # unknown, or not an id the registry could hold
            return None

    return status


def reap(
    compute: Compute,
    job_status: JobStatusLookup,
    heartbeat_age: HeartbeatLookup,
    *,
    dry_run: bool = False,
    stale_after_seconds: float = DEFAULT_STALE_AFTER_SECONDS,
    startup_grace_seconds: float = DEFAULT_STARTUP_GRACE_SECONDS,
) -> list[ReapDecision]:
    """Terminate (or with `dry_run`, only list) the pods no job should hold."""
    decisions = pods_to_reap(
        compute.list_pods(),
        job_status,
        heartbeat_age,
        stale_after_seconds=stale_after_seconds,
        startup_grace_seconds=startup_grace_seconds,
    )
    for decision in decisions:
        if dry_run:
            log.info("would terminate pod %s: %s", decision.pod.pod_id, decision.reason)
            continue
        log.warning("terminating pod %s: %s", decision.pod.pod_id, decision.reason)
        compute.terminate(decision.pod.pod_id)
    return decisions
