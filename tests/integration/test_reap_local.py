"""`brightrun reap` on the embedded default: a local trainer whose job is already terminal
(its flow process died after recording the failure) is terminated."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from brightrun.compute import PodRequest, PodState
from brightrun.compute.local import LocalCompute
from brightrun.registry import open_registry_url
from brightrun.registry import repository as repo
from tests.fixtures.training import create_job, small_spec

pytestmark = pytest.mark.integration


def test_reaper_terminates_a_local_trainer_of_a_terminal_job(
    brightrun_home: Path, tiny_model: Path, prepared_dataset: Path
) -> None:
    from flows.reap_pods import reap_with_settings

    job_id = str(uuid.uuid4())
    engine = open_registry_url(f"sqlite:///{brightrun_home / 'registry.db'}")
    try:
        repo.create_job(engine, job_id=job_id, job_name="orphan", base_model=str(tiny_model))
        repo.transition_job(engine, job_id, "failed", error_message="the flow process died")
    finally:
        engine.dispose()
    uri = create_job(
        brightrun_home / "storage",
        prepared_dataset,
        small_spec(job_id, tiny_model, training={"max_steps": 500}),
    )
    compute = LocalCompute(brightrun_home)
    pod = compute.start(
        PodRequest(job_id=job_id, attempt=1, spec_uri=uri, env={"BRIGHTRUN_TRAINER_STEP_DELAY": "0.5"})
    )
    try:
        assert reap_with_settings(dry_run=True)[0]["pod_id"] == pod.pod_id
        assert compute.get(pod.pod_id).state == PodState.running  # a dry run touches nothing
        reaped = reap_with_settings()
        assert [r["pod_id"] for r in reaped] == [pod.pod_id]
        deadline = time.monotonic() + 60
        while compute.get(pod.pod_id).state == PodState.running and time.monotonic() < deadline:
            time.sleep(0.2)
        assert compute.get(pod.pod_id).state != PodState.running
    finally:
        compute.terminate(pod.pod_id)
