"""Helpers for tests that run jobs against the fake RunPod: a job in local storage, a recorder.

The fake's failure knobs (HTTP 500/429 for N seconds, slow answers, a create answered after
the client's timeout, pods stuck in CREATED, a trainer that never heartbeats, no capacity on
some or all GPU types, billing per pod) are listed in tests/fake_runpod/server.py's docstring;
`fake_runpod.fake.<knob>(...)` in a test, `POST /admin/<knob>` from outside. `runpod_compute`
gives a client with short timeouts and backoff so a test's outage is seconds, not minutes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from brightrun import layout
from brightrun.compute.runpod import RunPodCompute
from brightrun.compute.runpod_client import GraphQLRunPodClient
from brightrun.protocol import MetricRecord, TrainerStatus
from brightrun.spec import JobSpec, ProvisioningPolicy
from brightrun.storage import LocalStorage

FAKE_TRAINER = "python -m tests.fake_runpod.fake_trainer"


@dataclass
class ListRecorder:
    """A `MonitorRecorder` that keeps everything (thread-safe: tests read it while the monitor runs)."""

    events: list[tuple[str, int, dict[str, Any]]] = field(default_factory=list)
    statuses: list[TrainerStatus] = field(default_factory=list)
    metric_records: list[MetricRecord] = field(default_factory=list)
    costs: list[tuple[float, float]] = field(default_factory=list)
    retry_counts: list[int] = field(default_factory=list)
    keys: set[str] = field(default_factory=set)
    fail_on: str | None = None  # raise when this event type is recorded (an orchestrator crash)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def event(self, type: str, attempt: int, payload: dict[str, Any], key: str | None = None) -> None:
        with self._lock:
            if key is not None and key in self.keys:
                return  # as the registry does: one record per key
            if key is not None:
                self.keys.add(key)
            self.events.append((type, attempt, payload))
        if type == self.fail_on:
            raise RuntimeError(f"orchestrator crashed on {type}")

    def status(self, status: TrainerStatus) -> None:
        with self._lock:
            self.statuses.append(status)

    def metrics(self, records: list[MetricRecord], key: str | None = None) -> None:
        with self._lock:
            self.metric_records.extend(records)

    def cost(self, actual_cost_usd: float, gpu_hours: float) -> None:
        with self._lock:
            self.costs.append((actual_cost_usd, gpu_hours))

    def retries(self, count: int) -> None:
        with self._lock:
            self.retry_counts.append(count)

    def types(self) -> list[str]:
        with self._lock:
            return [t for t, _, _ in self.events]

    def of(self, type_: str) -> list[dict[str, Any]]:
        with self._lock:
            return [p for t, _, p in self.events if t == type_]


def fast_policy(**overrides: Any) -> ProvisioningPolicy:
    values: dict[str, Any] = {
        "gpu_types": ["NVIDIA RTX A6000", "NVIDIA A40", "NVIDIA L40S"],
        "poll_interval_seconds": 0.3,
        "heartbeat_timeout_seconds": 4.0,
        "startup_timeout_seconds": 60.0,
        "capacity_backoff_seconds": 0.0,
        "capacity_rounds": 1,
        "max_restarts": 5,
    }
    values.update(overrides)
    return ProvisioningPolicy(**values)


def write_job(storage_root: Path, job_id: str, *, steps: int = 10, every: int = 2, **spec: Any) -> str:
    """A job whose spec the fake trainer reads; returns the spec URI."""
    storage = LocalStorage(storage_root)
    job = JobSpec(
        job_id=job_id,
        base_model="tiny",
        training={"max_steps": steps, "warmup_steps": 0},
        checkpoint={"every_steps": every},
        **spec,
    )
    storage.put_bytes(layout.JobLayout(job_id).spec, job.model_dump_json().encode())
    return storage.uri(layout.JobLayout(job_id).spec)


def runpod_compute(
    url: str,
    api_key: str,
    policy: ProvisioningPolicy,
    trainer: str = FAKE_TRAINER,
    *,
    timeout: float = 30.0,
    max_attempts: int = 3,
    backoff_seconds: float = 0.05,
    registry_id: str | None = None,
) -> RunPodCompute:
    """The RunPod backend on the fake; pods run the image's ENTRYPOINT (the pod supervisor) with
    `trainer` as the trainer command (the fast fake trainer unless told otherwise)."""
    client = GraphQLRunPodClient(
        api_key, base_url=url, backoff_seconds=backoff_seconds, max_attempts=max_attempts, timeout=timeout
    )
    return RunPodCompute(client, policy, trainer_command=trainer, registry_id=registry_id)


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")
