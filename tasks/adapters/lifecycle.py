"""Lifecycle: promote (evaluating first when production has no recorded comparison),
roll back, and the signed webhook of every status change. The status rules themselves are
`brightrun.registry.promotion`."""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy.engine import Engine

from brightrun.errors import InputError
from brightrun.registry import evalsets, promotion
from brightrun.registry import repository as repo
from brightrun.registry.promotion import EvaluationRecord, LifecycleResult
from brightrun.resources import Resources
from brightrun.settings import JudgeSettings
from tasks.adapters.evaluate import evaluate

log = logging.getLogger("brightrun.adapters")


def notify_changes(
    result: LifecycleResult,
    webhook_url: str | None,
    secret: str | None,
    *,
    outbox: Engine | None = None,
    expiry_seconds: float = 86400.0,
) -> int:
    """POST each status change in the dashboard's webhook shape (DESIGN.md §7), signed; the
    adapter fields ride along. Failures are logged, never raised. Returns deliveries made."""
    if not webhook_url or not result.changes:
        return 0
    if not secret:
        log.warning(
            "webhook %s not sent: BRIGHTRUN_WEBHOOK_SECRET is not set (webhooks are signed)", webhook_url
        )
        return 0
    import httpx

    from tasks.notify import build_payload, encode, send_kept

    sent = 0
    with httpx.Client(timeout=10) as client:
        for change in result.changes:
            a = change.artifact
            payload = build_payload(a.training_job_id, "completed", lora_artifact_path=a.storage_path)
            payload.update(
                event=change.event,
                artifact_id=a.id,
                base_model=a.base_model,
                deployment_status=a.deployment_status,
                previous_deployment_status=change.previous_status,
            )
            sent += send_kept(
                client,
                webhook_url,
                encode(payload),
                secret,
                outbox=outbox,
                event=change.event,
                job_id=str(a.training_job_id) if a.training_job_id else None,
                expiry_seconds=expiry_seconds,
            )
    return sent


def promote(
    resources: Resources,
    ref: str,
    to: str,
    *,
    force: bool = False,
    reason: str | None = None,
    base_model: str | None = None,
    evaluate_first: bool = True,
    eval_set: Path | None = None,
    evaluation_set: str | None = None,
    judge: JudgeSettings | None = None,
    webhook_url: str | None = None,
) -> tuple[LifecycleResult, EvaluationRecord | None]:
    """Promote; for production, first evaluate against the current production adapter when
    no evaluation against it is recorded yet (and `evaluate_first`).

    With a registered evaluation set (`evaluation_set`, else `BRIGHTRUN_PROMOTION_EVALSET`
    when no `eval_set` file is given) the gate counts only an evaluation on that very set
    (NAME@VERSION), evaluating on it first when there is none."""
    engine = resources.registry
    artifact = promotion.resolve_artifact(engine, ref, base_model=base_model)
    exam = _exam(resources, eval_set, evaluation_set)
    record = None
    current = None
    if to == "production" and artifact.base_model is not None:
        current = promotion.production_adapter(engine, artifact.base_model)
    expected = current.id if current else None
    if current is not None and current.id != artifact.id and not force:
        record = promotion.latest_evaluation(engine, artifact, current.id, exam)
        if (record is None or eval_set is not None or judge is not None) and evaluate_first:
            # Refuse what cannot be promoted before spending minutes on an evaluation.
            job = repo.get_job(engine, artifact.training_job_id)
            promotion.check_promotable(artifact, job.status, promotion.DeploymentStatus(to))
            record = evaluate(
                resources, artifact.id, current.id, eval_set=eval_set, evaluation_set=exam, judge=judge
            )
    endpoint = resources.settings.serving_endpoint_id
    if to == "production" and endpoint:
        # Production is what the endpoint serves: deploy, smoke-test, then record (issue 24).
        from tasks.adapters.deploy import apply_routes

        deployed = apply_routes(
            resources, endpoint, [(artifact.id, 100)], reason=reason or "promote --to production", force=force
        )
        result = deployed.lifecycle[0] if deployed.lifecycle else _unchanged(engine, artifact.id)
    else:
        result = promotion.promote(
            engine,
            artifact.id,
            to,
            force=force,
            reason=reason,
            expected_production=expected,
            evaluation_set=exam,
        )
    secret = resources.settings.webhook_secret
    notify_changes(
        result,
        webhook_url,
        secret.get_secret_value() if secret else None,
        outbox=resources.registry,
        expiry_seconds=resources.settings.webhook_expiry_seconds,
    )
    return result, record


def _exam(resources: Resources, eval_set: Path | None, evaluation_set: str | None) -> str | None:
    """The registered set the gate holds to, resolved to NAME@VERSION (a bare NAME: its newest)."""
    if eval_set is not None and evaluation_set is not None:
        raise InputError("give --eval-set FILE or --evalset NAME[@VERSION], not both")
    ref = evaluation_set or (None if eval_set else resources.settings.promotion_evalset)
    return evalsets.get(resources.registry, ref).ref if ref else None


def rollback(
    resources: Resources,
    base_model: str | None = None,
    *,
    reason: str | None = None,
    webhook_url: str | None = None,
) -> LifecycleResult:
    endpoint = resources.settings.serving_endpoint_id
    if endpoint:
        # Re-point the endpoint to the previous adapter (smoke-tested) before the registry says so.
        from tasks.adapters.deploy import rollback as rollback_endpoint

        result = rollback_endpoint(resources, endpoint, base_model, reason=reason).lifecycle[0]
    else:
        result = promotion.rollback(resources.registry, base_model, reason=reason)
    secret = resources.settings.webhook_secret
    notify_changes(
        result,
        webhook_url,
        secret.get_secret_value() if secret else None,
        outbox=resources.registry,
        expiry_seconds=resources.settings.webhook_expiry_seconds,
    )
    return result


def _unchanged(engine: object, artifact_id: str) -> LifecycleResult:
    artifact = promotion.get_artifact(engine, artifact_id)  # type: ignore[arg-type]
    return LifecycleResult(artifact, [], f"{artifact.id} is already {artifact.deployment_status}")
