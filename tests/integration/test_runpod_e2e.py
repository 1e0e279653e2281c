"""End to end: the real trainer and the tiny model on fake RunPod pods, interrupted three times."""

from __future__ import annotations

import json
import random
import threading
import time
from pathlib import Path

import pytest

from brightrun import layout
from brightrun.storage import LocalStorage
from tasks.monitor import OutcomeKind, run_job
from tests.fake_runpod.helpers import ListRecorder, fast_policy, runpod_compute, wait_for
from tests.fixtures.training import adapter_tensors, create_job, max_abs_diff, run_trainer, small_spec

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TRAINING = {"max_steps": 12}
CHECKPOINT = {"every_steps": 3, "keep_last": 2, "sigterm_grace_seconds": 60}


def _status(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _chaos(fake, job_id: str, storage_root: Path, errors: list[BaseException]) -> threading.Thread:
    """Interrupt pods 1..3 of the job: SIGKILL during the first checkpoint upload, SIGTERM (then
    SIGKILL) at a random moment of training, SIGKILL at a random moment of training."""
    rng = random.Random(1234)
    status_path = storage_root / "jobs" / job_id / layout.STATUS

    def live_pod(n: int):
        pods = [p for p in fake.pods_of(f"brightrun-{job_id}-a{n}") if p.alive]
        return pods[0] if pods else None

    def phase_of(n: int, phases: set[str]):
        pod = live_pod(n)
        status = _status(status_path)
        if pod is None or status is None or status_path.stat().st_mtime <= pod.created_at:
            return None
        return pod if status["phase"] in phases else None

    def run() -> None:
        try:
            pod = wait_for(lambda: phase_of(1, {"checkpointing"}), timeout=120, interval=0.005)
            fake.interrupt(pod.id, mode="kill")
            for n, mode in ((2, "term"), (3, "kill")):
                pod = wait_for(
                    lambda n=n: phase_of(n, {"training", "checkpointing"}), timeout=120, interval=0.01
                )
                time.sleep(rng.uniform(0.0, 0.6))
                fake.interrupt(pod.id, mode=mode, grace_seconds=5.0)
        except BaseException as exc:  # surfaced by the test
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_job_interrupted_three_times_matches_an_uninterrupted_run(
    fake_runpod, tmp_path: Path, tiny_model: Path, prepared_dataset: Path
) -> None:
    reference_uri = create_job(
        tmp_path / "ref",
        prepared_dataset,
        small_spec("ref", tiny_model, training=TRAINING, checkpoint=CHECKPOINT),
    )
    done = run_trainer(reference_uri)
    assert done.returncode == 0, done.stderr[-3000:]
    reference = adapter_tensors(LocalStorage(Path(reference_uri).parent))

    root = tmp_path / "storage"
    job_id = "e2e-job"
    uri = create_job(
        root, prepared_dataset, small_spec(job_id, tiny_model, training=TRAINING, checkpoint=CHECKPOINT)
    )
    policy = fast_policy(poll_interval_seconds=0.5, heartbeat_timeout_seconds=30.0)
    recorder = ListRecorder()
    errors: list[BaseException] = []
    chaos = _chaos(fake_runpod.fake, job_id, root, errors)
    outcome = run_job(
        compute=runpod_compute(fake_runpod.url, fake_runpod.api_key, policy, trainer="python -m trainer"),
        storage=LocalStorage(root),
        job_id=job_id,
        spec_uri=uri,
        policy=policy,
        # GPU-like pace, so each interruption lands where the chaos thread aims whatever the load.
        env={
            "OMP_NUM_THREADS": "1",
            "BRIGHTRUN_TRAINER_STEP_DELAY": "0.3",
            "BRIGHTRUN_TRAINER_UPLOAD_DELAY": "0.5",
        },
        recorder=recorder,
    )
    chaos.join(timeout=5)
    assert not errors, errors
    logs = "\n".join(p.log_path.read_text()[-1500:] for p in fake_runpod.fake.pods.values())
    assert outcome.kind == OutcomeKind.completed, f"{outcome.reason}\n{logs}"
    assert outcome.retry_count == 3
    assert recorder.retry_counts[-1] == 3
    assert len(outcome.pod_ids) == 4
    resumed = LocalStorage(root / "jobs" / job_id)
    assert max_abs_diff(adapter_tensors(resumed), reference) <= 1e-6
    assert all(p.status == "TERMINATED" and not p.alive for p in fake_runpod.fake.pods.values())
    types = recorder.types()
    for expected in ("pod_requested", "pod_running", "interrupted", "resumed", "pod_terminated"):
        assert expected in types
    # The trainer's own account of each resume (from step, lost steps) reaches the recorder too.
    trainer_resumes = [p for p in recorder.of("resumed") if p.get("source") == "trainer"]
    keys = sorted(k for k in LocalStorage(root / "jobs" / job_id).list("events/"))
    assert len(trainer_resumes) >= 2, f"{trainer_resumes}\n{keys}\n{recorder.events}"
