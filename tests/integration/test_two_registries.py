"""Issue 20, item 4: two registries (staging, production) on one RunPod account. Before the
registry tag, B's reaper called A's job "unknown to the registry" and terminated its pods."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from brightrun.compute import PodRequest
from brightrun.protocol import TrainerPhase, TrainerStatus, utcnow
from brightrun.registry import repository as repo
from brightrun.resources import Resources
from brightrun.settings import Settings
from brightrun.storage import LocalStorage
from tasks.reaper import reap_pods_with
from tests.fake_runpod.helpers import fast_policy, runpod_compute

pytestmark = pytest.mark.integration
SLEEPER = "python -c 'import time; time.sleep(120)'"


def _registry(home: Path, api_key: str) -> Resources:
    return Resources.from_settings(Settings(home=home, runpod_api_key=api_key))


def _live_job(resources: Resources, fake_runpod) -> str:
    """A training job of this registry with a fresh heartbeat, and its pod on the shared account."""
    engine = resources.registry
    job = repo.create_job(engine, job_name="live", base_model="tiny", compute_backend="runpod")
    for step in ("preprocessing", "model_loaded", "training"):
        repo.transition_job(engine, job.id, step)
    status = TrainerStatus(phase=TrainerPhase.training, attempt=1, updated_at=utcnow())
    LocalStorage(resources.storage_url).put_bytes(
        f"jobs/{job.id}/status.json", status.model_dump_json().encode()
    )
    compute = runpod_compute(
        fake_runpod.url,
        fake_runpod.api_key,
        fast_policy(),
        trainer=SLEEPER,
        registry_id=resources.registry_id(),
    )
    compute.start(PodRequest(job_id=str(job.id), attempt=1, spec_uri="/x/spec.json", gpu_type="NVIDIA A40"))
    return str(job.id)


def test_two_registries_reaping_on_a_loop_never_touch_each_others_pods(
    fake_runpod, brightrun_home, monkeypatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("RUNPOD_API_KEY", fake_runpod.api_key)
    staging = _registry(tmp_path / "staging", fake_runpod.api_key)
    production = _registry(tmp_path / "production", fake_runpod.api_key)
    try:
        assert staging.registry_id() != production.registry_id()
        staging_job = _live_job(staging, fake_runpod)
        production_job = _live_job(production, fake_runpod)
        # A pod from before the tag (or started by hand): neither registry knows it.
        runpod_compute(fake_runpod.url, fake_runpod.api_key, fast_policy(), trainer=SLEEPER).start(
            PodRequest(job_id="untagged-job", attempt=1, spec_uri="/x/spec.json", gpu_type="NVIDIA A40")
        )
        # Production finishes its job; only production's reaper may end its pod.
        done = repo.create_job(
            production.registry, job_name="done", base_model="tiny", compute_backend="runpod"
        )
        repo.transition_job(production.registry, done.id, "failed", error_message="boom")
        runpod_compute(
            fake_runpod.url,
            fake_runpod.api_key,
            fast_policy(),
            trainer=SLEEPER,
            registry_id=production.registry_id(),
        ).start(PodRequest(job_id=str(done.id), attempt=1, spec_uri="/x/spec.json", gpu_type="NVIDIA A40"))

        rows: dict[str, list[dict[str, str]]] = {"staging": [], "production": []}

        def loop(name: str, resources: Resources) -> None:
            for _ in range(4):
                rows[name] += reap_pods_with(resources, stale_after_seconds=600, startup_grace_seconds=600)

        threads = [
            threading.Thread(target=loop, args=item)
            for item in (("staging", staging), ("production", production))
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)

        live = sorted(p.name for p in fake_runpod.fake.live_pods())
        assert live == sorted(
            [f"brightrun-{staging_job}-a1", f"brightrun-{production_job}-a1", "brightrun-untagged-job-a1"]
        )
        terminated = [r for name in rows for r in rows[name] if r["result"] == "terminated"]
        assert [(r["job_id"]) for r in terminated] == [str(done.id)]
        assert not any(r["job_id"] == str(done.id) for r in rows["staging"])
        for name in rows:  # the untagged pod is named to a person by both, ended by neither
            reported = [r for r in rows[name] if r["job_id"] == "untagged-job"]
            assert reported and all(r["result"].startswith("reported") for r in reported)

        # An operator who knows the untagged pod is theirs reaps it on purpose.
        forced = reap_pods_with(
            staging, include_untagged=True, stale_after_seconds=600, startup_grace_seconds=600
        )
        assert [(r["job_id"], r["result"]) for r in forced] == [("untagged-job", "terminated")]
        assert len(fake_runpod.fake.live_pods()) == 2
    finally:
        for pod in fake_runpod.fake.live_pods():
            fake_runpod.fake.terminate(pod.id)
        staging.close()
        production.close()
