"""Issue 20, item 5: two `brightrun resume` runs of one job at once. Before the job lease both
ran: one terminated the other's same-named pod, two pods trained side by side, the fake
billed more than the registry recorded, and one marked the other's live flow run Crashed.
The second resume starts only once the first holds the lease and its pod is held before its
first step, so the lease (not a finished job) is what refuses it, every time."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from cli.training import demo_params
from tests.fake_runpod.helpers import FAKE_TRAINER, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]
CENT_FRACTION = 0.001


def test_two_concurrent_resumes_run_one_pod_and_bill_once(
    prefect_harness: str,
    brightrun_home: Path,
    tiny_model: Path,
    s3_storage: Any,
    fake_runpod: Any,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    from brightrun.compute.runpod import RunPodCompute
    from brightrun.registry import open_registry_url
    from brightrun.registry import repository as repo
    from brightrun.registry.leases import current_lease
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
    # The first resume's pod holds its first step until the gate file exists, so the second
    # resume certainly meets a live lease (not a finished job) however loaded the machine is.
    gate = tmp_path / "first-resume-may-train"
    fake.pod_env["FAKE_TRAINER_GATE_FILE"] = str(gate)
    states: dict[str, Any] = {}

    def resume(name: str) -> None:
        states[name] = train_adapter(**params, job_id=job_id, return_state=True)

    first = threading.Thread(target=resume, args=("first",), name="first-resume")
    second = threading.Thread(target=resume, args=("second",), name="second-resume")
    brightrun_home.mkdir(parents=True, exist_ok=True)
    engine = open_registry_url(f"sqlite:///{brightrun_home / 'registry.db'}")
    try:
        first.start()
        try:
            # Observed state, not a pause: the lease row is written and the pod exists.
            lease = wait_for(lambda: fake.pods and current_lease(engine, job_id), timeout=120)
            second.start()
            second.join(timeout=120)  # a refusal is immediate; without the lease it would run on
            second_refused_while_first_held = not second.is_alive()
        finally:
            gate.touch()
            first.join(timeout=300)
            second.join(timeout=300)
        assert second_refused_while_first_held, "the second resume ran beside the first"
        assert not first.is_alive(), "the first resume did not finish"

        second_state = states["second"]
        refusal = str(second_state.result(raise_on_failure=False))
        assert not second_state.is_completed(), refusal
        assert f"job {job_id} is being operated by {lease.holder} since" in refusal, refusal
        first_state = states["first"]
        logs = "\n".join(p.log_path.read_text()[-1500:] for p in fake.pods.values())
        assert first_state.is_completed(), (first_state.message, logs)
        # The holder the refusal names is the first resume's own flow run.
        assert lease.holder == f"resume (flow run {first_state.state_details.flow_run_id})", lease.holder
        assert current_lease(engine, job_id) is None  # released on the way out

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
