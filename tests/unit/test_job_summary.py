"""The end of a job published (tasks/reporting/job_summary.py), on SQLite and local storage:
`summary.md` and `loss_curve.svg` beside the adapter, and the sink's last words."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from brightrun.layout import JobLayout
from brightrun.registry import open_registry_url
from brightrun.registry import repository as repo
from brightrun.storage import LocalStorage, ObjectInfo, StorageError
from tasks.job import JobRecorder
from tasks.notify import WebhookNotifier
from tasks.reporting.job_summary import LOSS_CURVE, SUMMARY, publish_job_summary
from tasks.reporting.prefect_artifacts import RunReporter
from tasks.reporting.progress import ProgressView
from tasks.reporting.summary import RunSummary


class RecordingSink:
    def __init__(self) -> None:
        self.finished: list[RunSummary] = []

    def on_progress(self, view: ProgressView) -> None:
        pass

    def on_finish(self, summary: RunSummary) -> None:
        self.finished.append(summary)


class NoSummaryStorage(LocalStorage):
    """Storage that refuses `summary.md` (a bucket gone read-only at the very end)."""

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        if key.endswith(SUMMARY):
            raise StorageError(f"{key}: access denied")
        return super().put_bytes(key, data)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    eng = open_registry_url(f"sqlite:///{tmp_path / 'registry.db'}")
    yield eng
    eng.dispose()


def _recorder(engine: Engine, storage: LocalStorage) -> tuple[JobRecorder, RecordingSink]:
    job = repo.create_job(engine, job_name="j", base_model="org/tiny")
    repo.add_metrics(
        engine,
        job.id,
        [
            {"step": 0, "eval_loss": 3.0, "attempt": 1},
            {"step": 1, "loss": 2.5, "attempt": 1},
            {"step": 2, "loss": 2.0, "eval_loss": 2.2, "attempt": 1},
        ],
    )
    storage.put_json(JobLayout(str(job.id)).eval, {"eval_loss": 2.2, "perplexity": 9.03})
    sink = RecordingSink()
    recorder = JobRecorder(
        engine=engine,
        job_id=str(job.id),
        notifier=WebhookNotifier(None, None),
        reporter=RunReporter(str(job.id), enabled=False, sink=sink),
    )
    return recorder, sink


def test_the_summary_and_loss_curve_are_stored_and_the_sink_told(engine: Engine, tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "store")
    recorder, sink = _recorder(engine, storage)
    markdown = publish_job_summary(
        recorder, storage, base_model="org/tiny", dataset="sample", status="completed", error_message=None
    )
    layout = JobLayout(recorder.job_id)
    assert storage.get_bytes(layout.key(SUMMARY)).decode() == markdown
    assert "<polyline" in storage.get_bytes(layout.key(LOSS_CURVE)).decode()
    assert "-0.8000 from 3.0000 before training" in markdown  # the step-0 baseline from the registry
    (summary,) = sink.finished
    assert summary.summary_uri == storage.uri(layout.key(SUMMARY))
    assert summary.loss_curve_uri == storage.uri(layout.key(LOSS_CURVE))
    assert summary.dataset == "sample" and summary.eval_loss == 2.2


def test_a_summary_storage_cannot_keep_still_reaches_the_sink(engine: Engine, tmp_path: Path) -> None:
    storage = NoSummaryStorage(tmp_path / "store")
    recorder, sink = _recorder(engine, storage)
    markdown = publish_job_summary(
        recorder, storage, base_model="org/tiny", dataset="sample", status="failed", error_message="boom"
    )
    assert "boom" in markdown
    (summary,) = sink.finished
    assert summary.summary_uri is None and summary.status == "failed"
    assert not storage.exists(JobLayout(recorder.job_id).key(SUMMARY))
