"""The end of a job, published: `loss_curve.svg` and `summary.md` beside the adapter, the
summary artifact (with the loss curve), the terminal's last words, and the whole trainer log
as `training.log`. The training flow calls `publish_job_summary` once, on every exit path."""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any

from brightrun.layout import JobLayout
from brightrun.protocol import TrainerResult
from brightrun.registry import repository as repo
from brightrun.storage import ObjectNotFound, Storage, StorageError
from tasks.reporting.loss_curve import curve_points, loss_curve_svg
from tasks.reporting.run_logs import TrainerLogForwarder
from tasks.reporting.summary import RunSummary, baseline_eval_loss, render_summary_markdown

if TYPE_CHECKING:
    from tasks.job import JobRecorder

log = logging.getLogger("brightrun.reporting")

LOSS_CURVE = "loss_curve.svg"
SUMMARY = "summary.md"


def _publish_loss_curve(recorder: JobRecorder, storage: Storage, layout: JobLayout) -> tuple[str, list[Any]]:
    """`loss_curve.svg` beside the adapter; returns (SVG, the metric records it was drawn from)."""
    records = [
        {"step": p.step, "loss": p.loss, "eval_loss": p.eval_loss, "attempt": p.attempt}
        for p in repo.list_metrics(recorder.engine, recorder.job_id)
    ]
    train_points, evals = curve_points(records)
    svg = loss_curve_svg(train_points, evals, title=f"Loss of job {recorder.job_id}")
    storage.put_bytes(layout.key(LOSS_CURVE), svg.encode())
    return svg, records


def _read_optional_json(storage: Storage, key: str) -> dict[str, Any]:
    try:
        return dict(storage.get_json(key))
    except ObjectNotFound:
        return {}


def _read_train_seconds(storage: Storage, layout: JobLayout) -> float | None:
    """Training time from the trainer's result.json (absent when the job did not finish)."""
    try:
        return TrainerResult.model_validate_json(storage.get_bytes(layout.result)).train_seconds
    except ObjectNotFound:
        return None


def publish_job_summary(
    recorder: JobRecorder,
    storage: Storage,
    *,
    base_model: str,
    dataset: str,
    status: str,
    error_message: str | None,
) -> str:
    """The run's summary, published everywhere a person looks; returns its markdown.

    A storage failure costs the file it was writing (the loss curve, `summary.md`), not the
    rest: the artifact and the terminal still get the summary."""
    layout = JobLayout(recorder.job_id)
    svg, records, loss_curve_uri = None, [], None
    try:
        svg, records = _publish_loss_curve(recorder, storage, layout)
        loss_curve_uri = storage.uri(layout.key(LOSS_CURVE))
        recorder.reporter.loss_curve(loss_curve_uri, create=False)
    except StorageError as exc:
        log.warning("job %s: no loss curve (%s)", recorder.job_id, exc)
    training_log_uri = TrainerLogForwarder(storage, recorder.job_id).publish()
    if training_log_uri:
        repo.update_job(recorder.engine, recorder.job_id, training_log_path=training_log_uri)
    evaluation = _read_optional_json(storage, layout.eval)
    job = repo.get_job(recorder.engine, recorder.job_id)
    summary = RunSummary(
        job_id=recorder.job_id,
        status=status,
        base_model=base_model,
        dataset=dataset,
        steps=job.current_step,
        eval_loss=evaluation.get("eval_loss"),
        perplexity=evaluation.get("perplexity"),
        baseline_eval_loss=baseline_eval_loss(records),
        samples=evaluation.get("samples") or [],
        cost_usd=job.actual_cost_usd,
        interruptions=max(recorder.interruptions, job.retry_count),
        train_seconds=_read_train_seconds(storage, layout),
        adapter_uri=job.lora_artifact_path,
        summary_uri=storage.uri(layout.key(SUMMARY)),
        loss_curve_uri=loss_curve_uri,
        training_log_uri=training_log_uri,
        error_message=error_message,
    )
    markdown = render_summary_markdown(summary, loss_curve=svg)
    try:
        storage.put_bytes(layout.key(SUMMARY), markdown.encode())
    except StorageError as exc:
        log.warning("job %s: summary not stored (%s)", recorder.job_id, exc)
        summary = dataclasses.replace(summary, summary_uri=None)
    recorder.reporter.finish(summary, loss_curve=svg)
    return markdown
