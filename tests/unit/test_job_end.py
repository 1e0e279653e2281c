"""`end_pods`: the one end of a job (the flow, its cancellation hook, `brightrun jobs cancel`)."""

from __future__ import annotations

import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from brightrun.compute import ComputeError, PodInfo, PodState
from brightrun.layout import JobLayout
from brightrun.registry import open_registry_url
from brightrun.registry import repository as repo
from brightrun.settings import Settings
from brightrun.spec import ProvisioningPolicy
from brightrun.storage import open_storage
from tasks.job import end_pods, finish_cancel


class Pods:
    """A provider holding the job's pods; `refuse` names pods whose termination it never confirms."""

    name = "fake"

    def __init__(self, job_id: str, refuse: set[str]) -> None:
        self.pods = {
            "p-live": PodInfo("p-live", job_id, PodState.running),
            "p-stuck": PodInfo("p-stuck", job_id, PodState.running),
            "p-gone": PodInfo("p-gone", job_id, PodState.terminated),
        }
        self.refuse = refuse
        self.terminate_calls: list[str] = []

    def list_pods(self, job_id: str) -> list[PodInfo]:
        return [p for p in self.pods.values() if p.job_id == job_id]

    def terminate(self, pod_id: str) -> None:
        self.terminate_calls.append(pod_id)
        if pod_id in self.refuse:
            raise ComputeError(f"{pod_id}: the provider did not answer")
        self.pods[pod_id] = PodInfo(pod_id, self.pods[pod_id].job_id, PodState.terminated)


def _resources(tmp_path: Path, compute: Pods, **settings: Any) -> Any:
    engine = open_registry_url(f"sqlite:///{tmp_path / 'registry.db'}")
    storage = open_storage(str(tmp_path / "storage"))
    chosen: list[Any] = []

    def compute_for(backend: Any = None, policy: Any = None) -> Pods:
        chosen.append((backend, policy))
        return compute

    return SimpleNamespace(
        registry=engine,
        settings=Settings(home=tmp_path, **settings),
        compute=compute_for,
        job_storage=lambda job: storage,
        storage=storage,
        chosen=chosen,
    )


def test_end_pods_terminates_the_live_pods_and_names_the_unconfirmed_one(tmp_path: Path) -> None:
    job_id = str(uuid.uuid4())
    compute = Pods(job_id, refuse={"p-stuck"})
    resources = _resources(tmp_path, compute, pod_termination_patience_seconds=0)
    repo.create_job(resources.registry, job_id=job_id, job_name="j", base_model="m")

    ended = end_pods(resources, job_id, "runpod", reason="failed", cancel_in=resources.storage)

    assert (ended.terminated, ended.unterminated) == (["p-live"], ["p-stuck"])
    assert "p-gone" not in compute.terminate_calls  # a terminated pod is not asked again
    assert resources.storage.exists(JobLayout(job_id).cancel)
    events = {e.type: e.payload for e in repo.list_events(resources.registry, job_id)}
    assert events["pod_terminated"] == {"pods": ["p-live"], "reason": "failed"}
    assert events["pod_termination_failed"] == {"pods": ["p-stuck"], "reason": "failed"}


def test_the_patience_is_the_setting_bounded_by_the_jobs_outage_patience(
    tmp_path: Path, monkeypatch: Any
) -> None:
    import brightrun.compute

    job_id = str(uuid.uuid4())
    resources = _resources(tmp_path, Pods(job_id, refuse=set()), pod_termination_patience_seconds=300)
    repo.create_job(resources.registry, job_id=job_id, job_name="j", base_model="m")
    patience: list[float] = []

    def terminate(compute: Any, pod_id: str, *, patience_seconds: float) -> int:
        patience.append(patience_seconds)  # the pods stay live, so each call sees both again
        return 1

    monkeypatch.setattr(brightrun.compute, "terminate_with_patience", terminate)
    end_pods(resources, job_id, "runpod", reason="cancelled")
    policy = ProvisioningPolicy(api_outage_patience_seconds=45)
    end_pods(resources, job_id, "runpod", reason="cancelled", policy=policy)
    assert patience == [300.0, 300.0, 45.0, 45.0]
    assert resources.chosen == [("runpod", None), ("runpod", policy)]
    assert not resources.storage.exists(JobLayout(job_id).cancel)  # asked for no marker


def test_finish_cancel_ends_the_pods_and_cancels_the_job(tmp_path: Path) -> None:
    job_id = str(uuid.uuid4())
    resources = _resources(tmp_path, Pods(job_id, refuse={"p-stuck"}), pod_termination_patience_seconds=0)
    job = repo.create_job(resources.registry, job_id=job_id, job_name="j", base_model="m")

    finish_cancel(resources, job)

    row = repo.get_job(resources.registry, job_id)
    assert row.status == "cancelled"
    assert row.error_message == "cancelled; pods p-stuck not confirmed terminated"
    assert resources.storage.exists(JobLayout(job_id).cancel)
