"""The monitor loop against an in-memory compute backend: every exit path, cost, heartbeat."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import pytest

from brightrun import layout
from brightrun.compute import Compute, PodInfo, PodRequest, PodState
from brightrun.protocol import TrainerPhase, TrainerResult, TrainerStatus
from brightrun.spec import ProvisioningPolicy
from brightrun.storage import LocalStorage
from tasks.monitor import OutcomeKind, run_job
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
    assert 3.0 <= outcome.actual_cost_usd <= 4.0
    assert outcome.gpu_hours == pytest.approx(outcome.actual_cost_usd / 3600, rel=1e-3)
    assert rec.of("budget_exceeded")[0]["max"] == 3.0
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
