"""The reaper's decision: which pods no job should hold."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

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


def test_a_pod_stuck_before_it_started_is_reaped_after_the_startup_deadline() -> None:
    """Uptime reads 0 for a pod with no runtime: its age is the provider's state time."""
    now = 10_000.0
    stuck = PodInfo(pod_id="old", job_id="j", state=PodState.pending, uptime_seconds=0, state_since=now - 700)
    fresh = PodInfo(pod_id="new", job_id="k", state=PodState.pending, uptime_seconds=0, state_since=now - 60)
    exited = PodInfo(pod_id="ex", job_id="m", state=PodState.exited, uptime_seconds=0, state_since=now - 900)
    statuses = {"j": "preprocessing", "k": "preprocessing", "m": "training"}
    decisions = pods_to_reap([stuck, fresh, exited], statuses.get, {}.get, startup_grace_seconds=600, now=now)
    assert {d.pod.pod_id: d.reason for d in decisions}.keys() == {"old", "ex"}
    assert "pending (not running) for 700s" in decisions[0].reason


def test_without_a_provider_time_the_first_sighting_dates_the_pod() -> None:
    pod_ = PodInfo(pod_id="p", job_id="j", state=PodState.pending, uptime_seconds=0)
    seen: dict[str, float] = {"gone": 1.0}
    lookups = ({"j": "preprocessing"}.get, {}.get)
    assert pods_to_reap([pod_], *lookups, startup_grace_seconds=600, first_seen=seen, now=1000.0) == []
    assert seen == {"p": 1000.0}  # a pod no longer listed is forgotten
    assert pods_to_reap([pod_], *lookups, startup_grace_seconds=600, first_seen=seen, now=1500.0) == []
    (decision,) = pods_to_reap([pod_], *lookups, startup_grace_seconds=600, first_seen=seen, now=1601.0)
    assert decision.pod.pod_id == "p"


def test_a_read_failure_never_terminates_a_pod() -> None:
    def registry_down(job_id: str) -> str | None:
        raise ConnectionError("registry unreachable")

    def storage_down(job_id: str) -> float | None:
        raise OSError("storage unreachable")

    pods = [pod("a"), pod("b", PodState.pending, 0)]
    assert pods_to_reap(pods, registry_down, {}.get, now=1e12) == []
    assert pods_to_reap([pod("a")], {"a": "training"}.get, storage_down) == []
    # the same pods with readable answers are reaped: the failure alone spared them
    assert len(pods_to_reap(pods, {"a": "failed", "b": "completed"}.get, {}.get)) == 2


def test_a_job_unknown_to_the_registry_is_reaped_whatever_its_heartbeat() -> None:
    (decision,) = pods_to_reap([pod("ghost", uptime=5)], {}.get, {"ghost": 1.0}.get)
    assert "unknown to the registry" in decision.reason


def test_a_heartbeat_storage_error_is_not_an_absent_heartbeat(tmp_path) -> None:
    class Broken(LocalStorage):
        def get_bytes(self, key: str, *, expected_sha256: str | None = None) -> bytes:
            raise OSError("connection reset")

    with pytest.raises(OSError):
        storage_heartbeat_age(Broken(tmp_path))("j")
