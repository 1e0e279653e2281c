"""The seed dashboard's start-job response fields (issue 25), read back from the registry for a
RunPod job: its pod, the estimate's minutes and dollars. tests/integration/test_seed_request.py
runs the request end to end on this machine, where there is no pod and no estimate."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from brightrun.registry import open_registry_url
from brightrun.registry import repository as repo
from flows.seed_request import job_seed_response


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = open_registry_url(f"sqlite:///{tmp_path / 'registry.db'}")
    yield engine
    engine.dispose()


def test_a_runpod_job_answers_with_its_pod_and_estimate(engine: Engine) -> None:
    job = repo.create_job(engine, job_name="seed", base_model="org/base", compute_backend="runpod")
    repo.update_job(engine, job.id, runpod_pod_id="pod-7f3a")
    repo.set_job_cost(engine, job.id, estimated_cost_usd=2.37)
    repo.add_event(engine, job.id, "cost_estimated", hours=0.5, usd=2.5)  # superseded below
    repo.add_event(engine, job.id, "cost_estimated", hours=1.25, usd=2.37)
    assert job_seed_response(engine, str(job.id), "completed") == {
        "training_job_id": str(job.id),
        "status": "completed",
        "runpod_pod_id": "pod-7f3a",
        "estimated_duration_minutes": 75.0,
        "estimated_cost_usd": 2.37,
    }


def test_an_unreadable_registry_still_names_the_job_and_its_status(engine: Engine) -> None:
    missing = "0c0ffee0-0000-4000-8000-000000000000"  # no such job: the read fails
    assert job_seed_response(engine, missing, "failed") == {
        "training_job_id": missing,
        "status": "failed",
        "runpod_pod_id": None,
        "estimated_duration_minutes": None,
        "estimated_cost_usd": None,
    }
