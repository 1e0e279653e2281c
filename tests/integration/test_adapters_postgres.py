"""Adapter promotion on a real Postgres server: the lifecycle walk again, and concurrent
promotions (one wins, the others are refused, never two production adapters)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, func, select

from brightrun.registry import open_registry_url, upgrade
from brightrun.registry import promotion as pm
from tests.unit.test_adapters_promotion import BASE, adapter, walk_lifecycle

pytestmark = pytest.mark.integration


@pytest.fixture
def engine(postgres_url: str) -> Iterator[Engine]:
    upgrade(postgres_url)
    eng = open_registry_url(postgres_url)
    yield eng
    eng.dispose()


def test_lifecycle_walk_on_postgres(engine: Engine) -> None:
    walk_lifecycle(engine)


def test_concurrent_promotions_one_wins_the_others_are_refused(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    read_production = pm._current_production

    def slow_read(conn, base_model):  # type: ignore[no-untyped-def]
        # Widen the window between reading production and writing: without the lock every
        # promotion would read "none" here and all would write.
        found = read_production(conn, base_model)
        time.sleep(0.3)
        return found

    monkeypatch.setattr(pm, "_current_production", slow_read)
    candidates = [adapter(engine) for _ in range(6)]
    barrier = threading.Barrier(len(candidates))
    outcomes: dict[str, str] = {}

    def promote(art: pm.AdapterRow) -> None:
        barrier.wait()
        try:
            # Each saw no production adapter when it started, as two operators would.
            pm.promote(engine, art.id, "production", force=True, reason="race", expected_production=None)
            outcomes[art.id] = "won"
        except pm.PromotionRefused as exc:
            outcomes[art.id] = f"refused: {exc}"
        except Exception as exc:  # recorded, so the assertion below shows it
            outcomes[art.id] = f"error: {exc!r}"

    threads = [threading.Thread(target=promote, args=(c,)) for c in candidates]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    winners = [aid for aid, outcome in outcomes.items() if outcome == "won"]
    assert len(outcomes) == len(candidates) and len(winners) == 1, outcomes
    assert all("another promotion won" in o for o in outcomes.values() if o != "won")
    with engine.connect() as conn:
        count = conn.execute(
            select(func.count())
            .select_from(pm.artifacts_t)
            .where(pm.artifacts_t.c.base_model == BASE, pm.artifacts_t.c.deployment_status == "production")
        ).scalar_one()
    assert count == 1
    assert [a.id for a in pm.production_adapters(engine, BASE)] == winners
    # Losers are untouched: still stored, no deployed_at, no promotion event.
    for c in candidates:
        if c.id not in winners:
            row = pm.get_artifact(engine, c.id)
            assert (row.deployment_status, row.deployed_at) == ("stored", None)
