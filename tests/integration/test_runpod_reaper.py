"""The reaper and the `brightrun runpod prices` command against the fake RunPod API."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from brightrun.compute import PodRequest
from brightrun.protocol import TrainerPhase, TrainerStatus, utcnow
from brightrun.storage import LocalStorage
from cli.main import app
from tasks.reaper import reap
from tests.fake_runpod.helpers import fast_policy, runpod_compute

pytestmark = pytest.mark.integration
SLEEPER = "python -c 'import time; time.sleep(120)'"  # a trainer that runs and never beats


def test_reaper_terminates_pods_of_terminal_and_silent_jobs_only(fake_runpod) -> None:
    compute = runpod_compute(
        fake_runpod.url, fake_runpod.api_key, fast_policy(), trainer=SLEEPER, registry_id="this-registry"
    )
    for job in ("done", "live", "silent"):
        compute.start(PodRequest(job_id=job, attempt=1, spec_uri="/nowhere/spec.json", gpu_type="NVIDIA A40"))
    time.sleep(2.1)  # the fake reports whole seconds of uptime
    statuses = {"done": "completed", "live": "training", "silent": "training"}
    ages = {"done": 1.0, "live": 0.5, "silent": 5000.0}

    planned = reap(
        compute, statuses.get, ages.get, dry_run=True, stale_after_seconds=1, registry_id="this-registry"
    )
    assert {d.pod.job_id for d in planned} == {"done", "silent"}
    assert len(fake_runpod.fake.live_pods()) == 3  # a dry run terminates nothing

    reap(compute, statuses.get, ages.get, stale_after_seconds=1, registry_id="this-registry")
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
    compute = runpod_compute(
        fake_runpod.url, fake_runpod.api_key, fast_policy(), trainer=sleeper, registry_id=_home_registry_id()
    )
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


def _home_registry_id() -> str:
    """The id of the registry the CLI opens (the test's brightrun home)."""
    from brightrun.resources import Resources

    with Resources.from_settings() as resources:
        return resources.registry_id()


def _sleepers(fake_runpod, *job_ids: str, registry_id: str | None = None) -> None:
    compute = runpod_compute(
        fake_runpod.url,
        fake_runpod.api_key,
        fast_policy(),
        trainer=SLEEPER,
        registry_id=registry_id or _home_registry_id(),
    )
    for job in job_ids:
        compute.start(PodRequest(job_id=job, attempt=1, spec_uri="/x/spec.json", gpu_type="NVIDIA A40"))


def _heartbeat(root: Path, job_id: str, age_seconds: float) -> None:
    status = TrainerStatus(
        phase=TrainerPhase.training, attempt=1, updated_at=utcnow() - timedelta(seconds=age_seconds)
    )
    LocalStorage(root).put_bytes(f"jobs/{job_id}/status.json", status.model_dump_json().encode())


def _registry_jobs(*specs: tuple[str, str | None]) -> list[str]:
    """Jobs in the embedded registry: (status, the job's own storage_url or None)."""
    from brightrun.registry import open_registry
    from brightrun.registry import repository as repo
    from brightrun.settings import load_settings

    engine = open_registry(load_settings())
    ids = []
    try:
        for status, storage_url in specs:
            job = repo.create_job(
                engine,
                job_name=status,
                base_model="tiny",
                compute_backend="runpod",
                metadata={"storage_url": storage_url} if storage_url else None,
            )
            path = {
                "preprocessing": ["preprocessing"],
                "training": ["preprocessing", "model_loaded", "training"],
            }
            for step in path.get(status, [status] if status != "queued" else []):
                repo.transition_job(engine, job.id, step)
            ids.append(str(job.id))
    finally:
        engine.dispose()
    return ids


def test_reaper_terminates_a_pod_stuck_in_created(fake_runpod, brightrun_home, monkeypatch) -> None:
    monkeypatch.setenv("RUNPOD_API_KEY", fake_runpod.api_key)
    (job,) = _registry_jobs(("preprocessing", None))
    fake_runpod.fake.hold_in_created()
    _sleepers(fake_runpod, job)
    (pod,) = fake_runpod.fake.pods.values()
    assert pod.status == "CREATED" and pod.billing

    spared = CliRunner().invoke(app, ["reap", "--startup-grace", "600"])
    assert spared.exit_code == 0 and "terminated 0 pod(s)" in spared.output, spared.output
    time.sleep(2.1)  # RunPod's status time has whole seconds
    reaped = CliRunner().invoke(app, ["reap", "--startup-grace", "1"])
    assert reaped.exit_code == 0, reaped.output
    assert "pending (not running)" in reaped.output and f"job {job}" in reaped.output
    assert fake_runpod.fake.live_pods() == [] and fake_runpod.fake.billing_pods() == []


def test_reaper_reads_each_jobs_heartbeat_from_its_own_storage(
    fake_runpod, brightrun_home, monkeypatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("RUNPOD_API_KEY", fake_runpod.api_key)
    own = tmp_path / "the-jobs-own-storage"
    (job,) = _registry_jobs(("training", str(own)))
    _heartbeat(brightrun_home / "storage", job, age_seconds=5000)  # what a wrong read would see
    _sleepers(fake_runpod, job)
    time.sleep(2.1)  # the pod has been up longer than --stale-after
    _heartbeat(own, job, age_seconds=0)

    spared = CliRunner().invoke(app, ["reap", "--stale-after", "30"])
    assert spared.exit_code == 0 and "terminated 0 pod(s)" in spared.output, spared.output
    _heartbeat(own, job, age_seconds=5000)
    reaped = CliRunner().invoke(app, ["reap", "--stale-after", "1"])
    assert "heartbeat has been silent for 5" in reaped.output, reaped.output
    assert fake_runpod.fake.live_pods() == []


def test_reaper_never_terminates_a_pod_it_cannot_judge(
    fake_runpod, brightrun_home, monkeypatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("RUNPOD_API_KEY", fake_runpod.api_key)
    unreadable = tmp_path / "unreadable"
    (unreadable / "jobs").mkdir(parents=True)
    (job,) = _registry_jobs(("training", str(unreadable)))
    (unreadable / "jobs" / job / "status.json").mkdir(parents=True)  # reading it fails (not "absent")
    _sleepers(fake_runpod, job)
    time.sleep(2.1)

    result = CliRunner().invoke(app, ["reap", "--stale-after", "1", "--startup-grace", "1"])
    assert result.exit_code == 0 and "terminated 0 pod(s)" in result.output, result.output
    # The registry unreachable: nothing is judged, nothing is terminated.
    monkeypatch.setenv("BRIGHTRUN_DATABASE_URL", "postgresql+psycopg://nobody@127.0.0.1:9/none")
    result = CliRunner().invoke(app, ["reap", "--stale-after", "1", "--startup-grace", "1"])
    assert result.exit_code == 0 and "terminated 0 pod(s)" in result.output, result.output
    assert len(fake_runpod.fake.live_pods()) == 1
    fake_runpod.fake.terminate(fake_runpod.fake.live_pods()[0].id)
