"""train_adapter end to end on real parts: Prefect API, registry, storage, trainer process."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from brightrun.settings import load_settings
from cli.training import demo_params
from tests.webhook_server import webhook_receiver

pytestmark = [pytest.mark.integration, pytest.mark.slow]
SECRET = "flow-test-secret"
EXPECTED_ARTIFACTS = ("progress", "dataset-report", "metrics", "summary", "loss-curve")


def _artifacts_of_run(api_url: str, flow_run_id: str) -> dict[str, dict[str, Any]]:
    """Newest artifact per key of one run (raw API: this Prefect client posts nulls the server rejects)."""
    import httpx

    body = {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}, "sort": "CREATED_DESC", "limit": 200}
    found = httpx.post(f"{api_url}/artifacts/filter", json=body, timeout=30).raise_for_status().json()
    out: dict[str, dict[str, Any]] = {}
    for artifact in found:
        if artifact.get("key") and artifact["key"] not in out:
            out[artifact["key"]] = artifact
    return out


def _registry():  # type: ignore[no-untyped-def]
    from brightrun.registry import open_registry

    return open_registry(load_settings())


@pytest.fixture
def demo_model(brightrun_home: Path, tiny_model: Path) -> Path:
    return tiny_model


def test_demo_flow_completes_with_artifacts_and_signed_webhooks(
    prefect_harness: str, brightrun_home: Path, demo_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.client.orchestration import get_client

    from brightrun.registry import repository as repo
    from flows.train_adapter import train_adapter

    monkeypatch.setenv("BRIGHTRUN_WEBHOOK_SECRET", SECRET)
    with webhook_receiver(SECRET) as receiver:
        params = demo_params(demo_model, max_steps=6)
        params["webhook_url"] = receiver.url
        state = train_adapter(**params, return_state=True)
        assert state.is_completed(), state.message
        result = state.result()
        time.sleep(0.2)
    job_id = result["job_id"]

    engine = _registry()
    job = repo.get_job(engine, job_id)
    artifacts = repo.list_artifacts(engine, training_job_id=job_id)
    events = {e.type for e in repo.list_events(engine, job_id)}
    metrics = repo.list_metrics(engine, job_id)
    recorded = repo.exported_conversations(engine)
    engine.dispose()
    assert job.status == "completed" and job.progress_percent == 100.0
    # The dataset is registered with the split it was trained on, so a later feedback export
    # never turns this job's validation conversations into training data.
    assert job.training_file_id is not None
    assert {ref.split for ref in recorded.values()} == {"train", "validation"}
    assert len(recorded) == 12
    assert job.current_step == 6
    assert len(artifacts) == 1 and artifacts[0].artifact_type == "lora_adapter"
    assert job.lora_artifact_path == artifacts[0].storage_path
    assert Path(artifacts[0].storage_path, "adapter_model.safetensors").is_file()
    assert {"dataset_validated", "pod_requested", "pod_terminated"} <= events
    assert metrics and metrics[-1].step == 6

    # Loss curve stored next to the adapter, and every artifact of the run page.
    curve = Path(job.storage_prefix) / "loss_curve.svg"
    assert curve.read_text().startswith("<svg") and "polyline" in curve.read_text()
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(state.state_details.flow_run_id)
    assert run.name == f"train-brightrun-sample-{demo_model.name}-{job_id}"
    published = _artifacts_of_run(prefect_harness, str(run.id))
    for what in EXPECTED_ARTIFACTS:
        assert any(k.endswith(what) for k in published), f"no {what} artifact in {sorted(published)}"
    progress = next(a for k, a in published.items() if k.endswith("-progress"))
    assert float(progress["data"]) == 100.0
    summary = next(a for k, a in published.items() if k.endswith("-summary"))
    assert "Perplexity" in summary["data"] and job.lora_artifact_path in summary["data"]
    assert "| Training time | n/a |" not in summary["data"]
    table = next(a for k, a in published.items() if k.endswith("-metrics"))
    assert '"step": 6' in str(table["data"]) or "'step': 6" in str(table["data"])

    # Webhooks: verified signatures, every status change, in lifecycle order.
    assert receiver.bad_signatures == 0
    statuses = [s for i, s in enumerate(receiver.statuses) if i == 0 or s != receiver.statuses[i - 1]]
    assert statuses == ["queued", "preprocessing", "model_loaded", "training", "completed"]
    final = receiver.received[-1]
    assert final["job_id"] == job_id and final["lora_artifact_path"] == job.lora_artifact_path
    assert final["step"] == 6 and final["metrics"]["loss"] is not None


def test_invalid_parameters_are_rejected_before_anything_starts(
    prefect_harness: str, brightrun_home: Path, tmp_path: Path
) -> None:
    from brightrun.errors import InputError
    from brightrun.registry import repository as repo
    from flows.train_adapter import train_adapter

    state = train_adapter(
        dataset=str(tmp_path / "nope.json"),
        base_model=str(tmp_path / "no-model"),
        training={"learning_rate": -1},
        lora={"r": 0},
        compute="runpod",
        return_state=True,
    )
    assert state.is_failed()
    with pytest.raises(InputError) as info:
        state.result()
    problems = info.value.problems
    assert len(problems) >= 5  # every problem at once, not the first one only
    assert any("training.learning_rate" in p for p in problems)
    assert any("lora.r" in p for p in problems)
    engine = _registry()
    try:
        assert repo.list_jobs(engine) == []  # no row, no file, no pod
    finally:
        engine.dispose()
    assert not (brightrun_home / "storage" / "jobs").exists()


def test_cancel_mid_training_terminates_the_trainer_and_marks_cancelled(
    prefect_harness: str, brightrun_home: Path, demo_model: Path
) -> None:
    from brightrun.compute import PodState
    from brightrun.compute.local import LocalCompute
    from brightrun.registry import repository as repo
    from cli.training import cancel_job
    from flows.train_adapter import train_adapter

    params = demo_params(demo_model, max_steps=400)
    job_id = "0b0b0b0b-0000-4000-8000-00000000cafe"
    states: list[Any] = []
    engine = _registry()  # migrate the fresh SQLite before the flow's thread opens it too
    thread = threading.Thread(
        target=lambda: states.append(train_adapter(**params, job_id=job_id, return_state=True)), daemon=True
    )
    thread.start()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                job = repo.get_job(engine, job_id)
                if job.status == "training" and job.current_step >= 1:
                    break
            except Exception:
                pass
            time.sleep(0.5)
        else:
            pytest.fail("the job never reached training")
        started = time.monotonic()
        assert cancel_job(job_id) == "cancelled"
        took = time.monotonic() - started
        thread.join(60)
        assert not thread.is_alive()
        job = repo.get_job(engine, job_id)
        assert job.status == "cancelled" and job.current_step < 400
        events = {e.type for e in repo.list_events(engine, job_id)}
    finally:
        engine.dispose()
    assert took < 30
    assert states and states[0].is_cancelled()
    pods = LocalCompute(brightrun_home).list_pods(job_id)
    assert pods and all(p.state in (PodState.exited, PodState.terminated) for p in pods)
    assert "pod_terminated" in events or "cancelled" in events
