"""The feedback export against a real registry: SQLite (embedded default) and Postgres,
through the pipeline's `Resources` (storage with its endpoint, registry), as the flow and
the CLI call it."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, insert, select, text

from brightrun.registry import feedback_rows, open_registry_url
from brightrun.registry import repository as repo
from brightrun.registry.models import (
    LexybrainFeedback,
    LexybrainRequest,
    LexybrainResponse,
    TrainingFile,
    TrainingFileConversation,
)
from brightrun.resources import Resources
from brightrun.settings import load_settings
from brightrun.storage import Storage
from tasks.dataset.schema import validate_dataset
from tasks.feedback import (
    ExportBusy,
    ExportError,
    ExportOptions,
    export_feedback_window,
    export_lock,
)
from tasks.feedback.dedup import Dup
from tasks.feedback.select import SelectionOptions, Skip

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 1, tzinfo=UTC)
W1 = (T0, T0 + timedelta(days=1))
W2 = (T0 + timedelta(days=1), T0 + timedelta(days=2))
REQ_T, RESP_T, FB_T = LexybrainRequest.__table__, LexybrainResponse.__table__, LexybrainFeedback.__table__


def make_resources(tmp_path: Path, database_url: str) -> Resources:
    """Resources on `database_url` (migrated) with local storage under `tmp_path`."""
    open_registry_url(database_url, auto_upgrade=True).dispose()
    return Resources.from_settings(
        load_settings(
            home=tmp_path / "home", database_url=database_url, storage_url=str(tmp_path / "storage")
        )
    )


@pytest.fixture(params=["sqlite", "postgres"])
def resources(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Resources]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'registry.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    res = make_resources(tmp_path, url)
    yield res
    res.close()


@pytest.fixture
def engine(resources: Resources) -> Engine:
    return resources.registry


@pytest.fixture
def storage(resources: Resources) -> Storage:
    return resources.storage


class Logs:
    """Writes inference logs the way LexyHub does (ids are UUIDs)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def add(
        self,
        at: datetime,
        *,
        prompt: str | None = "Which listing sells best?",
        output: Any = None,
        rating: str | None = "positive",
        user_id: uuid.UUID | None = None,
        context: Any = None,
        success: bool = True,
        insight_type: str = "market",
    ) -> dict[str, uuid.UUID]:
        ids = {"request": uuid.uuid4(), "response": uuid.uuid4(), "feedback": uuid.uuid4()}
        user_id = user_id or uuid.uuid4()
        with self.engine.begin() as conn:
            conn.execute(
                insert(REQ_T).values(
                    id=ids["request"],
                    user_id=user_id,
                    prompt=prompt,
                    context=context,
                    insight_type=insight_type,
                    requested_at=at,
                )
            )
            conn.execute(
                insert(RESP_T).values(
                    id=ids["response"],
                    request_id=ids["request"],
                    output=output if output is not None else {"top": ["mugs"], "n": 3},
                    model_name="lexy",
                    model_version="v7",
                    success=success,
                    created_at=at,
                )
            )
            if rating is not None:
                conn.execute(
                    insert(FB_T).values(
                        id=ids["feedback"],
                        response_id=ids["response"],
                        user_id=user_id,
                        feedback=rating,
                        created_at=at + timedelta(seconds=1),
                    )
                )
        return ids

    def orphan_feedback(self, at: datetime) -> None:
        """Feedback naming a response that does not exist (LexyHub has no foreign keys)."""
        with self.engine.begin() as conn:
            _no_fk(conn)
            conn.execute(
                insert(FB_T).values(
                    id=uuid.uuid4(),
                    response_id=uuid.uuid4(),
                    user_id=uuid.uuid4(),
                    feedback="positive",
                    created_at=at,
                )
            )

    def orphan_response(self, at: datetime) -> None:
        """A rated response whose request row is gone."""
        rid = uuid.uuid4()
        with self.engine.begin() as conn:
            _no_fk(conn)
            conn.execute(
                insert(RESP_T).values(
                    id=rid, request_id=uuid.uuid4(), output={"a": 1}, success=True, created_at=at
                )
            )
            conn.execute(
                insert(FB_T).values(id=uuid.uuid4(), response_id=rid, feedback="positive", created_at=at)
            )


def _no_fk(conn: Any) -> None:
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql("PRAGMA defer_foreign_keys=ON")
        conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
    else:
        conn.execute(text("SET LOCAL session_replication_role = replica"))


def _files(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(select(TrainingFile.__table__)))


