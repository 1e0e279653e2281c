"""The job lifecycle on the orchestrator side: the registry row, its events, and who hears.

`JobRecorder` is the one place a job's state changes are written: it moves the
`training_jobs` row through DESIGN.md §3, appends `training_job_events`, stores metrics,
cost and resumes, and fans each change out to the Prefect UI (`RunReporter`) and the
webhook (`WebhookNotifier`). The monitor (tasks/monitor/) reports through it; the
flow uses it for the stages before and after training.

A registry write is the record of truth and may raise; artifacts and webhooks are views
and never do.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine

from brightrun.protocol import MetricRecord, TrainerStatus
from tasks.notify import WebhookNotifier, build_payload
from tasks.reporting.prefect_artifacts import RunReporter

log = logging.getLogger("brightrun.job")

RECENT_METRICS = 200


def new_job_id() -> str:
    return str(uuid.uuid4())


def current_flow_run_id() -> str | None:
    try:
        from prefect.context import FlowRunContext
    except ImportError:
        return None
    ctx = FlowRunContext.get()
    return str(ctx.flow_run.id) if ctx and ctx.flow_run else None


def rename_current_flow_run(name: str) -> None:
    """Give the running flow run its final name once the job id exists (best-effort)."""
    flow_run_id = current_flow_run_id()
    if flow_run_id is None:
        return
    try:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            client.update_flow_run(uuid.UUID(flow_run_id), name=name)
    except Exception as exc:
        log.warning("could not rename flow run %s: %s", flow_run_id, exc)


def flow_run_cancel_requested(flow_run_id: str | None) -> bool:
    """True once someone asked Prefect to cancel this run (UI, API, `brightrun jobs cancel`)."""
    from tasks.prefect_api import embedded_server_gone

    if flow_run_id is None or embedded_server_gone():
        return False
    try:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            state = client.read_flow_run(uuid.UUID(flow_run_id)).state
    except Exception as exc:
        log.debug("could not read flow run %s state: %s", flow_run_id, exc)
        return False
    return state is not None and state.type.value in ("CANCELLING", "CANCELLED")


_LIFECYCLE = ("queued", "preprocessing", "model_loaded", "training")
_PHASE_STATUS = {
    "loading_model": None,
    "training": "training",
    "checkpointing": "training",
    "evaluating": "training",
    "uploading": "training",
}


def statuses_for_phase(phase: str, current: str) -> list[str]:
    """Job statuses to pass through when the trainer reports `phase` (DESIGN.md §3 order).

    The model is loaded once the trainer is past `loading_model`; a terminal phase is the
    flow's to record, from the trainer's markers, so it maps to nothing here.
    """
    target = _PHASE_STATUS.get(phase)
    if target is None or current not in _LIFECYCLE:
        return []
    have, want = _LIFECYCLE.index(current), _LIFECYCLE.index(target)
    return list(_LIFECYCLE[have + 1 : want + 1])


@dataclass
class JobRecorder:
    """Writes one job's lifecycle to the registry, the Prefect UI and the webhook."""

    engine: Engine
    job_id: str
    notifier: WebhookNotifier
    reporter: RunReporter
    flow_run_id: str | None = None
    status_value: str = "queued"
    step: int = 0
    total_steps: int = 0
    last: dict[str, Any] = field(default_factory=dict)
    recent_metrics: list[dict[str, Any]] = field(default_factory=list)
    interruptions: int = 0
    cost_usd: float | None = None
    gpu_hours: float | None = None
    lora_artifact_path: str | None = None
    # Why the job failed (tasks.monitor.FailureKind), written with `failed`; `brightrun resume`
    # reads it. The flow sets it from the monitor's outcome; an exception is an orchestration one.
    failure_kind: str | None = None
    eta: Any = None  # datetime of the estimated completion (tasks/reporting/progress.py), None until known
    _cancel_checked_at: float = 0.0
    cancel_check_interval_s: float = 2.0

    # -- payloads

    def _payload(self, status: str, error_message: str | None = None) -> dict[str, Any]:
        return build_payload(
            self.job_id,
            status,
            step=self.step,
            total_steps=self.total_steps,
            loss=self.last.get("loss"),
            learning_rate=self.last.get("learning_rate"),
            grad_norm=self.last.get("grad_norm"),
            epoch=self.last.get("epoch"),
            lora_artifact_path=self.lora_artifact_path,
            error_message=error_message,
            estimated_completion_at=self.eta,
        )

    # -- lifecycle (the flow)

    def announce(self, status: str) -> None:
        """Tell the webhook the job is at `status` without a transition (a new job is born
        `queued`: no transition announces it)."""
        self.notifier.status_changed(self._payload(status))

    def transition(self, status: str, *, error_message: str | None = None) -> None:
        """Move the job to `status` (a no-op when it is already there)."""
        from brightrun.registry import repository as repo

        status = str(getattr(status, "value", status))
        job = repo.transition_job(self.engine, self.job_id, status, error_message=error_message)
        if status == "failed" and job.status == "failed":
            kind = str(getattr(self.failure_kind, "value", self.failure_kind or "orchestration"))
            if job.metadata.get("failure_kind") != kind:
                job = repo.update_job(
                    self.engine, self.job_id, metadata={**job.metadata, "failure_kind": kind}
                )
        changed = status != self.status_value
        self.status_value = job.status
        if changed:
            log.info("job %s: %s%s", self.job_id, status, f" ({error_message})" if error_message else "")
            self.notifier.status_changed(self._payload(status, error_message))

    # -- the monitor's recorder port (tasks/monitor/recording.py: MonitorRecorder)

    def event(
        self, type: str, attempt: int = 0, payload: Mapping[str, Any] | None = None, key: str | None = None
    ) -> None:
        """Append an event; with a `key`, the registry keeps one per (job, key) however often it
        is sent (a resumed job re-reads the trainer's events; a queued write is replayed)."""
        from brightrun.registry import repository as repo

        new = repo.NewEvent(
            job_id=self.job_id, type=type, attempt=attempt, payload=dict(payload or {}), source_key=key
        )
        inserted = repo.add_events(self.engine, [new])
        # The monitor counts pod interruptions; a trainer's own `interrupted` (it honoured the
        # SIGTERM of the same interruption) is detail, not a second one.
        if inserted and type == "interrupted" and (payload or {}).get("source") != "trainer":
            self.interruptions += 1

    def history(self) -> Any:
        """What earlier runs of this job recorded about its pods (tasks.monitor.JobHistory)."""
        from brightrun.registry import repository as repo
        from tasks.monitor import JobHistory, PodBill

        pods: dict[str, PodBill] = {}
        for event in repo.list_events(self.engine, self.job_id, type="pod_created"):
            p = event.payload
            pods[p["pod_id"]] = PodBill(
                pod_id=p["pod_id"],
                attempt=event.attempt,
                cost_per_hr=float(p.get("cost_per_hr") or 0.0),
                gpu_count=int(p.get("gpu_count") or 1),
                created_at=event.created_at.timestamp(),
            )
        for event in repo.list_events(self.engine, self.job_id, type="pod_billed"):
            p = event.payload
            bill = pods.setdefault(
                p["pod_id"], PodBill(pod_id=p["pod_id"], attempt=event.attempt, cost_per_hr=0.0)
            )
            bill.cost_per_hr = float(p.get("cost_per_hr") or bill.cost_per_hr)
            bill.gpu_count = int(p.get("gpu_count") or bill.gpu_count)
            bill.seconds, bill.settled, bill.recorded = float(p.get("seconds") or 0.0), True, True
        return JobHistory(pods=list(pods.values()))

    def status(self, heartbeat: TrainerStatus) -> None:
        """The trainer's heartbeat: job status by phase, progress, the UI bar and the webhook."""
        from brightrun.registry import repository as repo

        for target in statuses_for_phase(str(heartbeat.phase), self.status_value):
            self.transition(target)
        self.step = heartbeat.step
        self.total_steps = heartbeat.total_steps or self.total_steps
        for name in ("loss", "learning_rate", "grad_norm", "epoch"):
            value = getattr(heartbeat, name)
            if value is not None:
                self.last[name] = value
        # The reporter turns the heartbeat into a view (ETA from the step rate), moves the UI's
        # progress bar and tells the terminal (or, without one, the run's logs) when the step moved.
        self.eta = self.reporter.heartbeat(heartbeat, self.status_value).eta
        repo.update_job_progress(
            self.engine,
            self.job_id,
            current_step=self.step,
            total_steps=self.total_steps or None,
            current_epoch=self.last.get("epoch"),
            current_loss=self.last.get("loss"),
            estimated_completion_at=self.eta,
            metrics=dict(self.last),
        )
        self.notifier.progress(self._payload(self.status_value))

    def metrics(self, records: Sequence[MetricRecord | Mapping[str, Any]], key: str | None = None) -> None:
        """Metric rows; the registry keeps one row per (job, attempt, step), so a chunk read
        again after a restart (`key` names it) changes nothing."""
        from brightrun.registry import repository as repo

        rows = [r.model_dump(mode="json") if isinstance(r, MetricRecord) else dict(r) for r in records]
        if not rows:
            return
        repo.add_metrics(self.engine, self.job_id, rows)
        self.recent_metrics = (self.recent_metrics + rows)[-RECENT_METRICS:]
        self.reporter.metrics(rows)  # it redraws the table and curve at a bounded number of points

    def cost(self, actual_cost_usd: float, gpu_hours: float) -> None:
        from brightrun.registry import repository as repo

        if actual_cost_usd == self.cost_usd and gpu_hours == self.gpu_hours:
            return  # the monitor reports every poll; write only changes
        self.cost_usd, self.gpu_hours = actual_cost_usd, gpu_hours
        repo.set_job_cost(self.engine, self.job_id, actual_cost_usd=actual_cost_usd, gpu_hours=gpu_hours)

    def retries(self, count: int) -> None:
        """The monitor counted one more resume after an interruption."""
        from brightrun.registry import repository as repo

        while repo.get_job(self.engine, self.job_id).retry_count < count:
            repo.increment_retry_count(self.engine, self.job_id)

    def cancel_requested(self) -> bool:
        """Cancellation asked through the registry (`brightrun jobs cancel`) or Prefect."""
        from brightrun.registry import repository as repo

        now = time.monotonic()
        if now - self._cancel_checked_at < self.cancel_check_interval_s:
            return False
        self._cancel_checked_at = now
        try:
            job = repo.get_job(self.engine, self.job_id)
            if job.status == "cancelled" or job.metadata.get("cancel_requested"):
                return True
        except Exception as exc:
            log.debug("could not read job %s: %s", self.job_id, exc)
        return flow_run_cancel_requested(self.flow_run_id)

    def flush(self) -> None:
        """Publish the latest table and stop the webhook sender (bounded wait)."""
        if self.recent_metrics:
            self.reporter.metrics(self.recent_metrics, final=True)
        self.notifier.close()


