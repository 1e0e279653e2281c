"""Compute backends: where the trainer process runs (DESIGN.md §2, §8).

One small interface; `local` runs the trainer as a subprocess of the orchestrator,
`runpod` rents a pod. A "pod" is whatever runs one trainer attempt. The monitor
(tasks/monitor.py) drives any backend through this interface only.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import StrEnum

from brightrun.errors import BrightrunError


class ComputeError(BrightrunError):
    """The compute provider refused or failed a request; the message says what to do."""


class CapacityError(ComputeError):
    """No machine of the requested kind is available right now (try another GPU type or later)."""


class PodState(StrEnum):
    pending = "pending"  # requested, not running yet
    running = "running"
    exited = "exited"  # the process/container ended (success, failure or interruption)
    terminated = "terminated"  # gone: deleted, or unknown to the provider


@dataclass(frozen=True)
class PodRequest:
    job_id: str
    attempt: int
    spec_uri: str  # URI of the job's spec.json; the trainer runs `python -m trainer --spec URI`
    env: dict[str, str] = field(default_factory=dict)  # storage credentials etc.; never logged
    gpu_type: str | None = None
    spot: bool = False
    bid_per_gpu: float | None = None


@dataclass(frozen=True)
class PodInfo:
    pod_id: str
    job_id: str
    state: PodState
    cost_per_hr: float = 0.0
    uptime_seconds: float = 0.0
    gpu_type: str | None = None
    spot: bool = False
    exit_code: int | None = None


class Compute(ABC):
    name: str

    @abstractmethod
    def start(self, request: PodRequest) -> PodInfo:
        """Start one trainer attempt. Raises on failure; never leaves a pod it cannot name."""

    @abstractmethod
    def get(self, pod_id: str) -> PodInfo:
        """Current state; a pod the provider no longer knows reads as `terminated`."""

    @abstractmethod
    def terminate(self, pod_id: str) -> None:
        """Stop and delete the pod. Idempotent: terminating a gone pod is not an error."""

    @abstractmethod
    def list_pods(self, job_id: str | None = None) -> list[PodInfo]:
        """Pods this backend knows, optionally only those of one job (the reaper uses it)."""
