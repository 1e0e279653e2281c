"""Faults around the trainer, at the monitor (issue 15 items 1, 5, 6, 7; issue 11 item 5).

The fake RunPod (its outage knobs, its billing) runs the fast fake trainer; the registry is a
real SQLite file where one is needed. Each test asserts the job's end, its cost against the
fake's billing, its events, and that no pod is left running or billing (the fixture fails the
test on a leaked pod).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from brightrun import layout
from brightrun.storage import LocalStorage
from tasks.monitor import FailureKind, OutcomeKind, run_job
from tests.fake_runpod.helpers import ListRecorder, fast_policy, runpod_compute, wait_for, write_job

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
# A tenth of a cent: the bill is read from RunPod's figures, not from the monitor's guesses.
CENT_FRACTION = 0.001


def _status(root: Path, job_id: str) -> dict[str, Any] | None:
    try:
        return json.loads((root / "jobs" / job_id / layout.STATUS).read_text())
    except (OSError, ValueError):
        return None


def test_trainer_completing_during_a_60s_api_outage_completes_and_bills_right(
    fake_runpod: Any, tmp_path: Path
) -> None:
    """Item 1: the API answers HTTP 500 for 60 s (the poll is 1 s), during which the trainer
    finishes; the job completes, the pod is terminated once RunPod answers, and the recorded
    cost matches RunPod's billing."""
    root = tmp_path / "storage"
    job_id = "outage1"
    uri = write_job(root, job_id, steps=12, every=3)
    policy = fast_policy(
        poll_interval_seconds=1.0, heartbeat_timeout_seconds=10.0, api_outage_patience_seconds=600
    )
    compute = runpod_compute(fake_runpod.url, fake_runpod.api_key, policy)
    fake = fake_runpod.fake

    def outage() -> None:
        wait_for(lambda: (_status(root, job_id) or {}).get("step", 0) >= 2, timeout=60)
        fake.fail_for(60, status=500)

    threading.Thread(target=outage, daemon=True).start()
    rec = ListRecorder()
    outcome = run_job(
        compute=compute,
        storage=LocalStorage(root),
        job_id=job_id,
        spec_uri=uri,
        policy=policy,
        env={"FAKE_TRAINER_STEP_SECONDS": "0.2"},
        recorder=rec,
    )
    assert outcome.kind == OutcomeKind.completed, outcome.reason
    assert outcome.result is not None and outcome.result.steps == 12
    types = rec.types()
    assert types.count("api_unavailable") == 1 and types.count("api_recovered") == 1
    (outage_end,) = rec.of("api_recovered")
    assert outage_end["outage_seconds"] >= 50  # the trainer's end was seen through storage, mid-outage
    assert types.index("api_recovered") < types.index("pod_terminated")
    assert outcome.unterminated_pods == [] and not fake.billing_pods()
    billed = fake.billed_usd()
    assert billed > 0 and abs(outcome.actual_cost_usd - billed) < CENT_FRACTION, (
        outcome.actual_cost_usd,
        billed,
    )
    assert rec.costs[-1][0] == outcome.actual_cost_usd


def test_an_outage_past_the_patience_fails_resumably_and_never_claims_a_termination(
    fake_runpod: Any, tmp_path: Path
) -> None:
    """Items 1 and 3: a trainer that has not finished when the patience runs out fails the job
    as resumable; the pod RunPod never confirmed terminated is named, not recorded terminated."""
    root = tmp_path / "storage"
    job_id = "outage2"
    uri = write_job(root, job_id, steps=200, every=5)
    policy = fast_policy(poll_interval_seconds=0.5, api_outage_patience_seconds=4.0)
    compute = runpod_compute(fake_runpod.url, fake_runpod.api_key, policy)
    fake = fake_runpod.fake

    def outage() -> None:
        wait_for(lambda: (_status(root, job_id) or {}).get("step", 0) >= 2, timeout=60)
        fake.fail_for(600, status=429)

    threading.Thread(target=outage, daemon=True).start()
    rec = ListRecorder()
    outcome = run_job(
        compute=compute,
        storage=LocalStorage(root),
        job_id=job_id,
        spec_uri=uri,
        policy=policy,
        env={"FAKE_TRAINER_STEP_SECONDS": "0.2"},
        recorder=rec,
    )
    assert outcome.kind == OutcomeKind.failed and outcome.failure_kind == FailureKind.orchestration
    assert "api_outage_patience_seconds" in outcome.reason
    (pod,) = fake.pods.values()
    assert outcome.unterminated_pods == [pod.id] and pod.id in outcome.reason
    assert [e["pod_id"] for e in rec.of("pod_termination_failed")] == [pod.id]
    assert rec.of("pod_terminated") == []
    # the reaper's part, once RunPod answers again: the pod goes
    fake.recover()
    compute.terminate(pod.id)
    assert not fake.billing_pods()


# ---------------------------------------------------------------- kill and resume, three times

DRIVER = """
import sys
from tests.integration.test_faults_monitor import drive
drive(*sys.argv[1:])
"""


