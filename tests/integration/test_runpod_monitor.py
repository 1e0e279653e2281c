"""The RunPod backend and the monitor against the fake RunPod API, with the fast fake trainer."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import pytest

from brightrun import layout
from brightrun.compute.runpod_client import GraphQLRunPodClient, RunPodAuthError
from brightrun.storage import LocalStorage
from tasks.monitor import OutcomeKind, run_job
from tasks.provision import NoCapacityError
from tests.fake_runpod.helpers import ListRecorder, fast_policy, runpod_compute, wait_for, write_job

pytestmark = pytest.mark.integration

STEPS = 12
EXPECTED_WEIGHTS = {"sum": sum(range(1, STEPS + 1)), "steps": STEPS}


def _run(
    fake_runpod, tmp_path: Path, job_id: str = "job1", *, env=None, recorder=None, cancel=None, **policy
):
    pol = fast_policy(**policy)
    root = tmp_path / "storage"
    uri = write_job(root, job_id, steps=STEPS, every=3)
    compute = runpod_compute(fake_runpod.url, fake_runpod.api_key, pol)
    recorder = recorder or ListRecorder()
    outcome = run_job(
        compute=compute,
        storage=LocalStorage(root),
        job_id=job_id,
        spec_uri=uri,
        policy=pol,
        env={"FAKE_TRAINER_STEP_SECONDS": "0.1", **(env or {})},
        recorder=recorder,
        cancel=cancel,
    )
    return outcome, recorder, LocalStorage(root)


def _interrupt_at_steps(
    fake_runpod, tmp_path: Path, plan: list[tuple[int, str]], job_id: str = "job1"
) -> None:
    """Interrupt the running pod of the job when its heartbeat reaches each step of `plan`."""
    status_path = tmp_path / "storage" / "jobs" / job_id / layout.STATUS

    def chaos() -> None:
        for n, (step, mode) in enumerate(plan, start=1):

            def ready(n: int = n, step: int = step):
                pods = [p for p in fake_runpod.fake.pods_of(f"brightrun-{job_id}-a{n}") if p.alive]
                if not pods or not status_path.exists():
                    return None
                try:
                    status = json.loads(status_path.read_text())
                except ValueError:
                    return None
                fresh = status_path.stat().st_mtime > pods[0].created_at
                return pods[0] if fresh and status["step"] >= step else None

            pod = wait_for(ready, timeout=60)
            fake_runpod.fake.interrupt(pod.id, mode=mode, grace_seconds=1.0)

    thread = threading.Thread(target=chaos, daemon=True)
    thread.start()


def test_interrupted_job_resumes_and_completes(fake_runpod, tmp_path: Path) -> None:
    _interrupt_at_steps(fake_runpod, tmp_path, [(2, "kill"), (5, "term"), (8, "kill")])
    outcome, rec, storage = _run(fake_runpod, tmp_path)

    assert outcome.kind == OutcomeKind.completed, outcome.reason
    assert outcome.retry_count == 3, rec.events
    assert rec.retry_counts == [1, 2, 3]
    assert json.loads(storage.get_bytes("jobs/job1/adapter/weights.json")) == EXPECTED_WEIGHTS
    types = rec.types()
    assert types.count("interrupted") == 3
    assert [p["retry_count"] for p in rec.of("resumed") if p.get("source") != "trainer"] == [1, 2, 3]
    # every pod of the job was terminated, interrupted ones included
    assert {p["pod_id"] for p in rec.of("pod_terminated")} == set(outcome.pod_ids)
    assert len(outcome.pod_ids) == 4
    assert all(p.status == "TERMINATED" for p in fake_runpod.fake.pods.values())
    # trainer events and metrics reached the recorder, each once
    steps = [m.step for m in rec.metric_records]
    assert len(steps) == len(set(zip(steps, [m.attempt for m in rec.metric_records], strict=True)))
    assert max(steps) == STEPS
    assert outcome.actual_cost_usd > 0 and outcome.gpu_hours > 0
    assert rec.costs[-1] == (outcome.actual_cost_usd, outcome.gpu_hours)


def test_heartbeat_silence_is_an_interruption(fake_runpod, tmp_path: Path) -> None:
    outcome, rec, _ = _run(
        fake_runpod, tmp_path, env={"FAKE_TRAINER_HANG_AT": "4"}, heartbeat_timeout_seconds=2.0
    )
    assert outcome.kind == OutcomeKind.completed, outcome.reason
    assert outcome.retry_count == 1
    assert "heartbeat silent" in rec.of("interrupted")[0]["reason"]


def test_gives_up_after_max_restarts(fake_runpod, tmp_path: Path) -> None:
    _interrupt_at_steps(fake_runpod, tmp_path, [(1, "kill"), (2, "kill")])
    outcome, rec, _ = _run(fake_runpod, tmp_path, max_restarts=1)
    assert outcome.kind == OutcomeKind.failed
    assert "gave up after 1 restarts" in outcome.reason
    # two attempts, one replacement (issue 15 item 6: it read 2)
    assert outcome.retry_count == 1 and rec.retry_counts == [1]


def test_trainer_failure_is_not_retried(fake_runpod, tmp_path: Path) -> None:
    outcome, rec, _ = _run(fake_runpod, tmp_path, env={"FAKE_TRAINER_FAIL_AT": "3"})
    assert outcome.kind == OutcomeKind.failed
    assert "injected failure" in outcome.reason
    assert outcome.retry_count == 0 and len(outcome.pod_ids) == 1


def test_no_spot_on_first_two_gpu_types_uses_the_third(fake_runpod, tmp_path: Path) -> None:
    fake_runpod.fake.refuse_capacity(["NVIDIA RTX A6000", "NVIDIA A40"], spot_only=True)
    outcome, rec, _ = _run(fake_runpod, tmp_path, capacity="spot")
    assert outcome.kind == OutcomeKind.completed
    (pod,) = fake_runpod.fake.pods.values()
    assert (pod.gpu_type, pod.spot) == ("NVIDIA L40S", True)
    assert [p["gpu_type"] for p in rec.of("no_capacity")] == ["NVIDIA RTX A6000", "NVIDIA A40"]


def test_no_spot_at_all_falls_back_to_on_demand(fake_runpod, tmp_path: Path) -> None:
    fake_runpod.fake.refuse_capacity(None, spot_only=True)
    outcome, _, _ = _run(fake_runpod, tmp_path, capacity="spot_then_on_demand")
    assert outcome.kind == OutcomeKind.completed
    (pod,) = fake_runpod.fake.pods.values()
    assert (pod.gpu_type, pod.spot) == ("NVIDIA RTX A6000", False)


def test_no_spot_at_all_fails_clearly_when_spot_only(fake_runpod, tmp_path: Path) -> None:
    fake_runpod.fake.refuse_capacity(None, spot_only=True)
    with pytest.raises(NoCapacityError) as info:
        _run(fake_runpod, tmp_path, capacity="spot", capacity_rounds=2)
    message = str(info.value)
    assert "spot NVIDIA RTX A6000" in message and "spot NVIDIA L40S" in message
    assert "spot_then_on_demand" in message
    assert fake_runpod.fake.pods == {}


def test_bad_api_key_fails_at_once_without_retry_storm(fake_runpod, tmp_path: Path) -> None:
    fake_runpod.fake.fail_auth()
    started = time.monotonic()
    with pytest.raises(RunPodAuthError) as info:
        _run(fake_runpod, tmp_path)
    assert "RUNPOD_API_KEY" in str(info.value)
    assert fake_runpod.api_key not in str(info.value)
    # one refused call, plus the cleanup's one listing: no retries
    assert fake_runpod.fake.count_requests() <= 2
    assert time.monotonic() - started < 30  # generous: the point is "not a backoff loop"


def test_5xx_is_retried(fake_runpod) -> None:
    fake_runpod.fake.fail_next(2, status=503)
    client = GraphQLRunPodClient(fake_runpod.api_key, base_url=fake_runpod.url, backoff_seconds=0.01)
    assert any(p.id == "NVIDIA A40" for p in client.gpu_prices())
    assert fake_runpod.fake.count_requests("gpuTypes") == 3


@pytest.mark.parametrize("crash", [KeyboardInterrupt, SystemExit])
def test_orchestrator_crash_after_pod_creation_terminates_the_pod(fake_runpod, tmp_path: Path, crash) -> None:
    # (A registry write that raises an Exception is queued, not a crash: see test_faults_monitor.)
    class Crashing(ListRecorder):
        def event(self, type: str, attempt: int, payload: dict, key: str | None = None) -> None:
            super().event(type, attempt, payload, key)
            if type == "pod_running":
                raise crash("boom")

    with pytest.raises(crash):
        _run(fake_runpod, tmp_path, recorder=Crashing())
    (pod,) = fake_runpod.fake.pods.values()
    assert pod.status == "TERMINATED" and not pod.alive


def test_budget_cap_stops_the_job(fake_runpod, tmp_path: Path) -> None:
    fake_runpod.fake.set_cost("NVIDIA RTX A6000", 3600.0)  # one dollar a second
    outcome, rec, _ = _run(fake_runpod, tmp_path, max_cost_usd=1.5, env={"FAKE_TRAINER_STEP_SECONDS": "1"})
    assert outcome.kind == OutcomeKind.budget_exceeded
    assert "max_cost_usd=1.5" in outcome.reason
    assert outcome.actual_cost_usd >= 1.5
    assert rec.of("budget_exceeded")
    assert all(p.status == "TERMINATED" for p in fake_runpod.fake.pods.values())


def test_cancellation_terminates_the_pod(fake_runpod, tmp_path: Path) -> None:
    cancel = threading.Event()
    threading.Timer(1.5, cancel.set).start()
    outcome, rec, storage = _run(fake_runpod, tmp_path, cancel=cancel, poll_interval_seconds=10.0)
    assert outcome.kind == OutcomeKind.cancelled
    assert storage.exists("jobs/job1/CANCEL")
    (pod,) = fake_runpod.fake.pods.values()
    assert pod.status == "TERMINATED" and not pod.alive


def test_env_value_with_quotes_backslashes_newlines_reaches_the_pod(fake_runpod, tmp_path: Path) -> None:
    tricky = 'say "hi" \\n and \\"x\\"\nnext line\t$HOME `id` \'single\' {"json": [1]}'
    outcome, _, storage = _run(
        fake_runpod, tmp_path, env={"TRICKY": tricky, "FAKE_TRAINER_ECHO_ENV": "TRICKY"}
    )
    assert outcome.kind == OutcomeKind.completed
    assert storage.get_bytes("jobs/job1/echo/TRICKY").decode() == tricky


def test_secrets_never_leak(fake_runpod, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    secrets = {
        "AWS_SECRET_ACCESS_KEY": "aws-secret-0b5e7d9c",
        "HF_TOKEN": "hf_token_4c2a9e71",
        "AWS_ACCESS_KEY_ID": "AKIAFAKE12345",
    }
    caplog.set_level(logging.DEBUG)
    _interrupt_at_steps(fake_runpod, tmp_path, [(2, "kill")])
    outcome, rec, storage = _run(fake_runpod, tmp_path, env=secrets)
    assert outcome.kind == OutcomeKind.completed
    # and a rejected request with the secrets in its variables
    compute = runpod_compute(fake_runpod.url, fake_runpod.api_key, fast_policy(cloud_type="SECURE"))
    from brightrun.compute.runpod_client import PodCreate, RunPodError

    with pytest.raises(RunPodError) as info:
        compute.api.create_pod(
            PodCreate(name="x", image="i", docker_args="", gpu_type="Bogus GPU", env=secrets)
        )
    texts = [
        caplog.text,
        json.dumps([e for e in rec.events], default=str),
        storage.get_bytes("jobs/job1/spec.json").decode(),
        str(info.value),
        repr(outcome),
    ]
    for value in [*secrets.values(), fake_runpod.api_key]:
        for text in texts:
            assert value not in text


def test_pod_self_destructs_at_its_deadline_without_the_orchestrator(fake_runpod) -> None:
    from brightrun.compute import PodRequest

    sleeper = "python -c 'import time; time.sleep(120)'"
    policy = fast_policy(max_duration_hours=1 / 3600)  # a one-second deadline
    compute = runpod_compute(fake_runpod.url, fake_runpod.api_key, policy, trainer=sleeper)
    pod = compute.start(
        PodRequest(job_id="orphan", attempt=1, spec_uri="/x/spec.json", gpu_type="NVIDIA A40")
    )
    # nobody polls or terminates: the pod's own start command ends it and removes the pod
    wait_for(lambda: fake_runpod.fake.pods[pod.pod_id].status == "TERMINATED", timeout=30)
    assert compute.get(pod.pod_id).state.value == "terminated"
