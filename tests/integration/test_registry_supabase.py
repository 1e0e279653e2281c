"""Installing the registry onto the customer's Supabase database (issue 12), on real Postgres.

The database is laid out as their project is (tests/fixtures/postgres.py: `auth.users`, the
app's `conversations` and `training_files` with columns, constraints, a trigger and rows of
its own, LexyHub's `lexybrain_*` with rows) before `brightrun db upgrade` runs.
"""

from __future__ import annotations

import json
import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from brightrun.registry import current_revision, head_revision, make_engine, open_registry_url, upgrade
from brightrun.registry import repository as repo
from tests.fixtures.postgres import (
    APP_TRAINING_FILE,
    SUPABASE_USER,
    PostgresCluster,
    dump_app_tables,
)

pytestmark = pytest.mark.integration

# The seed's columns (roadmap §4.2 as DESIGN.md §6 restates it) and the Postgres type of each.
SEED_COLUMNS = {
    "training_jobs": {
        "id": "uuid",
        "status": "character varying",
        "base_model": "character varying",
        "training_file_id": "uuid",
        "runpod_pod_id": "character varying",
        "runpod_endpoint_url": "text",
        "metrics": "jsonb",
        "current_step": "integer",
        "total_steps": "integer",
        "current_epoch": "double precision",
        "estimated_completion_at": "timestamp with time zone",
        "estimated_cost_usd": "double precision",
        "actual_cost_usd": "double precision",
        "gpu_hours": "double precision",
        "lora_artifact_path": "text",
        "training_log_path": "text",
        "error_message": "text",
        "retry_count": "integer",
        "created_by": "uuid",
        "started_at": "timestamp with time zone",
        "completed_at": "timestamp with time zone",
        "created_at": "timestamp with time zone",
        "updated_at": "timestamp with time zone",
    },
    "model_artifacts": {
        "id": "uuid",
        "training_job_id": "uuid",
        "artifact_type": "character varying",
        "storage_path": "text",
        "file_size_bytes": "bigint",
        "base_model": "character varying",
        "lora_config": "jsonb",
        "validation_loss": "double precision",
        "validation_perplexity": "double precision",
        "human_eval_score": "double precision",
        "deployment_status": "character varying",
        "deployed_at": "timestamp with time zone",
        "created_by": "uuid",
        "created_at": "timestamp with time zone",
    },
    "training_metrics_history": {
        "id": "uuid",
        "training_job_id": "uuid",
        "step": "integer",
        "epoch": "double precision",
        "loss": "double precision",
        "learning_rate": "double precision",
        "grad_norm": "double precision",
        "recorded_at": "timestamp with time zone",
    },
}


def _cli(url: str, *args: str) -> tuple[int, str]:
    """The registry's commands alone (this module tests them, not the rest of the CLI)."""
    import typer

    from cli import registry

    app = typer.Typer()
    registry.register(app)
    result = CliRunner().invoke(app, list(args), env={"BRIGHTRUN_DATABASE_URL": url})
    return result.exit_code, result.output + (repr(result.exception) if result.exception else "")


def _column_types(engine: sa.Engine, table: str) -> dict[str, str]:
    with engine.connect() as conn:
        return dict(
            conn.execute(
                sa.text(
                    "SELECT column_name, data_type FROM information_schema.columns "
                    "WHERE table_schema = 'public' AND table_name = :t"
                ),
                {"t": table},
            ).all()
        )


