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
    job = repo.update_job_progress(engine, job.id, current_step=5, total_steps=20, current_loss=1.5)
    assert (job.current_step, job.progress_percent, job.current_loss) == (5, 25.0, 1.5)
    assert repo.increment_retry_count(engine, job.id) == 1
    assert repo.increment_retry_count(engine, job.id) == 2
    job = repo.set_job_cost(engine, job.id, actual_cost_usd=1.25, gpu_hours=0.5)
    assert (job.actual_cost_usd, job.gpu_hours, job.retry_count) == (1.25, 0.5, 2)
    job = repo.update_job(engine, job.id, pod_id="pod-1", gpu_type="A100")
    assert (job.pod_id, job.gpu_type) == ("pod-1", "A100")
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


def test_concurrent_artifact_registrations_leave_one_row(engine: Engine) -> None:
    job = repo.create_job(engine, job_name="a", base_model="m")
    barrier = threading.Barrier(6)
    errors: list[BaseException] = []

    def register(i: int) -> None:
        try:
            barrier.wait()
            repo.register_artifact(
                engine, job_id=job.id, storage_path=f"s3://b/jobs/{job.id}/adapter", size_bytes=100 + i
            )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=register, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    artifacts = repo.list_artifacts(engine, job_id=job.id)
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
        engine, name="f1", storage_path="/s/f1.json", sha256="a" * 64, source="feedback_export",
        examples=2, conversation_refs=refs,
    )  # fmt: skip
    assert created
    again, created = repo.register_training_file(
        engine, name="other name", storage_path="/s/x.json", sha256="a" * 64
    )
    assert (created, again.id, again.name) == (False, tf.id, "f1")
    repo.register_training_file(
        engine, name="f2", storage_path="/s/f2.json", sha256="b" * 64,
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
    repo.register_artifact(engine, job_id=job.id, storage_path="/tmp/adapter", perplexity=3.5)
    engine.dispose()
    runner = CliRunner()
    listed = runner.invoke(app, ["jobs", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    assert [j["job_name"] for j in json.loads(listed.stdout)] == ["cli-job"]
    shown = runner.invoke(app, ["jobs", "show", job.id, "--json"])
    data = json.loads(shown.stdout)
    assert data["events"][0]["type"] == "pod_requested" and data["artifacts"][0]["perplexity"] == 3.5
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
