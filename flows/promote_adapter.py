"""`promote_adapter`: move an adapter to testing or production, or roll production back.

One click in the Prefect UI. Promotion to production evaluates the candidate against the
current production adapter first when no such evaluation is recorded, and is refused when
the candidate's validation loss is worse (unless forced, with a reason that is recorded).
Every change becomes a registry event and, with `webhook_url`, a signed webhook. The run
shows one Markdown artifact: what changed and, when one ran, the evaluation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from brightrun.errors import InputError
from brightrun.resources import Resources
from flows.evaluate_adapter import artifact_key
from tasks.adapters import evaluation_markdown, rollback
from tasks.adapters.task import promote_adapter_task


@flow(name="promote_adapter", log_prints=True, retries=0)
def promote_adapter(
    artifact: str | None = None,
    to: Literal["testing", "production"] = "production",
    force: bool = False,
    reason: str | None = None,
    eval_set: str | None = None,
    evaluation_set: str | None = None,
    judge: bool = False,
    webhook_url: str | None = None,
    rollback_base_model: str | None = None,
    rollback_production: bool = False,
) -> dict[str, Any]:
    """Promote `artifact` (or, with `rollback_production`, restore the previous production).

    Args:
        artifact: an artifact id or a job id (not needed for a rollback).
        to: testing or production.
        force: skip the loss gate; `reason` is then required and recorded.
        reason: why (recorded with the change).
        eval_set: evaluate on this set instead of the candidate's validation split.
        evaluation_set: the registered evaluation set the gate holds to, NAME or NAME@VERSION
            (default BRIGHTRUN_PROMOTION_EVALSET).
        judge: also ask the pairwise judge; a candidate it finds clearly worse is refused.
        webhook_url: POST each status change here (signed with BRIGHTRUN_WEBHOOK_SECRET).
        rollback_base_model: the base model whose production adapter is rolled back.
        rollback_production: roll back instead of promoting.
    """
    logger = get_run_logger()
    with Resources.from_settings() as resources:
        if rollback_production:
            result, record = (
                rollback(resources, rollback_base_model, reason=reason, webhook_url=webhook_url),
                None,
            )
        else:
            if not artifact:
                raise InputError("artifact is required to promote (or set rollback_production)")
            result, record = promote_adapter_task(
                resources,
                artifact,
                to,
                force,
                reason,
                Path(eval_set) if eval_set else None,
                webhook_url,
                evaluation_set,
                judge,
            )
    lines = [f"# {result.message}", "", "| adapter | from | to | event |", "|---|---|---|---|"]
    lines += [
        f"| `{c.artifact.id}` | {c.previous_status} | {c.artifact.deployment_status} | {c.event} |"
        for c in result.changes
    ]
    if record is not None:
        lines += ["", evaluation_markdown(record)]
    create_markdown_artifact(
        key=artifact_key("adapter-promotion", result.artifact.id),
        markdown="\n".join(lines) + "\n",
        description=result.message,
    )
    logger.info(result.message)
    return {
        "artifact_id": result.artifact.id,
        "deployment_status": result.artifact.deployment_status,
        "changes": [
            {"artifact_id": c.artifact.id, "from": c.previous_status, "to": c.artifact.deployment_status}
            for c in result.changes
        ],
        "message": result.message,
    }
