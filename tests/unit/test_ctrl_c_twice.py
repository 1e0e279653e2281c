"""The second Ctrl-C (cli/interrupt.py `stop_job_now`): the job's local trainer is killed at
once and the job is recorded stopped, which `brightrun resume` accepts."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from brightrun.compute.local import _proc_start_ticks
from brightrun.registry import open_registry_url
from brightrun.registry import repository as repo
from cli.interrupt import stop_job_now
from tasks.job import resume_refusal

JOB = "5b0e3f4a-1c2d-4e5f-8a9b-0c1d2e3f4a5b"


def test_a_second_ctrl_c_kills_the_local_trainer_and_leaves_a_resumable_job(brightrun_home: Path) -> None:
    engine = open_registry_url(f"sqlite:///{brightrun_home / 'registry.db'}")
    repo.create_job(engine, job_id=JOB, job_name="j", base_model="m")
    repo.transition_job(engine, JOB, "preprocessing")
    trainer = subprocess.Popen(["sleep", "120"], start_new_session=True)  # stands in for the trainer
    try:
        pods = brightrun_home / "pods"
        pods.mkdir(parents=True)
        pod_id = f"local-{JOB}-1-abcd"
        state = {
            "pod_id": pod_id,
            "job_id": JOB,
            "attempt": 1,
            "pid": trainer.pid,
            "pgid": trainer.pid,
            "start_ticks": _proc_start_ticks(trainer.pid),
            "started_at": time.time(),
            "ended_at": None,
            "rc_file": str(pods / f"{pod_id}.rc"),
            "terminated": False,
        }
        (pods / f"{pod_id}.json").write_text(json.dumps(state))
        started = time.monotonic()
        stop_job_now(JOB)
        assert time.monotonic() - started < 5
        assert trainer.wait(timeout=5) is not None
    finally:
        trainer.kill()
        trainer.wait()
    job = repo.get_job(engine, JOB)
    assert job.status == "failed" and job.metadata["failure_kind"] == "stopped"
    assert resume_refusal(job) is None
    (event,) = repo.list_events(engine, JOB, type="interrupted")
    assert event.payload["source"] == "user"