def _seed_window_one(logs: Logs) -> dict[str, Any]:
    at = W1[0] + timedelta(hours=1)
    user = uuid.uuid4()
    good = [
        logs.add(
            at + timedelta(minutes=i), prompt=f"Best seller for shop {i}?", output={"top": [f"item-{i}"]}
        )
        for i in range(4)
    ]
    pii = logs.add(
        at + timedelta(minutes=10),
        user_id=user,
        prompt=f"I am {user}; mail me at owner@shop.example or call +1 415 555 0100",
        context={"card": "4111 1111 1111 1111"},
        output={"answer": "ok"},
    )
    logs.add(at + timedelta(minutes=11), prompt=None)  # null prompt
    logs.add(at + timedelta(minutes=12), output="{truncated")  # a JSON string that is not JSON output
    logs.add(at + timedelta(minutes=13), success=False)
    logs.add(
        at + timedelta(minutes=14), rating="negative", prompt="Best seller for shop 0?", output={"top": ["x"]}
    )
    logs.add(at + timedelta(minutes=15), rating=None)  # never rated: not read
    logs.orphan_feedback(at + timedelta(minutes=16))
    logs.orphan_response(at + timedelta(minutes=17))
    logs.add(W1[1] + timedelta(minutes=1), prompt="next window")  # outside the window
    return {"good": good, "pii": pii, "user": user}


def test_export_registers_file_dedups_and_is_idempotent(
    resources: Resources, engine: Engine, storage: Storage
) -> None:
    logs = Logs(engine)
    seeded = _seed_window_one(logs)
    first = export_feedback_window(resources, since=W1[0], until=W1[1])
    assert first.status == "exported", first.message
    stats = first.stats
    assert stats.rows_read == 11 and stats.selected == 5
    assert dict(stats.skipped) == {
        Skip.null_prompt: 1,
        Skip.invalid_output_json: 1,
        Skip.response_failed: 1,
        Skip.rated_negative: 1,
        Skip.response_missing: 1,
        Skip.request_missing: 1,
    }
    assert stats.scrubbed == {"[USER_ID]": 1, "[EMAIL]": 1, "[PHONE]": 1, "[CARD]": 1}
    assert stats.preference_pairs == 1

    rows = _files(engine)
    assert len(rows) == 1
    tf = rows[0]
    assert tf.source == "feedback_export" and tf.examples == 5 and tf.sha256 == first.sha256
    assert tf.metadata["skipped"]["null_prompt"] == 1
    assert repo.get_watermark(engine).position == W1[1]
    local = Path(tf.json_file_path)
    assert local.is_file() and validate_dataset(local).ok
    body = local.read_text()
    for secret in (str(seeded["user"]), "owner@shop.example", "4111 1111 1111 1111", "555 0100"):
        assert secret not in body
    data = json.loads(body)
    provenance = [c["training_pairs"][0]["provenance"] for c in data["conversations"]]
    assert {p["response_id"] for p in provenance} >= {str(g["response"]) for g in seeded["good"]}
    assert all(p["model_version"] == "v7" and p["feedback_id"] and p["request_id"] for p in provenance)
    assert Path(first.files["chat"]).read_text().count("\n") == 5
    assert Path(first.files["preferences"]).read_text().count("\n") == 1
    assert "| null_prompt | 1 |" in first.report
    with engine.connect() as conn:
        refs = conn.execute(select(func.count()).select_from(TrainingFileConversation.__table__)).scalar()
    assert refs == 5

    # Rerun of the same window: same bytes, no second row, watermark unchanged.
    again = export_feedback_window(resources, since=W1[0], until=W1[1])
    assert again.status == "already_exported" and again.sha256 == first.sha256
    assert len(_files(engine)) == 1

    # A rating arriving late inside the exported window changes its content: refused, not
    # registered as a second file that would repeat every example of the first.
    logs.add(W1[0] + timedelta(hours=5), prompt="Late rating")
    with pytest.raises(ExportError, match="already exported"):
        export_feedback_window(resources, since=W1[0], until=W1[1])
    assert len(_files(engine)) == 1

    # The next window re-rates an already exported log: deduped against the earlier file.
    dup_at = W2[0] + timedelta(hours=2)
    logs.add(dup_at, prompt="Best seller for shop 1?", output={"top": ["item-1"]})
    logs.add(dup_at + timedelta(minutes=1), prompt="Fresh question", output={"top": ["new"]})
    second = export_feedback_window(resources)  # since = the watermark
    assert second.since == W1[1]
    # Earlier training data or, if the dataset stage holds that conversation out, validation data.
    assert second.stats.deduped[Dup.earlier_training] + second.stats.deduped[Dup.validation_split] == 1
    assert second.stats.selected == 2  # "next window" and "Fresh question" (not the late one)
    assert len(_files(engine)) == 2


