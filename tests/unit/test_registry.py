"""Registry behaviour on SQLite (the embedded default).

The backend-independent tests here take an `engine` fixture; the Postgres module
(tests/integration/test_registry_postgres.py) imports them to run them again on a real server.
"""

from __future__ import annotations

import itertools
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from brightrun.errors import InputError
from brightrun.registry import (
    SchemaOutOfDate,
    current_revision,
    ensure_schema_current,
    head_revision,
    make_engine,
    open_registry,
    open_registry_url,
    upgrade,
)
from brightrun.registry import repository as repo
from brightrun.registry.migrations import downgrade

LIFECYCLE = ["queued", "preprocessing", "model_loaded", "training", "completed"]
STATUSES = [*LIFECYCLE, "failed", "cancelled"]
TERMINAL = {"completed", "failed", "cancelled"}
OUR_TABLES = {
    "training_files",
    "feedback_corrections",
    "training_file_conversations",
    "training_jobs",
    "model_artifacts",
    "training_metrics_history",
    "training_job_events",
    "feedback_export_watermarks",
}
LEXY_TABLES = {"lexybrain_requests", "lexybrain_responses", "lexybrain_feedback"}


def expected_allowed(current: str, new: str) -> bool:
    """DESIGN.md §3, written out independently of the code under test."""
    if current == new:
        return True
    if current in TERMINAL:
        return False
    if new in ("failed", "cancelled"):
        return True
    return LIFECYCLE.index(new) == LIFECYCLE.index(current) + 1


def job_in(engine: Engine, status: str) -> repo.Job:
    job = repo.create_job(engine, job_name=f"to-{status}", base_model="tiny")
    path = LIFECYCLE[: LIFECYCLE.index(status) + 1] if status in LIFECYCLE else ["queued", status]
    for s in path[1:]:
        job = repo.transition_job(engine, job.id, s)
    assert job.status == status
    return job


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    eng = open_registry_url(f"sqlite:///{tmp_path / 'registry.db'}")
    yield eng
    eng.dispose()


# ---------------------------------------------------------------- shared behaviour (both backends)


def test_short_ids_resolve_when_unique_and_list_candidates_when_not(engine: Engine) -> None:
    """`jobs show`, `resume`, `cancel` and the adapter commands take the 8 characters the CLI
    prints; an ambiguous prefix names its candidates instead of picking one."""
    from brightrun.registry.promotion import ArtifactNotFound, resolve_artifact
    from brightrun.registry.short_ids import resolve_job_id

    twins = [uuid.UUID("abcd1234-0000-4000-8000-00000000000" + d) for d in "12"]
    jobs = [
        repo.create_job(engine, job_name=f"twin {i}", base_model="m", job_id=j) for i, j in enumerate(twins)
    ]
    other = repo.create_job(engine, job_name="other", base_model="m", job_id=uuid.UUID(int=0xFEED << 96))
    artifact = repo.register_artifact(engine, training_job_id=other.id, storage_path="/a", base_model="m")

    assert resolve_job_id(engine, str(other.id)[:8]) == str(other.id)
    assert resolve_job_id(engine, str(other.id)[:13]) == str(other.id)  # dashes and all
    assert resolve_job_id(engine, str(jobs[0].id)) == str(jobs[0].id)
    with pytest.raises(InputError, match="several job ids") as refused:
        resolve_job_id(engine, "abcd1234")
    assert sorted(refused.value.problems) == sorted(str(j.id) for j in jobs)
    with pytest.raises(repo.JobNotFound):
        resolve_job_id(engine, "0123abcd")
    assert resolve_artifact(engine, str(artifact.id)[:8]).id == artifact.id
    assert resolve_artifact(engine, str(other.id)[:8]).id == artifact.id  # its job's short id
    with pytest.raises(ArtifactNotFound):
        resolve_artifact(engine, "0123abcd")


