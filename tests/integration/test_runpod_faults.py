"""Zero pods on every exit path: faults of RunPod and of the pod, injected through the fake,
each case run through the monitor's public entry point (`tasks.monitor.run_job`) and ending
with the fake showing no pod running or billing (issue 11 "zero pods", issue 15).

The pods run the trainer image's ENTRYPOINT (the pod supervisor) with the fast fake trainer.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from brightrun import layout
from brightrun.compute.runpod import pod_name
from brightrun.storage import LocalStorage
from tasks.monitor import OutcomeKind, run_job
from tests.fake_runpod import FakeRunPod
from tests.fake_runpod.helpers import ListRecorder, fast_policy, runpod_compute, wait_for, write_job

pytestmark = pytest.mark.integration

STEPS = 12
EXPECTED_WEIGHTS = {"sum": sum(range(1, STEPS + 1)), "steps": STEPS}


def _when_step(root: Path, job_id: str, step: int, action: Callable[[], None]) -> threading.Thread:
    """Run `action` once the job's heartbeat reaches `step` (a fault in the middle of a run)."""
    status = root / "jobs" / job_id / layout.STATUS

    def reached() -> bool:
        try:
            return json.loads(status.read_text())["step"] >= step
        except (OSError, ValueError, KeyError):
            return False

    def run() -> None:
        wait_for(reached, timeout=120, interval=0.05)
        action()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _interrupt_first_pod(fake: FakeRunPod, job_id: str) -> None:
    (pod,) = [p for p in fake.pods_of(pod_name(job_id, 1)) if p.alive]
    fake.interrupt(pod.id, mode="kill")


# Each case: (how to break things before/while the job runs, policy overrides, client options,
# whether the job must still complete).
Case = tuple[Callable[[FakeRunPod, Path, str], None], dict[str, Any], dict[str, Any], bool]

