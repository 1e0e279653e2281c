"""The A/B stage's Prefect task. No retries: a decision acted on once must not be acted on
again, and the next scheduled run decides afresh."""

from __future__ import annotations

from datetime import datetime

from prefect import task
from prefect.cache_policies import NO_CACHE

from brightrun.ab import ABRule
from brightrun.resources import Resources
from tasks.ab.decide import ABOutcome, RoutesApplier, run_decision


@task(name="decide-ab", cache_policy=NO_CACHE)
def decide_ab_task(
    resources: Resources,
    endpoint_id: str,
    rule: ABRule,
    recommend_only: bool,
    since: datetime | None,
    applier: RoutesApplier,
    webhook_url: str | None,
) -> ABOutcome:
    return run_decision(
        resources,
        endpoint_id,
        rule,
        recommend_only=recommend_only,
        since=since,
        applier=applier,
        webhook_url=webhook_url,
    )
