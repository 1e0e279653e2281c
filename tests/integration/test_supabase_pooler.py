"""The pipeline on a Supabase-like database through PgBouncer in transaction mode (issue 22).

The fixture (tests/fixtures/supabase.py): a non-superuser `postgres`, `auth` owned by another
role, extensions in `extensions`, default grants to anon/authenticated/service_role, the
app's own tables (NOT NULL columns without defaults, RLS) and PgBouncer in front.
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from brightrun.errors import BrightrunError
from brightrun.registry import head_revision, make_engine, open_registry, upgrade
from brightrun.registry import promotion as pm
from brightrun.registry import repository as repo
from brightrun.registry.feedback_rows import export_lock
from brightrun.resources import Resources
from brightrun.settings import load_settings
from tests.fixtures.postgres import SUPABASE_USER
from tests.fixtures.supabase import APP_FILE, APP_PROJECT, SupabaseDatabase, dump_app

pytestmark = pytest.mark.integration

PIPELINE_TABLES = (
    "training_jobs",
    "model_artifacts",
    "training_metrics_history",
    "training_job_events",
    "feedback_export_watermarks",
    "brightrun_alembic_version",
)
DEFAULTS = f'{{"project_id": "{APP_PROJECT}"}}'


def _cli(url: str, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    import typer

    from cli import registry

    app = typer.Typer()
    registry.register(app)
    result = CliRunner().invoke(app, list(args), env={"BRIGHTRUN_DATABASE_URL": url, **(env or {})})
    if isinstance(result.exception, BrightrunError):  # as cli.main.main reports it
        return result.exception.exit_code, result.output + f"error: {result.exception}"
    return result.exit_code, result.output + (repr(result.exception) if result.exception else "")


def _settings(db: SupabaseDatabase, tmp_path: Path, **extra: object) -> object:
    return load_settings(
        home=tmp_path / "home",
        database_url=db.pooler_url,
        storage_url=str(tmp_path / "storage"),
        service_user_id=SUPABASE_USER,
        **extra,
    )


def _schema(url: str) -> list[tuple[object, ...]]:
    with psycopg.connect(url.replace("+psycopg", "")) as conn:
        return (
            conn.execute(
                "SELECT table_name, column_name, data_type, is_nullable FROM information_schema.columns "
                "WHERE table_schema = 'public' ORDER BY 1, 2"
            ).fetchall()
            + conn.execute("SELECT tablename, policyname FROM pg_policies ORDER BY 1, 2").fetchall()
        )  # type: ignore[return-value]


def test_db_upgrade_through_the_pooler_twice_leaves_the_apps_tables_as_they_were(
    supabase_db: SupabaseDatabase,
) -> None:
    before = dump_app(supabase_db.direct_url)
    code, output = _cli(supabase_db.pooler_url, "db", "upgrade", "--dry-run")
    assert code == 0, output
    assert "CREATE TABLE training_jobs" in output and "ENABLE ROW LEVEL SECURITY" in output
    assert dump_app(supabase_db.direct_url) == before
    with psycopg.connect(supabase_db.direct_url.replace("+psycopg", "")) as conn:  # the dry run left nothing
        assert conn.execute("SELECT to_regclass('training_jobs')").fetchone() == (None,)

    code, output = _cli(supabase_db.pooler_url, "db", "upgrade")
    assert code == 0, output
    assert f"revision {head_revision()}" in output
    assert dump_app(supabase_db.direct_url) == before
    schema = _schema(supabase_db.direct_url)
    code, output = _cli(supabase_db.pooler_url, "db", "upgrade")
    assert code == 0, output
    assert _schema(supabase_db.direct_url) == schema
    code, output = _cli(supabase_db.pooler_url, "db", "upgrade", "--dry-run")
    assert code == 0 and "nothing to do" in output, output


def test_a_same_named_table_of_another_shape_is_refused_with_nothing_installed(
    supabase_db: SupabaseDatabase,
) -> None:
    with psycopg.connect(supabase_db.direct_url.replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute("ALTER TABLE training_file_conversations RENAME COLUMN conversation_id TO conv")
    before = dump_app(supabase_db.direct_url)
    code, output = _cli(supabase_db.direct_url, "db", "upgrade")
    assert code == 2, output
    assert "'training_file_conversations'" in output and "no column conversation_id" in output
    assert "Traceback" not in output and len(output.strip().splitlines()) == 1
    assert dump_app(supabase_db.direct_url) == before
    with psycopg.connect(supabase_db.direct_url.replace("+psycopg", "")) as conn:
        assert conn.execute("SELECT to_regclass('training_jobs')").fetchone() == (None,)


def test_the_pipeline_through_the_pooler(
    supabase_db: SupabaseDatabase, tmp_path: Path, sample_dataset: Path
) -> None:
    """Migrations over the direct connection; then a job from the app's training file,
    promote, 50 reads in one process and two exports in a row, all through PgBouncer."""
    upgrade(supabase_db.direct_url)
    # The app's file, readable here (the export dedups against it): its row names a local
    # copy (dedup.locate resolves the app's relative paths in s3://training-files only).
    app_file = tmp_path / "training-files" / "coaching-v1.json"
    app_file.parent.mkdir(parents=True)
    shutil.copy(sample_dataset, app_file)
    with psycopg.connect(supabase_db.direct_url.replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute("UPDATE training_files SET json_file_path = %s WHERE id = %s", (str(app_file), APP_FILE))
    before = dump_app(supabase_db.direct_url)
    # Local storage here: no bucket the pipeline could name, so the configuration gives one.
    defaults = {"project_id": APP_PROJECT, "storage_bucket": "pipeline-local"}
    # The app's row names a local absolute path on purpose (see above): allowed by configuration.
    settings = _settings(supabase_db, tmp_path, training_file_defaults=defaults, fetch_allow_local_paths=True)
    engine = open_registry(settings)  # type: ignore[arg-type]
    try:
        app_file, _ = repo.resolve_training_file(engine, APP_FILE, allow_local_paths=True)
        assert app_file.name == "Coaching set v1"
        job = repo.create_job(engine, job_name="from-app", base_model="m", training_file_id=APP_FILE)
        for status in ("preprocessing", "model_loaded", "training", "completed"):
            repo.transition_job(engine, job.id, status)
        repo.add_events(engine, [repo.NewEvent(job_id=job.id, type="note", source_key="k1")])
        assert [e.job_id for e in repo.list_events(engine, job.id)] == [job.id]
        artifact = repo.register_artifact(
            engine, training_job_id=job.id, storage_path="s3://b/a", base_model="m"
        )
        result = pm.promote(engine, artifact.id, "production", force=True, reason="pooler test")
        assert result.artifact.deployment_status == "production"
        # psycopg would prepare these after 5 runs; through the pooler a prepared statement
        # is gone on the next transaction's server connection.
        for _ in range(50):
            assert [j.id for j in repo.list_jobs(engine)] == [job.id]
            assert len(repo.list_artifacts(engine)) == 1
            assert repo.get_job(engine, job.id).status == "completed"

        for _ in range(2):  # the export lock: taken and released twice in a row
            with export_lock(engine):
                pass
        with psycopg.connect(supabase_db.direct_url.replace("+psycopg", "")) as conn:
            assert conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'").fetchone() == (
                0,
            )
    finally:
        engine.dispose()

    from tasks.feedback import export_feedback_window

    resources = Resources.from_settings(settings)  # type: ignore[arg-type]
    try:
        t0 = datetime(2026, 3, 1, tzinfo=UTC)
        first = export_feedback_window(resources, since=t0, until=t0 + timedelta(hours=3, minutes=30))
        second = export_feedback_window(resources, until=t0 + timedelta(days=1))
        assert (first.status, second.status) == ("exported", "exported"), (first.message, second.message)
        with psycopg.connect(supabase_db.direct_url.replace("+psycopg", "")) as conn:
            rows = conn.execute(
                "SELECT project_id::text, created_by::text, storage_bucket IS NOT NULL, jsonl_file_path "
                "FROM training_files WHERE id <> %s",
                (APP_FILE,),
            ).fetchall()
        assert len(rows) == 2
        assert all(r[0] == APP_PROJECT and r[1] == SUPABASE_USER and r[2] for r in rows)
    finally:
        resources.close()
    assert dump_app(supabase_db.direct_url) == before  # only the documented rows were added


def test_unfilled_app_columns_are_named_before_anything_is_written(
    supabase_db: SupabaseDatabase, tmp_path: Path
) -> None:
    upgrade(supabase_db.direct_url)
    engine = open_registry(_settings(supabase_db, tmp_path))  # type: ignore[arg-type]
    try:
        with pytest.raises(repo.TrainingFileColumnsUnfilled) as refused:
            repo.register_training_file(engine, name="x", json_file_path="s3://b/x.json", sha256="e" * 64)
        assert "project_id" in str(refused.value) and "BRIGHTRUN_TRAINING_FILE_DEFAULTS" in str(refused.value)
        assert refused.value.exit_code == 2
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM training_files")).scalar() == 1
    finally:
        engine.dispose()


def _as(conn: psycopg.Connection, role: str, sql: str, user: str | None = None) -> object:
    """`sql` as `role` in a transaction, the way PostgREST runs a request."""
    with conn.transaction(force_rollback=True):
        conn.execute(f"SET LOCAL ROLE {role}")
        if user:
            conn.execute("SELECT set_config('request.jwt.claim.sub', %s, true)", (user,))
        try:
            return conn.execute(sql).fetchall()  # type: ignore[arg-type]
        except psycopg.errors.InsufficientPrivilege as denied:
            return f"denied: {denied.diag.message_primary}"


def test_row_level_security_as_anon_and_authenticated(supabase_db: SupabaseDatabase) -> None:
    upgrade(supabase_db.direct_url)
    engine = make_engine(supabase_db.direct_url)
    try:
        job = repo.create_job(engine, job_name="j", base_model="m")
        repo.register_artifact(engine, training_job_id=job.id, storage_path="s3://b/a", base_model="m")
        repo.add_metrics(engine, job.id, [{"step": 1, "loss": 1.0}])
    finally:
        engine.dispose()
    with psycopg.connect(supabase_db.direct_url.replace("+psycopg", "")) as conn:
        for table in PIPELINE_TABLES:
            assert str(_as(conn, "anon", f"SELECT * FROM {table}")).startswith("denied"), table
            assert str(_as(conn, "anon", f"DELETE FROM {table}")).startswith("denied"), table
            rls = conn.execute(
                "SELECT relrowsecurity FROM pg_class WHERE oid = %s::regclass", (table,)
            ).fetchone()
            assert rls == (True,), table
        # authenticated: reads the dashboard's three tables, writes nothing anywhere.
        for table in ("training_jobs", "model_artifacts", "training_metrics_history"):
            assert len(_as(conn, "authenticated", f"SELECT * FROM {table}")) == 1, table  # type: ignore[arg-type]
        for table in ("training_job_events", "feedback_export_watermarks", "brightrun_alembic_version"):
            assert str(_as(conn, "authenticated", f"SELECT * FROM {table}")).startswith("denied"), table
        assert str(
            _as(conn, "authenticated", "UPDATE model_artifacts SET deployment_status = 'production'")
        ).startswith("denied")
        # The view: not for anon; for a user, only their own rows (LexyHub's RLS applies through it).
        assert str(_as(conn, "anon", "SELECT * FROM lexybrain_training_data")).startswith("denied")
        mine = _as(
            conn, "authenticated", "SELECT prompt FROM lexybrain_training_data ORDER BY 1", SUPABASE_USER
        )
        assert [r[0] for r in mine] == ["question 1", "question 2", "question 3"]  # type: ignore[union-attr]
        everyone = conn.execute("SELECT count(*) FROM lexybrain_training_data").fetchone()
        assert everyone == (5,)
        function = conn.execute(
            "SELECT prosecdef, proconfig FROM pg_proc WHERE proname = 'get_lexybrain_feedback_stats'"
        ).fetchone()
        assert function is not None and function[0] is False and function[1][0].startswith("search_path=")
        stats = _as(
            conn,
            "authenticated",
            "SELECT total_feedback FROM get_lexybrain_feedback_stats('2026-01-01', '2027-01-01')",
            SUPABASE_USER,
        )
        assert stats == [(3,)]  # the invoker's rights: their own ratings only


def test_a_training_from_the_apps_training_file_through_the_pooler(
    prefect_harness: str,
    brightrun_home: Path,
    seaweed: object,
    supabase_db: SupabaseDatabase,
    tiny_model: Path,
    sample_dataset: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`train --training-file-id` failed in 2 of 4 runs behind the pooler (a prepared statement
    gone on the next server connection): the whole flow, its every registry write through
    PgBouncer, from the app's own row."""
    import uuid

    from cli.training import demo_params
    from flows.train_adapter import train_adapter

    for name, value in seaweed.env().items():  # type: ignore[attr-defined]
        monkeypatch.setenv(name, value)
    run_id = uuid.uuid4().hex[:8]
    monkeypatch.setenv("BRIGHTRUN_STORAGE_URL", seaweed.storage_url(f"pool-{run_id}/pipeline"))  # type: ignore[attr-defined]
    bucket = seaweed.storage_url(f"pool-{run_id}/training-files")  # type: ignore[attr-defined]
    monkeypatch.setenv("BRIGHTRUN_TRAINING_FILES_URL", bucket)
    upgrade(supabase_db.direct_url)  # migrations over the direct connection
    monkeypatch.setenv("BRIGHTRUN_DATABASE_URL", supabase_db.pooler_url)
    before = dump_app(supabase_db.direct_url)
    with Resources.from_settings() as resources:  # the app uploaded the file to its bucket
        resources.open_storage(bucket).put_file(f"{SUPABASE_USER}/coaching-v1.json", sample_dataset)

    params = demo_params(tiny_model, max_steps=2)
    del params["dataset"]
    params["training_file_id"] = APP_FILE
    params["evaluation"] = {"sample_generations": 0, "max_new_tokens": 4}
    result = train_adapter(**params, return_state=True).result(raise_on_failure=False)
    assert not isinstance(result, BaseException), result
    assert result["status"] == "completed"
    with Resources.from_settings() as resources:
        job = repo.get_job(resources.registry, result["job_id"])
        assert str(job.training_file_id) == APP_FILE and job.current_step == 2
        assert repo.list_events(resources.registry, job.id)
    # Documented additions: the job records its split over the app's file (its conversations
    # in training_file_conversations); the app's own rows there stay as they were.
    after = dump_app(supabase_db.direct_url)
    links = "public.training_file_conversations:rows"
    assert set(before.pop(links)) < set(after.pop(links))  # type: ignore[arg-type]
    assert after == before
