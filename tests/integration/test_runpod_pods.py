"""Pods as RunPod runs them, against the fake: the trainer image's ENTRYPOINT with the start
command as CMD, RunPod's env, the pod removing itself, one pod per attempt, confirmed
termination."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from brightrun.compute import PodRequest, PodState, PodTerminationError, terminate_with_patience
from brightrun.compute.runpod import pod_name
from brightrun.compute.runpod_client import GraphQLRunPodClient, RunPodAuthError
from brightrun.storage import LocalStorage
from tests.fake_runpod.helpers import fast_policy, runpod_compute, wait_for, write_job

pytestmark = pytest.mark.integration

SLEEPER = "python -c 'import time; time.sleep(120)'"  # a trainer that runs and never ends
# The start command the project sent before the image and the start command agreed.
OLD_START_COMMAND = (
    "bash -c 'timeout --signal=TERM --kill-after=30 3600 python -m trainer --spec /x/spec.json & "
    'child=$!; wait "$child"; exit $?\''
)


def test_the_old_image_cannot_start_its_job(fake_runpod, tmp_path: Path) -> None:
    """ENTRYPOINT `python -m trainer` receives the `bash -c` start command as arguments: exit 2."""
    old = tmp_path / "Dockerfile.old"
    old.write_text(
        'FROM nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04\nENTRYPOINT ["python", "-m", "trainer"]\n'
    )
    fake_runpod.fake.dockerfile = old
    client = GraphQLRunPodClient(fake_runpod.api_key, base_url=fake_runpod.url)
    from brightrun.compute.runpod_client import PodCreate

    pod = client.create_pod(
        PodCreate(name="old-image", image="trainer:old", docker_args=OLD_START_COMMAND, gpu_type="NVIDIA A40")
    )
    fake_pod = fake_runpod.fake.pods[pod.id]
    assert fake_pod.argv[:5] == ["python", "-m", "trainer", "bash", "-c"]
    wait_for(lambda: not fake_pod.alive, timeout=120)
    assert fake_pod.exit_code == 2, fake_pod.log_path.read_text()
    assert "--spec" in fake_pod.log_path.read_text()
    client.terminate_pod(pod.id)


def test_the_image_runs_the_trainer_and_the_pod_gets_runpods_env(fake_runpod, tmp_path: Path) -> None:
    root = tmp_path / "storage"
    uri = write_job(root, "envjob", steps=2, every=1)
    compute = runpod_compute(fake_runpod.url, fake_runpod.api_key, fast_policy())
    pod = compute.start(
        PodRequest(
            job_id="envjob",
            attempt=1,
            spec_uri=uri,
            gpu_type="NVIDIA A40",
            env={
                "FAKE_TRAINER_ECHO_ENV": "RUNPOD_POD_ID,RUNPOD_API_KEY",
                "FAKE_TRAINER_STEP_SECONDS": "0.05",
            },
        )
    )
    fake_pod = fake_runpod.fake.pods[pod.pod_id]
    assert fake_pod.argv[:3] == ["python", "-m", "brightrun.compute.pod_supervisor"]
    storage = LocalStorage(root)
    # The trainer completed, then the pod removed itself (nobody else terminated it).
    wait_for(lambda: fake_pod.status == "TERMINATED", timeout=60)
    assert storage.exists("jobs/envjob/result.json")
    assert storage.get_bytes("jobs/envjob/echo/RUNPOD_POD_ID").decode() == pod.pod_id
    pod_key = storage.get_bytes("jobs/envjob/echo/RUNPOD_API_KEY").decode()
    assert pod_key == fake_pod.api_key and pod_key != fake_runpod.api_key
    # The pod-scoped key reaches its own pod only.
    scoped = GraphQLRunPodClient(pod_key, base_url=fake_runpod.url, max_attempts=1)
    with pytest.raises(RunPodAuthError):
        scoped.list_pods()
    assert compute.get(pod.pod_id).state == PodState.terminated


def test_a_pod_removes_itself_at_its_deadline(fake_runpod) -> None:
    policy = fast_policy(max_duration_hours=1 / 3600)  # a one-second deadline
    compute = runpod_compute(fake_runpod.url, fake_runpod.api_key, policy, trainer=SLEEPER)
    pod = compute.start(
        PodRequest(job_id="orphan", attempt=1, spec_uri="/x/spec.json", gpu_type="NVIDIA A40")
    )
    terminations_by_us = fake_runpod.fake.count_requests("podTerminate")
    # Nobody polls or terminates: the pod's own supervisor stops the trainer and removes the pod.
    fake_pod = fake_runpod.fake.pods[pod.pod_id]
    wait_for(lambda: fake_pod.status == "TERMINATED", timeout=60)
    assert fake_runpod.fake.count_requests("podTerminate") == terminations_by_us + 1
    assert "pod deadline of 1s reached" in fake_pod.log_path.read_text()
    wait_for(lambda: not fake_pod.alive, timeout=10)
    assert fake_runpod.fake.billing_pods() == []
    assert fake_pod.billed_seconds() < 60


def test_a_create_answered_after_the_timeout_makes_one_pod(fake_runpod, tmp_path: Path) -> None:
    fake_runpod.fake.answer_create_late(3.0)
    compute = runpod_compute(
        fake_runpod.url, fake_runpod.api_key, fast_policy(), trainer=SLEEPER, timeout=1.0
    )
    pod = compute.start(PodRequest(job_id="late", attempt=1, spec_uri="/x/spec.json", gpu_type="NVIDIA A40"))
    pods = fake_runpod.fake.pods_of(pod_name("late", 1))
    assert [p.id for p in pods] == [pod.pod_id]
    assert fake_runpod.fake.count_requests("podFindAndDeployOnDemand") == 1
    compute.terminate(pod.pod_id)
    assert fake_runpod.fake.pods[pod.pod_id].status == "TERMINATED"


def test_termination_is_confirmed_and_waits_out_an_outage(fake_runpod) -> None:
    compute = runpod_compute(fake_runpod.url, fake_runpod.api_key, fast_policy(), trainer=SLEEPER)
    pods = [
        compute.start(PodRequest(job_id=f"t{n}", attempt=1, spec_uri="/x/spec.json", gpu_type="NVIDIA A40"))
        for n in range(2)
    ]
    fake_runpod.fake.fail_for(3600, status=500, operations=["podTerminate"])
    with pytest.raises(PodTerminationError) as info:
        terminate_with_patience(compute, pods[0].pod_id, patience_seconds=0.5, first_delay_seconds=0.1)
    assert info.value.pod_id == pods[0].pod_id and pods[0].pod_id in str(info.value)
    assert fake_runpod.fake.pods[pods[0].pod_id].status == "RUNNING"  # it is still billing: said so

    fake_runpod.fake.fail_for(1.5, status=429)
    for pod in pods:
        terminate_with_patience(compute, pod.pod_id, patience_seconds=60, first_delay_seconds=0.2)
    assert fake_runpod.fake.billing_pods() == []
    state = json.loads(json.dumps(fake_runpod.fake.state()))
    assert all(p["desiredStatus"] == "TERMINATED" for p in state["pods"])
