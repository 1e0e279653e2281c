"""Served names (issue 24): made when an adapter is registered, stored, unique, resolvable,
backfilled by the migration, and the join of the users' ratings to adapters."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine, insert

from brightrun.registry import feedback_rows as ratings
from brightrun.registry import open_registry_url, upgrade
from brightrun.registry import promotion as pm
from brightrun.registry import repository as repo
from brightrun.registry.migrations import downgrade
from brightrun.registry.models import LexybrainFeedback, LexybrainRequest, LexybrainResponse
from brightrun.registry.served_names import MAX_LENGTH, PATTERN, served_name

ID = uuid.UUID("1a2b3c4d-0000-4000-8000-000000000000")


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    eng = open_registry_url(f"sqlite:///{tmp_path / 'registry.db'}")
    yield eng
    eng.dispose()


def register(engine: Engine, job_name: str) -> repo.Artifact:
    job = repo.create_job(engine, job_name=job_name, base_model="tiny-llama")
    return repo.register_artifact(engine, training_job_id=job.id, storage_path=f"/s/jobs/{job.id}/adapter")


@pytest.mark.parametrize(
    ("job_name", "expected"),
    [
        ("Support bot v3", "support-bot-v3-1a2b3c4d"),
        ("  ÜBER__Bot!! (March) ", "ber-bot-march-1a2b3c4d"),
        ("***", "adapter-1a2b3c4d"),
        ("a" * 200, "a" * 31 + "-1a2b3c4d"),
        ("x" * 30 + " -y", "x" * 30 + "-1a2b3c4d"),  # no '-' left dangling before the id
    ],
)
def test_served_name_is_a_short_lowercase_vllm_name(job_name: str, expected: str) -> None:
    name = served_name(job_name, ID)
    assert name == expected
    assert len(name) <= MAX_LENGTH and PATTERN.match(name)


def test_every_registered_adapter_gets_a_stable_unique_served_name(engine: Engine) -> None:
    a, b = register(engine, "Support bot"), register(engine, "Support bot")
    assert a.served_name == served_name("Support bot", a.id)
    assert b.served_name == served_name("Support bot", b.id) and a.served_name != b.served_name
    again = repo.register_artifact(engine, training_job_id=a.training_job_id, storage_path="/s/elsewhere")
    assert again.id == a.id and again.served_name == a.served_name  # re-registration keeps it
    listed = {x.id: x.served_name for x in repo.list_artifacts(engine)}
    assert listed == {a.id: a.served_name, b.id: b.served_name}


def test_the_registry_refuses_a_duplicate_served_name(engine: Engine) -> None:
    a, b = register(engine, "one"), register(engine, "two")
    table = sa.table("model_artifacts", sa.column("id", sa.Uuid()), sa.column("served_name", sa.String()))
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
        conn.execute(sa.update(table).where(table.c.id == uuid.UUID(b.id)).values(served_name=a.served_name))


def test_a_served_name_is_accepted_wherever_an_artifact_id_is(engine: Engine) -> None:
    a = register(engine, "Support bot")
    assert a.served_name is not None
    assert pm.resolve_artifact(engine, a.served_name).id == a.id
    assert pm.resolve_artifact(engine, f"  {a.served_name} ").id == a.id
    with pytest.raises(pm.ArtifactNotFound, match="no artifact is served as 'support-bot-00000000'"):
        pm.resolve_artifact(engine, "support-bot-00000000")
    with pytest.raises(pm.ArtifactNotFound, match="not an artifact id, a served name"):
        pm.resolve_artifact(engine, "Not A Name!")


def test_the_migration_backfills_existing_rows(engine: Engine) -> None:
    a, b = register(engine, "Support bot"), register(engine, "Other")
    downgrade(engine, "0003")  # as the registry was before served names
    assert "served_name" not in {c["name"] for c in sa.inspect(engine).get_columns("model_artifacts")}
    upgrade(engine)
    assert {x.id: x.served_name for x in repo.list_artifacts(engine)} == {
        a.id: served_name("Support bot", a.id),
        b.id: served_name("Other", b.id),
    }
    indexes = {i["name"]: i for i in sa.inspect(engine).get_indexes("model_artifacts")}
    assert indexes["ix_model_artifacts_served_name"]["unique"]


def rate(engine: Engine, version: str, values: list[str], t0: datetime) -> None:
    req, resp, fb = LexybrainRequest.__table__, LexybrainResponse.__table__, LexybrainFeedback.__table__
    with engine.begin() as conn:
        for value in values:
            rid, sid = uuid.uuid4(), uuid.uuid4()
            conn.execute(insert(req).values(id=rid, prompt="q", requested_at=t0))
            conn.execute(insert(resp).values(id=sid, request_id=rid, model_version=version, created_at=t0))
            conn.execute(insert(fb).values(id=uuid.uuid4(), response_id=sid, feedback=value, created_at=t0))


def test_ratings_join_to_adapters_and_unknown_versions_are_reported(engine: Engine) -> None:
    t0 = datetime(2026, 3, 1, tzinfo=UTC)
    a, b = register(engine, "bot"), register(engine, "bot")
    assert a.served_name and b.served_name
    rate(engine, a.served_name, ["positive", "positive", "negative"], t0)
    rate(engine, b.served_name, ["negative"], t0)
    rate(engine, "gpt-4o", ["positive", "neutral"], t0)
    rate(engine, "v0-typo", ["negative"], t0)
    stats = {s.model_version: s for s in ratings.feedback_by_version(engine, until=t0 + timedelta(days=1))}
    assert stats[a.served_name].artifact_id == a.id and stats[a.served_name].positive == 2
    assert stats[b.served_name].artifact_id == b.id and stats[b.served_name].negative == 1
    assert stats["gpt-4o"].artifact_id is None and stats["v0-typo"].artifact_id is None
    unknown = ratings.unknown_versions(list(stats.values()))
    assert unknown is not None
    counts = (unknown.rated_responses, unknown.ratings, unknown.positive, unknown.negative, unknown.neutral)
    assert counts == (3, 3, 1, 1, 1)
    assert ratings.unknown_versions([stats[a.served_name]]) is None