def drive(db_url: str, root: str, job_id: str, spec_uri: str, fake_url: str, api_key: str) -> None:
    """One flow process's monitor: the real JobRecorder on the registry, the fake RunPod."""
    from brightrun.registry import open_registry_url
    from tasks.job import JobRecorder
    from tasks.notify import WebhookNotifier
    from tasks.reporting.prefect_artifacts import RunReporter

    engine = open_registry_url(db_url)
    policy = fast_policy(poll_interval_seconds=0.3)
    recorder = JobRecorder(
        engine=engine,
        job_id=job_id,
        notifier=WebhookNotifier(None, None),
        reporter=RunReporter(job_id, enabled=False),
        status_value="model_loaded",
    )
    outcome = run_job(
        compute=runpod_compute(fake_url, api_key, policy),
        storage=LocalStorage(root),
        job_id=job_id,
        spec_uri=spec_uri,
        policy=policy,
        env={"FAKE_TRAINER_STEP_SECONDS": "0.3"},
        recorder=recorder,
    )
    print(json.dumps({"kind": outcome.kind.value, "retry_count": outcome.retry_count}), flush=True)


def test_a_job_killed_and_resumed_three_times_has_each_record_once(fake_runpod: Any, tmp_path: Path) -> None:
    """Issue 11 item 5, issue 15 items 6 and 7: SIGKILL the monitor's process three times
    mid-training and resume it each time. Every trainer event and metric row is in the
    registry once, each dead attempt has its `interrupted` event, retry_count is 3, and the
    cost is every pod's bill counted once."""
    from brightrun.registry import open_registry_url
    from brightrun.registry import repository as repo

    root = tmp_path / "storage"
    job_id = "5e1f0000-0000-4000-8000-00000000000b"
    db_url = f"sqlite:///{tmp_path / 'registry.db'}"
    uri = write_job(root, job_id, steps=80, every=2)
    engine = open_registry_url(db_url)
    repo.create_job(engine, job_id=job_id, job_name="faults", base_model="tiny", compute_backend="runpod")
    repo.transition_job(engine, job_id, "preprocessing")
    repo.transition_job(engine, job_id, "model_loaded")
    args = [db_url, str(root), job_id, uri, fake_runpod.url, fake_runpod.api_key]
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def start() -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-c", DRIVER, *args],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def past(step: int, attempt: int) -> bool:
        status = _status(root, job_id) or {}
        return status.get("attempt", 0) >= attempt and status.get("step", 0) > step

    procs: list[subprocess.Popen[str]] = []
    try:
        for kill, at_step in enumerate((10, 30, 50), start=1):
            proc = start()
            procs.append(proc)
            wait_for(lambda a=kill, s=at_step, p=proc: past(s, a) or p.poll() is not None, timeout=120)
            assert proc.poll() is None, proc.communicate()[0][-3000:]
            proc.send_signal(signal.SIGKILL)  # the flow process dies; its pod trains on
            proc.wait(timeout=30)
        last = start()
        procs.append(last)
        output, _ = last.communicate(timeout=180)
        assert last.returncode == 0, output[-3000:]
        assert json.loads(output.strip().splitlines()[-1]) == {"kind": "completed", "retry_count": 3}

        job = repo.get_job(engine, job_id)
        events = repo.list_events(engine, job_id)
        metrics = repo.list_metrics(engine, job_id)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        engine.dispose()

    storage = LocalStorage(root)
    event_objects = storage.list(f"jobs/{job_id}/{layout.EVENTS_DIR}/")
    metric_lines = [
        line
        for key in storage.list(f"jobs/{job_id}/{layout.METRICS_DIR}/")
        for line in storage.get_bytes(key).decode().splitlines()
        if line.strip()
    ]
    trainer_events = [e for e in events if e.payload.get("source") == "trainer"]
    # exactly once: one registry row per trainer event object and per metric line
    assert len(trainer_events) == len(event_objects)
    assert len({e.source_key for e in trainer_events}) == len(trainer_events)
    assert len(metrics) == len(metric_lines)
    assert len({(m.attempt, m.step) for m in metrics}) == len(metrics)
    # each dead attempt was recorded interrupted once, and its replacement counted once
    dead = [e for e in events if e.type == "interrupted" and "monitor stopped" in e.payload.get("reason", "")]
    assert sorted(e.attempt for e in dead) == [1, 2, 3]
    assert job.retry_count == 3
    assert sorted(
        e.attempt for e in events if e.type == "resumed" and e.payload.get("source") != "trainer"
    ) == [
        2,
        3,
        4,
    ]
    # four pods, every one terminated and billed once; the job's cost is their sum
    fake = fake_runpod.fake
    assert len(fake.pods) == 4 and not fake.billing_pods()
    billed = [e.payload for e in events if e.type == "pod_billed"]
    assert sorted(b["pod_id"] for b in billed) == sorted(fake.pods)
    assert job.actual_cost_usd is not None
    assert abs(job.actual_cost_usd - fake.billed_usd()) < CENT_FRACTION, (
        job.actual_cost_usd,
        fake.billed_usd(),
    )
