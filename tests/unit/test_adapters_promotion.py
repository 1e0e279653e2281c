"""Adapter lifecycle in the registry (brightrun/registry/promotion.py), on SQLite.

The backend-independent walks take an `engine`; tests/integration/test_adapters_postgres.py
runs them again on a real Postgres server.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, insert

from brightrun.errors import InputError
from brightrun.registry import feedback_rows as ratings
from brightrun.registry import open_registry_url
from brightrun.registry import promotion as pm
from brightrun.registry import repository as repo
from brightrun.registry.models import LexybrainFeedback, LexybrainRequest, LexybrainResponse
from tasks.adapters import compare_losses

BASE = "tiny-llama"


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    eng = open_registry_url(f"sqlite:///{tmp_path / 'registry.db'}")
    yield eng
    eng.dispose()


def adapter(
    engine: Engine, *, base_model: str = BASE, status: str = "completed", loss: float = 1.0
) -> pm.AdapterRow:
    """A job that reached `status` and its registered lora_adapter."""
    job = repo.create_job(engine, job_name=f"job-{uuid.uuid4().hex[:6]}", base_model=base_model)
    for step in ("preprocessing", "model_loaded", "training", status):
        repo.transition_job(engine, job.id, step)
    art = repo.register_artifact(
        engine,
        training_job_id=job.id,
        storage_path=f"/storage/jobs/{job.id}/adapter",
        base_model=base_model,
        validation_loss=loss,
    )
    return pm.get_artifact(engine, art.id)


def evaluated(engine: Engine, candidate: pm.AdapterRow, against: pm.AdapterRow, c: float, a: float) -> None:
    """Record an evaluation of `candidate` vs `against` with these losses on one set."""
    pm.record_evaluation(
        engine,
        pm.EvaluationRecord(
            candidate=pm.ModelScore(artifact_id=candidate.id, label="c", loss=c, perplexity=2.0, tokens=100),
            against=pm.ModelScore(artifact_id=against.id, label="a", loss=a, perplexity=2.0, tokens=100),
            base_model=BASE,
            eval_set="validation split",
            eval_set_sha256="ab" * 32,
            conversations=4,
            wins={"candidate": 1, "against": 3, "ties": 0},
        ),
    )


def status(engine: Engine, art: pm.AdapterRow) -> str:
    return pm.get_artifact(engine, art.id).deployment_status


def walk_lifecycle(engine: Engine) -> None:
    """stored → testing → production → archived and back by rollback, with the gate."""
    a, b, c = adapter(engine), adapter(engine), adapter(engine)
    assert status(engine, a) == "stored"
    assert pm.promote(engine, a.id, "testing").artifact.deployment_status == "testing"
    first = pm.promote(engine, a.id, "production")  # nothing in production yet: no gate
    assert first.artifact.deployment_status == "production" and first.artifact.deployed_at is not None

    with pytest.raises(pm.PromotionRefused, match="no evaluation"):
        pm.promote(engine, b.id, "production")
    evaluated(engine, b, a, c=2.5, a=2.0)  # b is worse than production on the same set
    with pytest.raises(pm.PromotionRefused, match=r"2\.5000 .* worse than 2\.0000"):
        pm.promote(engine, b.id, "production")
    assert (status(engine, a), status(engine, b)) == ("production", "stored")  # nothing changed
    with pytest.raises(InputError, match="--reason"):
        pm.promote(engine, b.id, "production", force=True)

    forced = pm.promote(engine, b.id, "production", force=True, reason="hotfix for tone")
    assert (status(engine, a), status(engine, b)) == ("archived", "production")
    assert [ch.event for ch in forced.changes] == [pm.ARCHIVED, pm.PROMOTED]
    (event,) = repo.list_events(engine, b.training_job_id, type=pm.PROMOTED)
    assert event.payload["forced"] is True and event.payload["reason"] == "hotfix for tone"
    assert event.payload["replaced"] == a.id and "worse than" in event.payload["gate"]

    evaluated(engine, c, b, c=1.5, a=2.5)  # c beats production: the gate passes
    pm.promote(engine, c.id, "production")
    assert [status(engine, x) for x in (a, b, c)] == ["archived", "archived", "production"]

    with pytest.raises(pm.PromotionRefused, match="archived"):
        pm.promote(engine, a.id, "production", force=True, reason="x")

    back = pm.rollback(engine)
    assert back.artifact.id == b.id
    assert [status(engine, x) for x in (a, b, c)] == ["archived", "production", "archived"]
    again = pm.rollback(engine, BASE)  # c was rolled back: the one before b is a
    assert again.artifact.id == a.id
    assert [status(engine, x) for x in (a, b, c)] == ["production", "archived", "archived"]
    with pytest.raises(pm.PromotionRefused, match="no earlier one"):
        pm.rollback(engine)
    assert len(pm.production_adapters(engine, BASE)) == 1
    assert {e.type for e in pm.history(engine, [a, b, c])} >= {pm.PROMOTED, pm.ARCHIVED, pm.ROLLED_BACK}


def test_promote_and_rollback_walk_the_seed_statuses_with_the_gate(engine: Engine) -> None:
    walk_lifecycle(engine)


def test_refusals_change_nothing(engine: Engine) -> None:
    failed = adapter(engine, status="failed")
    with pytest.raises(pm.PromotionRefused, match="failed, not completed"):
        pm.promote(engine, failed.id, "testing")
    live = adapter(engine)
    pm.promote(engine, live.id, "production")
    with pytest.raises(pm.PromotionRefused, match="rollback"):
        pm.promote(engine, live.id, "testing")
    with pytest.raises(InputError, match="testing or production"):
        pm.promote(engine, live.id, "archived")
    with pytest.raises(pm.ArtifactNotFound):
        pm.resolve_artifact(engine, str(uuid.uuid4()))
    with pytest.raises(pm.ArtifactNotFound):
        pm.resolve_artifact(engine, "not-an-id")
    assert status(engine, failed) == "stored" and status(engine, live) == "production"
    assert repo.list_events(engine, failed.training_job_id, type=pm.PROMOTED) == []


def test_a_promotion_that_saw_another_production_is_refused(engine: Engine) -> None:
    """The race, serialised: both saw no production; the second to commit is refused."""
    a, b = adapter(engine), adapter(engine)
    pm.promote(engine, a.id, "production", expected_production=None)
    with pytest.raises(pm.PromotionRefused, match="another promotion won"):
        pm.promote(engine, b.id, "production", force=True, reason="r", expected_production=None)
    assert [x.id for x in pm.production_adapters(engine, BASE)] == [a.id]


def test_resolve_by_artifact_job_and_production(engine: Engine) -> None:
    a = adapter(engine)
    other = adapter(engine, base_model="other-base")
    assert pm.resolve_artifact(engine, a.id).id == a.id
    assert pm.resolve_artifact(engine, a.training_job_id).id == a.id
    with pytest.raises(pm.ArtifactNotFound, match="no adapter is in production"):
        pm.resolve_artifact(engine, "production")
    pm.promote(engine, a.id, "production")
    assert pm.resolve_artifact(engine, "production").id == a.id
    pm.promote(engine, other.id, "production")  # another base model: both stay production
    with pytest.raises(InputError, match="--base-model"):
        pm.resolve_artifact(engine, "production")
    assert pm.resolve_artifact(engine, "production", base_model="other-base").id == other.id


def test_wilson_interval_known_values() -> None:
    low, high = ratings.wilson_interval(8, 10)  # type: ignore[misc]
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)
    assert ratings.wilson_interval(0, 5)[0] == 0.0  # type: ignore[index]
    assert ratings.wilson_interval(0, 0) is None


def test_compare_losses_pools_examples_per_conversation() -> None:
    results = compare_losses(
        ["c1", "c1", "c2", "c3"], [(2, 1), (2, 1), (1, 1), (3, 1)], [(3, 1), (3, 1), (2, 1), (3, 1)]
    )
    assert [(r.conversation_id, r.candidate_loss, r.against_loss, r.winner) for r in results] == [
        ("c1", 2.0, 3.0, "candidate"),
        ("c2", 1.0, 2.0, "candidate"),
        ("c3", 3.0, 3.0, "tie"),
    ]


def load_lexybrain(engine: Engine, t0: datetime) -> None:
    """v1: 3 positive + 1 negative on 3 responses; v2: 1 positive, 2 negative, 1 neutral; one
    v2 rating outside the window; one unrated v1 response."""
    req, resp, fb = LexybrainRequest.__table__, LexybrainResponse.__table__, LexybrainFeedback.__table__
    ratings = {
        ("v1", 0): ["positive", "positive"],
        ("v1", 1): ["positive"],
        ("v1", 2): ["negative"],
        ("v1", 3): [],
        ("v2", 0): ["positive", "negative"],
        ("v2", 1): ["negative", "neutral"],
    }
    with engine.begin() as conn:
        for (version, n), values in ratings.items():
            rid, sid = uuid.uuid4(), uuid.uuid4()
            conn.execute(insert(req).values(id=rid, prompt=f"q{n}", requested_at=t0))
            conn.execute(insert(resp).values(id=sid, request_id=rid, model_version=version, created_at=t0))
            for i, value in enumerate(values):
                at = t0 + timedelta(minutes=i + 1)
                conn.execute(
                    insert(fb).values(id=uuid.uuid4(), response_id=sid, feedback=value, created_at=at)
                )
        late = conn.execute(
            insert(resp).values(id=uuid.uuid4(), model_version="v2", created_at=t0)
        ).inserted_primary_key
        conn.execute(
            insert(fb).values(
                id=uuid.uuid4(), response_id=late[0], feedback="positive", created_at=t0 + timedelta(days=3)
            )
        )


def test_feedback_stats_per_model_version(engine: Engine) -> None:
    t0 = datetime(2026, 3, 1, tzinfo=UTC)
    load_lexybrain(engine, t0)
    stats = {
        s.model_version: s
        for s in ratings.feedback_by_version(engine, since=t0, until=t0 + timedelta(days=1))
    }
    v1, v2 = stats["v1"], stats["v2"]
    assert (v1.rated_responses, v1.ratings, v1.positive, v1.negative, v1.neutral) == (3, 4, 3, 1, 0)
    assert (v2.rated_responses, v2.ratings, v2.positive, v2.negative, v2.neutral) == (2, 4, 1, 2, 1)
    assert v1.positive_rate == 0.75 and v1.interval() == ratings.wilson_interval(3, 4)
    everything = {s.model_version: s for s in ratings.feedback_by_version(engine)}
    assert everything["v2"].ratings == 5 and everything["v2"].positive == 2


def test_every_change_is_a_signed_webhook(brightrun_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from brightrun.resources import Resources
    from tasks import adapters
    from tests.webhook_server import webhook_receiver

    monkeypatch.setenv("BRIGHTRUN_WEBHOOK_SECRET", "s3cret")
    with Resources.from_settings() as resources, webhook_receiver("s3cret") as receiver:
        a, b = adapter(resources.registry), adapter(resources.registry)
        adapters.promote(resources, a.id, "production", webhook_url=receiver.url)
        adapters.promote(resources, b.id, "production", force=True, reason="why", webhook_url=receiver.url)
        adapters.rollback(resources, webhook_url=receiver.url)
    got = [
        (p["artifact_id"], p["event"], p["previous_deployment_status"], p["deployment_status"])
        for p in receiver.received
    ]
    assert got == [
        (a.id, pm.PROMOTED, "stored", "production"),
        (a.id, pm.ARCHIVED, "production", "archived"),
        (b.id, pm.PROMOTED, "stored", "production"),
        (b.id, pm.ROLLED_BACK, "production", "archived"),
        (a.id, pm.PROMOTED, "archived", "production"),
    ]
    assert receiver.bad_signatures == 0
    assert all(p["job_id"] and "timestamp" in p for p in receiver.received)  # the dashboard's envelope
