"""`brightrun ab status | decide --endpoint ID`: the A/B split judged by the users' thumbs
(issue 24). The same decision as the `decide_ab` flow, run here without Prefect."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from cli.options import option, parse_when, shared_options

ab_app = typer.Typer(help="A/B tests on an endpoint: production and a candidate, judged by thumbs.")

EndpointOpt = Annotated[str, typer.Option("--endpoint", help="the RunPod endpoint id")]
MinRatedOpt = Annotated[int, typer.Option("--min-rated", help="rated responses per arm before a promotion")]
MethodOpt = Annotated[str, typer.Option("--method", help="two_proportion or bayesian")]
AlphaOpt = Annotated[float, typer.Option("--alpha", help="two_proportion: one-sided level to promote")]
LevelOpt = Annotated[float, typer.Option("--probability-level", help="bayesian: P(better) to promote")]
StopOpt = Annotated[float, typer.Option("--early-stop-alpha", help="level of the early stop")]
StopMinOpt = Annotated[int, typer.Option("--early-stop-min-rated", help="rated per arm before an early stop")]
MaxOpt = Annotated[
    int | None, typer.Option("--max-rated", help="roll back at this many per arm if not better")
]
SinceOpt = Annotated[str | None, typer.Option("--since", help="ISO 8601 (default: when the split began)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON")]


def _run(endpoint: str, rule_fields: dict[str, Any], since: str | None, as_json: bool, **kwargs: Any) -> None:
    from brightrun.resources import Resources
    from flows.decide_ab import build_rule, routes_applier
    from tasks.ab import decision_markdown, run_decision

    rule = build_rule(**rule_fields)
    start = parse_when(since, "--since")
    with Resources.from_settings() as resources:
        outcome = run_decision(resources, endpoint, rule, since=start, applier=routes_applier(), **kwargs)
    if as_json:
        typer.echo(json.dumps(outcome.as_dict(), default=str, indent=2))
    else:
        typer.echo(decision_markdown(outcome), nl=False)


# The decision rule's options, written once for both commands; each command receives them as
# `rule_fields`, keyed by ABRule's field names.
RULE_OPTIONS = (
    option("min_rated_per_arm", MinRatedOpt, 200),
    option("method", MethodOpt, "two_proportion"),
    option("alpha", AlphaOpt, 0.05),
    option("probability_level", LevelOpt, 0.95),
    option("early_stop_alpha", StopOpt, 0.01),
    option("early_stop_min_rated", StopMinOpt, 50),
    option("max_rated_per_arm", MaxOpt, None),
)


@ab_app.command("status")
@shared_options("rule_fields", *RULE_OPTIONS)
def status(
    endpoint: EndpointOpt,
    rule_fields: dict[str, Any],
    since: SinceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Both arms' thumbs and what the rule would decide now; changes nothing, sends nothing."""
    _run(endpoint, rule_fields, since, as_json, recommend_only=True, count_users=True)


@ab_app.command("decide")
@shared_options("rule_fields", *RULE_OPTIONS)
def decide(
    endpoint: EndpointOpt,
    rule_fields: dict[str, Any],
    recommend_only: Annotated[bool, typer.Option("--recommend-only", help="decide, change nothing")] = False,
    webhook_url: Annotated[str | None, typer.Option("--webhook-url", help="POST the decision here")] = None,
    since: SinceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Decide and act: promote the candidate (100 %), roll it back, or continue."""
    _run(endpoint, rule_fields, since, as_json, recommend_only=recommend_only, webhook_url=webhook_url)


def register(app: typer.Typer) -> None:
    app.add_typer(ab_app, name="ab")
