"""One attempt of a job: start its pod, watch pod and trainer, decide how the attempt ended.

Each poll reads the pod's state, then the trainer's storage (heartbeat, terminal markers,
new events and metric chunks): pod first, so a pod seen exited has nothing left to write.
The job's result is what the trainer committed to storage (`result.json`,
`failure.json`), never whether the provider's API answered the last poll:

- completed / failed: the trainer's marker (a failure is the trainer's own, not retried);
- interrupted: the pod exited or vanished without a marker, or its heartbeat went silent
  past `heartbeat_timeout_seconds` (measured on this machine's clock, from the last time
  `status.json` changed, so pod clock skew does not matter);
- outage: the provider's API stayed unreachable past `api_outage_patience_seconds` with no
  marker in storage. While it is down the attempt keeps reading storage and judges
  nothing about the pod; when it answers again the pod is reconciled.

A pod counts as terminated only once the provider confirms it (`pod_terminated`);
otherwise `pod_termination_failed` names it for the reaper.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from brightrun import layout
from brightrun.compute import Compute, ComputeError, PodInfo, PodState
from brightrun.protocol import TrainerFailure, TrainerResult, TrainerStatus
from brightrun.spec import ProvisioningPolicy
from brightrun.storage import Storage, StorageError
from tasks.monitor.ledger import CostLedger
from tasks.monitor.recording import Outbox, TrainerLog
from tasks.monitor.recovery import RecoveryPolicy
from tasks.monitor.user_stop import STOPPED_BY_USER, user_stop_requested, wait_for_user_stop
from tasks.provision import provision

log = logging.getLogger("tasks.monitor")

CancelCheck = Callable[[], bool] | threading.Event
OUTAGE_LOG_EVERY_S = 60.0
CLEANUP_TRIES = 3
USER_STOP_GRACE_S = 6.0  # the trainer's default 5 s SIGTERM grace, and a second to exit


def write_cancel_marker(storage: Storage, job: layout.JobLayout) -> None:
    """The `CANCEL` marker: a local trainer stops at its next step (a pod is terminated as well).
    Best-effort: a storage error is logged, and the pod's termination still follows."""
    try:
        storage.put_bytes(job.cancel, b"cancelled by the orchestrator\n")
    except StorageError as exc:
        log.warning("job %s: could not write the cancel marker (%s)", job.job_id, exc)


def provider_unreachable(exc: BaseException) -> bool:
    """An outage of the provider's API (timeouts, 5xx, 429 past the client's retries), as opposed
    to a refusal (auth, validation, capacity) that waiting does not fix."""
    from brightrun.compute.runpod_client import RunPodUnavailableError

    return isinstance(exc, RunPodUnavailableError)


class EndKind(StrEnum):
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"
    budget = "budget"
    duration = "duration"
    interrupted = "interrupted"
    stopped = "stopped"  # Ctrl-C at the terminal: the job waits for `brightrun resume`
    outage = "outage"
    gave_up = "gave_up"  # interrupted once more than the recovery policy replaces


@dataclass
class AttemptEnd:
    kind: EndKind
    reason: str = ""
    result: TrainerResult | None = None
    failure: TrainerFailure | None = None


@dataclass
class ProviderWatch:
    """How long the provider's API has been unreachable, logged as it goes."""

    recorder: Outbox
    patience: float
    down_since: float | None = None
    logged_at: float = 0.0

    def failed(self, exc: BaseException, now: float, attempt: int) -> bool:
        """Record one failed call; True while the outage is within patience."""
        if self.down_since is None:
            self.down_since, self.logged_at = now, now
            log.warning(
                "the provider's API is unreachable (%s); monitoring from storage only, for up to "
                "%.0fs (provisioning.api_outage_patience_seconds)",
                exc,
                self.patience,
            )
            self.recorder.event(
                "api_unavailable", attempt, {"error": str(exc)[:500], "patience_seconds": self.patience}
            )
        elif now - self.logged_at >= OUTAGE_LOG_EVERY_S:
            self.logged_at = now
            log.warning(
                "the provider's API has been unreachable for %.0fs of %.0fs allowed",
                now - self.down_since,
                self.patience,
            )
        return now - self.down_since < self.patience

    def answered(self, now: float, attempt: int) -> None:
        if self.down_since is not None:
            seconds = now - self.down_since
            log.warning("the provider's API answers again after %.0fs; reconciling", seconds)
            self.recorder.event("api_recovered", attempt, {"outage_seconds": round(seconds, 1)})
            self.down_since = None

    def down_for(self, now: float) -> float:
        return 0.0 if self.down_since is None else now - self.down_since


