"""`RunReporter`: one job's artifacts in the Prefect UI, and its heartbeats to the progress sink.

One progress bar, one metrics table and one loss-curve picture, each created once and then
updated in place (the table and curve at most `PUBLISH_POINTS` times a run), the dataset report
once, the summary at the end. Reporting never fails a job: a Prefect API hiccup is logged and
the training goes on.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

from tasks.reporting.loss_curve import curve_points, loss_curve_markdown, loss_curve_svg
from tasks.reporting.metrics_table import metrics_table
from tasks.reporting.names import artifact_key, short_id
from tasks.reporting.progress import (
    ProgressSink,
    ProgressView,
    current_progress_sink,
    estimate_completion,
    progress_percent,
)
from tasks.reporting.summary import RunSummary, render_summary_markdown

if TYPE_CHECKING:
    from brightrun.protocol import TrainerStatus

log = logging.getLogger("brightrun.reporting")

PUBLISH_POINTS = 20  # metrics table and loss curve updates per run, at most (plus the final one)
UNKNOWN_TOTAL_PUBLISH_S = 60.0  # without a step total, refresh them on a clock instead


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _in_task_run() -> bool:
    from prefect.context import TaskRunContext

    return TaskRunContext.get() is not None


def _in_flow_run() -> bool:
    from prefect.context import FlowRunContext

    return FlowRunContext.get() is not None


@dataclass
class RunReporter:
    """One job's view in the Prefect UI and its progress sink; every call is best-effort.

    The artifacts that grow during a run are created once and then updated in place, so the
    Artifacts tab holds one progress bar, one metrics table and one loss curve per job.
    """

    job_id: str
    enabled: bool = True
    sink: ProgressSink = field(default_factory=current_progress_sink)
    clock: Callable[[], datetime] = _utcnow
    started_at: datetime | None = None
    progress_id: UUID | None = None
    last_progress: float = -1.0
    published: list[str] = field(default_factory=list)
    artifact_ids: dict[str, UUID] = field(default_factory=dict)
    records: dict[tuple[int, int], dict[str, Any]] = field(default_factory=dict)
    eval_loss: float | None = None
    eval_step: int | None = None
    last_view: ProgressView | None = None
    _rate_origin: tuple[int, datetime, int] | None = None  # (step, when, attempt) of the rate
    _published_step: int | None = None
    _published_at: float | None = None
    _dataset_reported: bool = False

    def __post_init__(self) -> None:
        if self.started_at is None:
            self.started_at = self.clock()

    def _safe(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        from tasks.prefect_api import embedded_server_gone

        if not self.enabled or embedded_server_gone():
            return None
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:  # the UI is a view; it must never stop a training
            log.warning("could not publish %s artifact: %s", what, exc)
            return None
        self.published.append(what)
        return result

    # -- heartbeat: progress bar, ETA, the sink

    def heartbeat(self, status: TrainerStatus, job_status: str = "training") -> ProgressView:
        """The trainer's heartbeat: returns what it means (step, ETA...) for the registry and
        the webhook, moves the progress bar and tells the sink."""
        now = self.clock()
        phase = str(getattr(status.phase, "value", status.phase))
        origin = self._rate_origin
        # The step rate is measured from the first heartbeat of this attempt in training:
        # model loading and a resume's restart are not steps.
        if phase == "training" and (origin is None or origin[2] != status.attempt or status.step < origin[0]):
            origin = self._rate_origin = (status.step, now, status.attempt)
        eta = None
        if origin is not None:
            eta = estimate_completion(status.step, status.total_steps, origin[1], now, start_step=origin[0])
        assert self.started_at is not None
        view = ProgressView(
            job_id=self.job_id,
            status=job_status,
            phase=phase,
            step=status.step,
            total_steps=status.total_steps,
            epoch=status.epoch,
            loss=status.loss,
            eval_loss=self.eval_loss,
            eval_step=self.eval_step,
            tokens_per_s=status.tokens_per_s,
            elapsed_s=(now - self.started_at).total_seconds(),
            eta=eta,
            now=now,
            attempt=status.attempt,
        )
        self.last_view = view
        self.progress(status.step, status.total_steps)
        try:
            self.sink.on_progress(view)
        except Exception as exc:  # a broken terminal must not stop a training
            log.warning("progress display failed: %s", exc)
        return view

    def progress(self, step: int, total_steps: int) -> None:
        """The progress bar (0-100 by optimizer step), updated in place."""
        from prefect.artifacts import create_progress_artifact, update_progress_artifact

        value = progress_percent(step, total_steps)
        if value == self.last_progress:
            return
        if self.progress_id is None:
            self.progress_id = self._safe(
                "progress",
                create_progress_artifact,
                value,
                key=artifact_key(self.job_id, "progress"),
                description=f"Training progress of job {self.job_id} (% of optimizer steps)",
            )
        else:
            self._safe("progress", update_progress_artifact, self.progress_id, value)
        self.last_progress = value

    # -- artifacts created once, updated in place

    def _put(self, what: str, kind: str, data: str, description: str, *, create: bool = True) -> None:
        """Create the artifact `what` the first time (unless `create` is false), update its data
        in place afterwards.

        `data` is what the API stores (markdown text, a table as JSON). It attaches to the
        current task run when there is one: the flow-level section of the run's Artifacts
        tab (shown first) is kept for the summary.
        """

        def create_artifact() -> UUID:
            from prefect.client.orchestration import get_client
            from prefect.client.schemas.actions import ArtifactCreate
            from prefect.utilities.context import get_task_and_flow_run_ids

            task_run_id, flow_run_id = get_task_and_flow_run_ids()
            request = ArtifactCreate(
                type=kind,
                key=artifact_key(self.job_id, what),
                description=description,
                data=data,
                task_run_id=task_run_id,
                flow_run_id=flow_run_id,
            )
            with get_client(sync_client=True) as client:
                return UUID(str(client.create_artifact(request).id))

        def update(artifact_id: UUID) -> None:
            from prefect.client.orchestration import get_client
            from prefect.client.schemas.actions import ArtifactUpdate

            with get_client(sync_client=True) as client:
                client.update_artifact(artifact_id=artifact_id, artifact=ArtifactUpdate(data=data))

        existing = self.artifact_ids.get(what)
        if existing is None and not create:
            return
        if existing is None:
            created = self._safe(what, create_artifact)
            if created is not None:
                self.artifact_ids[what] = created
        else:
            self._safe(what, update, existing)

    def dataset_report(self, markdown: str) -> None:
        """The dataset report, once per job (a second call, e.g. a resumed stage, is ignored)."""
        if self._dataset_reported:
            return
        self._dataset_reported = True

        def publish() -> None:
            self._put("dataset-report", "markdown", markdown, f"Dataset report of job {self.job_id}")

        if self.enabled and _in_flow_run() and not _in_task_run():
            # From the flow body, through a task of its own: it then shows in the run graph, and
            # the flow-level artifacts (listed first in the UI) are the summary alone.
            from prefect import task
            from prefect.cache_policies import NO_CACHE

            try:
                task(name="dataset-report", cache_policy=NO_CACHE)(publish)()
            except Exception as exc:
                log.warning("could not publish dataset-report artifact: %s", exc)
            return
        publish()

    def metrics(self, records: Sequence[Mapping[str, Any]], *, final: bool = False) -> None:
        """Take metric records (any overlap with earlier calls is fine); the table and the loss
        curve are republished at most `PUBLISH_POINTS` times a run, and when `final`."""
        top_step = None
        for rec in records:
            row = dict(rec)
            step = row.get("step")
            if step is None:
                continue
            self.records[(int(row.get("attempt") or 1), int(step))] = {
                **self.records.get((int(row.get("attempt") or 1), int(step)), {}),
                **{k: v for k, v in row.items() if v is not None},
            }
            if row.get("eval_loss") is not None and (self.eval_step is None or int(step) >= self.eval_step):
                self.eval_loss, self.eval_step = float(row["eval_loss"]), int(step)
            top_step = int(step) if top_step is None else max(top_step, int(step))
        if self._due(top_step) or (final and self.records):
            self._published_step = top_step if top_step is not None else self._published_step
            self._published_at = time.monotonic()
            # The last redraw (from the flow, after the training task) only updates: a new
            # artifact there would sit beside the summary at the top of the Artifacts tab.
            self._publish_metrics(create=not final)

    def _due(self, top_step: int | None) -> bool:
        if top_step is None:
            return False
        if self._published_step is None:
            return True
        total = self.last_view.total_steps if self.last_view else 0
        if total > 0:
            return top_step - self._published_step >= max(1, math.ceil(total / PUBLISH_POINTS))
        return self._published_at is None or time.monotonic() - self._published_at >= UNKNOWN_TOTAL_PUBLISH_S

    def _publish_metrics(self, *, create: bool = True) -> None:
        rows = list(self.records.values())
        table = metrics_table(rows)
        if table:
            import json

            self._put(
                "metrics",
                "table",
                json.dumps(table),
                f"Latest training metrics of job {self.job_id} (newest first)",
                create=create,
            )
        self.loss_curve(create=create)

    def loss_curve(self, stored_uri: str | None = None, *, create: bool = True) -> str:
        """The loss curve as a picture in the UI (created once, redrawn in place); returns the SVG."""
        train, evals = curve_points(list(self.records.values()))
        svg = loss_curve_svg(train, evals, title=f"Loss of job {short_id(self.job_id)}")
        self._put(
            "loss-curve",
            "markdown",
            loss_curve_markdown(svg, job_id=self.job_id, stored_uri=stored_uri),
            f"Loss curve of job {self.job_id} (train and eval loss by step)",
            create=create,
        )
        return svg

    def summary(self, markdown: str) -> None:
        self._put("summary", "markdown", markdown, f"Result of training job {self.job_id}")

    def finish(self, summary: RunSummary, *, loss_curve: str | None = None) -> str:
        """The end of the run: the summary artifact and the sink's final words; returns the
        summary markdown (for `summary.md`)."""
        markdown = render_summary_markdown(summary, loss_curve=loss_curve)
        self.summary(markdown)
        try:
            self.sink.on_finish(summary)
        except Exception as exc:
            log.warning("progress display failed: %s", exc)
        return markdown

    def link(self, what: str, uri: str, text: str) -> None:
        from prefect.artifacts import create_link_artifact

        link = uri if "://" in uri else f"file://{uri}"
        self._safe(
            what,
            create_link_artifact,
            link,
            link_text=text,
            key=artifact_key(self.job_id, what),
            description=text,
        )
