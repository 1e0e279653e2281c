"""The A/B stage: read an endpoint's two arms and their thumbs, decide, act on it, tell.

Acting is not this stage's: re-pointing the endpoint, smoke-testing it and recording the
split and the statuses is `tasks.adapters.deploy.apply_routes` (engineer "deploy"), reached
through a `RoutesApplier` so that tests, and a dry operator, can put another in its place.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy.orm import Session

from brightrun.ab import ABDecision, ABRule, Action, decide
from brightrun.errors import BrightrunError, InputError
from brightrun.registry import ab_stats, promotion
from brightrun.registry import repository as repo
from brightrun.registry.feedback_rows import wilson_interval
from brightrun.registry.routes import Route, live_routes
from brightrun.resources import Resources

log = logging.getLogger("brightrun.ab")

AB_PROMOTED = "ab_promoted"
AB_ROLLED_BACK = "ab_rolled_back"
AB_RECOMMENDED = "ab_recommended"  # webhook only: recommend-only writes nothing


class RoutesApplier(Protocol):
    def apply_routes(
        self, resources: Resources, endpoint_id: str, routes: Sequence[tuple[str, int]], *, reason: str
    ) -> Any: ...


class DeployApplier:
    """Production: the endpoint is re-pointed by the deploy stage (imported when used)."""

    def apply_routes(
        self, resources: Resources, endpoint_id: str, routes: Sequence[tuple[str, int]], *, reason: str
    ) -> Any:
        from tasks.adapters.deploy import apply_routes

        # The users' thumbs are this promotion's gate, not the loss gate (which would ask for
        # an offline evaluation first): the decision's figures are the recorded reason.
        return apply_routes(resources, endpoint_id, routes, reason=reason, force=True)


class ABSplitChanged(BrightrunError):
    """The endpoint's routes changed between reading the thumbs and acting: nothing done."""


@dataclass(frozen=True)
class Arms:
    endpoint_id: str
    production: Route
    candidate: Route
    production_artifact: promotion.AdapterRow
    candidate_artifact: promotion.AdapterRow

    @property
    def started_at(self) -> datetime:
        """When both arms were live: the window of a fair comparison starts here."""
        return max(self.production.started_at, self.candidate.started_at)


@dataclass(frozen=True)
class ABOutcome:
    arms: Arms
    decision: ABDecision
    since: datetime
    users: dict[str, int]  # served name -> distinct users in the window
    recommend_only: bool
    applied: bool
    routes_after: list[tuple[str, int]]  # what the endpoint serves afterwards (or would)

    def as_dict(self) -> dict[str, Any]:
        return {
            "endpoint_id": self.arms.endpoint_id,
            "since": self.since.isoformat(),
            "production_artifact_id": self.arms.production_artifact.id,
            "candidate_artifact_id": self.arms.candidate_artifact.id,
            "shares": {
                self.arms.production.served_name: self.arms.production.share_percent,
                self.arms.candidate.served_name: self.arms.candidate.share_percent,
            },
            "users": self.users,
            "recommend_only": self.recommend_only,
            "applied": self.applied,
            "routes_after": [list(r) for r in self.routes_after],
            **self.decision.as_dict(),
        }


def read_arms(resources: Resources, endpoint_id: str) -> Arms:
    """The endpoint's production and candidate routes: exactly two live ones. Production is
    the one whose adapter is in production, else the larger share."""
    engine = resources.registry
    with Session(engine) as session:
        routes = live_routes(session, endpoint_id)
    if len(routes) != 2:
        names = ", ".join(f"{r.served_name} {r.share_percent}%" for r in routes) or "none"
        raise InputError(
            f"endpoint {endpoint_id} has {len(routes)} live routes ({names}); an A/B test needs two: "
            "production and a candidate (`brightrun deploy CANDIDATE --endpoint ID --share 10`)"
        )
    artifacts = [promotion.get_artifact(engine, r.artifact_id) for r in routes]
    in_production = [i for i, a in enumerate(artifacts) if a.deployment_status == "production"]
    p = in_production[0] if len(in_production) == 1 else 0  # routes come largest share first
    c = 1 - p
    return Arms(endpoint_id, routes[p], routes[c], artifacts[p], artifacts[c])


def evaluate_arms(
    resources: Resources,
    arms: Arms,
    rule: ABRule,
    *,
    since: datetime | None = None,
    count_users: bool = False,
) -> tuple[ABDecision, datetime, dict[str, int]]:
    """The thumbs of both arms on responses since `since` (default: the split's start).
    Distinct users are counted only on request (`count_users`): the hourly decision does
    not need them and they triple the query's time on a large log."""
    start = since or arms.started_at
    names = [arms.production.served_name, arms.candidate.served_name]
    thumbs = {
        t.model_version: t
        for t in ab_stats.thumbs_by_served_name(
            resources.registry, since=start, served_names=names, window="response", count_users=count_users
        )
    }
    prod, cand = thumbs[names[0]], thumbs[names[1]]
    decision = decide(prod.arm(), cand.arm(), rule)
    return decision, start, {names[0]: prod.users, names[1]: cand.users}


