"""The RunPod client and backend: error classification, redaction, names, start command, states."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
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
    RunPodCreateUncertain,
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


def _image_argv(docker_args: str) -> list[str]:
    """What RunPod runs for a pod of the trainer image: its ENTRYPOINT + the start command."""
    from tests.fake_runpod.server import TRAINER_DOCKERFILE, parse_image

    return parse_image(TRAINER_DOCKERFILE).argv(docker_args)


def test_start_command_is_the_arguments_of_the_images_entrypoint() -> None:
    uri = "s3://bucket/jobs/it's/spec.json"
    argv = _image_argv(start_command("python -m trainer", uri, 3600))
    assert argv == [
        "python", "-m", "brightrun.compute.pod_supervisor",
        "--deadline-seconds", "3600", "--grace-seconds", "30",
        "--", "python", "-m", "trainer", "--spec", uri,
    ]  # fmt: skip


def _run_pod(tmp_path: Path, trainer_body: str, deadline: int, grace: int = 30) -> subprocess.Popen[str]:
    """The image's program as a container runtime runs it: its own session, no RunPod env."""
    trainer = tmp_path / "trainer.py"
    trainer.write_text(trainer_body)
    argv = _image_argv(start_command(f"{sys.executable} {trainer}", "s3://b/spec.json", deadline, grace))
    argv[0] = sys.executable
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNPOD_")}
    return subprocess.Popen(argv, start_new_session=True, stdout=subprocess.PIPE, text=True, env=env)


def test_the_pod_passes_the_spot_warning_to_the_trainer(tmp_path: Path) -> None:
    """RunPod's stop signal reaches PID 1 (the supervisor) alone; the trainer must still get it."""
    marker = tmp_path / "got-sigterm"
    pod = _run_pod(
        tmp_path,
        "import signal, sys, time\n"
        f"signal.signal(signal.SIGTERM, lambda *a: (open({str(marker)!r}, 'w').close(), sys.exit(0)))\n"
        "print('ready', flush=True)\n"
        "time.sleep(30)\n",
        deadline=60,
    )
    try:
        assert pod.stdout is not None and pod.stdout.readline().strip() == "ready"
        os.kill(pod.pid, signal.SIGTERM)  # to PID 1 only, as `docker stop` does
        assert pod.wait(timeout=20) == 0
    finally:
        if pod.poll() is None:
            os.killpg(pod.pid, signal.SIGKILL)
    assert marker.exists()


def test_the_pod_stops_a_trainer_that_ignores_its_deadline(tmp_path: Path) -> None:
    pod = _run_pod(
        tmp_path,
        "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ready', flush=True)\ntime.sleep(60)\n",
        deadline=1,
        grace=1,
    )
    try:
        assert pod.stdout is not None and pod.stdout.readline().strip() == "ready"
        assert pod.wait(timeout=30) == 128 + signal.SIGKILL  # SIGTERM ignored: killed after the grace
    finally:
        if pod.poll() is None:
            os.killpg(pod.pid, signal.SIGKILL)


def test_self_destruct_outside_a_pod_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    from brightrun.compute.self_destruct import remove_this_pod

    monkeypatch.delenv("RUNPOD_POD_ID", raising=False)
    assert remove_this_pod() is False


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


def test_a_create_that_may_have_reached_runpod_is_not_retried() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        raise httpx.ReadTimeout("no answer in time", request=request)

    with pytest.raises(RunPodCreateUncertain, match="may exist"):
        _client(handler).create_pod(PodCreate(name="n", image="i", docker_args="", gpu_type="A40"))
    assert len(calls) == 1


def test_a_create_refused_before_connecting_is_retried() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(RunPodUnavailableError) as info:
        _client(handler, max_attempts=3).create_pod(
            PodCreate(name="n", image="i", docker_args="", gpu_type="A40")
        )
    assert not isinstance(info.value, RunPodCreateUncertain) and len(calls) == 3


class MemoryApi:
    """A `RunPodApi` in memory: `lost_answers` creations make the pod but raise as a timeout."""

    def __init__(self, lost_answers: int = 0, *, made_on_loss: bool = True) -> None:
        self.pods: dict[str, RemotePod] = {}
        self.lost_answers, self.made_on_loss = lost_answers, made_on_loss
        self.creates = 0
        self.terminate_fails = 0
        self.stays_alive = False

    def _make(self, name: str) -> RemotePod:
        pod = RemotePod(f"p{len(self.pods) + 1}", name, "RUNNING", 0.4, 1.0, "A40", "i", "", ())
        self.pods[pod.id] = pod
        return pod

    def create_pod(self, request: PodCreate) -> RemotePod:
        self.creates += 1
        if self.lost_answers:
            self.lost_answers -= 1
            if self.made_on_loss:
                self._make(request.name)
            raise RunPodCreateUncertain("read timeout; the pod may exist")
        return self._make(request.name)

    def get_pod(self, pod_id: str) -> RemotePod | None:
        return self.pods.get(pod_id)

    def list_pods(self) -> list[RemotePod]:
        return list(self.pods.values())

    def stop_pod(self, pod_id: str) -> None:
        raise NotImplementedError

    def terminate_pod(self, pod_id: str) -> None:
        if self.terminate_fails:
            self.terminate_fails -= 1
            raise RunPodUnavailableError("RunPod pod termination: HTTP 500 after 5 attempts")
        if not self.stays_alive:
            self.pods.pop(pod_id, None)

    def gpu_prices(self, gpu_count: int = 1) -> list:
        return []


