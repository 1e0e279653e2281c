"""The RunPod client and backend: error classification, redaction, names, start command, states."""

from __future__ import annotations

import shlex
from pathlib import Path

import httpx
import pytest

from brightrun.compute import PodState
from brightrun.compute.runpod import job_id_of, pod_name, pod_state, start_command
from brightrun.compute.runpod_client import (
    NO_CAPACITY,
    GraphQLRunPodClient,
    PodCreate,
    RemotePod,
    RunPodAuthError,
    RunPodCapacityError,
    RunPodError,
    RunPodUnavailableError,
    classify,
    redact,
)


def test_classify() -> None:
    assert isinstance(classify(NO_CAPACITY, "create"), RunPodCapacityError)
    auth = classify("Unauthorized", "create")
    assert isinstance(auth, RunPodAuthError) and "RUNPOD_API_KEY" in str(auth)
    other = classify("Variable '$input' has invalid value at .cloudType", "create")
    assert type(other) is RunPodError


def test_redact_replaces_every_secret_longest_first() -> None:
    assert redact("key abcd1234 and abcd12345678", ["abcd1234", "abcd12345678"]) == "key *** and ***"
    assert redact("a b", ["a"]) == "a b"  # too short to be a secret worth masking


def _client(handler, **kw) -> GraphQLRunPodClient:
    return GraphQLRunPodClient(
        "sekrit-key-123",
        base_url="http://rp.test",
        transport=httpx.MockTransport(handler),
        sleep=lambda s: None,
        **kw,
    )


def test_variables_carry_values_and_the_bearer_key() -> None:
    seen = {}

    def handler(request: httpx.Request) -> httpx.Response:
        import json

        seen["auth"] = request.headers["Authorization"]
        seen["body"] = json.loads(request.content)
        pod = {
            "id": "p1",
            "name": "n",
            "desiredStatus": "RUNNING",
            "costPerHr": 0.4,
            "runtime": None,
            "machine": {"gpuDisplayName": "A40"},
            "env": ['Q=a"b'],
            "imageName": "i",
            "dockerArgs": "x",
        }
        return httpx.Response(200, json={"data": {"podRentInterruptable": pod}})

    value = 'a "b" \\ c\nd'
    pod = _client(handler).create_pod(
        PodCreate(
            name="n", image="i", docker_args="x", gpu_type="A40", env={"Q": value}, spot=True, bid_per_gpu=0.2
        )
    )
    assert seen["auth"] == "Bearer sekrit-key-123"
    assert seen["body"]["variables"]["input"]["env"] == [{"key": "Q", "value": value}]
    assert seen["body"]["variables"]["input"]["bidPerGpu"] == 0.2
    assert value not in seen["body"]["query"]
    assert pod.env_keys == ("Q",) and pod.uptime_seconds is None


def test_401_is_never_retried() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(401, text="Unauthorized")

    with pytest.raises(RunPodAuthError, match="RUNPOD_API_KEY"):
        _client(handler).list_pods()
    assert len(calls) == 1


def test_timeouts_and_5xx_are_retried_then_reported() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        if len(calls) == 1:
            raise httpx.ReadTimeout("slow", request=request)
        return httpx.Response(502)

    with pytest.raises(RunPodUnavailableError, match="after 3 attempts"):
        _client(handler, max_attempts=3).list_pods()
    assert len(calls) == 3


def test_graphql_error_echoing_a_secret_is_redacted() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"errors": [{"message": "bad value hf_supersecret for HF_TOKEN"}]})

    with pytest.raises(RunPodError) as info:
        _client(handler).create_pod(
            PodCreate(name="n", image="i", docker_args="", gpu_type="A40", env={"HF_TOKEN": "hf_supersecret"})
        )
    assert "hf_supersecret" not in str(info.value) and "***" in str(info.value)


def test_missing_key_names_the_variable() -> None:
    with pytest.raises(RunPodAuthError, match="RUNPOD_API_KEY"):
        GraphQLRunPodClient("")


def test_pod_names_round_trip() -> None:
    job = "3fa85f64-5717-4562-b3fc-2c963f66afa6"
    assert pod_name(job, 3) == f"brightrun-{job}-a3"
    assert job_id_of(pod_name(job, 12)) == job
    assert job_id_of("someone-elses-pod") is None
    assert job_id_of("brightrun-job-ax") is None


def test_start_command_runs_the_trainer_under_a_deadline_then_removes_the_pod() -> None:
    uri = "s3://bucket/jobs/it's/spec.json"
    argv = shlex.split(start_command("python -m trainer", uri, 3600))
    assert argv[:2] == ["bash", "-c"]
    script = argv[2]
    inner = shlex.split(script.split(" & ")[0])
    assert inner[:6] == ["timeout", "--signal=TERM", "--kill-after=30", "3600", "python", "-m"]
    assert inner[-2:] == ["--spec", uri]
    assert "runpodctl remove pod" in script


def test_start_command_passes_the_spot_warning_to_the_trainer(tmp_path: Path) -> None:
    """RunPod's stop signal reaches PID 1 (the shell) alone; the trainer must still get it."""
    import os
    import signal
    import subprocess
    import sys
    import time

    marker = tmp_path / "got-sigterm"
    trainer = tmp_path / "trainer.py"
    trainer.write_text(
        "import signal, sys, time\n"
        f"signal.signal(signal.SIGTERM, lambda *a: (open({str(marker)!r}, 'w').close(), sys.exit(0)))\n"
        "print('ready', flush=True)\n"
        "time.sleep(30)\n"
    )
    argv = shlex.split(start_command(f"{sys.executable} {trainer}", "s3://b/spec.json", 60))
    pod = subprocess.Popen(argv, start_new_session=True, stdout=subprocess.PIPE, text=True)
    try:
        assert pod.stdout is not None and pod.stdout.readline().strip() == "ready"
        os.kill(pod.pid, signal.SIGTERM)  # to the shell only, as `docker stop` does
        assert pod.wait(timeout=10) == 0
        time.sleep(0.1)
    finally:
        if pod.poll() is None:
            os.killpg(pod.pid, signal.SIGKILL)
    assert marker.exists()


def _remote(status: str, uptime: float | None) -> RemotePod:
    return RemotePod("p", "n", status, 0.3, uptime, None, None, None, ())


@pytest.mark.parametrize(
    ("status", "uptime", "state"),
    [
        ("RUNNING", 12.0, PodState.running),
        ("RUNNING", None, PodState.pending),
        ("CREATED", None, PodState.pending),
        ("EXITED", None, PodState.exited),
        ("TERMINATED", None, PodState.terminated),
    ],
)
def test_pod_states(status: str, uptime: float | None, state: PodState) -> None:
    assert pod_state(_remote(status, uptime)) == state


def test_gone_pod_is_terminated() -> None:
    assert pod_state(None) == PodState.terminated
