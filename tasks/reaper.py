"""The reaper: terminate pods no job should hold (DESIGN.md §3).

The last line of defence when a flow process died without its `finally`, or its cleanup
could not reach the provider. A pod of ours (named `brightrun-<job_id>-a<n>`) is terminated

- when its job is terminal in the registry (completed, failed, cancelled);
- when its job is not in the registry at all;
- when it has sat in a non-running state (CREATED, EXITED...) past the startup deadline:
  such a pod has no runtime, so its uptime reads 0; its age comes from the provider's own
  clock (the time of its last status change, which for a pod that never ran is its
  creation) or, where the provider does not say, from when a reaper first saw it;
- when it runs but its job's heartbeat (the job's own storage, as the registry recorded
  it) has been silent too long, or never came within the startup deadline.

On a provider account other registries share (RunPod), it judges only the pods that carry
its own registry's id (`BRIGHTRUN_REGISTRY_ID` in the pod's env, issue 20): another
registry's pod is none of its business. An untagged pod it would reap is reported, never
terminated, unless `include_untagged` (pods from before the tag, or started by hand).

It never terminates a pod because it could not read something: a registry or storage
error skips that pod (logged) until a later run can read it. The decision is a pure
function over lookups (`pods_to_reap`), tested without a provider or a database.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from brightrun import layout
from brightrun.compute import Compute, PodInfo, PodState, PodTerminationError
from brightrun.errors import InputError
from brightrun.protocol import TrainerStatus, utcnow
from brightrun.storage import ObjectNotFound, Storage

if TYPE_CHECKING:
    from brightrun.resources import Resources

log = logging.getLogger(__name__)

TERMINAL = frozenset({"completed", "failed", "cancelled"})
DEFAULT_STALE_AFTER_SECONDS = 900.0
DEFAULT_STARTUP_GRACE_SECONDS = 1800.0
FIRST_SEEN_KEY = "reaper/first_seen.json"

# Both lookups raise when they cannot read (the pod is then spared this round).
JobStatusLookup = Callable[[str], str | None]  # job id -> registry status; None: no such job
HeartbeatLookup = Callable[[str], float | None]  # job id -> seconds since the last heartbeat; None: none


@dataclass(frozen=True)
class ReapDecision:
    pod: PodInfo
    reason: str
    terminated: bool = False
    error: str | None = None  # the provider did not confirm the termination
    reported_only: bool = False  # an untagged pod: named for a person, never terminated


def own_pods(
    compute: Compute, pods: list[PodInfo], registry_id: str | None
) -> tuple[list[PodInfo], list[PodInfo]]:
    """(this registry's pods, untagged pods) among `pods`; other registries' pods are dropped.
    A backend no other registry sees (this machine's trainers) holds only our own."""
    if not compute.shared_account:
        return pods, []
    ours = [p for p in pods if registry_id is not None and p.registry_id == registry_id]
    untagged = [p for p in pods if p.registry_id is None]
    others = len(pods) - len(ours) - len(untagged)
    if others:
        log.debug("%d pod(s) of other registries on %s left alone", others, compute.name)
    return ours, untagged


def pods_to_reap(
    pods: list[PodInfo],
    job_status: JobStatusLookup,
    heartbeat_age: HeartbeatLookup,
    *,
    stale_after_seconds: float = DEFAULT_STALE_AFTER_SECONDS,
    startup_grace_seconds: float = DEFAULT_STARTUP_GRACE_SECONDS,
    first_seen: MutableMapping[str, float] | None = None,
    now: float | None = None,
) -> list[ReapDecision]:
    """The pods to terminate and why. `first_seen` (pod id -> epoch seconds) dates pods whose
    provider gives no state time; new pods are added to it, gone ones dropped."""
    now = time.time() if now is None else now
    seen = first_seen if first_seen is not None else {}
    decisions = []
    for pod in pods:
        if pod.state == PodState.terminated or not pod.job_id:
            continue
        seen.setdefault(pod.pod_id, now)
        try:
            reason = _reason(
                pod, job_status, heartbeat_age, stale_after_seconds, startup_grace_seconds, seen, now
            )
        except Exception as exc:  # a read failed: never a reason to terminate
            log.warning("pod %s (job %s) spared this round: could not read %s", pod.pod_id, pod.job_id, exc)
            continue
        if reason:
            decisions.append(ReapDecision(pod, reason))
    listed = {p.pod_id for p in pods if p.state != PodState.terminated}
    for pod_id in [p for p in seen if p not in listed]:
        del seen[pod_id]
    return decisions


def _reason(
    pod: PodInfo,
    job_status: JobStatusLookup,
    heartbeat_age: HeartbeatLookup,
    stale_after: float,
    startup_grace: float,
    seen: MutableMapping[str, float],
    now: float,
) -> str | None:
    status = job_status(pod.job_id)
    if status in TERMINAL:
        return f"job {pod.job_id} is {status}"
    if status is None:
        return f"job {pod.job_id} is unknown to the registry"
    if pod.state != PodState.running:
        since = pod.state_since if pod.state_since is not None else seen[pod.pod_id]
        stuck = now - since
        if stuck > startup_grace:
            return (
                f"pod {pod.state.value} (not running) for {stuck:.0f}s, past the startup deadline "
                f"of {startup_grace:.0f}s (job {pod.job_id} is {status})"
            )
        return None
    age = heartbeat_age(pod.job_id)
    # A pod that has not run long enough may simply not have written its first heartbeat; a
    # replacement pod must not be judged by its predecessor's last one.
    if age is None:
        if pod.uptime_seconds > startup_grace:
            return f"job {pod.job_id} ({status}) never sent a heartbeat in {pod.uptime_seconds:.0f}s"
        return None
    if age > stale_after and pod.uptime_seconds > stale_after:
        return f"job {pod.job_id}'s heartbeat has been silent for {age:.0f}s"
    return None


def storage_heartbeat_age(storage: Storage, now: Callable[[], datetime] = utcnow) -> HeartbeatLookup:
    """Seconds since the job's `status.json` was written (by the trainer's clock); None when the
    job has none. A storage that cannot be read raises."""

    def age(job_id: str) -> float | None:
        try:
            raw = storage.get_bytes(layout.JobLayout(job_id).status)
        except ObjectNotFound:
            return None
        try:
            status = TrainerStatus.model_validate_json(raw)
        except ValueError:  # replaced while we read it: a heartbeat all the same
            return 0.0
        return max(0.0, (now() - status.updated_at).total_seconds())

    return age


class RegistryJobs:
    """Job status from the registry and heartbeats from each job's own storage (where the
    registry recorded its files), one registry read per job. Read failures raise."""

    def __init__(self, resources: Resources, now: Callable[[], datetime] = utcnow) -> None:
        self.resources = resources
        self.now = now
        self._jobs: dict[str, Any] = {}

    def _job(self, job_id: str) -> Any | None:
        from brightrun.registry import repository as repo

        if job_id not in self._jobs:
            try:
                self._jobs[job_id] = repo.get_job(self.resources.registry, job_id)
            except (repo.JobNotFound, InputError):  # unknown, or not an id the registry could hold
                self._jobs[job_id] = None
        return self._jobs[job_id]

    def status(self, job_id: str) -> str | None:
        job = self._job(job_id)
        return None if job is None else str(job.status)

    def heartbeat_age(self, job_id: str) -> float | None:
        job = self._job(job_id)
        if job is None:
            return None
        return storage_heartbeat_age(self.resources.job_storage(job), self.now)(job_id)


def reap(
    compute: Compute,
    job_status: JobStatusLookup,
    heartbeat_age: HeartbeatLookup,
    *,
    dry_run: bool = False,
    stale_after_seconds: float = DEFAULT_STALE_AFTER_SECONDS,
    startup_grace_seconds: float = DEFAULT_STARTUP_GRACE_SECONDS,
    first_seen: MutableMapping[str, float] | None = None,
    registry_id: str | None = None,
    include_untagged: bool = False,
) -> list[ReapDecision]:
    """Terminate (or with `dry_run`, only list) the pods of this registry (`registry_id`) no
    job should hold. A termination the provider does not confirm is reported (`error`), and
    the next run tries again. Untagged pods are only reported unless `include_untagged`."""
    ours, untagged = own_pods(compute, compute.list_pods(), registry_id)
    decisions = pods_to_reap(
        ours + untagged,
        job_status,
        heartbeat_age,
        stale_after_seconds=stale_after_seconds,
        startup_grace_seconds=startup_grace_seconds,
        first_seen=first_seen,
    )
    untagged_ids = {p.pod_id for p in untagged}
    done = []
    for decision in decisions:
        if decision.pod.pod_id in untagged_ids and not include_untagged:
            log.warning(
                "pod %s carries no registry id, so it may be another registry's: not terminated (%s); "
                "`brightrun reap --include-untagged` reaps it",
                decision.pod.pod_id,
                decision.reason,
            )
            done.append(replace(decision, reported_only=True))
            continue
        if dry_run:
            log.info("would terminate pod %s: %s", decision.pod.pod_id, decision.reason)
            done.append(decision)
            continue
        log.warning("terminating pod %s: %s", decision.pod.pod_id, decision.reason)
        try:
            compute.terminate(decision.pod.pod_id)
        except PodTerminationError as exc:
            log.error("%s", exc)
            done.append(replace(decision, error=str(exc)))
        else:
            done.append(replace(decision, terminated=True))
    return done


def reap_with_resources(
    resources: Resources,
    *,
    dry_run: bool = False,
    stale_after_seconds: float = DEFAULT_STALE_AFTER_SECONDS,
    startup_grace_seconds: float = DEFAULT_STARTUP_GRACE_SECONDS,
    include_untagged: bool = False,
) -> list[ReapDecision]:
    """The reaper over every backend a leftover pod can be on (this machine; RunPod when a key is
    set), judged by the registry and each job's own storage."""
    if not resources.registry_exists():
        # No registry, no way to tell a live job from a dead one: terminate nothing.
        log.warning("no registry at %s: nothing can be judged, no pod is reaped", resources.settings.home)
        return []
    try:
        registry_id = resources.registry_id()
    except Exception as exc:  # without our id, no pod on a shared account can be called ours
        log.error("the registry cannot be read (%s): nothing can be judged, no pod is reaped", exc)
        return []
    jobs = RegistryJobs(resources)
    first_seen = _load_first_seen(resources.storage)
    decisions: list[ReapDecision] = []
    for compute in resources.computes_to_reap():
        try:
            decisions += reap(
                compute,
                jobs.status,
                jobs.heartbeat_age,
                dry_run=dry_run,
                stale_after_seconds=stale_after_seconds,
                startup_grace_seconds=startup_grace_seconds,
                first_seen=first_seen.setdefault(compute.name, {}),
                registry_id=registry_id,
                include_untagged=include_untagged,
            )
        except Exception as exc:  # one provider down must not spare the others
            log.error("reaping %s pods failed: %s", compute.name, exc)
    if not dry_run:
        _save_first_seen(resources.storage, first_seen)
    return decisions


def reap_pods_with(
    resources: Resources,
    *,
    dry_run: bool = False,
    stale_after_seconds: float = DEFAULT_STALE_AFTER_SECONDS,
    startup_grace_seconds: float = DEFAULT_STARTUP_GRACE_SECONDS,
    include_untagged: bool = False,
) -> list[dict[str, str]]:
    """The reaper over `resources` (the registry, each job's storage, this machine's trainers and
    the RunPod account when a key is set); one row per pod judged, for people and scripts.
    `brightrun reap` and the `reap_pods` flow both call it; it needs no Prefect."""
    decisions = reap_with_resources(
        resources,
        dry_run=dry_run,
        stale_after_seconds=stale_after_seconds,
        startup_grace_seconds=startup_grace_seconds,
        include_untagged=include_untagged,
    )
    return [
        {
            "pod_id": d.pod.pod_id,
            "job_id": d.pod.job_id,
            "reason": d.reason,
            "result": "reported (untagged, not terminated)"
            if d.reported_only
            else "would terminate"
            if dry_run
            else ("terminated" if d.terminated else f"failed: {d.error}"),
        }
        for d in decisions
    ]


def _load_first_seen(storage: Storage) -> dict[str, dict[str, float]]:
    try:
        data = json.loads(storage.get_bytes(FIRST_SEEN_KEY))
    except Exception:  # absent or unreadable: pods count as first seen now (a later reap catches up)
        return {}
    return {str(k): {str(p): float(t) for p, t in v.items()} for k, v in data.items() if isinstance(v, dict)}


def _save_first_seen(storage: Storage, first_seen: dict[str, dict[str, float]]) -> None:
    with contextlib.suppress(Exception):
        storage.put_bytes(FIRST_SEEN_KEY, json.dumps(first_seen).encode())