def test_validation_conversations_of_earlier_files_never_leak(
    resources: Resources, engine: Engine, storage: Storage
) -> None:
    logs = Logs(engine)
    held_out = logs.add(W1[0] + timedelta(hours=1), prompt="Held out question", output={"a": 1})
    logs.add(W1[0] + timedelta(hours=2), prompt="Trained question", output={"a": 2})
    exported = export_feedback_window(resources, since=W1[0], until=W1[1])
    assert exported.training_file_id is not None
    held_out_id = f"fb-{held_out['response']}"
    # A job trains on the exported file: the dataset stage records the split it chose over
    # the export's `train` rows. A second job's other split never makes it train data again.
    for split in ("validation", "train"):
        feedback_rows.record_split(
            engine, exported.training_file_id, [repo.ConversationRef(held_out_id, split)]
        )
    recorded = feedback_rows.recorded_splits(engine)[exported.training_file_id]
    assert recorded[held_out_id] == "validation" and len(recorded) == 2
    # Same prompt, different answer: a leak of a validation prompt into training.
    logs.add(W2[0] + timedelta(hours=1), prompt="held out question!", output={"a": "other"})
    result = export_feedback_window(resources, since=W2[0], until=W2[1])
    assert result.stats.deduped == {Dup.validation_split: 1}
    assert result.status == "no_examples"
    assert repo.get_watermark(engine).position == W2[1]


def test_empty_window_writes_nothing(resources: Resources, engine: Engine, storage: Storage) -> None:
    logs = Logs(engine)
    logs.add(W1[0] + timedelta(hours=1), rating=None)  # logged but never rated
    result = export_feedback_window(resources, since=W1[0], until=W1[1])
    assert result.status == "empty" and "no ratings" in result.message
    assert _files(engine) == [] and repo.get_watermark(engine) is None
    assert storage.list() == []


def test_dry_run_registers_nothing(resources: Resources, engine: Engine, storage: Storage) -> None:
    Logs(engine).add(W1[0] + timedelta(hours=1))
    result = export_feedback_window(resources, since=W1[0], until=W1[1], dry_run=True)
    assert result.status == "dry_run" and result.examples == 1 and result.sha256
    assert _files(engine) == [] and repo.get_watermark(engine) is None and storage.list() == []


def test_a_second_export_does_not_run_while_one_holds_the_lock(
    resources: Resources, engine: Engine, storage: Storage
) -> None:
    Logs(engine).add(W1[0] + timedelta(hours=1))
    with export_lock(engine), pytest.raises(ExportBusy):
        export_feedback_window(
            resources, since=W1[0], until=W1[1], options=ExportOptions(lock_wait_s=0.2, retry_delay_s=0)
        )
    assert _files(engine) == []
    # Once released, the export runs.
    assert export_feedback_window(resources, since=W1[0], until=W1[1]).status == "exported"


def test_non_utf8_text_in_sqlite_is_skipped(tmp_path: Path) -> None:
    with make_resources(tmp_path, f"sqlite:///{tmp_path / 'r.db'}") as resources:
        engine = resources.registry
        logs = Logs(engine)
        ids = logs.add(W1[0] + timedelta(hours=1))
        logs.add(W1[0] + timedelta(hours=2), prompt="fine")
        with engine.begin() as conn:
            conn.exec_driver_sql(
                "UPDATE lexybrain_requests SET prompt = CAST(x'62616420ff20627974650a' AS TEXT) WHERE id = ?",
                (ids["request"].hex,),
            )
        result = export_feedback_window(resources, since=W1[0], until=W1[1])
    assert result.stats.skipped == {Skip.invalid_text: 1}
    assert result.stats.selected == 1


def _kill_stream(url_engine: Engine) -> None:
    with url_engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE pid <> pg_backend_pid() AND datname = current_database() "
                "AND (query ILIKE '%FROM lexybrain_feedback%' OR query ILIKE 'FETCH%')"
            )
        )


def _seed_many(logs: Logs, n: int) -> None:
    with logs.engine.begin() as conn:
        reqs, resps, fbs = [], [], []
        for i in range(n):
            q, r = uuid.uuid4(), uuid.uuid4()
            at = W1[0] + timedelta(seconds=i)
            reqs.append(
                {
                    "id": q,
                    "user_id": uuid.uuid4(),
                    "prompt": f"question {i}",
                    "insight_type": "m",
                    "requested_at": at,
                }
            )
            resps.append({"id": r, "request_id": q, "output": {"i": i}, "success": True, "created_at": at})
            fbs.append({"id": uuid.uuid4(), "response_id": r, "feedback": "positive", "created_at": at})
        conn.execute(insert(REQ_T), reqs)
        conn.execute(insert(RESP_T), resps)
        conn.execute(insert(FB_T), fbs)


