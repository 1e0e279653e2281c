"""The registry on a real Postgres 15 server (tests/fixtures/postgres.py)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from brightrun.registry import (
    SchemaOutOfDate,
    current_revision,
    head_revision,
    make_engine,
    open_registry_url,
    upgrade,
)
from brightrun.registry import repository as repo
from brightrun.registry.migrations import downgrade
from tests.fixtures.postgres import TEST_PASSWORD, PostgresCluster

# The backend-independent behaviour, run again here on Postgres with this module's `engine`.
from tests.unit.test_registry import (  # noqa: F401
    LEXY_TABLES,
    OUR_TABLES,
    test_concurrent_artifact_registrations_leave_one_row,
    test_events_append_and_dedup_by_source_key,
    test_every_status_transition_allowed_or_refused,
    test_history_ingested_three_times_lands_once,
    test_job_lifecycle_fields,
    test_metrics_batch_merges_and_is_idempotent,
    test_short_ids_resolve_when_unique_and_list_candidates_when_not,
    test_the_database_refuses_two_production_adapters_for_one_base_model,
    test_training_files_idempotent_and_dedup_sources,
    test_watermark_only_moves_forward,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def engine(postgres_url: str) -> Iterator[Engine]:
    upgrade(postgres_url)
    eng = open_registry_url(postgres_url)
    yield eng
    eng.dispose()


def _tables(engine: Engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names())


def test_migrations_from_empty_postgres(postgres_url: str) -> None:
    with pytest.raises(SchemaOutOfDate, match="run `brightrun db upgrade`"):
        open_registry_url(postgres_url)  # Postgres is never upgraded behind the user's back
    assert upgrade(postgres_url) == head_revision()
    engine = make_engine(postgres_url)
    assert _tables(engine) >= OUR_TABLES | LEXY_TABLES
    cols = {c["name"]: c for c in sa.inspect(engine).get_columns("training_jobs")}
    assert str(cols["hyperparameters"]["type"]) == "JSONB" and str(cols["id"]["type"]) == "UUID"
    with engine.begin() as conn:  # the dashboard inserting by SQL gets ids and timestamps
        conn.execute(sa.text("INSERT INTO training_jobs (job_name, base_model) VALUES ('sql', 'm')"))
        with pytest.raises(sa.exc.IntegrityError, match="ck_training_jobs_status"), conn.begin_nested():
            conn.execute(sa.text("UPDATE training_jobs SET status = 'bogus'"))
    downgrade(engine, "base")
    assert not (OUR_TABLES & _tables(engine))
    upgrade(engine)
    assert current_revision(engine) == head_revision()
    engine.dispose()


def test_migrations_with_existing_lexybrain_tables(postgres_url: str) -> None:
    engine = make_engine(postgres_url)
    with engine.begin() as conn:  # as the LexyHub app made them: its own shape and rows
        conn.execute(
            sa.text(
                "CREATE TABLE lexybrain_requests (id uuid PRIMARY KEY, user_id uuid, prompt text, "
                "context jsonb, insight_type text, requested_at timestamptz DEFAULT now(), app_col text)"
            )
        )
        conn.execute(
            sa.text(
                "CREATE TABLE lexybrain_responses (id uuid PRIMARY KEY, request_id uuid "
                "REFERENCES lexybrain_requests(id), output jsonb, model_name text, model_version text, "
                "latency_ms int, success boolean, prompt_tokens int, completion_tokens int, "
                "created_at timestamptz DEFAULT now())"
            )
        )
        conn.execute(
            sa.text("INSERT INTO lexybrain_requests (id, prompt, app_col) VALUES (:id, 'hi', 'kept')"),
            {"id": uuid.uuid4()},
        )
    upgrade(engine)
    assert _tables(engine) >= OUR_TABLES | LEXY_TABLES
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT app_col FROM lexybrain_requests")).scalar() == "kept"
    # lexybrain_feedback was absent, so the migration made it, with its CHECK.
    with engine.begin() as conn, pytest.raises(sa.exc.IntegrityError):
        conn.execute(
            sa.text("INSERT INTO lexybrain_feedback (id, feedback) VALUES (gen_random_uuid(), 'meh')")
        )
    engine.dispose()


def test_updated_at_maintained_for_dashboard_writes(engine: Engine) -> None:
    job = repo.create_job(engine, job_name="t", base_model="m")
    time.sleep(0.01)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE training_jobs SET job_name = 'renamed' WHERE id = :id"), {"id": job.id})
    assert repo.get_job(engine, job.id).updated_at > job.updated_at


def test_next_call_succeeds_after_postgres_restart(engine: Engine, postgres_server: PostgresCluster) -> None:
    job = repo.create_job(engine, job_name="r", base_model="m")
    repo.transition_job(engine, job.id, "preprocessing")
    postgres_server.restart()  # every pooled connection is now dead
    assert repo.transition_job(engine, job.id, "model_loaded").status == "model_loaded"

    # A server that is down when the call starts and comes back during its backoff.
    postgres_server.stop("immediate")
    starter = threading.Timer(1.0, postgres_server.start)
    starter.start()
    try:
        added = repo.add_metrics(engine, job.id, [{"step": s, "loss": 1.0} for s in range(100)])
    finally:
        starter.join()
    assert added == 100
    assert len(repo.list_metrics(engine, job.id)) == 100


def test_postgres_metrics_copy_path_merges(engine: Engine) -> None:
    job = repo.create_job(engine, job_name="c", base_model="m")
    rows = [{"step": s, "loss": float(s), "attempt": 1} for s in range(5000)]
    assert repo.add_metrics(engine, job.id, rows) == 5000
    repo.add_metrics(engine, job.id, [{"step": 7, "attempt": 1, "eval_loss": 0.25}])
    with engine.begin() as conn:  # merged with one statement's worth of rows in the same transaction
        repo.add_metrics(conn, job.id, [{"step": 8, "attempt": 1, "eval_loss": 0.5}])
        repo.add_metrics(conn, job.id, [{"step": 9, "attempt": 1, "eval_loss": 0.75}])
    points = {p.step: p for p in repo.list_metrics(engine, job.id)}
    assert len(points) == 5000
    assert [(points[s].loss, points[s].eval_loss) for s in (7, 8, 9)] == [
        (7.0, 0.25),
        (8.0, 0.5),
        (9.0, 0.75),
    ]


def test_password_never_in_errors(postgres_server: PostgresCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    from brightrun.registry import db

    monkeypatch.setattr(db, "RETRY_DELAYS", (0.01,))
    engine = make_engine(postgres_server.url("no_such_database"))
    with pytest.raises(db.DatabaseError) as info:
        repo.list_jobs(engine)
    assert TEST_PASSWORD not in str(info.value) and "no_such_database" in str(info.value)
    engine.dispose()
