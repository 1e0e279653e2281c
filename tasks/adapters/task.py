"""The adapter room's Prefect tasks (retries in the decorators); the work is in the plain
functions beside them, which the CLI calls directly.

Publishing retries (storage and registry hiccups; verify-then-register is idempotent).
Evaluating and promoting do not: a second evaluation would only repeat minutes of work, and
a promotion refused once is refused again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from sqlalchemy import Engine

from brightrun.protocol import EvalReport
from brightrun.registry import repository as repo
from brightrun.registry.promotion import EvaluationRecord, LifecycleResult
from brightrun.resources import Resources
from brightrun.storage import Storage
from tasks.adapters.evaluate import evaluate
from tasks.adapters.judge import required_judge
from tasks.adapters.lifecycle import promote
from tasks.adapters.publish import publish


@task(name="publish-adapter", retries=2, retry_delay_seconds=[5, 30], cache_policy=NO_CACHE)
def publish_adapter(
    engine: Engine,
    storage: Storage,
    job_id: str,
    base_model: str | None = None,
    eval_report: EvalReport | None = None,
    metadata: dict[str, Any] | None = None,
) -> repo.Artifact:
    return publish(engine, storage, job_id, base_model=base_model, eval_report=eval_report, metadata=metadata)


@task(name="evaluate-adapter", cache_policy=NO_CACHE)
def evaluate_adapter_task(
    resources: Resources,
    candidate: str,
    against: str,
    eval_set: Path | None,
    evaluation_set: str | None = None,
    judge: bool = False,
) -> EvaluationRecord:
    judge_settings = required_judge(resources.settings, judge)
    return evaluate(
        resources, candidate, against, eval_set=eval_set, evaluation_set=evaluation_set, judge=judge_settings
    )


@task(name="promote-adapter", cache_policy=NO_CACHE)
def promote_adapter_task(
    resources: Resources,
    artifact: str,
    to: str,
    force: bool,
    reason: str | None,
    eval_set: Path | None,
    webhook_url: str | None,
    evaluation_set: str | None = None,
    judge: bool = False,
) -> tuple[LifecycleResult, EvaluationRecord | None]:
    return promote(
        resources,
        artifact,
        to,
        force=force,
        reason=reason,
        eval_set=eval_set,
        evaluation_set=evaluation_set,
        judge=required_judge(resources.settings, judge),
        webhook_url=webhook_url,
    )
