"""`decide_ab` as a real Prefect flow (the session's test harness), on the embedded SQLite
registry and on a Supabase-shaped Postgres through its transaction pooler: simulated users
rate both arms, the flow promotes a better candidate, stops a worse one early, and shows its
figures as a Markdown artifact; the decision reaches a signed webhook. The app's SQL that
picks `model` per user gives the same arm as `brightrun.ab.pick_served_name`."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from brightrun.ab import PICK_MODEL_SQL, pick_served_name
from brightrun.registry import open_registry_url, upgrade
from brightrun.registry import promotion as pm
from brightrun.registry import repository as repo
from brightrun.registry.routes import live_routes
from tasks.ab import AB_PROMOTED
from tests.ab_helpers import ENDPOINT, RecordingApplier, simulate_users, split
from tests.fixtures.supabase import SupabaseDatabase
from tests.webhook_server import webhook_receiver

pytestmark = pytest.mark.integration
SECRET = "ab-webhook-secret"


@pytest.fixture(params=["sqlite", "supabase"])
def registry(
    request: pytest.FixtureRequest, brightrun_home: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Engine]:
    """The registry the flow's settings point at: the embedded SQLite one, or the customer's
    Supabase database (migrated on the direct connection, used through the pooler)."""
    if request.param == "sqlite":
        url = f"sqlite:///{brightrun_home / 'registry.db'}"
        engine = open_registry_url(url, auto_upgrade=True)
    else:
        db: SupabaseDatabase = request.getfixturevalue("supabase_db")
        upgrade(db.direct_url)
        url = db.pooler_url
        engine = open_registry_url(url)
    monkeypatch.setenv("BRIGHTRUN_DATABASE_URL", url)
    monkeypatch.setenv("BRIGHTRUN_WEBHOOK_SECRET", SECRET)
    yield engine
    engine.dispose()


@pytest.fixture
def applier(monkeypatch: pytest.MonkeyPatch) -> RecordingApplier:
    import flows.decide_ab

    recording = RecordingApplier()
    monkeypatch.setattr(flows.decide_ab, "routes_applier", lambda: recording)
    return recording


def _artifact(flow_run_id: object) -> dict[str, object]:
    from prefect import get_client

    with get_client(sync_client=True) as client:
        found = client._client.post(
            "/artifacts/filter",
            json={"artifacts": {"key": {"any_": [f"ab-decision-{ENDPOINT}"]}}, "limit": 50, "offset": 0},
        ).json()
    mine = [a for a in found if a["flow_run_id"] == str(flow_run_id)]
    assert len(mine) == 1
    return mine[0]


def test_decide_ab_flow_promotes_a_better_candidate(
    prefect_harness: str, registry: Engine, applier: RecordingApplier
) -> None:
    from flows.decide_ab import decide_ab

    prod, cand = split(registry, share=10)
    simulate_users(registry, {str(prod.served_name): 0.5, str(cand.served_name): 0.85}, users=1500)
    with webhook_receiver(SECRET) as hook:
        # recommend-only first: says promote, changes nothing
        state = decide_ab(
            endpoint_id=ENDPOINT,
            min_rated_per_arm=100,
            recommend_only=True,
            webhook_url=hook.url,
            return_state=True,
        )
        assert state.is_completed() and state.result()["action"] == "promote"
        assert applier.calls == [] and pm.get_artifact(registry, cand.id).deployment_status == "stored"
        assert "recommend-only: nothing changed" in str(_artifact(state.state_details.flow_run_id)["data"])

        state = decide_ab(
            endpoint_id=ENDPOINT, min_rated_per_arm=100, webhook_url=hook.url, return_state=True
        )
        assert state.is_completed()
        result = state.result()
        assert result["action"] == "promote" and result["applied"] is True
        assert [h["event"] for h in hook.received] == ["ab_recommended", "ab_promoted"]
        assert hook.received[1]["ab"]["candidate"]["served_name"] == cand.served_name
        assert hook.bad_signatures == 0
    assert applier.calls[0]["routes"] == [(cand.served_name, 100)]
    assert pm.get_artifact(registry, cand.id).deployment_status == "production"
    assert pm.get_artifact(registry, prod.id).deployment_status == "archived"
    [event] = repo.list_events(registry, cand.training_job_id, type=AB_PROMOTED)
    assert event.payload["p_value_better"] < 0.05 and event.payload["endpoint_id"] == ENDPOINT
    card = str(_artifact(state.state_details.flow_run_id)["data"])
    assert f"| candidate | `{cand.served_name}` | 10% |" in card and "one-sided p" in card
    assert f"the endpoint now serves `{cand.served_name}` 100%" in card


def test_decide_ab_flow_stops_a_worse_candidate_early(
    prefect_harness: str, registry: Engine, applier: RecordingApplier
) -> None:
    from flows.decide_ab import decide_ab

    prod, cand = split(registry, share=10)
    simulate_users(registry, {str(prod.served_name): 0.7, str(cand.served_name): 0.2}, users=700)
    result = decide_ab(
        endpoint_id=ENDPOINT, method="bayesian", min_rated_per_arm=200, early_stop_min_rated=40
    )
    assert result["action"] == "roll_back" and "stopped early" in result["reason"]
    assert result["candidate"]["rated_responses"] < 200 and result["probability_better"] < 0.01
    assert pm.get_artifact(registry, cand.id).deployment_status == "archived"
    assert pm.get_artifact(registry, prod.id).deployment_status == "production"
    with Session(registry) as session:
        assert [r.served_name for r in live_routes(session, ENDPOINT)] == [prod.served_name]


def test_the_apps_sql_picks_the_same_arm(supabase_db: SupabaseDatabase) -> None:
    upgrade(supabase_db.direct_url)
    engine = open_registry_url(supabase_db.pooler_url)
    try:
        prod, cand = split(engine, share=10)
        shares = [(str(prod.served_name), 90), (str(cand.served_name), 10)]
        users = [str(uuid.UUID(int=i * 104729 + 3)) for i in range(300)]
        with engine.connect() as conn:
            picked = [
                conn.execute(sa.text(PICK_MODEL_SQL), {"endpoint_id": ENDPOINT, "user_id": u}).scalar_one()
                for u in users
            ]
        # the app reads the view as a signed-in user (RLS: authenticated may read it)
        with engine.begin() as conn:
            conn.execute(sa.text("SET LOCAL ROLE authenticated"))
            as_app = conn.execute(sa.text("SELECT count(*) FROM serving_routes_live")).scalar_one()
        assert picked == [pick_served_name(u, shares) for u in users]
        assert 0 < picked.count(str(cand.served_name)) < 60 and as_app == 2
    finally:
        engine.dispose()
