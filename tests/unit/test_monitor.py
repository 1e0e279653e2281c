"""The monitor loop against an in-memory compute backend: every exit path, cost, heartbeat."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import pytest

from brightrun import layout
from brightrun.compute import Compute, PodInfo, PodRequest, PodState
from brightrun.compute.runpod_client import RunPodUnavailableError
from brightrun.protocol import TrainerPhase, TrainerResult, TrainerStatus
from brightrun.spec import ProvisioningPolicy
from brightrun.storage import LocalStorage
from tasks.monitor import CostLedger, FailureKind, JobHistory, Outbox, OutcomeKind, PodBill, run_job
from tests.fake_runpod.helpers import ListRecorder

JOB = "job-u"


class MemoryCompute(Compute):
    """Pods are records; `on_start(attempt, storage)` plays the trainer's part in storage."""

    name = "memory"

    def __init__(
        self, storage: LocalStorage, on_start: Callable[[int], None], cost_per_hr: float = 1.0
    ) -> None:
        self.storage, self.on_start, self.cost_per_hr = storage, on_start, cost_per_hr
        self.pods: dict[str, PodInfo] = {}
        self.terminated: list[str] = []
        self.get_error: Exception | None = None
        self._ids = itertools.count(1)

    def start(self, request: PodRequest) -> PodInfo:
        pod = PodInfo(
            pod_id=f"p{next(self._ids)}",
            job_id=request.job_id,
            state=PodState.running,
            cost_per_hr=self.cost_per_hr,
        )
        self.pods[pod.pod_id] = pod
        self.on_start(request.attempt)
        return pod

    def set_state(self, pod_id: str, state: PodState) -> None:
        old = self.pods[pod_id]
        self.pods[pod_id] = PodInfo(
            pod_id=pod_id, job_id=old.job_id, state=state, cost_per_hr=old.cost_per_hr
        )

    def get(self, pod_id: str) -> PodInfo:
        if self.get_error is not None:
            raise self.get_error
        return self.pods[pod_id]

    def terminate(self, pod_id: str) -> None:
        self.terminated.append(pod_id)
        if pod_id in self.pods:
            self.set_state(pod_id, PodState.terminated)

    def list_pods(self, job_id: str | None = None) -> list[PodInfo]:
        return [p for p in self.pods.values() if job_id in (None, p.job_id)]


def policy(**kw: object) -> ProvisioningPolicy:
    values: dict = {
        "poll_interval_seconds": 0.01,
        "capacity_backoff_seconds": 0.0,
        "heartbeat_timeout_seconds": 5,
    }
    values.update(kw)
    return ProvisioningPolicy(**values)


def beat(storage: LocalStorage, attempt: int, step: int = 1) -> None:
    status = TrainerStatus(phase=TrainerPhase.training, attempt=attempt, step=step)
    storage.put_bytes(layout.JobLayout(JOB).status, status.model_dump_json().encode())


def finish(storage: LocalStorage) -> None:
    result = TrainerResult(
        job_id=JOB,
        steps=1,
        epochs=1,
        train_loss=None,
        eval_loss=None,
        perplexity=None,
        adapter_prefix="adapter",
        adapter_size_bytes=1,
        train_seconds=1.0,
    )
    storage.put_bytes(layout.JobLayout(JOB).result, result.model_dump_json().encode())


def run(compute: Compute, storage: LocalStorage, pol: ProvisioningPolicy, **kw: object):
    recorder = kw.pop("recorder", None) or ListRecorder()
    outcome = run_job(
        compute=compute,
        storage=storage,
        job_id=JOB,
        spec_uri="mem://spec",
        policy=pol,
        recorder=recorder,
        **kw,
    )
    return outcome, recorder