def _start(api: MemoryApi):
    from brightrun.compute import PodRequest
    from brightrun.compute.runpod import RunPodCompute

    compute = RunPodCompute(api)  # type: ignore[arg-type]
    return compute, compute.start(
        PodRequest(job_id="j", attempt=2, spec_uri="s3://b/spec.json", gpu_type="A40")
    )


def test_a_create_answered_late_is_found_by_name_not_made_twice() -> None:
    api = MemoryApi(lost_answers=1)
    _, pod = _start(api)
    assert api.creates == 1 and list(api.pods) == [pod.pod_id]
    assert api.pods[pod.pod_id].name == pod_name("j", 2) and pod.duplicates_terminated == ()


def test_a_create_that_made_nothing_is_tried_again() -> None:
    api = MemoryApi(lost_answers=1, made_on_loss=False)
    _, pod = _start(api)
    assert api.creates == 2 and list(api.pods) == [pod.pod_id]


def test_a_second_pod_of_the_same_attempt_is_terminated_and_reported() -> None:
    api = MemoryApi()
    api._make(pod_name("j", 2))
    api._make(pod_name("j", 2))  # two pods of one attempt (an earlier lost create, seen late)
    api.lost_answers, api.made_on_loss = 1, False
    _, pod = _start(api)
    assert pod.pod_id == "p1" and pod.duplicates_terminated == ("p2",)
    assert list(api.pods) == ["p1"]


def test_terminate_is_confirmed_by_reading_the_pod_back() -> None:
    from brightrun.compute import PodTerminationError

    api = MemoryApi()
    compute, pod = _start(api)
    api.stays_alive = True
    with pytest.raises(PodTerminationError, match=f"{pod.pod_id}: still RUNNING") as info:
        compute.terminate(pod.pod_id)
    assert info.value.pod_id == pod.pod_id
    api.terminate_fails = 1
    with pytest.raises(PodTerminationError, match="termination not confirmed"):
        compute.terminate(pod.pod_id)
    api.stays_alive = False
    compute.terminate(pod.pod_id)
    compute.terminate(pod.pod_id)  # a gone pod: idempotent
    assert api.pods == {}


def test_terminate_with_patience_waits_out_an_outage_then_gives_up_naming_the_pod() -> None:
    from brightrun.compute import PodTerminationError, terminate_with_patience

    api = MemoryApi()
    compute, pod = _start(api)
    now = [0.0]
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds

    api.terminate_fails = 3
    tries = terminate_with_patience(
        compute, pod.pod_id, patience_seconds=60, sleep=sleep, clock=lambda: now[0]
    )
    assert tries == 4 and sleeps == [2.0, 4.0, 8.0] and api.pods == {}

    _, other = _start(api)
    api.terminate_fails = 1000
    with pytest.raises(PodTerminationError, match=f"pod {other.pod_id} .*could not be terminated") as info:
        terminate_with_patience(compute, other.pod_id, patience_seconds=60, sleep=sleep, clock=lambda: now[0])
    assert info.value.pod_id == other.pod_id and "brightrun reap" in str(info.value)
    api.terminate_fails = 0


def test_status_change_time_is_parsed() -> None:
    from brightrun.compute.runpod_client import parse_status_change

    assert parse_status_change(
        "Rented by User: Sun Nov 29 2026 20:22:56 GMT+0000 (Coordinated Universal Time)"
    ) == (1795983776.0)
    assert parse_status_change("Exited by Runpod: Fri Jan 02 2026 01:00:00 GMT+0100 (CET)") == 1767312000.0
    assert parse_status_change(None) is None and parse_status_change("something else") is None


def test_the_fake_reads_an_image_as_a_container_runtime_does(tmp_path: Path) -> None:
    from tests.fake_runpod.server import parse_image

    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(
        'FROM base AS build\nENTRYPOINT ["build-only"]\n'
        'FROM runtime\nCMD ["python", "-m", "x"]\n'
        'ENTRYPOINT ["tini", \\\n  "--"]\nCMD ["serve", "--port", "1"]\n'
    )
    image = parse_image(dockerfile)
    assert image.argv("") == ["tini", "--", "serve", "--port", "1"]  # no start command: CMD
    assert image.argv("bash -c 'echo hi'") == ["tini", "--", "bash", "-c", "echo hi"]  # it replaces CMD
    dockerfile.write_text("FROM x\nENTRYPOINT python -m trainer\n")
    assert parse_image(dockerfile).argv("--spec s") == ["/bin/sh", "-c", "python -m trainer"]  # shell form