def request_cancel(engine: Engine, job_id: str) -> Any:
    """Flag a job for cancellation (the flow's monitor sees it within a poll)."""
    from brightrun.registry import repository as repo

    job = repo.get_job(engine, job_id)
    if not job.is_terminal:
        job = repo.update_job(engine, job_id, metadata={**job.metadata, "cancel_requested": True})
    return job


@dataclass(frozen=True)
class PodsEnded:
    """What the end of a job did to its pods."""

    terminated: list[str]  # the provider confirmed each
    unterminated: list[str]  # the provider did not confirm: named in the job, the reaper's


def end_pods(
    resources: Any,
    job_id: str,
    backend: Any,
    *,
    reason: str,
    policy: Any = None,
    cancel_in: Any = None,
) -> PodsEnded:
    """The end of a job, for every caller (the flow's last step, its cancellation hook,
    `brightrun jobs cancel`): no pod of the job keeps running (or billing).

    With `cancel_in` (the job's storage), the cancel marker is written first, so a local
    trainer stops at its next step. Each live pod is terminated, retrying while the provider
    does not answer for `pod_termination_patience_seconds` (the settings; with the job's
    `policy`, at most its `api_outage_patience_seconds`: the monitor may already have waited
    that long), and the registry records `pod_terminated` / `pod_termination_failed`.
    Listing the pods may raise ComputeError: the caller decides whether that stops it.

    (A cancel seen while an attempt runs is the monitor's to end: it writes the same marker,
    `write_cancel_marker`, and terminates the attempt's pod itself, so that the pod's bill is
    settled in its ledger; this function ends whatever is left after the attempt.)
    """
    from brightrun.compute import PodTerminationError, terminate_with_patience
    from brightrun.layout import JobLayout
    from brightrun.registry import repository as repo
    from tasks.monitor.attempt import write_cancel_marker

    if cancel_in is not None:
        write_cancel_marker(cancel_in, JobLayout(job_id))
    compute = resources.compute(backend, policy)
    patience = resources.settings.pod_termination_patience_seconds
    if policy is not None:
        patience = min(patience, policy.api_outage_patience_seconds)
    terminated, unterminated = [], []
    for pod in (p for p in compute.list_pods(job_id) if p.state.value != "terminated"):
        try:
            terminate_with_patience(compute, pod.pod_id, patience_seconds=patience)
            terminated.append(pod.pod_id)
        except PodTerminationError as exc:
            log.error("job %s: %s", job_id, exc)
            unterminated.append(pod.pod_id)
    if terminated:
        repo.add_event(resources.registry, job_id, "pod_terminated", pods=terminated, reason=reason)
    if unterminated:
        # The truth: the provider did not confirm. The reaper retries these; the job says which.
        repo.add_event(resources.registry, job_id, "pod_termination_failed", pods=unterminated, reason=reason)
    return PodsEnded(terminated, unterminated)


