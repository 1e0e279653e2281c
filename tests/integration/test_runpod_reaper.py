"""The reaper and the `brightrun runpod prices` command against the fake RunPod API."""

from __future__ import annotations

import time

import pytest
from typer.testing import CliRunner

from brightrun.compute import PodRequest
from cli.main import app
from tasks.reaper import reap
from tests.fake_runpod.helpers import fast_policy, runpod_compute

pytestmark = pytest.mark.integration


def test_reaper_terminates_pods_of_terminal_and_silent_jobs_only(fake_runpod) -> None:
    sleeper = "python -c 'import time; time.sleep(120)'"  # a trainer that runs and never beats
    compute = runpod_compute(fake_runpod.url, fake_runpod.api_key, fast_policy(), trainer=sleeper)
    for job in ("done", "live", "silent"):
        compute.start(PodRequest(job_id=job, attempt=1, spec_uri="/nowhere/spec.json", gpu_type="NVIDIA A40"))
    time.sleep(2.1)  # the fake reports whole seconds of uptime
    statuses = {"done": "completed", "live": "training", "silent": "training"}
    ages = {"done": 1.0, "live": 0.5, "silent": 5000.0}

    planned = reap(compute, statuses.get, ages.get, dry_run=True, stale_after_seconds=1)
    assert {d.pod.job_id for d in planned} == {"done", "silent"}
    assert len(fake_runpod.fake.live_pods()) == 3  # a dry run terminates nothing

    reap(compute, statuses.get, ages.get, stale_after_seconds=1)
    left = fake_runpod.fake.live_pods()
    assert [p.name for p in left] == ["brightrun-live-a1"]
    compute.terminate(left[0].id)


def test_prices_command(fake_runpod) -> None:
    result = CliRunner().invoke(app, ["runpod", "prices", "--gpu-count", "2"])
    assert result.exit_code == 0, result.output
    line = next(row for row in result.output.splitlines() if row.startswith("NVIDIA A40"))
    assert line.split()[-2:] == ["0.400", "0.880"]


def test_reap_command_with_the_registry(fake_runpod, brightrun_home, monkeypatch) -> None:
    monkeypatch.setenv("RUNPOD_API_KEY", fake_runpod.api_key)  # brightrun_home cleared it
    from brightrun.registry import open_registry
    from brightrun.registry import repository as repo
    from brightrun.settings import load_settings

    engine = open_registry(load_settings())
    failed = repo.create_job(engine, job_name="failed one", base_model="tiny")
    repo.transition_job(engine, failed.id, "failed", error_message="boom")
    running = repo.create_job(engine, job_name="running one", base_model="tiny")
    sleeper = "python -c 'import time; time.sleep(120)'"
    compute = runpod_compute(fake_runpod.url, fake_runpod.api_key, fast_policy(), trainer=sleeper)
    for job in (failed.id, running.id):
        compute.start(PodRequest(job_id=job, attempt=1, spec_uri="/x/spec.json", gpu_type="NVIDIA A40"))

    dry = CliRunner().invoke(app, ["reap", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "would terminate" in dry.output and f"job {failed.id} is failed" in dry.output
    assert str(running.id) not in dry.output
    assert len(fake_runpod.fake.live_pods()) == 2

    real = CliRunner().invoke(app, ["reap"])
    assert real.exit_code == 0, real.output
    assert [p.name for p in fake_runpod.fake.live_pods()] == [f"brightrun-{running.id}-a1"]
    compute.terminate(fake_runpod.fake.live_pods()[0].id)