def test_every_status_transition_allowed_or_refused(engine: Engine) -> None:
    jobs = {s: job_in(engine, s) for s in STATUSES}
    for current, new in itertools.product(STATUSES, STATUSES):
        # Fresh job per pair: a successful transition would change the shared one.
        job = jobs[current] if current == new else job_in(engine, current)
        if expected_allowed(current, new):
            moved = repo.transition_job(engine, job.id, new, error_message="why" if new == "failed" else None)
            assert moved.status == new
            if new in TERMINAL and current != new:
                assert moved.completed_at is not None
            if new == "failed" and current != new:
                assert moved.error_message == "why"
        else:
            with pytest.raises(repo.IllegalTransition, match=f"from {current} to {new}"):
                repo.transition_job(engine, job.id, new)
            assert repo.get_job(engine, job.id).status == current


def test_job_lifecycle_fields(engine: Engine) -> None:
    job = repo.create_job(
        engine, job_name="j", base_model="m", hyperparameters={"lr": 1e-4}, compute_backend="runpod"
    )
    assert (job.status, job.started_at, job.hyperparameters) == ("queued", None, {"lr": 1e-4})
    assert repo.create_job(engine, job_id=job.id, job_name="again", base_model="m").job_name == "j"
    job = repo.transition_job(engine, job.id, "preprocessing")
    assert job.started_at is not None
    eta = datetime(2030, 1, 1, 12, tzinfo=UTC)
    job = repo.update_job_progress(
        engine, job.id, current_step=5, total_steps=20, current_loss=1.5,
        metrics={"loss": 1.5, "learning_rate": 1e-4}, estimated_completion_at=eta,
    )  # fmt: skip
    assert (job.current_step, job.progress_percent, job.current_loss) == (5, 25.0, 1.5)
    assert (job.metrics, job.estimated_completion_at) == ({"loss": 1.5, "learning_rate": 1e-4}, eta)
    job = repo.update_job_progress(engine, job.id, current_step=6, metrics={"loss": 1.4, "grad_norm": None})
    assert job.metrics == {"loss": 1.4, "learning_rate": 1e-4}  # the latest value of each, merged
    assert repo.increment_retry_count(engine, job.id) == 1
    assert repo.increment_retry_count(engine, job.id) == 2
    job = repo.set_job_cost(engine, job.id, actual_cost_usd=1.25, gpu_hours=0.5)
    assert (job.actual_cost_usd, job.gpu_hours, job.retry_count) == (1.25, 0.5, 2)
    job = repo.update_job(
        engine, job.id, runpod_pod_id="pod-1", gpu_type="A100", training_log_path="s3://b/jobs/x/train.log"
    )
    assert (job.runpod_pod_id, job.gpu_type, job.training_log_path) == (
        "pod-1",
        "A100",
        "s3://b/jobs/x/train.log",
    )
    assert job.updated_at >= job.created_at
    with pytest.raises(ValueError, match="cannot set"):
        repo.update_job(engine, job.id, status="completed")
    with pytest.raises(repo.JobNotFound, match="brightrun jobs list"):
        repo.get_job(engine, uuid.uuid4())
    assert [j.id for j in repo.list_jobs(engine, status="preprocessing")] == [job.id]


def test_metrics_batch_merges_and_is_idempotent(engine: Engine) -> None:
    job = repo.create_job(engine, job_name="m", base_model="m")
    rows = [
        {"step": s, "loss": 2.0 - s / 100, "attempt": 1, "time": "2025-01-01T00:00:00Z"} for s in range(50)
    ]
    assert repo.add_metrics(engine, job.id, rows) == 50
    # The same file ingested again, plus an eval record for step 10 and a resumed attempt.
    repo.add_metrics(engine, job.id, rows + [{"step": 10, "eval_loss": 0.7, "attempt": 1}])
    repo.add_metrics(engine, job.id, [repo.MetricRecord(step=10, attempt=2, loss=1.0)])
    points = repo.list_metrics(engine, job.id)
    assert len(points) == 51
    step10 = [p for p in points if p.step == 10]
    assert [(p.attempt, p.loss, p.eval_loss) for p in step10] == [(1, 1.9, 0.7), (2, 1.0, None)]


