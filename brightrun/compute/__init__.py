"""Compute backends: where the trainer process runs (DESIGN.md §2, §8).

One small interface; `local` runs the trainer as a subprocess of the orchestrator,
`runpod` rents a pod. A "pod" is whatever runs one trainer attempt. The monitor
(tasks/monitor.py) drives any backend through this interface only.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from brightrun.errors import BrightrunError


class ComputeError(BrightrunError):
    """The compute provider refused or failed a request; the message says what to do."""


log = logging.getLogger(__name__)


class CapacityError(ComputeError):
    """No machine of the requested kind is available right now (try another GPU type or later)."""


class PodTerminationError(ComputeError):
    """The provider did not confirm that a pod is gone (the API failed, or the pod still reads
    alive). Record `pod_termination_failed` with `pod_id`, never `pod_terminated`; the reaper
    retries it."""

    def __init__(self, pod_id: str, message: str) -> None:
        self.pod_id = pod_id
        super().__init__(message)


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
    # Epoch seconds since the pod is in its current state (for a pod that never ran: its
    # creation); None when the provider does not say. The reaper's clock for stuck pods.
    state_since: float | None = None
    # Other pods found under this attempt's name after an ambiguous create, terminated at once
    # by `start`; the caller records them (`duplicate_pod_terminated`).
    duplicates_terminated: tuple[str, ...] = ()
    # The registry that started the pod (issue 20); None: untagged.
    registry_id: str | None = None


class Compute(ABC):
    name: str
    # True where other registries' pods may be listed too (one RunPod account): the reaper
    # then judges only pods carrying its own registry's id.
    shared_account: bool = False

    @abstractmethod
    def start(self, request: PodRequest) -> PodInfo:
        """Start one trainer attempt. Raises on failure; never leaves a pod it cannot name."""

    @abstractmethod
    def get(self, pod_id: str) -> PodInfo:
        """Current state; a pod the provider no longer knows reads as `terminated`."""

    @abstractmethod
    def terminate(self, pod_id: str) -> None:
        """Stop and delete the pod, and confirm it is gone; raises `PodTerminationError` when the
        provider cannot confirm it. Idempotent: terminating a gone pod is not an error."""

    @abstractmethod
    def list_pods(self, job_id: str | None = None) -> list[PodInfo]:
        """Pods this backend knows, optionally only those of one job (the reaper uses it)."""


def terminate_with_patience(
    compute: Compute,
    pod_id: str,
    *,
    patience_seconds: float = 600.0,
    first_delay_seconds: float = 2.0,
    max_delay_seconds: float = 60.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """Terminate a pod, retrying with exponential backoff while the provider fails, for at most
    `patience_seconds`; returns the number of tries. Raises `PodTerminationError` naming the pod
    when every try failed: the caller records `pod_termination_failed` and the reaper takes over.
    An API outage of a few minutes is waited out instead of leaving a pod billing."""
    give_up = clock() + patience_seconds
    delay = first_delay_seconds
    tries = 0
    while True:
        tries += 1
        try:
            compute.terminate(pod_id)
            return tries
        except ComputeError as exc:
            last = exc
        if clock() + delay > give_up:
            raise PodTerminationError(
                pod_id,
                f"pod {pod_id} ({compute.name}) could not be terminated after {tries} tries over "
                f"{patience_seconds:.0f}s: {last}. It may still be billing: `brightrun reap` (or the "
                "scheduled reap_pods flow) terminates it once the provider answers.",
            ) from last
        log.warning("terminating pod %s failed (try %d): %s; again in %.0fs", pod_id, tries, last, delay)
        sleep(delay)
        delay = min(delay * 2, max_delay_seconds)
