"""The monitor stage: run one training job to an outcome on any compute backend (DESIGN.md §3, §4).

Three parts, as SkyPilot separates its recovery strategy from its controller:

- `AttemptRunner` (attempt.py) runs one attempt: start the pod, watch pod and heartbeat,
  ingest the trainer's events and metrics, decide how the attempt ended;
- `RecoveryPolicy` (recovery.py) decides what follows an interruption;
- `JobMonitor` / `run_job` (runner.py) runs attempts until the job ends and cleans up.

The job's result is what the trainer committed to storage, never whether the provider's
API answered the last poll; registry writes that fail are queued, never fatal
(recording.py); cost is Σ billed time x costPerHr over every pod the job ever had, each
counted once (ledger.py).
"""

from __future__ import annotations

from tasks.monitor.attempt import AttemptEnd, AttemptRunner, CancelCheck, EndKind, _read_status
from tasks.monitor.ledger import CostLedger, PodBill
from tasks.monitor.outcome import FailureKind, Outcome, OutcomeKind
from tasks.monitor.recording import (
    HistorySource,
    JobHistory,
    MonitorRecorder,
    NullRecorder,
    Outbox,
    TrainerLog,
)
from tasks.monitor.recovery import RecoveryPolicy
from tasks.monitor.runner import JobMonitor, run_job

__all__ = [
    "AttemptEnd",
    "AttemptRunner",
    "CancelCheck",
    "CostLedger",
    "EndKind",
    "FailureKind",
    "HistorySource",
    "JobHistory",
    "JobMonitor",
    "MonitorRecorder",
    "NullRecorder",
    "Outbox",
    "Outcome",
    "OutcomeKind",
    "PodBill",
    "RecoveryPolicy",
    "TrainerLog",
    "_read_status",
    "run_job",
]
