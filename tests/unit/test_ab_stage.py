"""Thumbs per served name (brightrun/registry/ab_stats.py) and the A/B stage (tasks/ab) on
SQLite; tests/integration/test_decide_ab.py runs the flow on SQLite and Supabase-shaped Postgres."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, insert
from sqlalchemy.orm import Session

from brightrun.ab import ABRule, Action, pick_served_name, sticky_bucket
from brightrun.errors import InputError
from brightrun.registry import ab_stats
from brightrun.registry import promotion as pm
from brightrun.registry import repository as repo
from brightrun.registry.models import LexybrainFeedback, LexybrainResponse
from brightrun.registry.routes import live_routes
from brightrun.resources import Resources
from brightrun.settings import load_settings
from tasks.ab import AB_PROMOTED, AB_ROLLED_BACK, ABSplitChanged, run_decision
from tests.ab_helpers import ENDPOINT, T0, RecordingApplier, simulate_users, split

RULE = ABRule(min_rated_per_arm=100, early_stop_min_rated=40)


@pytest.fixture
def resources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Resources]:
    monkeypatch.delenv("BRIGHTRUN_DATABASE_URL", raising=False)
    res = Resources.from_settings(load_settings(home=tmp_path / "home"))
    yield res
    res.registry.dispose()


@pytest.fixture
def engine(resources: Resources) -> Engine:
    return resources.registry


def test_thumbs_per_served_name_group_per_response_and_keep_unknown_versions(engine: Engine) -> None:
    prod, cand = split(engine)
    counts = simulate_users(engine, {str(cand.served_name): 0.9}, users=400, extra_versions=["gpt-4o"])
    # one response rated twice: one rated response, two ratings
    some = uuid.uuid4()
    with engine.begin() as conn:
        conn.execute(
            insert(LexybrainResponse.__table__).values(id=some, model_version="v0-typo", created_at=T0)
        )
        for value in ("positive", "neutral"):
            conn.execute(
                insert(LexybrainFeedback.__table__).values(
                    id=uuid.uuid4(), response_id=some, feedback=value, created_at=T0
                )
            )
    stats = {s.model_version: s for s in ab_stats.thumbs_by_served_name(engine)}
    assert stats[prod.served_name].artifact_id == prod.id
    assert stats[prod.served_name].deployment_status == "production"
    assert stats[cand.served_name].rated_responses == counts[str(cand.served_name)]
    assert stats[cand.served_name].users == counts[str(cand.served_name)]  # one question per user
    assert stats["gpt-4o"].artifact_id is None and stats["gpt-4o"].rated_responses == counts["gpt-4o"]
    typo = stats["v0-typo"]
    assert (typo.rated_responses, typo.ratings, typo.positive, typo.neutral, typo.users) == (1, 2, 1, 1, 0)
    unknown = ab_stats.unknown_total(list(stats.values()))
    assert unknown is not None and unknown.rated_responses == counts["gpt-4o"] + 1
    total = sum(s.rated_responses for s in stats.values())
    assert total == 400 + 1  # nothing dropped
    # a window on the responses' time, and named arms only (an arm without ratings: zeros)
    later = ab_stats.thumbs_by_served_name(
        engine,
        since=T0 + timedelta(seconds=2000),
        served_names=[str(cand.served_name), "nobody"],
        window="response",
    )
    assert {t.model_version for t in later} == {cand.served_name, "nobody"}
    assert next(t for t in later if t.model_version == "nobody").ratings == 0
    assert (
        0
        < next(t for t in later if t.model_version == cand.served_name).rated_responses
        < counts[str(cand.served_name)]
    )
    with pytest.raises(InputError, match="must be after"):
        ab_stats.thumbs_by_served_name(engine, since=T0, until=T0)


def test_sticky_split_keeps_a_user_on_one_arm_at_the_stated_share() -> None:
    shares = [("prod", 90), ("cand", 10)]
    picks = [pick_served_name(str(uuid.UUID(int=i * 7919 + 1)), shares) for i in range(5000)]
    assert 0.08 < picks.count("cand") / len(picks) < 0.12
    user = "3f2b1c9e-0000-4000-8000-000000000001"
    assert pick_served_name(user, shares) == pick_served_name(user, list(reversed(shares)))
    assert 0 <= sticky_bucket(user) < 100
    with pytest.raises(ValueError, match="add up to 90"):
        pick_served_name(user, [("prod", 90)])


def test_a_better_candidate_is_promoted_and_production_archived(resources: Resources) -> None:
    engine = resources.registry
    prod, cand = split(engine)
    simulate_users(engine, {str(prod.served_name): 0.5, str(cand.served_name): 0.85}, users=1500)
    applier = RecordingApplier()
    outcome = run_decision(resources, ENDPOINT, RULE, applier=applier)
    assert outcome.decision.action is Action.promote and outcome.applied
    assert applier.calls == [
        {"endpoint_id": ENDPOINT, "routes": [(cand.served_name, 100)], "reason": outcome.decision.reason}
    ]
    assert pm.get_artifact(engine, cand.id).deployment_status == "production"
    assert pm.get_artifact(engine, prod.id).deployment_status == "archived"
    with Session(engine) as session:
        assert [(r.served_name, r.share_percent) for r in live_routes(session, ENDPOINT)] == [
            (cand.served_name, 100)
        ]
    events = repo.list_events(engine, cand.training_job_id, type=AB_PROMOTED)
    assert len(events) == 1 and events[0].payload["candidate"]["served_name"] == cand.served_name
    assert events[0].payload["p_value_better"] < 0.05
    assert repo.list_events(engine, prod.training_job_id, type=AB_PROMOTED)
    # the split is over: the next run says so instead of deciding on one arm
    with pytest.raises(InputError, match="has 1 live routes"):
        run_decision(resources, ENDPOINT, RULE, applier=applier)


def test_a_worse_candidate_is_stopped_early(resources: Resources) -> None:
    engine = resources.registry
    prod, cand = split(engine)
    simulate_users(engine, {str(prod.served_name): 0.7, str(cand.served_name): 0.2}, users=600)
    applier = RecordingApplier()
    outcome = run_decision(resources, ENDPOINT, RULE, applier=applier)
    assert outcome.decision.candidate.rated_responses < RULE.min_rated_per_arm  # early: before the minimum
    assert outcome.decision.action is Action.roll_back and "stopped early" in outcome.decision.reason
    assert applier.calls[0]["routes"] == [(prod.served_name, 100)]
    assert pm.get_artifact(engine, cand.id).deployment_status == "archived"
    assert pm.get_artifact(engine, prod.id).deployment_status == "production"
    assert repo.list_events(engine, cand.training_job_id, type=AB_ROLLED_BACK)


def test_recommend_only_and_continue_change_nothing(resources: Resources) -> None:
    engine = resources.registry
    prod, cand = split(engine)
    simulate_users(engine, {str(prod.served_name): 0.5, str(cand.served_name): 0.85}, users=1500)
    applier = RecordingApplier()
    outcome = run_decision(resources, ENDPOINT, RULE, applier=applier, recommend_only=True)
    assert outcome.decision.action is Action.promote and not outcome.applied
    assert applier.calls == [] and pm.get_artifact(engine, cand.id).deployment_status == "stored"
    assert repo.list_events(engine, cand.training_job_id, type=AB_PROMOTED) == []
    # counting from later than the ratings: nothing to go on, continue
    quiet = run_decision(resources, ENDPOINT, RULE, applier=applier, since=T0 + timedelta(days=30))
    assert quiet.decision.action is Action.keep_going and applier.calls == []
    with Session(engine) as session:
        assert len(live_routes(session, ENDPOINT)) == 2


def test_a_split_changed_during_the_decision_is_refused(
    resources: Resources, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = resources.registry
    prod, cand = split(engine)
    simulate_users(engine, {str(prod.served_name): 0.5, str(cand.served_name): 0.85}, users=1500)
    from tasks.ab import decide as stage

    real = stage.read_arms
    seen: list[int] = []

    def moving(res: Resources, endpoint_id: str) -> stage.Arms:
        arms = real(res, endpoint_id)
        seen.append(1)
        if len(seen) == 2:  # someone re-deployed between the read and the act
            from dataclasses import replace

            return replace(arms, candidate=replace(arms.candidate, share_percent=50))
        return arms

    monkeypatch.setattr(stage, "read_arms", moving)
    applier = RecordingApplier()
    with pytest.raises(ABSplitChanged, match="nothing was done"):
        run_decision(resources, ENDPOINT, RULE, applier=applier)
    assert applier.calls == [] and pm.get_artifact(engine, cand.id).deployment_status == "stored"


def _cli(*args: str) -> tuple[int, str]:
    from typer.testing import CliRunner

    from brightrun.errors import BrightrunError
    from cli.main import app

    result = CliRunner().invoke(app, list(args))
    if isinstance(result.exception, BrightrunError):  # what cli.main.main prints, and its exit code
        return result.exception.exit_code, f"error: {result.exception}"
    return result.exit_code, result.output


def test_ab_cli_status_and_decide(resources: Resources, monkeypatch: pytest.MonkeyPatch) -> None:
    import flows.decide_ab

    engine = resources.registry
    monkeypatch.setenv("BRIGHTRUN_DATABASE_URL", resources.settings.resolved_database_url)
    prod, cand = split(engine)
    simulate_users(engine, {str(prod.served_name): 0.5, str(cand.served_name): 0.85}, users=1500)
    applier = RecordingApplier()
    monkeypatch.setattr(flows.decide_ab, "routes_applier", lambda: applier)
    code, out = _cli("ab", "status", "--endpoint", ENDPOINT, "--min-rated", "100")
    assert code == 0 and "Promote: the candidate is significantly better" in out
    assert f"| candidate | `{cand.served_name}` | 10% |" in out and applier.calls == []
    code, out = _cli(
        "ab", "status", "--endpoint", ENDPOINT, "--min-rated", "10", "--early-stop-min-rated", "50"
    )
    assert code == 2 and "early_stop_min_rated (50) must be at most min_rated_per_arm (10)" in out
    code, out = _cli("ab", "status", "--endpoint", "ep-nobody")
    assert code == 2 and "endpoint ep-nobody has 0 live routes" in out
    code, out = _cli("ab", "decide", "--endpoint", ENDPOINT, "--min-rated", "100", "--json")
    assert code == 0 and '"action": "promote"' in out and '"applied": true' in out
    assert pm.get_artifact(engine, cand.id).deployment_status == "production"


def test_feedback_stats_reports_per_served_name_with_status_and_users(
    resources: Resources, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    engine = resources.registry
    monkeypatch.setenv("BRIGHTRUN_DATABASE_URL", resources.settings.resolved_database_url)
    prod, cand = split(engine)
    counts = simulate_users(engine, {}, users=300, extra_versions=["gpt-4o"])
    code, out = _cli("feedback-stats", "--since", "2026-03-01", "--until", "2026-03-02", "--json")
    assert code == 0, out
    rows = {r["model_version"]: r for r in json.loads(out)}
    assert rows[prod.served_name]["deployment_status"] == "production"
    assert rows[cand.served_name]["deployment_status"] == "stored"
    assert (
        rows[cand.served_name]["users"]
        == rows[cand.served_name]["rated_responses"]
        == counts[str(cand.served_name)]
    )
    assert rows["gpt-4o"]["artifact_id"] is None and rows["gpt-4o"]["deployment_status"] is None
    code, out = _cli("feedback-stats", "--since", "2026-03-01", "--until", "2026-03-02")
    lines = out.splitlines()
    assert lines[0].split()[-2:] == ["users", "status"]
    assert any(line.startswith(str(prod.served_name)) and line.endswith("production") for line in lines)
    unknown = next(line for line in lines if line.startswith("unknown model_version"))
    assert unknown.split()[2] == str(counts["gpt-4o"]) and "gpt-4o" in out


@pytest.mark.parametrize("command", ["status", "decide"])
def test_ab_cli_passes_every_rule_option_to_the_rule(command: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rule's options are written once (cli/options.shared_options) for both commands:
    each reaches the rule under its ABRule name, with its default when not given."""
    import cli.ab

    seen: list[dict] = []
    monkeypatch.setattr(cli.ab, "_run", lambda endpoint, fields, since, as_json, **kw: seen.append(fields))
    code, out = _cli("ab", command, "--endpoint", ENDPOINT, "--method", "bayesian", "--probability-level",
                     "0.9", "--max-rated", "300", "--since", "2026-03-01")  # fmt: skip
    assert code == 0, out
    assert seen == [
        {
            "min_rated_per_arm": 200,
            "method": "bayesian",
            "alpha": 0.05,
            "probability_level": 0.9,
            "early_stop_alpha": 0.01,
            "early_stop_min_rated": 50,
            "max_rated_per_arm": 300,
        }
    ]
