"""Ctrl-C during `brightrun train` on a terminal (issue 21): the CLI runs on a pty with the
embedded Prefect server (no PREFECT_API_URL), and SIGINT goes to its whole foreground process
group, as a terminal sends it. The first Ctrl-C stops the job within 10 s with the resume hint,
a resumable status and no process left behind; `brightrun resume` then completes it."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from brightrun.registry import open_registry_url
from brightrun.registry import repository as repo
from tests.fixtures.cli_runs import REPO, Terminal, cli_command, processes_of, train_args, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_ctrl_c_stops_the_job_and_resume_completes_it(
    brightrun_home: Path, tiny_model: Path, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        BRIGHTRUN_HOME=str(brightrun_home),
        PREFECT_HOME=str(tmp_path / "prefect"),
        BRIGHTRUN_TRAINER_STEP_DELAY="0.3",  # a GPU-like pace: Ctrl-C lands mid-training
        TERM="xterm",
    )
    engine = open_registry_url(f"sqlite:///{brightrun_home / 'registry.db'}")
    terminal = Terminal(cli_command(train_args(tmp_path, tiny_model, max_steps=30)), env)
    try:

        def training() -> bool:
            if not (brightrun_home / "registry.db").exists():
                return False
            jobs = repo.list_jobs(engine, limit=None)
            return bool(jobs) and jobs[0].status == "training" and (jobs[0].current_step or 0) >= 3

        wait_for(training, 240, "the job to train a few steps")
        assert terminal.proc.poll() is None, terminal.screen
        job_id = repo.list_jobs(engine, limit=None)[0].id
        pressed = time.monotonic()
        terminal.ctrl_c()
        rc = terminal.proc.wait(timeout=60)
        exited = time.monotonic()
        took = exited - pressed
        terminal.reader.join(timeout=5)
        screen = terminal.screen
        hint = f"job {job_id} stopped; continue it with: "
        hinted = terminal.first_seen(hint)
        print(f"first Ctrl-C to exit: {took:.1f}s")  # the figure the README quotes
        # The promise is 10 s; a machine loaded past its cores (a shared CI box) stretches every
        # step and poll, so there the bound is looser rather than the test flaky.
        bound = 10 if os.getloadavg()[0] <= (os.cpu_count() or 1) else 45
        assert took < bound, f"exit took {took:.1f}s\n{screen}"
        assert rc == 130, screen
        assert hinted is not None and f"resume {job_id}" in screen, screen
        # Once the stop is recorded and the hint printed, the CLI does not wait out Prefect's
        # teardown (its embedded server's 5 s shutdown, the log workers): it traced at 2.7 s.
        assert exited - hinted < 1.5, f"{exited - hinted:.1f}s between the hint and the exit"
        assert "press Ctrl-C again to exit at once" in screen
        assert "Traceback" not in screen, screen

        job = repo.get_job(engine, job_id)
        assert job.status == "failed" and job.metadata.get("failure_kind") == "stopped", job
        assert "stopped by the user" in (job.error_message or "")
        events = repo.list_events(engine, job_id, type="interrupted")
        stops = [e for e in events if e.payload.get("source") == "user"]
        assert stops and stops[0].payload["reason"] == "stopped by the user"
        # The embedded server is stopped by the watchdog once the CLI is gone.
        wait_for(lambda: not processes_of(brightrun_home), 15, "no process of the job left")
    finally:
        terminal.close()

    resumed = subprocess.run(
        cli_command(["resume", job_id[:8]]), cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    job = repo.get_job(engine, job_id)
    assert job.status == "completed" and job.current_step == 30, job
    assert not processes_of(brightrun_home)