def finish_cancel(resources: Any, job: Any) -> None:
    """Cancel a job whose flow is not answering: cancel marker, pods terminated, `cancelled`.
    It takes the job's lease over (a cancel is the operator's stop), so no resume starts a
    pod while it terminates them."""
    from brightrun.registry import repository as repo
    from brightrun.registry.leases import LeaseKeeper, describe_holder

    ttl = resources.settings.job_lease_seconds
    holder = describe_holder("brightrun jobs cancel")
    with LeaseKeeper(resources.registry, str(job.id), holder, ttl_seconds=ttl, force=True):
        ended = end_pods(
            resources, job.id, job.compute_backend, reason="cancelled", cancel_in=resources.job_storage(job)
        )
        failed = ended.unterminated
        message = (
            "cancelled" if not failed else f"cancelled; pods {', '.join(failed)} not confirmed terminated"
        )
        repo.transition_job(resources.registry, job.id, "cancelled", error_message=message)


# ---------------------------------------------------------------- resume (issue 15)

# `stopped`: Ctrl-C at the terminal (tasks/monitor/user_stop.py), kept resumable on purpose.
RESUMABLE_FAILURES = frozenset({"orchestration", "stopped"})


def resume_refusal(job: Any, *, trainer_failed: bool = False) -> str | None:
    """Why `brightrun resume` must not continue this job, or None when it may.

    A live job (its flow died) and a job that failed for an orchestration reason (an API or
    database outage, restarts spent, its flow killed) continue from the last checkpoint; a
    job that completed, was cancelled, or failed for a training reason (the trainer's own
    failure: divergence, bad data; refused input; a cost cap) would only repeat its end.
    `trainer_failed`: the trainer's `failure.json` is in storage.
    """
    if job.status == "completed":
        return f"job {job.id} already completed (adapter: {job.lora_artifact_path}); nothing to resume"
    if job.status == "cancelled":
        return f"job {job.id} was cancelled; start a new job with `brightrun train`"
    if job.status != "failed":
        return None
    # A job failed before kinds were recorded counts as resumable unless its trainer failed.
    kind = "training" if trainer_failed else job.metadata.get("failure_kind") or "orchestration"
    if kind in RESUMABLE_FAILURES:
        return None
    reasons = {
        "training": "the trainer itself failed, so resuming would fail the same way",
        "input": "its input was refused; fix the dataset or the parameters and start a new job",
        "budget": "it reached a cost or duration cap; raise provisioning.max_cost_usd or "
        "max_duration_hours and start a new job",
    }
    why = reasons.get(kind, f"it failed for a reason resume cannot fix ({kind})")
    return f"job {job.id} failed: {job.error_message}; not resumable: {why}"