def test_connection_dropped_mid_stream_is_retried_from_the_watermark(
    postgres_url: str, tmp_path: Path
) -> None:
    resources = make_resources(tmp_path, postgres_url)
    engine, storage = resources.registry, resources.storage
    killer = open_registry_url(postgres_url)
    fast = ExportOptions(batch_size=20, retry_delay_s=0)
    try:
        _seed_many(Logs(engine), 300)
        kills: list[int] = []

        def kill_once(n: int) -> None:
            if not kills:
                kills.append(n)
                _kill_stream(killer)

        result = export_feedback_window(
            resources, since=W1[0], until=W1[1], options=fast, on_progress=kill_once, progress_every=50
        )
        assert kills == [50]
        assert result.status == "exported" and result.stats.read_attempts == 2
        assert result.stats.rows_read == 300 and result.examples == 300
        assert len(_files(engine)) == 1
        assert not list(Path(storage.uri()).rglob("*.partial"))

        # A connection that keeps dropping: the export fails, nothing registered, watermark unchanged.
        with pytest.raises(ExportError, match="watermark did not move"):
            export_feedback_window(
                resources,
                since=W2[0] - timedelta(days=1),
                until=W2[1],
                options=fast,
                on_progress=lambda n: _kill_stream(killer),
                progress_every=50,
            )
        assert len(_files(engine)) == 1 and repo.get_watermark(engine).position == W1[1]
    finally:
        resources.close()
        killer.dispose()


def test_two_exports_at_once_never_double_export(
    resources: Resources, engine: Engine, storage: Storage
) -> None:
    logs = Logs(engine)
    for i in range(20):
        logs.add(W1[0] + timedelta(minutes=i), prompt=f"q{i}")
    results: list[Any] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(
                export_feedback_window(
                    resources, since=W1[0], until=W1[1], options=ExportOptions(lock_wait_s=30)
                )
            )
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert sorted(r.status for r in results) == ["already_exported", "exported"]
    assert len(_files(engine)) == 1


def test_selection_options_reach_the_export(resources: Resources, engine: Engine, storage: Storage) -> None:
    logs = Logs(engine)
    ids = logs.add(W1[0] + timedelta(hours=1), rating="neutral")
    with engine.begin() as conn:
        conn.execute(FB_T.update().where(FB_T.c.id == ids["feedback"]).values(notes="useful"))
    opts = SelectionOptions(include_neutral_with_notes=True, system_prompts={"market": "Market analyst."})
    result = export_feedback_window(
        resources, since=W1[0], until=W1[1], options=ExportOptions(selection=opts)
    )
    assert result.examples == 1
    data = json.loads(Path(result.training_file_uri or "").read_text())
    assert data["conversations"][0]["training_pairs"][0]["system_prompt"] == "Market analyst."


def test_earlier_files_are_scanned_once_per_machine(tmp_path: Path) -> None:
    with make_resources(tmp_path, f"sqlite:///{tmp_path / 'r.db'}") as resources:
        logs = Logs(resources.registry)
        cache = resources.settings.cache_dir / "feedback-dedup"
        logs.add(W1[0] + timedelta(hours=1), prompt="Kept question", output={"a": 1})
        first = export_feedback_window(resources, since=W1[0], until=W1[1])
        logs.add(W2[0] + timedelta(hours=1), prompt="Kept question", output={"a": 1})
        logs.add(W2[0] + timedelta(hours=2), prompt="New question", output={"a": 2})
        # A dry run reads the earlier file but writes nothing, not even the cache.
        export_feedback_window(resources, since=W2[0], until=W2[1], dry_run=True)
        assert not cache.exists()
        second = export_feedback_window(resources, since=W2[0], until=W2[1])
        assert second.earlier.files == 1 and second.earlier.cached_files == 0
        assert (cache / f"{first.sha256}.json").is_file()
        Path(first.training_file_uri or "").unlink()  # the object is gone; the keys are cached
        # A rerun of the window sees what its first run saw: the first file, from the cache.
        cached = export_feedback_window(resources, since=W2[0], until=W2[1], dry_run=True)
        assert cached.earlier.cached_files == 1
        assert cached.stats.deduped == {Dup.earlier_training: 1}
        assert cached.examples == 1 and cached.sha256 == second.sha256
        with pytest.raises(ExportError, match="cannot read earlier training file"):
            export_feedback_window(
                resources,
                since=W2[0],
                until=W2[1],
                dry_run=True,
                options=ExportOptions(cache_earlier_keys=False),
            )
