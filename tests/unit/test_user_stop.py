"""Ctrl-C at the terminal (tasks/monitor/user_stop.py): the monitor ends the attempt as
`stopped`, the pod is terminated, and the job stays resumable."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from brightrun import layout
from brightrun.storage import LocalStorage
from tasks.job import resume_refusal
from tasks.monitor import FailureKind, OutcomeKind
from tasks.monitor.user_stop import clear_user_stop, request_user_stop
from tests.unit.test_monitor import JOB, MemoryCompute, beat, policy, run


@pytest.fixture(autouse=True)
def _no_stop_left() -> Iterator[None]:
    clear_user_stop()
    yield
    clear_user_stop()


def test_a_stop_mid_training_terminates_the_pod_and_ends_as_stopped(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    compute: MemoryCompute

    def on_start(attempt: int) -> None:
        beat(storage, attempt, step=3)
        storage.put_bytes(layout.JobLayout(JOB).latest, b"2")
        request_user_stop()  # as the CLI's SIGINT handler does, while the pod runs

    compute = MemoryCompute(storage, on_start)
    outcome, rec = run(compute, storage, policy())
    assert outcome.kind == OutcomeKind.failed and outcome.failure_kind == FailureKind.stopped
    assert outcome.reason == "stopped by the user at step 3 (last checkpoint: step 2)"
    assert compute.terminated and compute.terminated[0] == "p1"
    assert len(compute.pods) == 1  # no replacement attempt
    (stop,) = [e for e in rec.of("interrupted") if e.get("source") == "user"]
    assert stop["reason"] == "stopped by the user" and stop["last_checkpoint"] == 2


def test_a_stop_before_any_pod_starts_none(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    compute = MemoryCompute(storage, lambda attempt: None)
    request_user_stop()
    outcome, _ = run(compute, storage, policy())
    assert outcome.failure_kind == FailureKind.stopped and compute.pods == {}


def test_resume_accepts_a_job_stopped_by_the_user_but_not_a_training_failure() -> None:
    job = SimpleNamespace(
        id="j", status="failed", error_message="stopped by the user", metadata={"failure_kind": "stopped"}
    )
    assert resume_refusal(job) is None
    job.metadata = {"failure_kind": "training"}
    assert resume_refusal(job) is not None


def test_the_monitors_poll_wait_wakes_on_a_ctrl_c() -> None:
    """A Ctrl-C does not wait out the poll interval (10 s on RunPod) before the stop begins."""
    import threading
    import time

    from tasks.monitor.user_stop import wait_for_user_stop

    assert wait_for_user_stop(0.05) is False
    threading.Timer(0.2, request_user_stop).start()
    started = time.monotonic()
    assert wait_for_user_stop(30) is True
    assert time.monotonic() - started < 10