def test_events_append_and_dedup_by_source_key(engine: Engine) -> None:
    job = repo.create_job(engine, job_name="e", base_model="m")
    batch = [
        repo.NewEvent(job.id, "resumed", attempt=2, payload={"step": 4}, source_key="events/002-000001.json"),
        repo.NewEvent(job.id, "pod_requested", payload={"gpu": "A40"}),
    ]
    assert repo.add_events(engine, batch) == 2
    assert repo.add_events(engine, batch[:1]) == 0
    repo.add_event(engine, job.id, "pod_running", pod_id="p1")
    events = repo.list_events(engine, job.id)
    assert [e.type for e in events] == ["resumed", "pod_requested", "pod_running"]
    assert events[0].payload == {"step": 4} and events[2].payload == {"pod_id": "p1"}


def test_history_ingested_three_times_lands_once(engine: Engine) -> None:
    """A resumed flow re-reads every trainer event and metric file: each record lands once.

    The keys: an event's `source_key` (the trainer's event object key), a metric's
    (job, attempt, step); both are unique in the database, inserts skip or merge on them.
    """
    job = repo.create_job(engine, job_name="x3", base_model="m")
    events = [
        repo.NewEvent(
            job.id, "checkpoint_committed", attempt=0, payload={"step": s}, source_key=f"events/0-{s}.json"
        )
        for s in (4, 8, 12)
    ]
    metrics = [{"step": s, "attempt": 0, "loss": 1.0 / s, "learning_rate": 1e-4} for s in range(1, 13)]
    inserted = []
    for _ in range(3):
        inserted.append(repo.add_events(engine, events))
        repo.add_metrics(engine, job.id, metrics)
    assert inserted == [3, 0, 0]
    committed = repo.list_events(engine, job.id, type="checkpoint_committed")
    assert [e.payload["step"] for e in committed] == [4, 8, 12]
    points = repo.list_metrics(engine, job.id)
    assert [(p.attempt, p.step) for p in points] == [(0, s) for s in range(1, 13)]
    assert points[3].loss == 0.25
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM training_metrics_history")).scalar() == 12
        assert conn.execute(sa.text("SELECT count(*) FROM training_job_events")).scalar() == 3


def test_the_database_refuses_two_production_adapters_for_one_base_model(engine: Engine) -> None:
    ids = []
    for name in ("a", "b"):
        job = repo.create_job(engine, job_name=name, base_model="llama")
        ids.append(
            repo.register_artifact(
                engine, training_job_id=job.id, storage_path=f"/{name}", base_model="llama"
            ).id
        )

    def set_status(conn: sa.Connection, artifact_id: str, status: str) -> None:
        table = repo.artifacts_t
        conn.execute(
            sa.update(table).where(table.c.id == uuid.UUID(artifact_id)).values(deployment_status=status)
        )

    with engine.begin() as conn:
        set_status(conn, ids[0], "production")
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
        set_status(conn, ids[1], "production")
    with engine.begin() as conn:  # archive first, then promote: the way promotion.py does it
        set_status(conn, ids[0], "archived")
        set_status(conn, ids[1], "production")
    assert [a.id for a in repo.list_artifacts(engine, deployment_status="production")] == [ids[1]]


def test_concurrent_artifact_registrations_leave_one_row(engine: Engine) -> None:
    job = repo.create_job(engine, job_name="a", base_model="m")
    barrier = threading.Barrier(6)
    errors: list[BaseException] = []

    def register(i: int) -> None:
        try:
            barrier.wait()
            repo.register_artifact(
                engine,
                training_job_id=job.id,
                storage_path=f"s3://b/jobs/{job.id}/adapter",
                file_size_bytes=100 + i,
            )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=register, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    artifacts = repo.list_artifacts(engine, training_job_id=job.id)
    assert len(artifacts) == 1
    assert artifacts[0].deployment_status == "stored"
    assert repo.get_job(engine, job.id).lora_artifact_path == f"s3://b/jobs/{job.id}/adapter"
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM model_artifacts")).scalar() == 1