@dataclass
class JobContext:
    """What every attempt of one job shares."""

    compute: Compute
    storage: Storage
    job: layout.JobLayout
    spec_uri: str
    env: Mapping[str, str]
    policy: ProvisioningPolicy
    recovery: RecoveryPolicy
    recorder: Outbox
    trainer_log: TrainerLog
    ledger: CostLedger
    provider: ProviderWatch
    cancel: CancelCheck | None
    clock: Callable[[], float]
    started: float
    unterminated: list[str] = field(default_factory=list)

    # -- small helpers every part uses

    def cancelled(self) -> bool:
        if self.cancel is None:
            return False
        if isinstance(self.cancel, threading.Event):
            return self.cancel.is_set()
        return bool(self.cancel())

    def wait(self, seconds: float | None = None) -> None:
        seconds = self.policy.poll_interval_seconds if seconds is None else seconds
        if isinstance(self.cancel, threading.Event):
            self.cancel.wait(seconds)
        else:
            wait_for_user_stop(seconds)

    def read_status(self) -> TrainerStatus | None:
        return _read_status(self.storage, self.job)

    def marker(self, key: str) -> bytes | None:
        try:
            return self.storage.get_bytes(key) if self.storage.exists(key) else None
        except StorageError as exc:
            log.warning("could not read %s (%s); trying again next poll", key, exc)
            return None

    def trainer_end(self) -> AttemptEnd | None:
        """The trainer's terminal marker in storage, if it wrote one: the job's result."""
        raw = self.marker(self.job.result)
        if raw is not None:
            return AttemptEnd(EndKind.completed, result=TrainerResult.model_validate_json(raw))
        raw = self.marker(self.job.failure)
        if raw is not None:
            failure = TrainerFailure.model_validate_json(raw)
            return AttemptEnd(
                EndKind.failed,
                f"the trainer failed in {failure.phase}: {failure.error_type}: {failure.error}",
                failure=failure,
            )
        return None

    def end_pod(self, pod_id: str, reason: str, attempt: int, *, patience: bool = True) -> bool:
        """Terminate the pod and wait for the provider to confirm; then its bill is final.

        During an outage this keeps trying (and keeps reading the trainer's storage) within
        the patience; past it, or with `patience=False` after a few tries, the pod is recorded
        as `pod_termination_failed` for the reaper and False is returned.
        """
        tries = 0
        while True:
            tries += 1
            try:
                if pod_id in self.ledger.pods and not self.ledger.pods[pod_id].settled:
                    self._reconcile(pod_id)
                self.compute.terminate(pod_id)
            except ComputeError as exc:
                now = self.clock()
                outage = provider_unreachable(exc)
                within = self.provider.failed(exc, now, attempt) if outage else False
                # An outage is waited out within the patience (past it, or without patience,
                # the reaper takes over at once: each try already spent the client's retries);
                # anything else (the pod still reads alive) gets a few quick tries.
                if (patience and within) or (not outage and tries < CLEANUP_TRIES):
                    self.trainer_log.poll()
                    self.recorder.flush()
                    self.wait(
                        None if patience and outage else min(self.policy.poll_interval_seconds, 1.0 * tries)
                    )
                    continue
                log.error("pod %s could not be terminated (%s); the reaper will", pod_id, exc)
                if pod_id not in self.unterminated:
                    self.unterminated.append(pod_id)
                self.recorder.event(
                    "pod_termination_failed",
                    attempt,
                    {"pod_id": pod_id, "reason": reason, "error": str(exc)[:500]},
                    key=f"pod_termination_failed:{pod_id}",
                )
                return False
            now = self.clock()
            self.provider.answered(now, attempt)
            if pod_id in self.unterminated:
                self.unterminated.remove(pod_id)
            self.recorder.event(
                "pod_terminated",
                attempt,
                {"pod_id": pod_id, "reason": reason},
                key=f"pod_terminated:{pod_id}",
            )
            self.settle(pod_id, now, attempt)
            return True

    def settle(self, pod_id: str, now: float, attempt: int) -> None:
        bill = self.ledger.terminated(pod_id, now)
        if bill is not None:
            self.recorder.event("pod_billed", attempt, bill.as_payload(), key=f"pod_billed:{pod_id}")

    def _reconcile(self, pod_id: str) -> None:
        """The provider's last figures for the pod before it goes (uptime, price); a read that
        fails for another reason than an outage never keeps a pod from being terminated."""
        try:
            info = self.compute.get(pod_id)
        except (ComputeError, OSError) as exc:
            if provider_unreachable(exc):
                raise  # an outage: the caller waits it out before terminating
            log.warning("could not read pod %s before terminating it (%s)", pod_id, exc)
            return
        self.ledger.observe(info, self.clock(), last_alive=self.last_alive())

    def last_alive(self) -> float | None:
        """The trainer's last sign of life, seconds of the wall clock (its own clock)."""
        status = self.read_status()
        return status.updated_at.timestamp() if status is not None else None