CASES: dict[str, Case] = {
    "api_500_for_a_while_then_recovery": (
        lambda fake, root, job: _when_step(root, job, 2, lambda: fake.fail_for(3.0, status=500)) and None,
        {},
        {},
        True,
    ),
    "api_429_for_a_while_then_recovery": (
        lambda fake, root, job: _when_step(root, job, 2, lambda: fake.fail_for(3.0, status=429)) and None,
        {},
        {},
        True,
    ),
    "slow_api": (lambda fake, root, job: fake.set_delay(0.4), {}, {}, True),
    "create_answered_after_the_clients_timeout": (
        lambda fake, root, job: fake.answer_create_late(2.5),
        {},
        {"timeout": 1.0},
        True,
    ),
    "no_capacity_on_some_gpu_types": (
        lambda fake, root, job: fake.refuse_capacity(["NVIDIA RTX A6000", "NVIDIA A40"], spot_only=False),
        {},
        {},
        True,
    ),
    "no_capacity_on_any_gpu_type": (
        lambda fake, root, job: fake.refuse_capacity(None, spot_only=False),
        {"capacity_rounds": 2},
        {},
        False,
    ),
    "pod_stuck_in_created": (
        lambda fake, root, job: fake.hold_in_created(),
        {"startup_timeout_seconds": 3.0},
        {},
        True,
    ),
    "trainer_never_heartbeats": (
        lambda fake, root, job: fake.mute_trainer(),
        {"startup_timeout_seconds": 3.0},
        {},
        True,
    ),
    "interruption_before_the_first_checkpoint": (
        lambda fake, root, job: _when_step(root, job, 1, lambda: _interrupt_first_pod(fake, job)) and None,
        {},
        {},
        True,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_exit_path_ends_with_zero_pods(fake_runpod, tmp_path: Path, case: str) -> None:
    breaker, policy_overrides, client_options, completes = CASES[case]
    fake = fake_runpod.fake
    job_id = f"fault-{case.replace('_', '-')}"
    root = tmp_path / "storage"
    # Checkpoints every 5 steps: an interruption at step 1 comes before the first one.
    uri = write_job(root, job_id, steps=STEPS, every=5)
    policy = fast_policy(api_outage_patience_seconds=120.0, **policy_overrides)
    compute = runpod_compute(fake_runpod.url, fake_runpod.api_key, policy, **client_options)
    recorder = ListRecorder()
    breaker(fake, root, job_id)
    try:
        outcome = run_job(
            compute=compute,
            storage=LocalStorage(root),
            job_id=job_id,
            spec_uri=uri,
            policy=policy,
            env={"FAKE_TRAINER_STEP_SECONDS": "0.25"},
            recorder=recorder,
        )
    except Exception as exc:  # a job that could not start at all (no capacity): no pod either
        assert not completes, f"{case}: {exc!r}"
        outcome = None
    fake.recover()

    # Zero pods: nothing running, nothing billing, every pod terminated in RunPod's books.
    wait_for(lambda: not fake.running_processes(), timeout=30)
    assert fake.billing_pods() == [], case
    assert fake.live_pods() == [], case
    if completes:
        assert outcome is not None and outcome.kind == OutcomeKind.completed, (
            case,
            outcome,
            recorder.types(),
        )
        storage = LocalStorage(root)
        assert json.loads(storage.get_bytes(f"jobs/{job_id}/adapter/weights.json")) == EXPECTED_WEIGHTS
        # One pod per attempt, never two.
        names = [p.name for p in fake.pods.values()]
        assert len(names) == len(set(names)), names
    else:
        assert outcome is None or outcome.kind != OutcomeKind.completed
    # The fault really happened.
    answered = {r["status"] for r in fake.requests}
    if case.startswith("api_500"):
        assert 500 in answered
    if case.startswith("api_429"):
        assert 429 in answered
    if case == "no_capacity_on_some_gpu_types":
        assert {p.gpu_type for p in fake.pods.values()} == {"NVIDIA L40S"}
    if case == "no_capacity_on_any_gpu_type":
        assert fake.pods == {}
    if case == "create_answered_after_the_clients_timeout":
        assert len(fake.pods_of(pod_name(job_id, 1))) == 1
    if case in (
        "pod_stuck_in_created",
        "trainer_never_heartbeats",
        "interruption_before_the_first_checkpoint",
    ):
        assert len(fake.pods) == 2, [(p.name, p.status) for p in fake.pods.values()]


def test_an_outage_longer_than_the_monitors_patience_ends_with_zero_pods_after_the_reaper(
    fake_runpod, tmp_path: Path
) -> None:
    """The monitor gives up while RunPod is down and names the pod it could not terminate
    (`pod_termination_failed`, never `pod_terminated`); once RunPod answers, the reaper ends it."""
    from tasks.reaper import reap

    fake = fake_runpod.fake
    job_id = "outage-past-patience"
    root = tmp_path / "storage"
    uri = write_job(root, job_id, steps=STEPS, every=5)
    policy = fast_policy(api_outage_patience_seconds=2.0)
    compute = runpod_compute(fake_runpod.url, fake_runpod.api_key, policy, registry_id="this-registry")
    recorder = ListRecorder()
    _when_step(root, job_id, 1, lambda: fake.fail_for(3600, status=500))
    try:
        outcome = run_job(
            compute=compute,
            storage=LocalStorage(root),
            job_id=job_id,
            spec_uri=uri,
            policy=policy,
            env={"FAKE_TRAINER_STEP_SECONDS": "3"},  # still training when the monitor gives up
            recorder=recorder,
        )
    except Exception as exc:  # how the monitor reports it is the monitor's; the pod is ours
        outcome = exc
    (pod,) = fake.pods.values()
    assert pod.billing, "the pod was left running: the case this test is about"
    failed = recorder.of("pod_termination_failed")
    assert [p["pod_id"] for p in failed] == [pod.id], (outcome, recorder.types())
    assert pod.id not in [p.get("pod_id") for p in recorder.of("pod_terminated")]

    fake.recover()
    (decision,) = reap(compute, {job_id: "failed"}.get, {}.get, registry_id="this-registry")
    assert decision.terminated and decision.pod.pod_id == pod.id
    wait_for(lambda: not fake.running_processes(), timeout=30)
    assert fake.billing_pods() == [] and fake.live_pods() == []