def test_training_files_idempotent_and_dedup_sources(engine: Engine) -> None:
    refs = [
        repo.ConversationRef("c1", "train", "resp-1"),
        repo.ConversationRef("c2", "validation", "resp-2"),
    ]
    tf, created = repo.register_training_file(
        engine, name="f1", json_file_path="/s/f1.json", sha256="a" * 64, source="feedback_export",
        examples=2, conversation_refs=refs,
    )  # fmt: skip
    assert created
    again, created = repo.register_training_file(
        engine, name="other name", json_file_path="/s/x.json", sha256="a" * 64
    )
    assert (created, again.id, again.name) == (False, tf.id, "f1")
    repo.register_training_file(
        engine, name="f2", json_file_path="/s/f2.json", sha256="b" * 64,
        conversation_refs=[repo.ConversationRef("c2", "train", "resp-2")],
    )  # fmt: skip
    seen = repo.exported_conversations(engine)
    assert set(seen) == {"c1", "c2"}
    assert seen["c2"].split == "validation"  # once validation, always validation
    assert set(repo.exported_conversations(engine, split="train")) == {"c1", "c2"}
    assert [f.name for f in repo.list_training_files(engine, source="feedback_export")] == ["f1"]


def test_watermark_only_moves_forward(engine: Engine) -> None:
    assert repo.get_watermark(engine, "fb") is None
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    assert repo.advance_watermark(engine, "fb", position=t0).position == t0
    assert repo.advance_watermark(engine, "fb", position=t0 + timedelta(hours=1)).position == t0 + timedelta(
        hours=1
    )
    assert repo.advance_watermark(engine, "fb", position=t0).position == t0 + timedelta(hours=1)
    with engine.begin() as conn:  # joins the caller's transaction, which then rolls back
        repo.advance_watermark(conn, "fb", position=t0 + timedelta(days=1))
        conn.rollback()
    assert repo.get_watermark(engine, "fb").position == t0 + timedelta(hours=1)  # type: ignore[union-attr]


# ---------------------------------------------------------------- SQLite specifics


def _tables(engine: Engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names())


def test_migrations_from_empty_sqlite(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'r.db'}")
    assert current_revision(engine) is None
    with pytest.raises(SchemaOutOfDate, match="brightrun db upgrade"):
        ensure_schema_current(engine)
    assert upgrade(engine) == head_revision()
    assert _tables(engine) >= OUR_TABLES | LEXY_TABLES
    ensure_schema_current(engine)
    upgrade(engine)  # again: a no-op
    downgrade(engine, "base")
    assert not (OUR_TABLES & _tables(engine)) and _tables(engine) >= LEXY_TABLES
    with pytest.raises(SchemaOutOfDate, match="behind|no brightrun schema"):
        ensure_schema_current(engine)
    upgrade(engine)  # lexybrain tables exist now: created only where absent
    assert _tables(engine) >= OUR_TABLES
    engine.dispose()


def test_migrations_keep_existing_lexybrain_tables_sqlite(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'r.db'}")
    with engine.begin() as conn:
        conn.execute(
            sa.text("CREATE TABLE lexybrain_requests (id TEXT PRIMARY KEY, prompt TEXT, app_col TEXT)")
        )
        conn.execute(sa.text("INSERT INTO lexybrain_requests VALUES ('r1', 'hi', 'kept')"))
    upgrade(engine)
    cols = {c["name"] for c in sa.inspect(engine).get_columns("lexybrain_requests")}
    assert "app_col" in cols
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT app_col FROM lexybrain_requests")).scalar() == "kept"
    assert {"lexybrain_responses", "lexybrain_feedback"} <= _tables(engine)
    engine.dispose()


