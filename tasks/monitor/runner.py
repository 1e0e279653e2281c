"""The controller: run attempts until the job ends, under the recovery policy.

`JobMonitor` picks a job up where any earlier run left it (its pods, their bills, its
attempt numbers), runs `AttemptRunner`s, replaces interrupted attempts while the recovery
policy allows, and on every exit path (success, failure, cancellation, budget, an
exception, KeyboardInterrupt) terminates every pod of the job and writes the final cost.
`run_job` is the entry point the flow calls.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

from brightrun import layout
from brightrun.compute import Compute, ComputeError, PodInfo, PodState
from brightrun.protocol import previous_attempts
from brightrun.spec import ProvisioningPolicy
from brightrun.storage import Storage
from tasks.monitor.attempt import (
    AttemptEnd,
    AttemptRunner,
    CancelCheck,
    EndKind,
    JobContext,
    ProviderWatch,
    _latest,
    provider_unreachable,
)
from tasks.monitor.ledger import CostLedger
from tasks.monitor.outcome import FailureKind, Outcome, OutcomeKind
from tasks.monitor.recording import (
    HistorySource,
    JobHistory,
    MonitorRecorder,
    NullRecorder,
    Outbox,
    TrainerLog,
)
from tasks.monitor.recovery import RecoveryPolicy
from tasks.monitor.user_stop import STOPPED_BY_USER, user_stop_requested

log = logging.getLogger("tasks.monitor")

_OUTCOME_OF_END = {
    EndKind.completed: (OutcomeKind.completed, None),
    EndKind.failed: (OutcomeKind.failed, FailureKind.training),
    EndKind.cancelled: (OutcomeKind.cancelled, None),
    EndKind.budget: (OutcomeKind.budget_exceeded, FailureKind.budget),
    EndKind.duration: (OutcomeKind.failed, FailureKind.budget),
    EndKind.stopped: (OutcomeKind.failed, FailureKind.stopped),
    EndKind.outage: (OutcomeKind.failed, FailureKind.orchestration),
    EndKind.gave_up: (OutcomeKind.failed, FailureKind.orchestration),
}


class JobMonitor:
    """Runs one job's attempts to an outcome."""

    def __init__(self, ctx: JobContext, history: JobHistory) -> None:
        self.ctx = ctx
        self.history = history
        self.attempt = 0  # the job's attempt number: it continues across runs

    def run(self) -> Outcome:
        ctx = self.ctx
        try:
            self._pick_up()
            finished = ctx.trainer_end()
            if finished is not None:  # the trainer ended while no monitor watched: that is the result
                return self._outcome(finished)
            restarts = 0
            while True:
                if user_stop_requested():
                    before = f"{STOPPED_BY_USER} before a pod started"
                    return self._outcome(AttemptEnd(EndKind.stopped, before))
                if ctx.cancelled():
                    return self._outcome(AttemptEnd(EndKind.cancelled, "cancelled before a pod started"))
                self.attempt += 1
                end = AttemptRunner(ctx, self.attempt).run()
                if end.kind != EndKind.interrupted:
                    return self._outcome(end)
                if not ctx.recovery.replace_after_interruption(restarts):
                    return self._outcome(
                        AttemptEnd(
                            EndKind.gave_up,
                            f"gave up after {ctx.recovery.max_restarts} restarts "
                            f"(provisioning.max_restarts); last interruption: {end.reason}",
                        )
                    )
                restarts += 1
        finally:
            self._clean_up()

    # -- an earlier run's leftovers

    def _pick_up(self) -> None:
        """Continue the job's attempt numbers (no trainer overwrites an earlier attempt's events
        or metric chunks), stop and bill pods an earlier run left, and record its last attempt
        as interrupted when that run died under it (the replacement then counts as a retry)."""
        ctx = self.ctx
        self.attempt = max(previous_attempts(ctx.storage, ctx.job.prefix + "/"), self.history.last_attempt)
        listed = {p.pod_id: p for p in self._pods_of_job() if p.state != PodState.terminated}
        for pod_id, info in listed.items():
            # SIGTERM first where the backend can (local): the trainer commits a checkpoint.
            ctx.ledger.opened(
                info, attempt=self.attempt, gpu_count=ctx.policy.gpu_count, now=ctx.clock(), created=False
            )
            ctx.end_pod(pod_id, "left by an earlier run", self.attempt)
        for pod_id in ctx.ledger.unsettled():
            if pod_id not in listed:  # gone while no monitor watched: bill what is known
                bill = ctx.ledger.forget_unknown_end(pod_id)
                if bill is not None:
                    ctx.recorder.event(
                        "pod_billed", bill.attempt, bill.as_payload(), key=f"pod_billed:{pod_id}"
                    )
        if self.attempt >= 1 and not self._trainer_finished():
            ctx.recorder.event(
                "interrupted",
                self.attempt,
                {
                    "reason": "its monitor stopped (the flow process died or was killed)",
                    "last_checkpoint": _latest(ctx.storage, ctx.job),
                },
                key=f"interrupted:a{self.attempt}",
            )

    def _pods_of_job(self) -> list[PodInfo]:
        """The provider's list of the job's pods, waiting out an outage within the patience: a
        new attempt must never start beside a trainer an earlier run left running."""
        ctx = self.ctx
        while True:
            try:
                pods = ctx.compute.list_pods(ctx.job.job_id)
            except ComputeError as exc:
                if not provider_unreachable(exc) or not ctx.provider.failed(exc, ctx.clock(), self.attempt):
                    raise
                ctx.wait()
                continue
            ctx.provider.answered(ctx.clock(), self.attempt)
            return pods

    def _trainer_finished(self) -> bool:
        return self.ctx.trainer_end() is not None

    # -- the end

    def _outcome(self, end: AttemptEnd) -> Outcome:
        kind, failure_kind = _OUTCOME_OF_END[end.kind]
        cost, hours = self.ctx.ledger.totals(self.ctx.clock())
        reason = end.reason
        if self.ctx.unterminated:
            reason += (
                f"{'; ' if reason else ''}RunPod never confirmed the termination of pod(s) "
                f"{', '.join(self.ctx.unterminated)}: the reaper (`brightrun reap`) will terminate them"
            )
        return Outcome(
            kind=kind,
            reason=reason,
            result=end.result,
            failure=end.failure,
            attempts=self.attempt,
            retry_count=RecoveryPolicy.retry_count(self.attempt),
            actual_cost_usd=cost,
            gpu_hours=hours,
            pod_ids=list(self.ctx.ledger.pods),
            failure_kind=failure_kind,
            unterminated_pods=list(self.ctx.unterminated),
        )

    def _clean_up(self) -> None:
        """Every pod of the job: the ones this run knows, and any the provider lists by name."""
        ctx = self.ctx
        pod_ids = dict.fromkeys(ctx.ledger.unsettled())
        try:
            pod_ids.update(
                dict.fromkeys(
                    p.pod_id for p in ctx.compute.list_pods(ctx.job.job_id) if p.state != PodState.terminated
                )
            )
        except ComputeError as exc:
            log.error(
                "could not list the pods of job %s (%s); the reaper will find any left", ctx.job.job_id, exc
            )
        for pod_id in pod_ids:
            if pod_id in ctx.ledger.pods and ctx.ledger.pods[pod_id].settled:
                continue
            try:
                ctx.end_pod(pod_id, "cleanup", self.attempt, patience=False)
            except Exception as exc:  # noqa: BLE001 - cleanup goes on to the next pod whatever this one did
                log.error("terminating pod %s of job %s failed: %s", pod_id, ctx.job.job_id, exc)
        cost, hours = ctx.ledger.totals(ctx.clock())
        ctx.recorder.cost(cost, hours)
        if not ctx.recorder.flush():
            log.error(
                "job %s: %d registry write(s) could not be recorded (the registry is away); "
                "`brightrun resume` records them from storage",
                ctx.job.job_id,
                ctx.recorder.pending,
            )


