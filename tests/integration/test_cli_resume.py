"""`brightrun resume`: the flow process dies mid-training, its local trainer keeps running;
resuming stops that orphan (it commits a checkpoint on SIGTERM) and finishes the job with
a new attempt that overwrites nothing of the first."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from brightrun.compute import PodState
from brightrun.compute.local import LocalCompute
from brightrun.registry import open_registry_url
from brightrun.registry import repository as repo
from tests.fixtures.cli_runs import REPO, cli_command, train_args

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _cli(args: list[str], env: dict[str, str], **kwargs: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        cli_command(args),
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kwargs,  # type: ignore[arg-type]
    )


def test_resume_after_the_flow_process_died(
    prefect_harness: str, brightrun_home: Path, tiny_model: Path, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "BRIGHTRUN_HOME": str(brightrun_home),
        "PREFECT_API_URL": prefect_harness,
        # A GPU-like pace, so the flow can be killed mid-training whatever the machine's load.
        "BRIGHTRUN_TRAINER_STEP_DELAY": "0.3",
        # The killed flow's job lease (issue 20) must lapse before the resume may take over.
        "BRIGHTRUN_JOB_LEASE_SECONDS": "3",
    }
    first = _cli(train_args(tmp_path, tiny_model, max_steps=24), env)
    engine = open_registry_url(f"sqlite:///{brightrun_home / 'registry.db'}")
    try:
        deadline = time.monotonic() + 120
        job = None
        while time.monotonic() < deadline:
            jobs = repo.list_jobs(engine)
            if jobs and jobs[0].status == "training" and jobs[0].current_step >= 4:
                job = jobs[0]
                break
            assert first.poll() is None, first.communicate()[0][-3000:]
            time.sleep(0.2)
        assert job is not None, "the job never reached step 4"
        dead_flow_run = job.flow_run_id
        first.send_signal(signal.SIGKILL)  # the flow process dies; its trainer lives on
        first.communicate(timeout=30)
        compute = LocalCompute(brightrun_home)
        orphans = [p for p in compute.list_pods(job.id) if p.state == PodState.running]
        assert len(orphans) == 1

        time.sleep(3.5)  # the dead flow's lease expires (a live one would refuse the resume)
        resumed = _cli(["resume", job.id], {**env, "BRIGHTRUN_TRAINER_STEP_DELAY": "0"})
        output, _ = resumed.communicate(timeout=240)
        assert resumed.returncode == 0, output[-3000:]

        final = repo.get_job(engine, job.id)
        events = repo.list_events(engine, job.id)
        artifacts = repo.list_artifacts(engine, training_job_id=job.id)
    finally:
        if first.poll() is None:
            first.kill()
        engine.dispose()

    assert final.status == "completed" and final.current_step == 24
    # the dead attempt is an interruption like any other: recorded once, and its replacement
    # counted (issue 15 item 6); the dead flow run no longer reads RUNNING (item 7)
    dead = [e for e in events if e.type == "interrupted" and "monitor stopped" in e.payload.get("reason", "")]
    assert [e.attempt for e in dead] == [1]
    assert final.retry_count == 1
    assert dead_flow_run and final.flow_run_id != dead_flow_run
    assert _flow_run_state(prefect_harness, dead_flow_run) == "CRASHED"
    assert len(artifacts) == 1 and final.lora_artifact_path == artifacts[0].storage_path
    assert any(
        e.type == "pod_terminated" and e.payload.get("reason") == "left by an earlier run" for e in events
    )
    assert compute.get(orphans[0].pod_id).state != PodState.running
    job_dir = brightrun_home / "storage" / "jobs" / job.id
    # Attempt 2 started where attempt 1 committed, and wrote its own chunks beside attempt 1's.
    trainer_resumes = [json.loads(p.read_text()) for p in sorted((job_dir / "events").glob("002-*.json"))]
    assert any(e["type"] == "resumed" and e["payload"]["from_step"] >= 4 for e in trainer_resumes)
    assert list((job_dir / "metrics").glob("001-*.jsonl")) and list((job_dir / "metrics").glob("002-*.jsonl"))


def _flow_run_state(api_url: str, flow_run_id: str) -> str:
    import uuid

    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        state = client.read_flow_run(uuid.UUID(flow_run_id)).state
    return state.type.value if state is not None else ""


@pytest.mark.parametrize(
    ("status", "failure_kind", "says"),
    [
        ("completed", None, "already completed"),
        ("failed", "training", "the trainer itself failed"),
        ("failed", "budget", "cost or duration cap"),
        ("cancelled", None, "was cancelled"),
    ],
)
def test_resume_refuses_a_job_it_cannot_help_with_exit_2(
    brightrun_home: Path, status: str, failure_kind: str | None, says: str
) -> None:
    """Issue 15 item 5: only a live job or an orchestration failure is resumable; the rest are
    refused with exit code 2 and the reason, before any flow starts."""
    engine = open_registry_url(f"sqlite:///{brightrun_home / 'registry.db'}")
    try:
        job = repo.create_job(engine, job_name="refused", base_model="tiny", metadata={"params": {"x": 1}})
        for step in ("preprocessing", "model_loaded", "training", status):
            repo.transition_job(engine, job.id, step, error_message="boom" if status == "failed" else None)
        if failure_kind:
            repo.update_job(engine, job.id, metadata={**job.metadata, "failure_kind": failure_kind})
    finally:
        engine.dispose()
    env = {**os.environ, "BRIGHTRUN_HOME": str(brightrun_home)}
    proc = _cli(["resume", job.id], env)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2, output
    assert says in output and job.id in output