def test_open_registry_auto_upgrades_embedded_sqlite(brightrun_home: Path) -> None:
    from brightrun.settings import load_settings

    engine = open_registry(load_settings())
    assert current_revision(engine) == head_revision()
    assert (brightrun_home / "registry.db").exists()
    engine.dispose()


def test_open_registry_refuses_sqlite_behind_without_auto_upgrade(tmp_path: Path) -> None:
    with pytest.raises(SchemaOutOfDate, match="run `brightrun db upgrade`"):
        open_registry_url(f"sqlite:///{tmp_path / 'r.db'}", auto_upgrade=False)


def test_secrets_masked_in_errors_and_logs(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from brightrun.registry import db

    monkeypatch.setattr(db, "RETRY_DELAYS", (0.01, 0.01))
    secret = "hunter2-very-secret"
    port = _closed_port()
    engine = make_engine(f"postgresql+psycopg://u:{secret}@127.0.0.1:{port}/x?sslpassword={secret}x")
    caplog.set_level("DEBUG")
    with pytest.raises(db.DatabaseUnavailable) as info:
        repo.get_job(engine, uuid.uuid4())
    text = str(info.value)
    assert secret not in text and "***" in text and "127.0.0.1" in text
    assert secret not in caplog.text and "retrying" in caplog.text
    assert db.mask_url(f"postgresql://u:{secret}@h/d") == "postgresql://u:***@h/d"
    engine.dispose()


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_cli_lists_and_shows_jobs(brightrun_home: Path) -> None:
    import json

    from typer.testing import CliRunner

    from brightrun.settings import load_settings
    from cli.main import app

    engine = open_registry(load_settings())
    job = repo.create_job(engine, job_name="cli-job", base_model="tiny")
    repo.add_event(engine, job.id, "pod_requested", gpu="A40")
    repo.register_artifact(
        engine, training_job_id=job.id, storage_path="/tmp/adapter", validation_perplexity=3.5
    )
    engine.dispose()
    runner = CliRunner()
    listed = runner.invoke(app, ["jobs", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    assert [j["job_name"] for j in json.loads(listed.stdout)] == ["cli-job"]
    shown = runner.invoke(app, ["jobs", "show", job.id, "--json"])
    data = json.loads(shown.stdout)
    assert (
        data["events"][0]["type"] == "pod_requested" and data["artifacts"][0]["validation_perplexity"] == 3.5
    )
    table = runner.invoke(app, ["artifacts", "list"], env={"COLUMNS": "300"})
    assert table.exit_code == 0 and "lora_adapter" in table.stdout
    current = runner.invoke(app, ["db", "current", "--json"])
    assert json.loads(current.stdout)["up_to_date"] is True


def test_two_processes_opening_a_fresh_sqlite_registry_at_once_both_succeed(tmp_path: Path) -> None:
    """The embedded default migrates itself; a second process must not race the first."""
    import subprocess
    import sys

    url = f"sqlite:///{tmp_path / 'registry.db'}"
    code = (
        "import sys; from brightrun.registry import open_registry_url; "
        "open_registry_url(sys.argv[1]).dispose(); print('ok')"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(3)
    ]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err[-800:] for _, err in results]


def test_sqlite_registry_made_by_the_previous_schema_upgrades_with_its_rows(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'r.db'}")
    upgrade(engine, "0001")
    job_id, file_id = uuid.uuid4().hex, uuid.uuid4().hex
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO training_files (id, name, storage_path, sha256, training_pairs) "
                "VALUES (:id, 'f', '/data/f.json', :sha, 7)"
            ),
            {"id": file_id, "sha": "e" * 64},
        )
        conn.execute(
            sa.text(
                "INSERT INTO training_jobs (id, job_name, base_model, pod_id, training_file_id) "
                "VALUES (:id, 'old', 'm', 'pod-7', :f)"
            ),
            {"id": job_id, "f": file_id},
        )
        conn.execute(
            sa.text(
                "INSERT INTO model_artifacts (id, job_id, storage_path, size_bytes, perplexity, "
                "deployment_status) VALUES (:id, :j, '/a', 99, 3.25, 'deploying')"
            ),
            {"id": uuid.uuid4().hex, "j": job_id},
        )
        for n, created in enumerate(("2026-01-01", "2026-02-01")):  # two `deployed` of one base model
            other = uuid.uuid4().hex
            conn.execute(
                sa.text("INSERT INTO training_jobs (id, job_name, base_model) VALUES (:id, :name, 'llama')"),
                {"id": other, "name": f"d{n}"},
            )
            conn.execute(
                sa.text(
                    "INSERT INTO model_artifacts (id, job_id, storage_path, base_model, deployment_status, "
                    "created_at) VALUES (:id, :j, :path, 'llama', 'deployed', :created)"
                ),
                {"id": uuid.uuid4().hex, "j": other, "path": f"/d{n}", "created": created},
            )
        conn.execute(
            sa.text("INSERT INTO training_metrics_history (id, job_id, step, loss) VALUES (:id, :j, 3, 0.5)"),
            {"id": uuid.uuid4().hex, "j": job_id},
        )
    assert upgrade(engine) == head_revision()
    job = repo.get_job(engine, job_id)
    assert (job.runpod_pod_id, job.training_file_id, job.metrics, job.created_by) == (
        "pod-7", str(uuid.UUID(file_id)), {}, None
    )  # fmt: skip
    (artifact,) = repo.list_artifacts(engine, training_job_id=job_id)
    assert (artifact.file_size_bytes, artifact.validation_perplexity, artifact.deployment_status) == (
        99, 3.25, "testing"
    )  # fmt: skip
    tf = repo.get_training_file(engine, file_id)
    assert (tf.json_file_path, tf.total_training_pairs, tf.sha256) == ("/data/f.json", 7, "e" * 64)
    llama = repo.list_artifacts(engine, training_job_id=None)
    assert sorted((a.storage_path, a.deployment_status) for a in llama if a.base_model == "llama") == [
        ("/d0", "archived"),  # only the newest stays production: one per base model
        ("/d1", "production"),
    ]
    assert [(p.step, p.loss) for p in repo.list_metrics(engine, job_id)] == [(3, 0.5)]
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:  # the seed's values only now
        conn.execute(sa.text("UPDATE model_artifacts SET deployment_status = 'deployed'"))
    engine.dispose()