class AttemptRunner:
    """Runs one attempt of the job to its end; the pod is terminated (or handed to the reaper)."""

    def __init__(self, ctx: JobContext, attempt: int) -> None:
        self.ctx = ctx
        self.attempt = attempt

    # -- start

    def start(self) -> PodInfo | AttemptEnd:
        """The attempt's pod, waiting out a provider outage within the patience."""
        ctx = self.ctx
        while True:
            try:
                pod = provision(
                    ctx.compute,
                    job_id=ctx.job.job_id,
                    attempt=self.attempt,
                    spec_uri=ctx.spec_uri,
                    env=ctx.env,
                    policy=ctx.policy,
                    interruptions=RecoveryPolicy.retry_count(self.attempt),
                    on_event=lambda type_, payload: ctx.recorder.event(type_, self.attempt, payload),
                )
            except ComputeError as exc:
                if not provider_unreachable(exc):
                    raise
                if not ctx.provider.failed(exc, ctx.clock(), self.attempt):
                    return AttemptEnd(EndKind.outage, f"could not start a pod: {exc}")
                if ctx.cancelled():
                    return AttemptEnd(EndKind.cancelled, "cancelled before a pod started")
                ctx.wait()
                found = self._created_anyway()
                if found is None:
                    continue
                pod = found
            ctx.provider.answered(ctx.clock(), self.attempt)
            ctx.ledger.opened(
                pod, attempt=self.attempt, gpu_count=ctx.policy.gpu_count, now=ctx.clock(), created=True
            )
            ctx.recorder.event(
                "pod_created",
                self.attempt,
                {
                    "pod_id": pod.pod_id,
                    "cost_per_hr": pod.cost_per_hr,
                    "gpu_count": ctx.policy.gpu_count,
                    "gpu_type": pod.gpu_type,
                    "spot": pod.spot,
                },
                key=f"pod_created:{pod.pod_id}",
            )
            return pod

    def _created_anyway(self) -> PodInfo | None:
        """A create that failed in the outage may have made the pod: adopt it, never make two."""
        try:
            pods = self.ctx.compute.list_pods(self.ctx.job.job_id)
        except ComputeError:
            return None
        known = self.ctx.ledger.pods
        fresh = [p for p in pods if p.pod_id not in known and p.state != PodState.terminated]
        return fresh[0] if fresh else None

    # -- watch

    def run(self) -> AttemptEnd:
        ctx = self.ctx
        launched_status = ctx.read_status()
        started = self.start()
        if isinstance(started, AttemptEnd):
            return started
        pod = started
        launched = ctx.clock()
        if self.attempt > 1:
            ctx.recorder.retries(RecoveryPolicy.retry_count(self.attempt))
            ctx.recorder.event(
                "resumed",
                self.attempt,
                {
                    "pod_id": pod.pod_id,
                    "retry_count": RecoveryPolicy.retry_count(self.attempt),
                    "from_checkpoint": _latest(ctx.storage, ctx.job),
                },
                key=f"resumed:a{self.attempt}:{pod.pod_id}",
            )
        last_beat_value = launched_status.updated_at if launched_status else None
        last_beat_at: float | None = None  # no heartbeat from this attempt yet
        running_seen = False
        status: TrainerStatus | None = None
        while True:
            if user_stop_requested():
                return self._stopped_by_user(pod.pod_id, status)
            if ctx.cancelled():
                write_cancel_marker(ctx.storage, ctx.job)
                ctx.end_pod(pod.pod_id, "cancelled", self.attempt)
                ctx.recorder.event("cancelled", self.attempt, {"pod_id": pod.pod_id})
                return AttemptEnd(EndKind.cancelled, "cancelled")

            info = self._read_pod(pod.pod_id)
            now = ctx.clock()
            if info is not None:
                last_alive = status.updated_at.timestamp() if status is not None else None
                ctx.ledger.observe(info, now, last_alive=last_alive)
                if info.state == PodState.running and not running_seen:
                    running_seen = True
                    ctx.recorder.event(
                        "pod_running",
                        self.attempt,
                        {"pod_id": pod.pod_id, "gpu_type": info.gpu_type, "spot": info.spot},
                        key=f"pod_running:{pod.pod_id}",
                    )

            status = ctx.read_status() or status
            if status is not None and (last_beat_value is None or status.updated_at != last_beat_value):
                last_beat_value, last_beat_at = status.updated_at, now
                ctx.recorder.status(status)
            ctx.trainer_log.poll()
            ctx.recorder.flush()

            end = self._trainer_end() or self._cap_end(now)
            if end is not None:
                # What the trainer wrote between this poll's reads and its marker: its last
                # heartbeat (the final step) and its last events and metrics.
                final = ctx.read_status()
                if final is not None and final.updated_at != last_beat_value:
                    ctx.recorder.status(final)
                ctx.trainer_log.poll()
                reason = "budget exceeded" if end.kind == EndKind.budget else end.kind.value
                ctx.end_pod(pod.pod_id, reason, self.attempt)
                return end

            interruption: str | None = None
            if info is None:  # the API is down: nothing is judged about the pod
                if ctx.provider.down_for(now) >= ctx.recovery.api_outage_patience_seconds:
                    return self._outage_end(pod.pod_id, now)
            elif info.state in (PodState.exited, PodState.terminated):
                interruption = f"pod {info.state.value}" + (
                    f" (exit code {info.exit_code})" if info.exit_code is not None else ""
                )
            elif last_beat_at is not None and now - last_beat_at > ctx.policy.heartbeat_timeout_seconds:
                interruption = f"heartbeat silent for {now - last_beat_at:.0f}s"
            elif last_beat_at is None and now - launched > ctx.policy.startup_timeout_seconds:
                interruption = (
                    f"no heartbeat within {ctx.policy.startup_timeout_seconds:.0f}s of the pod's start"
                )
            if interruption is not None:
                ctx.recorder.event(
                    "interrupted",
                    self.attempt,
                    {
                        "pod_id": pod.pod_id,
                        "reason": interruption,
                        "step": status.step if status else None,
                        "last_checkpoint": _latest(ctx.storage, ctx.job),
                    },
                    key=f"interrupted:a{self.attempt}",
                )
                ctx.end_pod(pod.pod_id, "interrupted", self.attempt)
                return AttemptEnd(EndKind.interrupted, interruption)
            ctx.wait()

    def _stopped_by_user(self, pod_id: str, status: TrainerStatus | None) -> AttemptEnd:
        """SIGTERM the trainer (it finishes its step and checkpoints when that fits in its
        grace), record what it committed, and end the attempt for `brightrun resume`."""
        ctx = self.ctx
        # A person is waiting at the terminal: the trainer gets its SIGTERM grace and a little
        # more, not a local pod's full 30 s (a loaded machine stretches its exit; the committed
        # checkpoint stays valid whatever is killed mid-write).
        local_grace = getattr(ctx.compute, "grace_seconds", None)
        if local_grace is not None:
            ctx.compute.grace_seconds = min(local_grace, USER_STOP_GRACE_S)  # type: ignore[attr-defined]
        try:
            ctx.end_pod(pod_id, STOPPED_BY_USER, self.attempt)
        finally:
            if local_grace is not None:
                ctx.compute.grace_seconds = local_grace  # type: ignore[attr-defined]
        final = ctx.read_status()
        if final is not None and (status is None or final.updated_at != status.updated_at):
            ctx.recorder.status(final)
            status = final
        ctx.trainer_log.poll()  # its checkpoint_committed and interrupted events
        latest = _latest(ctx.storage, ctx.job)
        step = status.step if status else None
        ctx.recorder.event(
            "interrupted",
            self.attempt,
            {
                "pod_id": pod_id,
                "reason": STOPPED_BY_USER,
                "source": "user",
                "step": step,
                "last_checkpoint": latest,
            },
            key=f"interrupted:a{self.attempt}",
        )
        where = f" at step {step}" if step is not None else ""
        kept = f"last checkpoint: step {latest}" if latest is not None else "no checkpoint committed yet"
        return AttemptEnd(EndKind.stopped, f"{STOPPED_BY_USER}{where} ({kept})")

    def _read_pod(self, pod_id: str) -> PodInfo | None:
        ctx = self.ctx
        try:
            info = ctx.compute.get(pod_id)
        except ComputeError as exc:
            if not provider_unreachable(exc):
                raise
            ctx.provider.failed(exc, ctx.clock(), self.attempt)
            return None
        ctx.provider.answered(ctx.clock(), self.attempt)
        return info

    def _trainer_end(self) -> AttemptEnd | None:
        return self.ctx.trainer_end()

    def _cap_end(self, now: float) -> AttemptEnd | None:
        ctx = self.ctx
        cost, hours = ctx.ledger.totals(now)
        ctx.recorder.cost(cost, hours)
        if cost >= ctx.policy.max_cost_usd:
            ctx.recorder.event(
                "budget_exceeded", self.attempt, {"actual_cost_usd": cost, "max": ctx.policy.max_cost_usd}
            )
            return AttemptEnd(
                EndKind.budget,
                f"the job reached its cost cap: ${cost:.2f} >= "
                f"provisioning.max_cost_usd={ctx.policy.max_cost_usd}",
            )
        if now - ctx.started >= ctx.policy.max_duration_hours * 3600:
            return AttemptEnd(
                EndKind.duration,
                f"the job ran past provisioning.max_duration_hours={ctx.policy.max_duration_hours}",
            )
        return None

    def _outage_end(self, pod_id: str, now: float) -> AttemptEnd:
        ctx = self.ctx
        seconds = ctx.provider.down_for(now)
        ctx.end_pod(pod_id, "provider API outage", self.attempt, patience=False)
        return AttemptEnd(
            EndKind.outage,
            f"the provider's API was unreachable for {seconds:.0f}s "
            f"(provisioning.api_outage_patience_seconds={ctx.recovery.api_outage_patience_seconds:.0f}) "
            "and the trainer had not finished; "
            "resume the job with `brightrun resume` once the API is back",
        )


def _read_status(storage: Storage, job: layout.JobLayout) -> TrainerStatus | None:
    try:
        raw = storage.get_bytes(job.status)
    except StorageError:  # absent, or being replaced
        return None
    try:
        return TrainerStatus.model_validate_json(raw)
    except ValueError:  # a torn read of a non-atomic store
        return None


def _latest(storage: Storage, job: layout.JobLayout) -> int | None:
    try:
        return int(storage.get_bytes(job.latest).decode().strip())
    except (StorageError, ValueError):
        return None
