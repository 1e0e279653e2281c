"""The review step of `export_feedback` (issue 19): show the reviewer the export, pause for
the `ReviewInput` form, record the decision.

Kept beside the flow (it needs the flow run's context to pause) and out of its module so the
flow reads as the sequence of stages it is.
"""

from __future__ import annotations

import json
import os
from typing import Any

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run

from brightrun.errors import InputError
from brightrun.resources import Resources
from tasks.feedback.exclusions import storage_key
from tasks.feedback.result import ExportResult
from tasks.feedback.review import apply_review, positive_share
from tasks.feedback.task import ReviewInput

SAMPLE_ROWS = 20
CELL_CHARS = 300


def _cell(text: str) -> str:
    return text if len(text) <= CELL_CHARS else text[: CELL_CHARS - 1] + "…"


def sample_rows(resources: Resources, result: ExportResult, limit: int = SAMPLE_ROWS) -> list[dict[str, Any]]:
    """The first `limit` examples of the export's chat file, as the reviewer's sample table."""
    uri = result.files.get("chat")
    if not uri:
        return []
    lines = resources.storage.get_bytes(storage_key(resources.storage, uri)).decode("utf-8").splitlines()
    rows = []
    for line in lines[:limit]:
        record = json.loads(line)
        messages = {m["role"]: m["content"] for m in record["messages"]}
        provenance = record.get("provenance") or {}
        rows.append(
            {
                "example_id": record["id"],
                "rating": provenance.get("rating", ""),
                "corrected_by": provenance.get("corrected_by", ""),
                "user": _cell(messages.get("user", "")),
                "answer": _cell(messages.get("assistant", "")),
            }
        )
    return rows


def review_summary(result: ExportResult) -> str:
    share = positive_share(result.stats)
    return "\n".join(
        [
            f"# Review training file {result.training_file_id}",
            "",
            f"{result.examples} example(s) exported from {result.since.isoformat()} "
            f"to {result.until.isoformat()}.",
            f"Positive share of ratings: {'n/a' if share is None else f'{share:.0%}'}; "
            f"personal data replaced: {sum(result.stats.scrubbed.values())}; "
            f"corrections: {result.stats.corrections}; preference pairs: {result.stats.preference_pairs}.",
            "",
            "Answer the form: **approve**, **reject** (give a reason), or **approve_with_exclusions** "
            "(list the example ids to leave out, e.g. `fb-...` from the sample table). "
            f"The CLI does the same: `brightrun review approve {result.training_file_id}`.",
        ]
    )


def _running_again() -> None:
    """After an unanswered pause the run is still Paused on the server, which would end it
    Failed ("completed and never resumed"); it carries on by itself, so it says so."""
    from prefect.client.orchestration import get_client
    from prefect.context import FlowRunContext
    from prefect.states import Running

    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(context.flow_run.id, Running(), force=True)


def wait_for_review(
    resources: Resources, result: ExportResult, *, timeout_s: int, poll_s: int
) -> dict[str, Any]:
    """Pause for the reviewer and record the decision. Returns `{"status": approved |
    rejected | pending, "training_file_id": the file that may train, "message": ...}`."""
    logger = get_run_logger()
    assert result.training_file_id is not None
    create_markdown_artifact(key="export-feedback-review", markdown=review_summary(result))
    rows = sample_rows(resources, result)
    if rows:
        create_table_artifact(rows, key="export-feedback-sample", description="the first exported examples")
    form = ReviewInput.with_initial_data(
        description=review_summary(result), reviewer=os.environ.get("BRIGHTRUN_REVIEWER", "")
    )
    try:
        answer = pause_flow_run(wait_for_input=form, timeout=timeout_s, poll_interval=poll_s)
    except FlowPauseTimeout:
        _running_again()
        message = (
            f"no review within {timeout_s} s: training file {result.training_file_id} stays pending and "
            "nothing trains on it; decide later with "
            f"`brightrun review approve|reject {result.training_file_id}`"
        )
        logger.warning(message)
        return {"status": "pending", "training_file_id": result.training_file_id, "message": message}
    try:
        decided = apply_review(resources, result.training_file_id, answer)
    except InputError as refused:
        message = f"the review could not be recorded: {refused}; the file stays as it was"
        logger.error(message)
        return {"status": "pending", "training_file_id": result.training_file_id, "message": message}
    status = decided.review_status or "pending"
    message = f"training file {decided.id} {status} by {decided.reviewed_by}" + (
        f": {decided.review_reason}" if decided.review_reason else ""
    )
    logger.info(message)
    return {"status": status, "training_file_id": decided.id, "message": message}