def routes_after(arms: Arms, action: Action) -> list[tuple[str, int]]:
    if action is Action.promote:
        return [(arms.candidate.served_name, 100)]
    if action is Action.roll_back:
        return [(arms.production.served_name, 100)]
    return [
        (arms.production.served_name, arms.production.share_percent),
        (arms.candidate.served_name, arms.candidate.share_percent),
    ]


def run_decision(
    resources: Resources,
    endpoint_id: str,
    rule: ABRule,
    *,
    recommend_only: bool = False,
    since: datetime | None = None,
    applier: RoutesApplier | None = None,
    webhook_url: str | None = None,
    count_users: bool = False,
) -> ABOutcome:
    """Read, decide and (unless `recommend_only`, or the decision is to continue) act: the
    endpoint re-pointed by the applier, an event on the candidate's job, the webhook."""
    arms = read_arms(resources, endpoint_id)
    decision, start, users = evaluate_arms(resources, arms, rule, since=since, count_users=count_users)
    after = routes_after(arms, decision.action)
    act = decision.action is not Action.keep_going and not recommend_only
    outcome = ABOutcome(arms, decision, start, users, recommend_only, act, after)
    log.info("endpoint %s: %s", endpoint_id, decision.reason)
    if act:
        again = read_arms(resources, endpoint_id)
        if (again.production, again.candidate) != (arms.production, arms.candidate):
            raise ABSplitChanged(
                f"the routes of endpoint {endpoint_id} changed while the thumbs were read; nothing was "
                "done; the next decide_ab run decides on the new split"
            )
        (applier or DeployApplier()).apply_routes(resources, endpoint_id, after, reason=decision.reason)
        kind = AB_PROMOTED if decision.action is Action.promote else AB_ROLLED_BACK
        payload = outcome.as_dict()
        events = [repo.NewEvent(job_id=arms.candidate_artifact.training_job_id, type=kind, payload=payload)]
        if arms.production_artifact.training_job_id != arms.candidate_artifact.training_job_id:
            events.append(
                repo.NewEvent(job_id=arms.production_artifact.training_job_id, type=kind, payload=payload)
            )
        repo.add_events(resources.registry, events)
    if decision.action is not Action.keep_going:
        secret = resources.settings.webhook_secret
        event = (
            AB_RECOMMENDED
            if recommend_only
            else (AB_PROMOTED if decision.action is Action.promote else AB_ROLLED_BACK)
        )
        notify_decision(outcome, event, webhook_url, secret.get_secret_value() if secret else None)
    return outcome


def notify_decision(outcome: ABOutcome, event: str, webhook_url: str | None, secret: str | None) -> int:
    """POST the decision in the dashboard's envelope (DESIGN.md §7), signed. Never raises."""
    if not webhook_url:
        return 0
    if not secret:
        log.warning(
            "webhook %s not sent: BRIGHTRUN_WEBHOOK_SECRET is not set (webhooks are signed)", webhook_url
        )
        return 0
    import httpx

    from tasks.notify import build_payload, deliver, encode

    cand = outcome.arms.candidate_artifact
    payload = build_payload(cand.training_job_id, "completed", lora_artifact_path=cand.storage_path)
    payload.update(event=event, artifact_id=cand.id, ab=outcome.as_dict())
    with httpx.Client(timeout=10) as client:
        return deliver(client, webhook_url, encode(payload), secret)


def _pct(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:.1%}"


def decision_markdown(outcome: ABOutcome) -> str:
    """The Prefect artifact: the arms' figures, the test, the decision and what was done."""
    d, arms = outcome.decision, outcome.arms
    lines = [
        f"# A/B on endpoint `{arms.endpoint_id}`: {d.action.value}",
        "",
        d.reason,
        "",
        "| arm | served name | share | rated responses | users | up | down | neutral | positive | 95% CI |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, route, counts in (
        ("production", arms.production, d.production),
        ("candidate", arms.candidate, d.candidate),
    ):
        ci = wilson_interval(counts.positive, counts.ratings)
        ci_text = f"{ci[0]:.1%}–{ci[1]:.1%}" if ci else "-"
        lines.append(
            f"| {label} | `{route.served_name}` | {route.share_percent}% | {counts.rated_responses} | "
            f"{outcome.users.get(route.served_name) or '-'} | {counts.positive} | {counts.negative} | "
            f"{counts.neutral} | {_pct(counts.positive_rate)} | {ci_text} |"
        )
    lines += ["", f"- rule: {d.rule.describe()}", f"- window: responses since {outcome.since.isoformat()}"]
    if d.z is not None:
        lines.append(
            f"- z = {d.z:.3f}; one-sided p (candidate better) = {d.p_value_better:.4g}; "
            f"(candidate worse) = {d.p_value_worse:.4g}"
        )
    if d.probability_better is not None:
        lines.append(f"- P(candidate better) = {d.probability_better:.4f}")
    after = ", ".join(f"`{n}` {s}%" for n, s in outcome.routes_after)
    if outcome.applied:
        lines.append(f"- done: the endpoint now serves {after}")
    elif outcome.recommend_only and d.action is not Action.keep_going:
        lines.append(f"- recommend-only: nothing changed; applying it would serve {after}")
    else:
        lines.append(f"- nothing changed: the endpoint keeps serving {after}")
    return "\n".join(lines) + "\n"