def _schema_snapshot(engine: sa.Engine) -> list[tuple[object, ...]]:
    """Every column, constraint, index, trigger, view and function of the database."""
    with engine.connect() as conn:
        return [
            *conn.execute(
                sa.text(
                    "SELECT table_schema, table_name, column_name, data_type, is_nullable, "
                    "column_default FROM information_schema.columns "
                    "WHERE table_schema IN ('public', 'auth') ORDER BY 1, 2, 3"
                )
            ).all(),
            *conn.execute(
                sa.text("SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint ORDER BY 1, 2")
            ).all(),
            *conn.execute(
                sa.text("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1")
            ).all(),
            *conn.execute(sa.text("SELECT tgname FROM pg_trigger WHERE NOT tgisinternal ORDER BY 1")).all(),
            *conn.execute(
                sa.text("SELECT viewname, definition FROM pg_views WHERE schemaname = 'public' ORDER BY 1")
            ).all(),
            *conn.execute(
                sa.text(
                    "SELECT p.proname, pg_get_functiondef(p.oid) FROM pg_proc p "
                    "JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'public' ORDER BY 1"
                )
            ).all(),
        ]


def test_db_upgrade_installs_beside_the_apps_data_and_again_is_a_no_op(supabase_url: str) -> None:
    before = dump_app_tables(supabase_url)
    code, output = _cli(supabase_url, "db", "upgrade")
    assert code == 0, output
    assert f"revision {head_revision()}" in output and "Postgres objects" not in output

    # The app's tables: same columns (definitions), constraints, triggers and rows as before.
    columns = {t.split(":")[0]: before[t] for t in before if t.endswith(":column_names")}
    assert dump_app_tables(supabase_url, columns) == before  # type: ignore[arg-type]

    engine = make_engine(supabase_url)
    try:
        for table, expected in SEED_COLUMNS.items():
            actual = _column_types(engine, table)
            assert {name: actual.get(name) for name in expected} == expected, table
        # created_by points at Supabase's users; the seed's seven statuses are enforced.
        with engine.connect() as conn:
            fks = conn.execute(
                sa.text(
                    "SELECT conrelid::regclass::text, pg_get_constraintdef(oid) FROM pg_constraint "
                    "WHERE contype = 'f' AND confrelid = 'auth.users'::regclass"
                )
            ).all()
            status_check = conn.execute(
                sa.text(
                    "SELECT pg_get_constraintdef(oid) FROM pg_constraint "
                    "WHERE conrelid = 'training_jobs'::regclass AND contype = 'c' "
                    "AND pg_get_constraintdef(oid) LIKE '%status%'"
                )
            ).scalar_one()
        referencing = {table for table, definition in fks if "(created_by)" in definition}
        assert {"training_jobs", "model_artifacts"} <= referencing
        for status in (
            "queued",
            "preprocessing",
            "model_loaded",
            "training",
            "completed",
            "failed",
            "cancelled",
        ):
            assert f"'{status}'" in status_check

        # A second upgrade changes nothing at all.
        snapshot = _schema_snapshot(engine)
        code, output = _cli(supabase_url, "db", "upgrade")
        assert code == 0, output
        assert _schema_snapshot(engine) == snapshot
        assert current_revision(engine) == head_revision()
    finally:
        engine.dispose()


