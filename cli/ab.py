"""`brightrun ab status | decide --endpoint ID`: the A/B split judged by the users' thumbs
(issue 24). The same decision as the `decide_ab` flow, run here without Prefect."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from cli.options import parse_when

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


@ab_app.command("status")
def status(
    endpoint: EndpointOpt,
    min_rated: MinRatedOpt = 200,
    method: MethodOpt = "two_proportion",
    alpha: AlphaOpt = 0.05,
    probability_level: LevelOpt = 0.95,
    early_stop_alpha: StopOpt = 0.01,
    early_stop_min_rated: StopMinOpt = 50,
    max_rated: MaxOpt = None,
    since: SinceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Both arms' thumbs and what the rule would decide now; changes nothing, sends nothing."""
    fields = _fields(
        min_rated, method, alpha, probability_level, early_stop_alpha, early_stop_min_rated, max_rated
    )
    _run(endpoint, fields, since, as_json, recommend_only=True, count_users=True)


@ab_app.command("decide")
def decide(
    endpoint: EndpointOpt,
    recommend_only: Annotated[bool, typer.Option("--recommend-only", help="decide, change nothing")] = False,
    webhook_url: Annotated[str | None, typer.Option("--webhook-url", help="POST the decision here")] = None,
    min_rated: MinRatedOpt = 200,
    method: MethodOpt = "two_proportion",
    alpha: AlphaOpt = 0.05,
    probability_level: LevelOpt = 0.95,
    early_stop_alpha: StopOpt = 0.01,
    early_stop_min_rated: StopMinOpt = 50,
    max_rated: MaxOpt = None,
    since: SinceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Decide and act: promote the candidate (100 %), roll it back, or continue."""
    fields = _fields(
        min_rated, method, alpha, probability_level, early_stop_alpha, early_stop_min_rated, max_rated
    )
    _run(endpoint, fields, since, as_json, recommend_only=recommend_only, webhook_url=webhook_url)


def _fields(
    min_rated: int,
    method: str,
    alpha: float,
    probability_level: float,
    early_stop_alpha: float,
    early_stop_min_rated: int,
    max_rated: int | None,
) -> dict[str, Any]:
    return {
        "min_rated_per_arm": min_rated,
        "method": method,
        "alpha": alpha,
        "probability_level": probability_level,
        "early_stop_alpha": early_stop_alpha,
        "early_stop_min_rated": early_stop_min_rated,
        "max_rated_per_arm": max_rated,
    }


def register(app: typer.Typer) -> None:
    app.add_typer(ab_app, name="ab")
