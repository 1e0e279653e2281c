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
    from brightrun.resources import Resources
    from tasks.reaper import reap_pods_with

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
        with Resources.from_settings() as resources:
            assert reap_pods_with(resources, dry_run=True)[0]["pod_id"] == pod.pod_id
        assert compute.get(pod.pod_id).state == PodState.running  # a dry run touches nothing
        with Resources.from_settings() as resources:
            reaped = reap_pods_with(resources)
        assert [r["pod_id"] for r in reaped] == [pod.pod_id]
        deadline = time.monotonic() + 60
        while compute.get(pod.pod_id).state == PodState.running and time.monotonic() < deadline:
            time.sleep(0.2)
        assert compute.get(pod.pod_id).state != PodState.running
    finally:
        compute.terminate(pod.pod_id)


def test_brightrun_reap_runs_without_prefect(brightrun_home: Path) -> None:
    """`brightrun reap` is the reaper of last resort, run where Prefect may be down or absent:
    judging every pod over a real registry imports no Prefect module."""
    import subprocess
    import sys

    engine = open_registry_url(f"sqlite:///{brightrun_home / 'registry.db'}")
    try:
        repo.create_job(engine, job_id=str(uuid.uuid4()), job_name="done", base_model="m")
    finally:
        engine.dispose()
    script = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from cli.main import app\n"
        "result = CliRunner().invoke(app, ['reap', '--dry-run'])\n"
        "assert result.exit_code == 0, result.output\n"
        "assert 'would terminate 0 pod(s)' in result.output, result.output\n"
        "print(sorted(m for m in sys.modules if m == 'prefect' or m.startswith('prefect.')))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