def test_exited_pod_without_result_is_retried_and_the_next_attempt_completes(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    compute: MemoryCompute

    def on_start(attempt: int) -> None:
        beat(storage, attempt)
        if attempt == 1:
            compute.pods_to_exit.append(f"p{attempt}")
        else:
            finish(storage)

    compute = MemoryCompute(storage, on_start)
    compute.pods_to_exit = []  # type: ignore[attr-defined]
    original_get = compute.get

    def get(pod_id: str) -> PodInfo:
        if pod_id in compute.pods_to_exit:  # type: ignore[attr-defined]
            compute.set_state(pod_id, PodState.exited)
        return original_get(pod_id)

    compute.get = get  # type: ignore[method-assign]
    outcome, rec = run(compute, storage, policy())
    assert outcome.kind == OutcomeKind.completed
    assert outcome.retry_count == 1 and outcome.attempts == 2
    assert rec.of("interrupted")[0]["reason"] == "pod exited"
    assert set(compute.terminated) >= {"p1", "p2"}


def test_exception_while_polling_terminates_every_pod_of_the_job(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    compute = MemoryCompute(storage, lambda attempt: beat(storage, attempt))
    # a pod of the same job the monitor did not create (a create whose answer was lost)
    compute.pods["stray"] = PodInfo(pod_id="stray", job_id=JOB, state=PodState.running)
    compute.pods["other"] = PodInfo(pod_id="other", job_id="another-job", state=PodState.running)
    compute.get_error = ConnectionError("provider unreachable")
    with pytest.raises(ConnectionError):
        run(compute, storage, policy())
    assert set(compute.terminated) == {"p1", "stray"}


def test_budget_is_accrued_from_cost_per_hour_and_uptime(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    compute = MemoryCompute(storage, lambda attempt: beat(storage, attempt), cost_per_hr=3600.0)  # $1/s
    ticks = itertools.count(0, 0.5)  # each clock reading is half a second later
    outcome, rec = run(compute, storage, policy(max_cost_usd=3.0), clock=lambda: next(ticks))
    assert outcome.kind == OutcomeKind.budget_exceeded
    (exceeded,) = rec.of("budget_exceeded")
    assert exceeded["max"] == 3.0 and 3.0 <= exceeded["actual_cost_usd"] <= 4.0
    # the final bill adds the seconds until the provider confirmed the termination, once
    assert exceeded["actual_cost_usd"] <= outcome.actual_cost_usd <= exceeded["actual_cost_usd"] + 3.0
    assert outcome.gpu_hours == pytest.approx(outcome.actual_cost_usd / 3600, rel=1e-3)
    assert rec.of("pod_billed")[0]["usd"] == pytest.approx(outcome.actual_cost_usd)
    assert compute.terminated[0] == "p1"


def test_no_heartbeat_after_start_is_an_interruption(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    compute = MemoryCompute(storage, lambda attempt: None)
    outcome, rec = run(compute, storage, policy(startup_timeout_seconds=0.05, max_restarts=1))
    assert outcome.kind == OutcomeKind.failed
    assert "gave up after 1 restarts" in outcome.reason
    assert "no heartbeat within" in rec.of("interrupted")[0]["reason"]
    assert set(compute.terminated) >= {"p1", "p2"}


def test_cancel_callable_stops_before_the_first_pod(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    compute = MemoryCompute(storage, lambda attempt: None)
    outcome, _ = run(compute, storage, policy(), cancel=lambda: True)
    assert outcome.kind == OutcomeKind.cancelled and compute.pods == {}


def test_ingests_each_trainer_event_and_metric_chunk_once(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    job = layout.JobLayout(JOB)

    def on_start(attempt: int) -> None:
        beat(storage, attempt)
        storage.put_bytes(job.key(layout.event_file(1, 1)), b'{"type": "checkpoint_committed", "attempt": 1}')
        storage.put_bytes(
            job.key(layout.metrics_file(1, 1)), b'{"step": 1, "epoch": 0.1}\n{"step": 2, "epoch": 0.2}\n'
        )
        finish(storage)

    outcome, rec = run(MemoryCompute(storage, on_start), storage, policy())
    assert outcome.kind == OutcomeKind.completed
    assert [m.step for m in rec.metric_records] == [1, 2]
    assert rec.of("checkpoint_committed") == [{"source": "trainer"}]


# ---------------------------------------------------------------- faults around the trainer


class FlakyCompute(MemoryCompute):
    """The provider's API fails (as RunPod's client does after its retries) while `down` is set."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.down = False
        self.gets = 0
        self.on_get: Callable[[int], None] | None = None

    def _check(self) -> None:
        if self.down:
            raise RunPodUnavailableError("RunPod pod lookup: HTTP 500 after 5 attempts")

    def get(self, pod_id: str) -> PodInfo:
        self.gets += 1
        if self.on_get is not None:
            self.on_get(self.gets)
        self._check()
        return super().get(pod_id)

    def terminate(self, pod_id: str) -> None:
        self._check()
        super().terminate(pod_id)

    def list_pods(self, job_id: str | None = None) -> list[PodInfo]:
        self._check()
        return super().list_pods(job_id)


def test_trainer_completing_during_an_api_outage_completes_the_job(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    compute = FlakyCompute(storage, lambda attempt: beat(storage, attempt))

    def on_get(n: int) -> None:
        if n == 2:
            compute.down = True  # the API goes away mid-run...
        elif n == 5:
            finish(storage)  # ...the trainer finishes while nobody can see the pod...
            compute.set_state("p1", PodState.exited)
        elif n == 12:
            compute.down = False  # ...and it comes back

    compute.on_get = on_get
    outcome, rec = run(compute, storage, policy(api_outage_patience_seconds=60))
    assert outcome.kind == OutcomeKind.completed, outcome.reason
    assert outcome.result is not None and outcome.unterminated_pods == []
    types = rec.types()
    assert types.count("api_unavailable") == 1 and types.count("api_recovered") == 1
    # terminated only once RunPod confirmed it, after the API came back
    assert compute.terminated == ["p1"] and types.index("api_recovered") < types.index("pod_terminated")
    assert rec.of("pod_billed")[0]["pod_id"] == "p1"


def test_an_outage_past_the_patience_fails_the_job_as_resumable_and_names_the_pod(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    compute = FlakyCompute(storage, lambda attempt: beat(storage, attempt))
    compute.on_get = lambda n: setattr(compute, "down", True) if n == 2 else None
    outcome, rec = run(compute, storage, policy(api_outage_patience_seconds=0.2))
    assert outcome.kind == OutcomeKind.failed
    assert outcome.failure_kind == FailureKind.orchestration
    assert "api_outage_patience_seconds" in outcome.reason
    assert outcome.unterminated_pods == ["p1"]
    assert [p["pod_id"] for p in rec.of("pod_termination_failed")] == ["p1"]
    assert rec.of("pod_terminated") == []  # never claimed without RunPod's confirmation


def test_one_interruption_with_max_restarts_1_counts_one_retry(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    compute: MemoryCompute

    def on_start(attempt: int) -> None:
        beat(storage, attempt)
        compute.set_state(f"p{attempt}", PodState.exited)  # every attempt is interrupted at once

    compute = MemoryCompute(storage, on_start)
    outcome, rec = run(compute, storage, policy(max_restarts=1))
    assert outcome.kind == OutcomeKind.failed and outcome.failure_kind == FailureKind.orchestration
    assert "gave up after 1 restarts" in outcome.reason
    # two attempts, one replacement: retry_count is 1, as the bill counts it
    assert outcome.attempts == 2 and outcome.retry_count == 1 and rec.retry_counts == [1]
    assert len(rec.of("interrupted")) == 2


def test_trainer_failure_is_a_training_failure(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)

    def on_start(attempt: int) -> None:
        beat(storage, attempt)
        failure = {"job_id": JOB, "phase": "training", "error": "loss is NaN", "error_type": "Divergence"}
        storage.put_json(layout.JobLayout(JOB).failure, failure)

    outcome, _ = run(MemoryCompute(storage, on_start), storage, policy())
    assert outcome.kind == OutcomeKind.failed and outcome.failure_kind == FailureKind.training
    assert "loss is NaN" in outcome.reason


class FlakyRegistry(ListRecorder):
    """A registry that refuses every write while `down` (a database restarting)."""

    down: bool = False
    refused: int = 0

    def _check(self) -> None:
        if self.down:
            self.refused += 1
            raise ConnectionError("registry unreachable")

    def event(self, type: str, attempt: int, payload: dict, key: str | None = None) -> None:
        self._check()
        super().event(type, attempt, payload, key)

    def status(self, status: TrainerStatus) -> None:
        self._check()
        super().status(status)

    def metrics(self, records: list, key: str | None = None) -> None:
        self._check()
        super().metrics(records, key)

    def cost(self, actual_cost_usd: float, gpu_hours: float) -> None:
        self._check()
        super().cost(actual_cost_usd, gpu_hours)


def test_a_registry_outage_never_stops_a_healthy_trainer(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    job = layout.JobLayout(JOB)
    rec = FlakyRegistry()
    polls = itertools.count(1)

    def on_get(n: int) -> None:
        step = next(polls)
        rec.down = 2 <= step <= 6  # the database is away for five polls
        beat(storage, 1, step=step)
        storage.put_bytes(job.key(layout.metrics_file(1, step)), f'{{"step": {step}, "epoch": 0}}\n'.encode())
        storage.put_bytes(
            job.key(layout.event_file(1, step)), b'{"type": "checkpoint_committed", "attempt": 1}'
        )
        if step == 8:
            finish(storage)

    compute = FlakyCompute(storage, lambda attempt: None)
    compute.on_get = on_get
    outcome, rec = run(compute, storage, policy(), recorder=rec)
    assert outcome.kind == OutcomeKind.completed, outcome.reason
    assert rec.refused > 0 and compute.terminated == ["p1"]  # stopped because it finished, not before
    # every queued write landed once, in order, and progress caught up
    assert [m.step for m in rec.metric_records] == list(range(1, 9))
    assert len(rec.of("checkpoint_committed")) == 8
    assert rec.statuses[-1].step == 8


def test_a_resumed_job_counts_the_dead_attempt_and_bills_each_pod_once(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    # run 1: its flow process "dies" (KeyboardInterrupt) while attempt 1 trains; its pod stays up
    first = MemoryCompute(storage, lambda attempt: beat(storage, attempt), cost_per_hr=3600.0)

    class Killed(ListRecorder):
        def status(self, status: TrainerStatus) -> None:
            super().status(status)
            raise KeyboardInterrupt

    dying = Killed()
    first_clock = itertools.count(100.0, 1.0)
    with pytest.raises(KeyboardInterrupt):
        run(first, storage, policy(), recorder=dying, clock=lambda: next(first_clock))
    (billed,) = dying.of("pod_billed")  # the flow's own cleanup terminated and billed p1

    # run 2 (`brightrun resume`): knows run 1's pods from the registry
    history = JobHistory(
        pods=[PodBill("p1", 1, 3600.0, settled=True, seconds=billed["seconds"], created_at=100.0)]
    )
    second = MemoryCompute(
        storage, lambda attempt: (beat(storage, attempt), finish(storage)), cost_per_hr=0.0
    )
    second._ids = itertools.count(2)
    rec = ListRecorder()
    outcome, rec = run(second, storage, policy(), recorder=rec, history=history)
    assert outcome.kind == OutcomeKind.completed
    (dead,) = rec.of("interrupted")
    assert "monitor stopped" in dead["reason"]
    assert outcome.attempts == 2 and outcome.retry_count == 1 and rec.retry_counts == [1]
    # p1 is billed once, from run 1's record; p2 costs nothing
    assert outcome.actual_cost_usd == pytest.approx(billed["usd"])
    assert [p["pod_id"] for p in rec.of("pod_billed")] == ["p2"]


def test_ledger_bills_an_interrupted_pod_to_the_trainers_last_sign_of_life() -> None:
    ledger = CostLedger()
    running = PodInfo("p", JOB, PodState.running, cost_per_hr=3600.0, uptime_seconds=10.0)
    ledger.opened(running, attempt=1, gpu_count=1, now=1000.0, created=True)
    ledger.observe(running, 1010.0)  # RunPod says: up 10 s at t=1010
    gone = PodInfo("p", JOB, PodState.exited, cost_per_hr=3600.0)
    ledger.observe(gone, 1030.0, last_alive=1013.0)  # seen exited at 1030; last heartbeat 1013
    bill = ledger.terminated("p", 1040.0)
    assert bill is not None and bill.seconds == pytest.approx(13.0)
    assert ledger.terminated("p", 1050.0) is None  # once
    assert ledger.totals(2000.0) == (pytest.approx(13.0), pytest.approx(13.0 / 3600, abs=1e-6))


def test_outbox_queues_a_registry_outage_but_never_hides_a_bug() -> None:
    rec = FlakyRegistry()
    outbox = Outbox(rec)
    rec.down = True
    outbox.event("pod_created", 1, {"pod_id": "p1"}, key="pod_created:p1")
    outbox.event("pod_running", 1, {"pod_id": "p1"})  # queued behind it, in order
    assert outbox.pending == 2 and rec.events == []
    rec.down = False
    assert outbox.flush() and rec.types() == ["pod_created", "pod_running"]
    outbox.event("pod_created", 1, {"pod_id": "p1"}, key="pod_created:p1")  # a replay: one record
    assert rec.types() == ["pod_created", "pod_running"]

    class Buggy(ListRecorder):
        def cost(self, actual_cost_usd: float, gpu_hours: float) -> None:
            raise TypeError("a bug, not an outage")

    with pytest.raises(TypeError):
        Outbox(Buggy()).cost(1.0, 1.0)
