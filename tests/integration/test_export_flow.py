"""The `export_feedback` flow under a real (ephemeral) Prefect API: artifact, concurrency
limit and the automatic `train_adapter` run started through its deployment."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import insert

from brightrun.registry import open_registry_url
from brightrun.registry import repository as repo
from brightrun.registry.models import LexybrainFeedback, LexybrainRequest, LexybrainResponse
from brightrun.storage import sha256_file
from tests.fixtures.common import SAMPLE_DATASET

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 1, tzinfo=UTC)


@pytest.fixture
def prefect_api(prefect_harness: str) -> str:
    """The session's Prefect test harness (a second harness would leave Prefect's events
    worker bound to a server that is gone)."""
    return prefect_harness


def _seed(db: Path, n: int) -> None:
    engine = open_registry_url(f"sqlite:///{db}", auto_upgrade=True)
    with engine.begin() as conn:
        for i in range(n):
            q, r = uuid.uuid4(), uuid.uuid4()
            at = T0 + timedelta(minutes=i)
            conn.execute(
                insert(LexybrainRequest.__table__).values(
                    id=q, user_id=uuid.uuid4(), prompt=f"Insight {i}?", insight_type="trend", requested_at=at
                )
            )
            conn.execute(
                insert(LexybrainResponse.__table__).values(
                    id=r, request_id=q, output={"trend": i}, success=True, model_version="v1", created_at=at
                )
            )
            conn.execute(
                insert(LexybrainFeedback.__table__).values(
                    id=uuid.uuid4(), response_id=r, feedback="positive", created_at=at
                )
            )
    engine.dispose()


def _train_deployment() -> str:
    from prefect import get_client

    with get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name("train_adapter")
        client.create_deployment(
            flow_id=flow_id, name="feedback-test", entrypoint="flows/train_adapter.py:train_adapter"
        )
    return "train_adapter/feedback-test"


def test_flow_exports_reports_and_starts_training(
    prefect_api: None, brightrun_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect import get_client

    monkeypatch.setenv("BRIGHTRUN_REVIEW_REQUIRED", "false")  # approved on export: trains at once
    from flows.export_feedback import CONCURRENCY_LIMIT, export_feedback

    _seed(brightrun_home / "registry.db", 3)
    deployment = _train_deployment()
    state = export_feedback(
        since=T0,
        until=T0 + timedelta(days=1),
        min_examples=2,
        auto_train=True,
        train_deployment=deployment,
        train_base_model="tiny",
        system_prompts={"trend": "You spot trends."},
        return_state=True,
    )
    assert state.is_completed()
    summary = state.result()
    assert summary["status"] == "exported" and summary["examples"] == 3
    run_info = summary["training_run"]
    assert run_info is not None

    with get_client(sync_client=True) as client:
        training = client.read_flow_run(uuid.UUID(run_info["flow_run_id"]))
        # Every accepted feedback file (here: this one); no curated file, no production yet.
        assert training.parameters["datasets"] == [{"source": summary["training_file_uri"], "weight": 1.0}]
        assert training.parameters["base_model"] == "tiny"
        assert "init_adapter" not in training.parameters
        # Linked: the training run is a subflow of this export run.
        assert training.parent_task_run_id is not None
        parent = client.read_task_run(training.parent_task_run_id)
        assert parent.flow_run_id == state.state_details.flow_run_id
        # Raw filter request: this Prefect client's artifact helpers send nulls its server rejects.
        found = client._client.post(
            "/artifacts/filter",
            json={"artifacts": {"key": {"any_": ["export-feedback-report"]}}, "limit": 5, "offset": 0},
        ).json()
        assert found and "| rows read | 3 |" in found[0]["data"]
        assert found[0]["flow_run_id"] == str(state.state_details.flow_run_id)
        assert client.read_global_concurrency_limit_by_name(CONCURRENCY_LIMIT).limit == 1

    engine = open_registry_url(f"sqlite:///{brightrun_home / 'registry.db'}")
    assert repo.get_watermark(engine).position == T0 + timedelta(days=1)
    engine.dispose()

    # Below min_examples nothing is started; a window with no ratings changes nothing.
    again = export_feedback(
        until=T0 + timedelta(days=2), min_examples=2, auto_train=True, train_deployment=deployment
    )
    assert again["status"] == "empty" and again["training_run"] is None


def test_flow_exits_cleanly_while_another_export_runs(prefect_api: None, brightrun_home: Path) -> None:
    from flows.export_feedback import export_feedback
    from tasks.feedback import export_lock

    _seed(brightrun_home / "registry.db", 1)
    engine = open_registry_url(f"sqlite:///{brightrun_home / 'registry.db'}")
    with export_lock(engine):
        summary = export_feedback(since=T0, until=T0 + timedelta(days=1))
    assert summary["status"] == "busy" and summary["training_run"] is None
    assert repo.list_training_files(engine) == [] and repo.get_watermark(engine) is None
    engine.dispose()


def test_a_later_round_replays_the_curated_set_with_every_accepted_file_from_production(
    prefect_api: None, brightrun_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 25: the auto-retrain trains on the curated set (at the stated replay share) plus
    every accepted feedback file, oldest first, and continues from the production adapter
    with its rank and target modules."""
    from prefect import get_client

    from brightrun.registry import promotion as pm
    from flows.export_feedback import export_feedback

    monkeypatch.setenv("BRIGHTRUN_REVIEW_REQUIRED", "false")  # this window's file is accepted at once
    _seed(brightrun_home / "registry.db", 3)
    # Real files: the export reads every earlier training file to drop repeats of them.
    # (name, conversations, source, examples counted, review status)
    earlier = (
        ("curated", 12, "upload", 12, None),
        ("fb1", 2, "feedback_export", 6, "approved"),
        ("fb0", 3, "feedback_export", 50, "rejected"),
    )
    files = {}
    engine = open_registry_url(f"sqlite:///{brightrun_home / 'registry.db'}")
    try:
        for name, count, source, examples, review in earlier:
            data = json.loads(SAMPLE_DATASET.read_text())
            data["conversations"] = data["conversations"][:count]
            files[name] = tmp_path / f"{name}.json"
            files[name].write_text(json.dumps(data))
            repo.register_training_file(
                engine,
                name=name,
                json_file_path=str(files[name]),
                sha256=sha256_file(files[name]),
                source=source,
                examples=examples,
                review_status=review or "approved",
            )
        job = repo.create_job(engine, job_name="round 1", base_model="tiny")
        for step in ("preprocessing", "model_loaded", "training", "completed"):
            repo.transition_job(engine, job.id, step)
        lora = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "o_proj"]}
        art = repo.register_artifact(
            engine, training_job_id=job.id, storage_path="/s/r1/adapter", base_model="tiny", lora_config=lora
        )
        pm.promote(engine, art.id, "production")
    finally:
        engine.dispose()

    summary = export_feedback(
        since=T0, until=T0 + timedelta(days=1), min_examples=2, auto_train=True,
        train_deployment=_train_deployment(), train_base_model="tiny", replay_share=0.25,
    )  # fmt: skip
    assert summary["status"] == "exported" and summary["examples"] == 3
    with get_client(sync_client=True) as client:
        training = client.read_flow_run(uuid.UUID(summary["training_run"]["flow_run_id"]))
    datasets = training.parameters["datasets"]
    assert [d["source"] for d in datasets] == [
        str(files["curated"]),
        str(files["fb1"]),
        summary["training_file_uri"],
    ]
    # The curated examples are a quarter of what trains: w * 12 / (w * 12 + 6 + 3) = 0.25.
    weight = datasets[0]["weight"]
    assert weight * 12 / (weight * 12 + 6 + 3) == pytest.approx(0.25, abs=1e-3)
    assert [d["weight"] for d in datasets[1:]] == [1.0, 1.0]
    assert training.parameters["init_adapter"] == "production"
    assert training.parameters["lora"] == {"r": 4, "alpha": 8, "target_modules": ["q_proj", "o_proj"]}