def test_the_pipeline_writes_into_the_apps_training_files_by_the_seeds_names(supabase_url: str) -> None:
    upgrade(supabase_url)
    engine = open_registry_url(supabase_url)
    try:
        # The app's own row, read back: where its JSON is, in the app's training-files bucket.
        app_file, location = repo.resolve_training_file(engine, APP_TRAINING_FILE)
        assert (app_file.name, app_file.total_training_pairs, app_file.source) == (
            "Coaching set v1",
            12,
            None,
        )
        assert location == f"s3://training-files/{SUPABASE_USER}/coaching-v1.json"
        second = next(f for f in repo.list_training_files(engine) if f.name == "Coaching set v2")
        assert repo.training_file_location(second.json_file_path or "") == (
            f"s3://training-files/{SUPABASE_USER}/coaching-v2.json"
        )
        with pytest.raises(repo.TrainingFileNotFound):
            repo.resolve_training_file(engine, uuid.uuid4())

        # The pipeline's own row lands in the same table (the app's NOT NULL defaults apply).
        ours, created = repo.register_training_file(
            engine, name="upload.json", json_file_path="s3://bucket/datasets/abc.json", sha256="c" * 64
        )
        assert created and ours.json_file_path == "s3://bucket/datasets/abc.json"
        with engine.connect() as conn:
            row = conn.execute(
                sa.text(
                    "SELECT json_file_path, total_training_pairs, status FROM training_files WHERE id = :id"
                ),
                {"id": ours.id},
            ).one()
        assert tuple(row) == ("s3://bucket/datasets/abc.json", 0, "active")

        # A job started from the app's training file, by a Supabase user; artifacts by the seed's names.
        job = repo.create_job(
            engine,
            job_name="from-app",
            base_model="m",
            training_file_id=APP_TRAINING_FILE,
            created_by=SUPABASE_USER,
        )
        assert (job.training_file_id, job.created_by) == (APP_TRAINING_FILE, SUPABASE_USER)
        artifact = repo.register_artifact(
            engine,
            training_job_id=job.id,
            storage_path="s3://b/adapter",
            file_size_bytes=10,
            validation_perplexity=2.0,
            created_by=SUPABASE_USER,
        )
        assert (artifact.training_job_id, artifact.deployment_status) == (job.id, "stored")
        with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:  # not a Supabase user
            conn.execute(
                sa.text("UPDATE training_jobs SET created_by = :u WHERE id = :id"),
                {"u": uuid.uuid4(), "id": job.id},
            )
        with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:  # the seed's values only
            conn.execute(sa.text("UPDATE model_artifacts SET deployment_status = 'deployed'"))
    finally:
        engine.dispose()


def test_lexybrain_view_and_feedback_stats(supabase_url: str) -> None:
    upgrade(supabase_url)
    engine = make_engine(supabase_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT prompt, output->>'answer' AS answer, feedback FROM lexybrain_training_data "
                    "WHERE feedback = 'positive' ORDER BY prompt"
                )
            ).all()
            assert [tuple(r) for r in rows] == [
                ("question 1", "reply 1", "positive"),
                ("question 2", "reply 2", "positive"),
                ("question 5", "reply 5", "positive"),
            ]
            # Every response once per feedback row, unrated ones too (none here): 6 rows.
            assert conn.execute(sa.text("SELECT count(*) FROM lexybrain_training_data")).scalar() == 6
            march = conn.execute(
                sa.text("SELECT * FROM get_lexybrain_feedback_stats(:s, :e)"),
                {"s": datetime(2026, 3, 1, tzinfo=UTC), "e": datetime(2026, 4, 1, tzinfo=UTC)},
            ).one()
            assert tuple(march)[:4] == (5, 3, 1, 1) and float(march[4]) == 0.6
            everything = conn.execute(
                sa.text("SELECT * FROM get_lexybrain_feedback_stats('2026-01-01', '2027-01-01')")
            ).one()
            assert tuple(everything)[:4] == (6, 3, 2, 1) and float(everything[4]) == 0.5
            empty = conn.execute(
                sa.text("SELECT * FROM get_lexybrain_feedback_stats('2020-01-01', '2020-02-01')")
            ).one()
            assert tuple(empty)[:4] == (0, 0, 0, 0) and float(empty[4]) == 0
    finally:
        engine.dispose()


def test_the_apps_own_view_and_function_are_kept(supabase_url: str) -> None:
    engine = make_engine(supabase_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.text("CREATE VIEW lexybrain_training_data AS SELECT id, prompt FROM lexybrain_requests")
            )
            conn.execute(
                sa.text(
                    "CREATE FUNCTION get_lexybrain_feedback_stats(a timestamptz, b timestamptz) "
                    "RETURNS integer LANGUAGE sql AS $$ SELECT 42 $$"
                )
            )
        upgrade(engine)
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT get_lexybrain_feedback_stats(now(), now())")).scalar() == 42
            cols = conn.execute(sa.text("SELECT * FROM lexybrain_training_data LIMIT 1")).keys()
            assert list(cols) == ["id", "prompt"]
    finally:
        engine.dispose()