def test_training_file_location_resolves_the_apps_relative_paths() -> None:
    assert repo.training_file_location("u1/set.json") == "s3://training-files/u1/set.json"
    assert repo.training_file_location("training-files/u1/set.json") == "s3://training-files/u1/set.json"
    assert repo.training_file_location("u1/set.json", "s3://other/prefix/") == "s3://other/prefix/u1/set.json"
    for own in ("s3://bucket/datasets/a.json", "/data/a.json", "https://h/a.json?sig=1"):
        assert repo.training_file_location(own) == own
    with pytest.raises(InputError):
        repo.training_file_location("  ")


def test_retry_patience_bounds_the_waits() -> None:
    from brightrun.registry import db

    assert list(db.retry_delays(None)) == list(db.RETRY_DELAYS)
    waits = list(db.retry_delays(300))
    assert sum(waits) == pytest.approx(300) and max(waits) == db.MAX_RETRY_DELAY
    assert waits[: len(db.RETRY_DELAYS)] == list(db.RETRY_DELAYS)
    assert list(db.retry_delays(0)) == []


def test_sqlite_migration_lock_sits_next_to_the_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    open_registry_url("sqlite:///data/registry.db").dispose()  # a relative path, from `work`
    assert sorted(p.name for p in (work / "data").iterdir() if "lock" in p.name) == [
        "registry.db.migrate.lock"
    ]
    assert [p.name for p in work.iterdir()] == ["data"]


