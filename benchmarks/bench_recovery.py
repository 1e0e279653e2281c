"""Spot recovery and monitor cost, against the fake RunPod API (issue 5).

1. Recovery: time from a pod's interruption (SIGKILL) to the replacement pod's first new
   training step, at the default poll interval (target <= 20 s). The interruption lands at
   a random moment of the poll cycle; the fake trainer (tests/fake_runpod/fake_trainer.py)
   starts in well under a second, so the figure is the monitor's own latency.
2. Monitor CPU while waiting: time.process_time() of this process (the monitor alone: the
   fake API runs in its own process) over a wait window (target < 1% of a core).

    .venv/bin/python benchmarks/bench_recovery.py [--trials 3] [--cpu-window 30]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from brightrun import layout  # noqa: E402
from brightrun.spec import ProvisioningPolicy  # noqa: E402
from brightrun.storage import LocalStorage  # noqa: E402
from tasks.monitor import run_job  # noqa: E402
from tests.fake_runpod.helpers import ListRecorder, runpod_compute, write_job  # noqa: E402

API_KEY = "bench-key"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _admin(url: str, knob: str, body: dict | None = None) -> dict:
    if body is None:
        with urllib.request.urlopen(f"{url}/admin/{knob}", timeout=10) as r:
            return json.loads(r.read())
    req = urllib.request.Request(f"{url}/admin/{knob}", data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def _running_pod(url: str, name: str) -> dict | None:
    for pod in _admin(url, "state")["pods"]:
        if pod["name"] == name and pod["desiredStatus"] == "RUNNING" and pod["runtime"]:
            return pod
    return None


def _first_new_step_after(root: Path, job_id: str, since: float) -> float | None:
    metrics = root / "jobs" / job_id / layout.METRICS_DIR
    times = [p.stat().st_mtime for p in metrics.glob("*.jsonl") if p.stat().st_mtime > since]
    return min(times) if times else None


def recovery_trial(url: str, work: Path, n: int, policy: ProvisioningPolicy, rng: random.Random) -> float:
    root = work / f"storage-{n}"
    job_id = f"bench-{n}"
    uri = write_job(root, job_id, steps=400, every=5)
    compute = runpod_compute(url, API_KEY, policy)
    cancel = threading.Event()
    result: dict = {}

    def monitor() -> None:
        result["outcome"] = run_job(
            compute=compute,
            storage=LocalStorage(root),
            job_id=job_id,
            spec_uri=uri,
            policy=policy,
            env={"FAKE_TRAINER_STEP_SECONDS": "0.2"},
            recorder=ListRecorder(),
            cancel=cancel,
        )

    thread = threading.Thread(target=monitor)
    thread.start()
    try:
        deadline = time.time() + 60
        while (pod := _running_pod(url, f"brightrun-{job_id}-a1")) is None and time.time() < deadline:
            time.sleep(0.1)
        assert pod is not None, "first pod never ran"
        time.sleep(2 + rng.uniform(0, policy.poll_interval_seconds))  # a random moment of the poll cycle
        interrupted_at = time.time()
        _admin(url, "interrupt", {"pod_id": pod["id"], "mode": "kill"})
        replaced_at: float | None = None
        while time.time() < interrupted_at + 120:
            if replaced_at is None and _running_pod(url, f"brightrun-{job_id}-a2") is not None:
                replaced_at = time.time()  # the new trainer needs ~0.5 s to import and write a step
            if replaced_at is not None:
                step_at = _first_new_step_after(root, job_id, replaced_at)
                if step_at is not None:
                    return step_at - interrupted_at
            time.sleep(0.02)
        raise AssertionError("no resumed step within 120 s")
    finally:
        cancel.set()
        thread.join(timeout=60)


def cpu_while_waiting(
    url: str, work: Path, policy: ProvisioningPolicy, window: float
) -> tuple[float, float, int]:
    root = work / "storage-cpu"
    uri = write_job(root, "bench-cpu", steps=100000, every=50)
    compute = runpod_compute(url, API_KEY, policy)
    cancel = threading.Event()
    thread = threading.Thread(
        target=run_job,
        kwargs={
            "compute": compute,
            "storage": LocalStorage(root),
            "job_id": "bench-cpu",
            "spec_uri": uri,
            "policy": policy,
            "env": {"FAKE_TRAINER_STEP_SECONDS": "0.5"},
            "recorder": ListRecorder(),
            "cancel": cancel,
        },
    )
    thread.start()
    time.sleep(policy.poll_interval_seconds + 3)  # past the start: provisioning and first polls
    before_requests = _admin(url, "state")["requests"]
    cpu0, wall0 = time.process_time(), time.monotonic()
    time.sleep(window)
    cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    requests = _admin(url, "state")["requests"] - before_requests
    cancel.set()
    thread.join(timeout=60)
    return cpu, wall, requests


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--cpu-window", type=float, default=30.0)
    args = parser.parse_args()

    policy = ProvisioningPolicy(
        gpu_types=["NVIDIA RTX A6000"], capacity="spot", capacity_backoff_seconds=0.0, capacity_rounds=1
    )
    poll, beat = policy.poll_interval_seconds, policy.heartbeat_timeout_seconds
    print(f"poll interval {poll}s, heartbeat timeout {beat}s")
    work = Path(tempfile.mkdtemp(prefix="bench-recovery-"))
    port = _free_port()
    fake = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.fake_runpod",
            "--port",
            str(port),
            "--api-key",
            API_KEY,
            "--workdir",
            str(work / "fake"),
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                _admin(url, "state")
                break
            except OSError:
                time.sleep(0.1)
        rng = random.Random(7)
        times = [recovery_trial(url, work, n, policy, rng) for n in range(args.trials)]
        print(
            f"recovery (interruption -> first new step): "
            f"{', '.join(f'{t:.1f}s' for t in times)}; median {statistics.median(times):.1f}s, "
            f"max {max(times):.1f}s (target <= 20 s)"
        )
        cpu, wall, requests = cpu_while_waiting(url, work, policy, args.cpu_window)
        print(
            f"monitor CPU while waiting: {cpu * 1000:.0f} ms over {wall:.0f} s = "
            f"{100 * cpu / wall:.3f}% of a core (target < 1%); {requests} RunPod API calls in the window"
        )
    finally:
        fake.terminate()
        try:
            fake.wait(timeout=15)
        except subprocess.TimeoutExpired:
            fake.kill()


if __name__ == "__main__":
    main()
