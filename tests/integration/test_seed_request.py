"""The seed dashboard's start-job request through Prefect's REST API: the JSON the dashboard
sends, posted as a flow run of a `train_adapter` deployment, runs as it is, and the run's
result carries the seed's response fields."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import httpx
import pytest

from brightrun.settings import load_settings
from cli.training import SAMPLE_DATASET

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DASHBOARD_REQUEST = {
    "hyperparameters": {
        "num_epochs": 1,
        "batch_size": 4,
        "learning_rate": 0.005,
        "lora_r": 8,
        "lora_alpha": 16,
        "lora_dropout": 0.05,
        "warmup_ratio": 0.1,
        "gradient_accumulation_steps": 2,
        "max_seq_length": 512,
    },
    "runpod_config": {"gpu_type": "A100_80GB", "instance_type": "spot", "max_duration_hours": 2},
}


def test_the_dashboards_start_job_request_runs_as_it_is(
    prefect_harness: str, brightrun_home: Path, tiny_model: Path
) -> None:
    from prefect import get_client
    from prefect.flow_engine import run_flow

    from brightrun.registry import open_registry
    from brightrun.registry import repository as repo
    from brightrun.storage import sha256_file
    from flows.train_adapter import train_adapter

    engine = open_registry(load_settings())
    row, _ = repo.register_training_file(
        engine,
        name="curated",
        json_file_path=str(SAMPLE_DATASET),
        sha256=sha256_file(SAMPLE_DATASET),
        source="upload",
    )
    with get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name("train_adapter")
        # What the operator sets once on the deployment; the dashboard sends the rest.
        deployment_id = client.create_deployment(
            flow_id=flow_id,
            name="seed-test",
            entrypoint="flows/train_adapter.py:train_adapter",
            parameters={
                "base_model": str(tiny_model),
                "compute": "local",
                "lora": {"target_modules": ["q_proj", "v_proj"]},
                "training": {"gradient_checkpointing": False},
                "preprocessing": {"skip_overlong_targets": True},
                "evaluation": {"sample_generations": 0},
            },
        )
    body = {"parameters": {"training_file_id": str(row.id), **DASHBOARD_REQUEST}}
    created = httpx.post(
        f"{prefect_harness}/deployments/{deployment_id}/create_flow_run", json=body, timeout=30
    )
    assert created.status_code == 201, created.text
    flow_run_id = uuid.UUID(created.json()["id"])
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(flow_run_id)
    assert flow_run.parameters["hyperparameters"] == DASHBOARD_REQUEST["hyperparameters"]

    state = run_flow(train_adapter, flow_run=flow_run, parameters=flow_run.parameters, return_type="state")
    assert state.is_completed(), state.message
    result = state.result()
    job_id = result["training_job_id"]
    assert result["status"] == "completed"
    assert set(result) >= {"runpod_pod_id", "estimated_duration_minutes", "estimated_cost_usd"}
    assert result["runpod_pod_id"] is None  # trained on this machine: no pod, no RunPod estimate

    job = repo.get_job(engine, job_id)
    engine.dispose()
    assert job.training_file_id == str(row.id)
    spec = json.loads(Path(job.storage_prefix, "spec.json").read_text())
    t, lora, p = spec["training"], spec["lora"], spec["provisioning"]
    assert (t["epochs"], t["batch_size"], t["learning_rate"], t["warmup_ratio"]) == (1.0, 4, 0.005, 0.1)
    assert (t["gradient_accumulation_steps"], t["max_seq_length"]) == (2, 512)
    assert (lora["r"], lora["alpha"], lora["dropout"]) == (8, 16, 0.05)
    assert (p["gpu_types"], p["capacity"], p["max_duration_hours"]) == (
        ["NVIDIA A100 80GB PCIe"],
        "spot",
        2.0,
    )


def test_a_bad_dashboard_field_is_named(prefect_harness: str, brightrun_home: Path, tiny_model: Path) -> None:
    from brightrun.errors import InputError
    from flows.train_adapter import train_adapter

    with pytest.raises(InputError) as bad:
        train_adapter(
            base_model=str(tiny_model),
            training_file_id=uuid.uuid4(),
            hyperparameters={"lora_r": 0, "num_epoch": 2},
            runpod_config={"gpu_type": "RTX_4090"},
            training={"epochs": 5},
        )
    problems = "\n".join(bad.value.problems)
    assert "hyperparameters.lora_r" in problems and "hyperparameters.num_epoch" in problems
    assert "runpod_config.gpu_type" in problems