def test_read_only_commands_create_no_registry(brightrun_home: Path) -> None:
    import json

    from typer.testing import CliRunner

    from cli.main import app

    runner = CliRunner()
    listed = runner.invoke(app, ["jobs", "list"])
    assert listed.exit_code == 0 and "no jobs yet" in listed.output
    assert json.loads(runner.invoke(app, ["jobs", "list", "--json"]).stdout) == []
    assert runner.invoke(app, ["artifacts", "list"]).exit_code == 0
    shown = runner.invoke(app, ["jobs", "show", str(uuid.uuid4())])
    assert shown.exit_code == 1 and "no jobs yet" in shown.output
    current = runner.invoke(app, ["db", "current", "--json"])
    assert current.exit_code == 0 and json.loads(current.stdout)["current"] is None
    assert not brightrun_home.exists() or not any(brightrun_home.rglob("registry.db*"))


def test_unknown_status_or_type_lists_the_allowed_values(brightrun_home: Path) -> None:
    from typer.testing import CliRunner

    from cli.main import app

    runner = CliRunner(env={"COLUMNS": "300"})  # Typer boxes the message; keep it on one line
    bad_status = runner.invoke(app, ["jobs", "list", "--status", "running"])
    assert bad_status.exit_code == 2
    assert (
        "'running'" in bad_status.output
        and "queued, preprocessing, model_loaded, training" in bad_status.output
    )
    bad_type = runner.invoke(app, ["artifacts", "list", "--type", "adapter"])
    assert bad_type.exit_code == 2 and "lora_adapter, merged_model, checkpoint" in bad_type.output


def test_jobs_show_has_eta_and_who_started_it(brightrun_home: Path) -> None:
    from typer.testing import CliRunner

    from brightrun.settings import load_settings
    from cli.main import app

    user = str(uuid.uuid4())
    engine = open_registry(load_settings())
    job = repo.create_job(engine, job_name="eta", base_model="tiny", created_by=user)
    repo.update_job_progress(
        engine,
        job.id,
        current_step=3,
        total_steps=10,
        estimated_completion_at=datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC),
    )
    engine.dispose()
    shown = CliRunner().invoke(app, ["jobs", "show", job.id], env={"COLUMNS": "300"})
    assert shown.exit_code == 0, shown.output
    assert "estimated_completion_at (ETA)" in shown.output and "2031-05-06 07:08:09" in shown.output
    assert user in shown.output


def test_db_upgrade_on_sqlite_says_the_lexybrain_objects_are_postgres_only(brightrun_home: Path) -> None:
    from typer.testing import CliRunner

    from cli.main import app

    result = CliRunner().invoke(app, ["db", "upgrade"])
    assert result.exit_code == 0, result.output
    assert "get_lexybrain_feedback_stats are Postgres objects" in result.output


def test_postgres_connections_never_prepare_statements(monkeypatch: pytest.MonkeyPatch) -> None:
    """Behind a transaction pooler a server-side prepared statement is gone on the next
    transaction's server connection: every Postgres engine connects with prepare_threshold=None."""
    import psycopg

    seen: dict[str, object] = {}

    def connect(*_args: object, **kwargs: object) -> None:
        seen.update(kwargs)
        raise psycopg.OperationalError("password authentication failed (test stops here)")

    monkeypatch.setattr(psycopg, "connect", connect)  # what SQLAlchemy's dialect calls
    engine = make_engine("postgresql://u:p@127.0.0.1:1/db", statement_timeout_ms=None)
    try:
        with pytest.raises(sa.exc.OperationalError), engine.connect():
            pass
    finally:
        engine.dispose()
    assert "prepare_threshold" in seen and seen["prepare_threshold"] is None