def run_job(
    *,
    compute: Compute,
    storage: Storage,
    job_id: str,
    spec_uri: str,
    policy: ProvisioningPolicy,
    env: Mapping[str, str] | None = None,
    recorder: MonitorRecorder | None = None,
    cancel: CancelCheck | None = None,
    clock: Callable[[], float] = time.time,
    history: JobHistory | None = None,
) -> Outcome:
    """Run the job to an outcome; every pod of the job is terminated (or, if the provider never
    confirms it, named in `Outcome.unterminated_pods` and a `pod_termination_failed` event)."""
    recorder = recorder or NullRecorder()
    if history is None:
        history = recorder.history() if isinstance(recorder, HistorySource) else JobHistory()
    outbox = Outbox(recorder)
    job = layout.JobLayout(job_id)
    recovery = RecoveryPolicy.from_provisioning(policy)
    ctx = JobContext(
        compute=compute,
        storage=storage,
        job=job,
        spec_uri=spec_uri,
        env=dict(env or {}),
        policy=policy,
        recovery=recovery,
        recorder=outbox,
        trainer_log=TrainerLog(storage, job, outbox),
        ledger=CostLedger(history.pods),
        provider=ProviderWatch(outbox, recovery.api_outage_patience_seconds),
        cancel=cancel,
        clock=clock,
        started=clock(),
    )
    return JobMonitor(ctx, history).run()