def take_over_job(engine: Engine, job: Any, flow_run_id: str | None, *, trainer_failed: bool = False) -> Any:
    """A resume picks the job up: a resumable failure goes back to `queued`, and the flow run
    that died under it is marked Crashed in Prefect (it would read RUNNING forever) before this
    run becomes the job's flow run. Returns the job as it is now; raises InputError when the
    job may not be resumed."""
    from brightrun.errors import InputError
    from brightrun.registry import repository as repo

    refusal = resume_refusal(job, trainer_failed=trainer_failed)
    if refusal is not None:
        raise InputError(refusal)
    if job.status == "failed":
        job = repo.reopen_failed_job(engine, job.id)
        log.info("job %s: reopened after an orchestration failure; resuming", job.id)
    if job.flow_run_id and job.flow_run_id != flow_run_id:
        mark_flow_run_crashed(job.flow_run_id, f"its process died; job {job.id} was resumed by another run")
    if flow_run_id and job.flow_run_id != flow_run_id:
        job = repo.update_job(engine, job.id, flow_run_id=flow_run_id)
    return job


def mark_flow_run_crashed(flow_run_id: str, message: str) -> bool:
    """Set a dead flow run's state to Crashed unless it already ended; True when it changed."""
    import httpx
    from prefect.client.orchestration import get_client
    from prefect.exceptions import PrefectException
    from prefect.states import Crashed

    try:
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(uuid.UUID(flow_run_id))
            if run.state is not None and run.state.is_final():
                return False
            client.set_flow_run_state(uuid.UUID(flow_run_id), Crashed(message=message), force=True)
    except (PrefectException, httpx.HTTPError, ValueError) as exc:
        log.warning("could not mark flow run %s crashed: %s", flow_run_id, exc)
        return False
    log.info("flow run %s marked Crashed (%s)", flow_run_id, message)
    return True
