"""Issue 20, item 5: two `brightrun resume` runs of one job at once. Before the job lease both
ran: one terminated the other's same-named pod, two pods trained side by side, the fake
billed more than the registry recorded, and one marked the other's live flow run Crashed."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from cli.training import demo_params
from tests.fake_runpod.helpers import FAKE_TRAINER

pytestmark = [pytest.mark.integration, pytest.mark.slow]
CENT_FRACTION = 0.001


def test_two_concurrent_resumes_run_one_pod_and_bill_once(
    prefect_harness: str,
    brightrun_home: Path,
    tiny_model: Path,
    s3_storage: Any,
    fake_runpod: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from brightrun.compute.runpod import RunPodCompute
    from brightrun.registry import open_registry_url
    from brightrun.registry import repository as repo
    from flows.train_adapter import train_adapter

    defaults = dict(RunPodCompute.__init__.__kwdefaults__ or {})
    monkeypatch.setattr(
        RunPodCompute.__init__, "__kwdefaults__", {**defaults, "trainer_command": FAKE_TRAINER}
    )
    monkeypatch.setenv("RUNPOD_API_KEY", fake_runpod.api_key)
    fake = fake_runpod.fake
    fake.pod_env["FAKE_TRAINER_STEP_SECONDS"] = "0.2"
    job_id = "2e50e000-0000-4000-8000-000000000002"
    params = demo_params(tiny_model, max_steps=8)
    params["compute"] = "runpod"
    params["checkpoint"] = {"every_steps": 2}
    params["provisioning"] = {
        "gpu_types": ["NVIDIA RTX A6000"],
        "poll_interval_seconds": 0.5,
        "heartbeat_timeout_seconds": 30.0,
        "startup_timeout_seconds": 90.0,
        "capacity_backoff_seconds": 0.0,
    }
    states: dict[str, Any] = {}
    barrier = threading.Barrier(2)

    def resume(name: str) -> None:
        barrier.wait()
        states[name] = train_adapter(**params, job_id=job_id, return_state=True)

    threads = [threading.Thread(target=resume, args=(name,)) for name in ("one", "two")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)

    logs = "\n".join(p.log_path.read_text()[-1500:] for p in fake.pods.values())
    completed = [s for s in states.values() if s.is_completed()]
    refused = [s for s in states.values() if not s.is_completed()]
    assert len(completed) == 1 and len(refused) == 1, ([s.message for s in states.values()], logs)
    refusal = str(refused[0].result(raise_on_failure=False))
    # Refused by the lease while the other runs; on a loaded machine the second thread may
    # only start once the first has finished, and is then refused as completed: one pod either way.
    leased = f"job {job_id} is being operated by" in refusal and "flow run" in refusal
    assert leased or f"job {job_id} already completed" in refusal, refusal

    engine = open_registry_url(f"sqlite:///{brightrun_home / 'registry.db'}")
    try:
        job = repo.get_job(engine, job_id)
        types = [e.type for e in repo.list_events(engine, job_id)]
    finally:
        engine.dispose()
    assert job.status == "completed"
    assert len(fake.pods) == 1, [p.name for p in fake.pods.values()]  # one pod
    assert types.count("pod_created") == 1 and "duplicate_pod_terminated" not in types
    billed = fake.billed_usd()
    assert job.actual_cost_usd is not None and abs(job.actual_cost_usd - billed) < CENT_FRACTION, (
        job.actual_cost_usd,
        billed,
    )
    assert not fake.billing_pods()
