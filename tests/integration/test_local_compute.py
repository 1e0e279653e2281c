"""The local compute backend runs the real trainer as a subprocess; SIGTERM on terminate makes
the trainer finish its step, commit a checkpoint and exit 0 with an `interrupted` status."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from brightrun import layout
from brightrun.compute import PodRequest, PodState
from brightrun.compute.local import LocalCompute
from brightrun.protocol import TrainerPhase, TrainerStatus
from tests.fixtures.training import REPO, create_job, events, job_storage, small_spec

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _wait(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_terminate_sends_sigterm_and_the_trainer_checkpoints_and_exits_0(
    brightrun_home: Path, tmp_path: Path, tiny_model: Path, prepared_dataset: Path
) -> None:
    spec = small_spec(
        "sigterm-job",
        tiny_model,
        quantization={"load_in_4bit": False},
        # Long enough never to finish here; no step cadence checkpoint after step 1000.
        training={"max_steps": 100_000, "warmup_steps": 1},
        checkpoint={"every_steps": 1000, "sigterm_grace_seconds": 60},
    )
    uri = create_job(tmp_path / "storage", prepared_dataset, spec)
    storage = job_storage(uri)
    compute = LocalCompute(brightrun_home, grace_seconds=60)
    request = PodRequest(
        job_id="sigterm-job", attempt=1, spec_uri=uri, env={"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    )
    pod = compute.start(request)
    try:
        assert pod.state == PodState.running and pod.cost_per_hr == 0.0

        def training_a_while() -> bool:
            if not storage.exists(layout.STATUS):
                return False
            status = TrainerStatus.model_validate(storage.get_json(layout.STATUS))
            return status.phase == TrainerPhase.training and status.step >= 3

        _wait(training_a_while, 120, "the trainer to reach step 3")
        # Another process (the reaper) sees the pod through the state file alone.
        other = LocalCompute(brightrun_home)
        assert [p.pod_id for p in other.list_pods("sigterm-job")] == [pod.pod_id]
        assert other.get(pod.pod_id).state == PodState.running
        other.terminate(pod.pod_id)
    finally:
        compute.terminate(pod.pod_id)

    info = compute.get(pod.pod_id)
    assert info.state == PodState.terminated and info.exit_code == 0, compute.log_path(
        pod.pod_id
    ).read_text()[-3000:]
    status = TrainerStatus.model_validate(storage.get_json(layout.STATUS))
    assert status.phase == TrainerPhase.interrupted
    assert status.last_checkpoint_step == status.step >= 3
    assert int(storage.get_bytes(layout.LATEST).decode()) == status.step
    (interrupted,) = events(storage, "interrupted")
    assert interrupted["payload"]["checkpoint_committed"] is True
    assert not storage.exists(layout.RESULT) and not storage.exists(layout.FAILURE)
    log = compute.log_path(pod.pod_id).read_text()
    assert "SIGTERM received" in log and "trainer" in log  # trainer and library logs land in the pod log


def test_a_failing_trainer_reads_as_exited_with_its_code(brightrun_home: Path, tmp_path: Path) -> None:
    compute = LocalCompute(brightrun_home)
    missing = tmp_path / "nowhere" / "jobs" / "x" / "spec.json"
    pod = compute.start(
        PodRequest(job_id="x", attempt=1, spec_uri=str(missing), env={"PYTHONPATH": str(REPO)})
    )
    _wait(lambda: compute.get(pod.pod_id).state == PodState.exited, 60, "the trainer to exit")
    info = LocalCompute(brightrun_home).get(pod.pod_id)
    assert info.state == PodState.exited and info.exit_code not in (None, 0)
    assert "spec.json" in compute.log_path(pod.pod_id).read_text()
    compute.terminate(pod.pod_id)
    compute.terminate(pod.pod_id)  # idempotent
    assert compute.get(pod.pod_id).state == PodState.terminated
    assert compute.get("local-unknown").state == PodState.terminated
