"""Storage key layout: the only channel between orchestrator and trainer (DESIGN.md §4).

The trainer opens a storage rooted at its job prefix (`jobs/<job_id>/`) and uses the
relative names below; the orchestrator uses `JobLayout(job_id)` for full keys.
"""

from __future__ import annotations

from dataclasses import dataclass

SPEC = "spec.json"
DATA_DIR = "data"
STATUS = "status.json"
METRICS_DIR = "metrics"
EVENTS_DIR = "events"  # trainer-side events (resumed, checkpoint_committed...) for the registry
CHECKPOINTS_DIR = "checkpoints"
LATEST = "checkpoints/LATEST"
ADAPTER_DIR = "adapter"
MANIFEST = "MANIFEST.json"
EVAL = "eval.json"
RESULT = "result.json"
FAILURE = "failure.json"
CANCEL = "CANCEL"  # written by the orchestrator: a local trainer stops at the next step


def checkpoint_dir(step: int) -> str:
    return f"{CHECKPOINTS_DIR}/{step:08d}"


def checkpoint_manifest(step: int) -> str:
    return f"{checkpoint_dir(step)}/{MANIFEST}"


def metrics_file(attempt: int, n: int) -> str:
    return f"{METRICS_DIR}/{attempt:03d}-{n:06d}.jsonl"


def event_file(attempt: int, n: int) -> str:
    return f"{EVENTS_DIR}/{attempt:03d}-{n:06d}.json"


@dataclass(frozen=True)
class JobLayout:
    """Full keys of one job's objects, relative to the storage root."""

    job_id: str

    @property
    def prefix(self) -> str:
        return f"jobs/{self.job_id}"

    def key(self, relative: str) -> str:
        return f"{self.prefix}/{relative}"

    @property
    def spec(self) -> str:
        return self.key(SPEC)

    @property
    def data_dir(self) -> str:
        return self.key(DATA_DIR)

    @property
    def status(self) -> str:
        return self.key(STATUS)

    @property
    def latest(self) -> str:
        return self.key(LATEST)

    @property
    def adapter_dir(self) -> str:
        return self.key(ADAPTER_DIR)

    @property
    def eval(self) -> str:
        return self.key(EVAL)

    @property
    def result(self) -> str:
        return self.key(RESULT)

    @property
    def failure(self) -> str:
        return self.key(FAILURE)

    @property
    def cancel(self) -> str:
        return self.key(CANCEL)
