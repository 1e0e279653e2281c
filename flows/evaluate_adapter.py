"""`evaluate_adapter`: an adapter against production, another adapter or the base model.

One click in the Prefect UI: both models are scored on the same held-out conversations (by
default the candidate's validation split), the result is stored in the registry (an
`adapter_evaluated` event on the candidate's job, which the promotion gate reads) and shown
as one Markdown artifact of the run. The work is in `tasks/adapters/evaluate.py`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from brightrun.resources import Resources
from tasks.adapters import evaluation_json, evaluation_markdown
from tasks.adapters.task import evaluate_adapter_task


def artifact_key(prefix: str, artifact_id: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return f"{prefix}-{artifact_id}".lower().replace("_", "-")


@flow(name="evaluate_adapter", log_prints=True, retries=0)
def evaluate_adapter(
    artifact: str,
    against: str = "production",
    eval_set: str | None = None,
    evaluation_set: str | None = None,
    judge: bool = False,
) -> dict[str, Any]:
    """Compare `artifact` with `against` on one held-out set and record the result.

    Args:
        artifact: the candidate: an artifact id, a job id, or `production`.
        against: an artifact id, a job id, `production` (default) or `base` (no adapter).
        eval_set: a prepared directory, a prepared .jsonl or a brightrun-lora-v4 .json on
            this machine (default: the candidate's validation split from its job's data).
        evaluation_set: a registered evaluation set, NAME or NAME@VERSION (default
            BRIGHTRUN_PROMOTION_EVALSET when no eval_set is given).
        judge: also ask the pairwise judge (BRIGHTRUN_JUDGE_*) on every held-out prompt.
    """
    logger = get_run_logger()
    with Resources.from_settings() as resources:
        record = evaluate_adapter_task(
            resources, artifact, against, Path(eval_set) if eval_set else None, evaluation_set, judge
        )
    markdown = evaluation_markdown(record)
    create_markdown_artifact(
        key=artifact_key("adapter-eval", record.candidate.artifact_id or artifact),
        markdown=markdown,
        description=f"{record.candidate.label} vs {record.against.label}",
    )
    logger.info(
        "candidate loss %.4f vs %.4f (%s) on %d conversations",
        record.candidate.loss,
        record.against.loss,
        record.against.label,
        record.conversations,
    )
    return evaluation_json(record)
