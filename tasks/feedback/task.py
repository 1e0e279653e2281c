"""The feedback export as Prefect tasks, for the `export_feedback` flow (retries in the decorator).

The stage's one Prefect module: everything else in `tasks.feedback` imports without Prefect,
so the CLI's `brightrun export` and the tests load the pure modules alone.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.input import RunInput

from brightrun.registry.db import DatabaseUnavailable
from brightrun.registry.feedback_rows import ExportBusy
from brightrun.resources import Resources
from brightrun.storage import StorageError
from tasks.feedback.export import ExportOptions, export_feedback_window
from tasks.feedback.result import ExportResult
from tasks.feedback.review import ReviewForm


def transient_failure(task: Any, task_run: Any, state: Any) -> bool:
    """Retry the export task only for what a later try can cure (a lost database or
    object store), never for bad data, a busy lock or a changed window."""
    error = state.data if isinstance(state.data, BaseException) else None
    if error is None:
        try:
            state.result()
        except BaseException as raised:
            error = raised
    return isinstance(error, DatabaseUnavailable | StorageError) or getattr(error, "transient", False)


@task(
    name="export-feedback-window",
    retries=1,
    retry_delay_seconds=30,
    retry_condition_fn=transient_failure,
    # The resources hold an engine and storage clients: nothing to hash or cache.
    cache_policy=NO_CACHE,
)
def export_window_task(
    resources: Resources,
    since: datetime | None,
    until: datetime | None,
    options: ExportOptions,
    dry_run: bool,
) -> ExportResult | None:
    """The door, as the flow's task: None when another export holds the lock (the flow
    then ends cleanly). A lost database connection is retried inside (from the window
    start), and the task retry covers anything else transient."""
    try:
        return export_feedback_window(resources, since=since, until=until, options=options, dry_run=dry_run)
    except ExportBusy as busy:
        get_run_logger().warning("%s", busy)
        return None


@task(name="start-training")
def start_training(deployment: str, parameters: dict[str, Any]) -> dict[str, Any]:
    """Start `train_adapter` with `parameters` without waiting for it (timeout=0); the
    subflow link makes the training run appear under this export run in the UI."""
    from prefect.deployments import run_deployment

    run = run_deployment(
        name=deployment,
        parameters=parameters,
        timeout=0,
        as_subflow=True,
        tags=["brightrun", "feedback-export"],
    )
    return {"flow_run_id": str(run.id), "flow_run_name": run.name, "deployment": deployment}


class ReviewInput(RunInput, ReviewForm):
    """The form a paused `export_feedback` run shows in the Prefect UI (issue 19): approve,
    reject (with a reason) or approve with exclusions (the example ids left out)."""


__all__ = ["ReviewInput", "export_window_task", "start_training", "transient_failure"]
