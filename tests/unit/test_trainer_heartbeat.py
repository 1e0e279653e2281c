"""What the trainer reports through storage: status, metric chunks, events, attempt numbers."""

from __future__ import annotations

import json
from pathlib import Path

from brightrun import layout
from brightrun.protocol import MetricRecord, TrainerFailure, TrainerPhase, TrainerStatus
from brightrun.storage import LocalStorage
from trainer.heartbeat import Reporter, previous_attempts


def test_reporter_writes_status_chunks_events_and_failure(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    assert previous_attempts(storage) == 0
    reporter = Reporter(storage, "job-1", attempt=1, interval=3600)
    reporter.phase(TrainerPhase.training, step=4, total_steps=10)
    assert TrainerStatus.model_validate(storage.get_json(layout.STATUS)).step == 4
    reporter.metric(MetricRecord(step=5, epoch=0.5, loss=1.5))
    reporter.metric(MetricRecord(step=6, epoch=0.6, loss=1.4))
    reporter.flush_metrics()
    reporter.flush_metrics()  # nothing new: no empty chunk
    assert storage.list("metrics/") == [layout.metrics_file(1, 1)]
    lines = storage.get_bytes(layout.metrics_file(1, 1)).decode().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [5, 6]
    reporter.event("resumed", from_step=3, lost_steps=1)
    assert storage.get_json(layout.event_file(1, 1))["payload"] == {"from_step": 3, "lost_steps": 1}
    try:
        raise ValueError("loss is nan")
    except ValueError as exc:
        reporter.failure(exc)
    failure = TrainerFailure.model_validate(storage.get_json(layout.FAILURE))
    assert (failure.phase, failure.error_type, failure.step) == ("training", "ValueError", 4)
    assert "loss is nan" in (failure.traceback or "")
    assert TrainerStatus.model_validate(storage.get_json(layout.STATUS)).phase == TrainerPhase.failed
    assert previous_attempts(storage) == 1


def test_attempt_count_sees_chunks_of_a_process_that_left_no_status(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    storage.put_bytes(layout.metrics_file(3, 2), b"")
    storage.put_bytes(layout.event_file(2, 1), b"{}")
    assert previous_attempts(storage) == 3