def test_a_registry_made_by_the_previous_schema_upgrades_with_its_rows(postgres_url: str) -> None:
    engine = make_engine(postgres_url)
    try:
        upgrade(engine, "0001")
        job_id, artifact_id, file_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO training_files (id, name, storage_path, sha256, training_pairs) "
                    "VALUES (:id, 'f', 's3://b/f.json', :sha, 7)"
                ),
                {"id": file_id, "sha": "d" * 64},
            )
            conn.execute(
                sa.text(
                    "INSERT INTO training_jobs (id, job_name, base_model, pod_id, training_file_id, status) "
                    "VALUES (:id, 'old', 'm', 'pod-7', :f, 'completed')"
                ),
                {"id": job_id, "f": file_id},
            )
            conn.execute(
                sa.text(
                    "INSERT INTO model_artifacts (id, job_id, storage_path, size_bytes, perplexity, "
                    "deployment_status) VALUES (:id, :j, 's3://b/a', 99, 3.25, 'deployed')"
                ),
                {"id": artifact_id, "j": job_id},
            )
            conn.execute(
                sa.text(
                    "INSERT INTO training_metrics_history (id, job_id, step, loss) VALUES (:id, :j, 3, 0.5)"
                ),
                {"id": uuid.uuid4(), "j": job_id},
            )
        assert upgrade(engine) == head_revision()
        job = repo.get_job(engine, job_id)
        assert (job.runpod_pod_id, job.status, job.training_file_id, job.metrics) == (
            "pod-7", "completed", str(file_id), {}
        )  # fmt: skip
        (artifact,) = repo.list_artifacts(engine, training_job_id=job_id)
        assert (artifact.id, artifact.file_size_bytes, artifact.validation_perplexity) == (
            str(artifact_id),
            99,
            3.25,
        )
        assert artifact.deployment_status == "production"  # 0001's `deployed`, by the seed's word
        tf = repo.get_training_file(engine, file_id)
        assert (tf.json_file_path, tf.total_training_pairs) == ("s3://b/f.json", 7)
        assert [(p.training_job_id, p.step, p.loss) for p in repo.list_metrics(engine, job_id)] == [
            (str(job_id), 3, 0.5)
        ]
    finally:
        engine.dispose()


def test_a_write_waits_out_a_postgres_outage_within_its_patience(
    postgres_url: str, postgres_server: PostgresCluster
) -> None:
    """Longer than the old ~8 s budget: the write lands once the server is back."""
    upgrade(postgres_url)
    engine = open_registry_url(postgres_url, retry_seconds=120)
    try:
        job = repo.create_job(engine, job_name="outage", base_model="m")
        # "fast": the server cuts every connection and goes away (an immediate stop would lose
        # the fixture's unsynced commits: it runs with fsync and synchronous_commit off).
        postgres_server.stop("fast")
        starter = threading.Timer(12.0, postgres_server.start)
        starter.start()
        try:
            added = repo.add_metrics(engine, job.id, [{"step": s, "loss": 1.0} for s in range(50)])
        finally:
            starter.join()
        assert added == 50
        assert len(repo.list_metrics(engine, job.id)) == 50
    finally:
        engine.dispose()


def test_read_only_cli_against_postgres_leaves_no_lock_file(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    upgrade(postgres_url)
    open_registry_url(postgres_url, auto_upgrade=True).dispose()
    for args in (("jobs", "list", "--json"), ("artifacts", "list"), ("db", "current", "--json")):
        code, output = _cli(postgres_url, *args)
        assert code == 0, output
    assert json.loads(_cli(postgres_url, "jobs", "list", "--json")[1]) == []
    assert list(tmp_path.iterdir()) == []
