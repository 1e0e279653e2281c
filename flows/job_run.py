"""`JobRun`: one training job's handles, shared by the flow's body (train_adapter.py) and its
dataset stage (train_dataset.py) without either importing the other's module."""

from __future__ import annotations

from dataclasses import dataclass

from brightrun.layout import JobLayout
from brightrun.resources import Resources
from brightrun.spec import JobSpec
from brightrun.storage import Storage
from flows.params import ResolvedRequest
from tasks.adapters.fetch import LocalAdapter
from tasks.job import JobRecorder


@dataclass
class JobRun:
    """One job's handles, passed as one thing through the flow's body: the resources built at
    the boundary, the validated request, the job's spec (its dataset hash is filled in by the
    dataset stage), its storage and its recorder."""

    resources: Resources
    resolved: ResolvedRequest
    spec: JobSpec
    storage: Storage
    recorder: JobRecorder
    init_source: LocalAdapter | None = None  # the adapter to continue from, verified, not yet staged

    @property
    def job_id(self) -> str:
        return self.spec.job_id

    @property
    def layout(self) -> JobLayout:
        return JobLayout(self.spec.job_id)
