"""The reaper's decision: which pods no job should hold."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from brightrun.compute import PodInfo, PodState
from brightrun.protocol import TrainerPhase, TrainerStatus
from brightrun.storage import LocalStorage
from tasks.reaper import pods_to_reap, storage_heartbeat_age


def pod(job: str, state: PodState = PodState.running, uptime: float = 3600.0) -> PodInfo:
    return PodInfo(pod_id=f"pod-{job}", job_id=job, state=state, uptime_seconds=uptime)


def test_reaps_terminal_stale_and_silent_pods_only() -> None:
    statuses = {
        "done": "completed",
        "cancelled": "cancelled",
        "live": "training",
        "stale": "training",
        "young": "training",
        "exited": "failed",
    }
    ages = {"done": 5.0, "live": 10.0, "stale": 2000.0, "cancelled": None, "young": None, "exited": 3.0}
    pods = [
        pod("done"),
        pod("cancelled"),
        pod("live"),
        pod("stale"),
        pod("young", uptime=60),
        pod("exited", PodState.exited, 0),
        pod("ghost"),
        pod("gone", PodState.terminated),
    ]
    decisions = pods_to_reap(pods, statuses.get, ages.get, stale_after_seconds=900, startup_grace_seconds=600)
    reasons = {d.pod.job_id: d.reason for d in decisions}
    assert set(reasons) == {"done", "cancelled", "stale", "exited", "ghost"}
    assert "completed" in reasons["done"]
    assert "silent for 2000s" in reasons["stale"]
    assert "unknown to the registry" in reasons["ghost"]


def test_new_pod_of_a_running_job_is_spared_while_old_status_is_stale() -> None:
    decisions = pods_to_reap([pod("j", uptime=30)], {"j": "training"}.get, {"j": 5000.0}.get)
    assert decisions == []


def test_heartbeat_age_from_storage(tmp_path) -> None:
    storage = LocalStorage(tmp_path)
    then = datetime(2026, 1, 1, tzinfo=UTC)
    status = TrainerStatus(phase=TrainerPhase.training, attempt=1, updated_at=then)
    storage.put_bytes("jobs/j/status.json", status.model_dump_json().encode())
    age = storage_heartbeat_age(storage, now=lambda: then + timedelta(seconds=90))
    assert age("j") == 90.0
    assert age("other") is None
