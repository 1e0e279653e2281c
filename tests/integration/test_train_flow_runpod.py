"""train_adapter in production shape: Postgres registry, SeaweedFS storage, (fake) RunPod spot pods
interrupted twice, then resumed to completion."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from brightrun import layout
from cli.training import demo_params
from tests.fake_runpod.helpers import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]
JOB_ID = "7e57a11e-0000-4000-8000-0000000000aa"


def _interrupt_twice(fake: Any, storage: Any, errors: list[BaseException]) -> threading.Thread:
    """SIGKILL pod 1 and SIGTERM pod 2, each once it trains past a committed checkpoint."""
    job = layout.JobLayout(JOB_ID)

    seen_step = [-1]

    def training_pod(n: int) -> Any:
        pods = [p for p in fake.pods_of(f"brightrun-{JOB_ID}-a{n}") if p.alive]
        if not pods:
            return None
        try:
            status = storage.get_json(job.status)
        except Exception:
            return None
        # This pod's own progress: past the step the previous pod was stopped at, with a commit.
        fresh = (
            status.get("phase") in ("training", "checkpointing")
            and int(status.get("step") or 0) > seen_step[0]
        )
        return (pods[0], int(status["step"])) if fresh and storage.exists(job.latest) else None

    def run() -> None:
        try:
            for n, mode in ((1, "kill"), (2, "term")):
                pod, step = wait_for(lambda n=n: training_pod(n), timeout=150, interval=0.05)
                seen_step[0] = step
                fake.interrupt(pod.id, mode=mode, grace_seconds=5.0)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_flow_on_postgres_seaweedfs_and_runpod_survives_two_interruptions(
    prefect_harness: str,
    brightrun_home: Path,
    tiny_model: Path,
    postgres_url: str,
    s3_storage_env: str,
    s3_storage: Any,
    fake_runpod: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from brightrun.registry import make_engine, upgrade
    from brightrun.registry import repository as repo
    from flows.train_adapter import train_adapter

    monkeypatch.setenv("BRIGHTRUN_DATABASE_URL", postgres_url)
    engine = make_engine(postgres_url)
    upgrade(engine)  # production: `brightrun db upgrade` before the first flow

    params = demo_params(tiny_model, max_steps=20)
    params["compute"] = "runpod"
    params["checkpoint"]["every_steps"] = 2
    params["provisioning"] = {
        "gpu_types": ["NVIDIA RTX A6000"],
        "poll_interval_seconds": 0.5,
        "heartbeat_timeout_seconds": 30.0,
        "startup_timeout_seconds": 90.0,
        "capacity_backoff_seconds": 0.0,
        "max_restarts": 4,
    }
    # The pods' "image" runs the tiny model at a GPU-like pace, so the interruptions land
    # mid-training whatever the machine's load.
    fake_runpod.fake.pod_env["BRIGHTRUN_TRAINER_STEP_DELAY"] = "0.2"
    errors: list[BaseException] = []
    chaos = _interrupt_twice(fake_runpod.fake, s3_storage, errors)
    state = train_adapter(**params, job_id=JOB_ID, return_state=True)
    chaos.join(10)
    assert not errors, errors
    logs = "\n".join(p.log_path.read_text()[-1500:] for p in fake_runpod.fake.pods.values())
    assert state.is_completed(), f"{state.message}\n{logs}"

    try:
        job = repo.get_job(engine, JOB_ID)
        all_events = repo.list_events(engine, JOB_ID)
        # One `resumed` per replacement pod from the monitor; the trainer's own `resumed`
        # (from step, lost steps) is ingested beside it with source=trainer.
        events = [e.type for e in all_events if e.payload.get("source") != "trainer"]
        trainer_resumes = [
            e for e in all_events if e.type == "resumed" and e.payload.get("source") == "trainer"
        ]
        artifacts = repo.list_artifacts(engine, training_job_id=JOB_ID)
    finally:
        engine.dispose()
    assert job.status == "completed" and job.retry_count == 2
    assert events.count("interrupted") == 2 and events.count("resumed") == 2
    assert len(trainer_resumes) == 2, logs[-3000:]
    assert all(e.payload["from_step"] > 0 for e in trainer_resumes)
    assert job.actual_cost_usd is not None and job.actual_cost_usd > 0
    assert job.estimated_cost_usd is not None and job.estimated_cost_usd > 0
    assert "cost_estimated" in events
    assert len(artifacts) == 1 and artifacts[0].storage_path.startswith("s3://")
    assert job.lora_artifact_path == artifacts[0].storage_path
    assert s3_storage.exists(f"jobs/{JOB_ID}/adapter/adapter_model.safetensors")
    assert s3_storage.exists(f"jobs/{JOB_ID}/loss_curve.svg")
    summary = s3_storage.get_bytes(f"jobs/{JOB_ID}/summary.md").decode()
    assert "Interruptions | 2" in summary
    pods = fake_runpod.fake.pods.values()
    assert len(pods) == 3 and all(p.status == "TERMINATED" and not p.alive for p in pods)
