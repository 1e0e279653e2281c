"""`decide_ab`: judge an endpoint's A/B split by the users' thumbs, and act on it (issue 24).

Scheduled hourly (prefect.yaml). Each run reads the endpoint's two live routes (production
and a candidate, `brightrun deploy CANDIDATE --endpoint ID --share 10`), counts the thumbs
each arm's responses got since the split began, and applies the rule its parameters state
(`brightrun.ab`): promote (the candidate takes 100 %, production is archived), roll back
(production takes 100 % again, the candidate is archived; early when the candidate is
significantly worse), or continue. Acting is the deploy stage's (`apply_routes`: re-point
the endpoint, smoke-test it, record the split). A decision acted on is an event on both
adapters' jobs and a signed webhook; `recommend_only` changes nothing and only says what it
would do. Every run shows one Markdown artifact with the figures.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from pydantic import Field, ValidationError

from brightrun.ab import ABRule
from brightrun.errors import InputError, validation_problems
from brightrun.resources import Resources
from tasks.ab import DeployApplier, RoutesApplier, decision_markdown
from tasks.ab.task import decide_ab_task


def routes_applier() -> RoutesApplier:
    """What re-points the endpoint (tests put a recording one in its place)."""
    return DeployApplier()


def artifact_key(endpoint_id: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    cleaned = "".join(ch if ch.isalnum() else "-" for ch in endpoint_id.lower())
    return f"ab-decision-{cleaned}".strip("-")[:100]


def build_rule(**fields: Any) -> ABRule:
    try:
        return ABRule(**fields)
    except ValidationError as e:
        raise InputError(
            "the A/B rule is invalid", validation_problems(e.errors(), plain_value_errors=True)
        ) from None


@flow(name="decide_ab", log_prints=True, retries=0)
def decide_ab(
    endpoint_id: str,
    min_rated_per_arm: Annotated[int, Field(ge=1)] = 200,
    method: Literal["two_proportion", "bayesian"] = "two_proportion",
    alpha: Annotated[float, Field(gt=0, lt=0.5)] = 0.05,
    probability_level: Annotated[float, Field(gt=0.5, lt=1)] = 0.95,
    early_stop_alpha: Annotated[float, Field(gt=0, lt=0.5)] = 0.01,
    early_stop_min_rated: Annotated[int, Field(ge=1)] = 50,
    max_rated_per_arm: Annotated[int, Field(ge=1)] | None = None,
    recommend_only: bool = False,
    since: datetime | None = None,
    webhook_url: str | None = None,
) -> dict[str, Any]:
    """Decide the A/B test on `endpoint_id`: promote, roll back or continue.

    Args:
        endpoint_id: the RunPod serverless endpoint whose two live routes are compared.
        min_rated_per_arm: rated responses each arm needs before a promotion.
        method: two_proportion (pooled z-test, one-sided) or bayesian (Beta(1,1) posterior).
        alpha: two_proportion: promote when the one-sided p-value is below this.
        probability_level: bayesian: promote when P(candidate better) is at least this.
        early_stop_alpha: roll back early when the candidate is worse at this level
            (bayesian: P(candidate worse) at least 1 - early_stop_alpha).
        early_stop_min_rated: rated responses each arm needs before an early stop.
        max_rated_per_arm: roll back when both arms have this many and the candidate is
            still not better (empty: never).
        recommend_only: decide and report, change nothing.
        since: count responses from here (default: when the split began).
        webhook_url: POST the decision here (signed with BRIGHTRUN_WEBHOOK_SECRET).
    """
    logger = get_run_logger()
    rule = build_rule(
        min_rated_per_arm=min_rated_per_arm,
        method=method,
        alpha=alpha,
        probability_level=probability_level,
        early_stop_alpha=early_stop_alpha,
        early_stop_min_rated=early_stop_min_rated,
        max_rated_per_arm=max_rated_per_arm,
    )
    with Resources.from_settings() as resources:
        outcome = decide_ab_task(
            resources, endpoint_id, rule, recommend_only, since, routes_applier(), webhook_url
        )
    create_markdown_artifact(
        key=artifact_key(endpoint_id),
        markdown=decision_markdown(outcome),
        description=outcome.decision.reason,
    )
    logger.info(outcome.decision.reason)
    return outcome.as_dict()
