"""The feedback export's reads and writes of the registry (DESIGN.md §6).

Everything the export runs against registry tables lives here, so the export package
(`tasks/feedback/`) holds no SQL: the exporters' lock, the recorded train/validation split
of earlier training files, and the registration of a new file together with its
conversations (bulk-loaded with COPY on Postgres) and the watermark, in one transaction.

Like `repository`, functions take an Engine or a Connection first.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import math
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, Table, case, exc, func, insert, select, text
from sqlalchemy.dialects import postgresql, sqlite

from brightrun.errors import BrightrunError, InputError
from brightrun.registry import repository as repo
from brightrun.registry.db import is_sqlite, retry_on_disconnect
from brightrun.registry.models import Split, TrainingFileConversation, TrainingFileSource

Bind = Engine | Connection

#: The watermark row the export advances.
WATERMARK = "feedback_export"
# Any 64-bit constant, fixed forever: every exporter must take the same advisory lock.
ADVISORY_LOCK_KEY = int.from_bytes(
    hashlib.sha256(b"brightrun.export_feedback").digest()[:8], "big", signed=True
)

_convs = TrainingFileConversation.__table__


class ExportBusy(BrightrunError):
    """Another export holds the lock."""

    exit_code = 3


# ---------------------------------------------------------------- the exporters' lock


def _sqlite_lock_path(engine: Engine) -> Path:
    database = engine.url.database
    if database and database != ":memory:":
        return Path(database).expanduser().with_suffix(".export_feedback.lock")
    return Path(tempfile.gettempdir()) / "brightrun.export_feedback.lock"


@contextlib.contextmanager
def export_lock(engine: Engine, *, wait_s: float = 0.0, poll_s: float = 0.5) -> Iterator[None]:
    """Hold the exporters' lock for the block, or raise ExportBusy after `wait_s`.

    Postgres: a transaction-scoped advisory lock in a transaction held open on a dedicated
    connection (released when that transaction ends, so a crashed exporter never leaves it
    held, and safe behind a transaction pooler). SQLite: an flock on a
    file beside the database (released by the OS when the process dies)."""
    deadline = time.monotonic() + wait_s
    if is_sqlite(engine):
        path = _sqlite_lock_path(engine)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+") as handle:
            while True:
                try:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise ExportBusy(f"another export holds {path}; try again when it finishes") from None
                    time.sleep(poll_s)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        return
    # A transaction-scoped lock, held by a transaction left open for the block: a session
    # lock would stay on whichever pooled server connection took it (behind a transaction
    # pooler the unlock reaches another one), so every later export would find it held.
    # The open transaction pins one server connection; ending it, or the client dying,
    # releases the lock.
    with engine.connect() as conn, conn.begin() as transaction:
        # The block may run for longer than the engine's idle-in-transaction limit.
        conn.exec_driver_sql("SET LOCAL idle_in_transaction_session_timeout = 0")
        while not conn.execute(
            text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": ADVISORY_LOCK_KEY}
        ).scalar():
            if time.monotonic() >= deadline:
                raise ExportBusy(
                    "another export holds the registry's export lock; try again when it finishes"
                )
            time.sleep(poll_s)
        try:
            yield
        finally:
            with contextlib.suppress(exc.DBAPIError):
                transaction.rollback()  # nothing was written on it: rolling back releases the lock


# ---------------------------------------------------------------- recorded splits


@contextlib.contextmanager
def _connect(bind: Bind) -> Iterator[Connection]:
    if isinstance(bind, Engine):
        with bind.connect() as conn:
            yield conn
    else:
        yield bind


@retry_on_disconnect
def recorded_splits(bind: Bind, file_ids: Iterable[str] | None = None) -> dict[str, dict[str, str]]:
    """The split each training file recorded for its conversations: file id -> {conversation
    id -> train | validation}. A file registered without its split has no entry.

    Per file, not per conversation id: two uploaded files may both hold a `conv_001`."""
    stmt = select(_convs.c.training_file_id, _convs.c.conversation_id, _convs.c.split)
    if file_ids is not None:
        wanted = [uuid.UUID(str(f)) for f in file_ids]
        if not wanted:
            return {}
        stmt = stmt.where(_convs.c.training_file_id.in_(wanted))
    out: dict[str, dict[str, str]] = {}
    with _connect(bind) as conn:
        for fid, cid, split in conn.execute(stmt):
            out.setdefault(str(fid), {})[cid] = split
    return out


# ---------------------------------------------------------------- registration


def record_conversations(
    conn: Connection, training_file_id: str, refs: Sequence[repo.ConversationRef]
) -> None:
    """Record a file's conversations inside the caller's transaction. Postgres gets COPY: a
    100k-example export would spend seconds in INSERTs otherwise."""
    unique = list({r.conversation_id: r for r in refs}.values())
    if not unique:
        return
    fid = uuid.UUID(str(training_file_id))
    if conn.dialect.name == "postgresql":
        raw = conn.connection.driver_connection
        assert raw is not None
        columns = "training_file_id, conversation_id, split, source_ref"
        with raw.cursor() as cur, cur.copy(f"COPY {_convs.name} ({columns}) FROM STDIN") as copy:
            for ref in unique:
                copy.write_row((fid, ref.conversation_id, Split(ref.split).value, ref.source_ref))
        return
    conn.execute(
        insert(_convs),
        [
            {
                "training_file_id": fid,
                "conversation_id": r.conversation_id,
                "split": Split(r.split).value,
                "source_ref": r.source_ref,
            }
            for r in unique
        ],
    )


@retry_on_disconnect
def record_split(bind: Bind, training_file_id: str, refs: Sequence[repo.ConversationRef]) -> int:
    """Record the split a job trained a file with, over what was recorded before (the export
    records its files' conversations as `train`; a job that trains on such a file, or a
    second job with another split, finds the file already registered). A conversation ever
    held out for validation stays validation. Returns the number of conversations written."""
    unique = list({r.conversation_id: r for r in refs}.values())
    if not unique:
        return 0
    fid = uuid.UUID(str(training_file_id))
    with repo.transaction(bind) as conn:  # its own transaction, or the caller's
        dialect_insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
        stmt = dialect_insert(_convs)
        stmt = stmt.on_conflict_do_update(
            index_elements=["training_file_id", "conversation_id"],
            set_={
                "split": case(
                    (stmt.excluded.split == Split.validation.value, Split.validation.value),
                    else_=_convs.c.split,
                ),
                "source_ref": func.coalesce(_convs.c.source_ref, stmt.excluded.source_ref),
            },
        )
        conn.execute(
            stmt,
            [
                {
                    "training_file_id": fid,
                    "conversation_id": r.conversation_id,
                    "split": Split(r.split).value,
                    "source_ref": r.source_ref,
                }
                for r in unique
            ],
        )
    return len(unique)


def register_export(
    engine: Engine,
    *,
    name: str,
    uri: str,
    sha256: str,
    size_bytes: int,
    examples: int,
    window_start: datetime,
    window_end: datetime,
    metadata: Mapping[str, Any],
    refs: Sequence[repo.ConversationRef],
    watermark: str = WATERMARK,
    review_status: str = "pending",
    corrections_exported: Sequence[str] = (),
) -> tuple[repo.TrainingFileView, bool]:
    """Register an exported training file, its conversations and the advanced watermark in
    one transaction: either all three are there afterwards or none. Idempotent on the
    file's sha256 (a rerun of a window returns the first row, created=False)."""
    with engine.begin() as conn:
        tf, created = repo.register_training_file(
            conn,
            name=name,
            json_file_path=uri,
            sha256=sha256,
            source=TrainingFileSource.feedback_export.value,
            size_bytes=size_bytes,
            conversations=examples,
            total_training_pairs=examples,
            examples=examples,
            window_start=window_start,
            window_end=window_end,
            metadata=metadata,
            review_status=review_status,
        )
        if created:
            record_conversations(conn, tf.id, refs)
            if corrections_exported:
                from brightrun.registry.review import mark_corrections_exported

                mark_corrections_exported(conn, corrections_exported, tf.id)
        repo.advance_watermark(conn, watermark, position=window_end, training_file_id=tf.id)
    return tf, created


# ---------------------------------------------------------------- ratings per model version
# The app logs which model answered (`lexybrain_responses.model_version`) and its users rate
# the answers (`lexybrain_feedback`): the statistics over those rows live beside the rows.


@dataclass(frozen=True)
class VersionStats:
    """Users' ratings of one `lexybrain_responses.model_version` in a window."""

    model_version: str | None
    rated_responses: int  # responses with at least one rating
    ratings: int
    positive: int
    negative: int
    neutral: int
    # The adapter served under this name (`model_artifacts.served_name`); None when the
    # version names no registered adapter (the app's own label, a base model, a typo).
    artifact_id: str | None = None

    @property
    def positive_rate(self) -> float | None:
        """Positive ratings over all ratings (neutral counts as not positive)."""
        return self.positive / self.ratings if self.ratings else None

    def interval(self, z: float = 1.96) -> tuple[float, float] | None:
        return wilson_interval(self.positive, self.ratings, z)


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float] | None:
    """Wilson score interval of a proportion (95% at z=1.96); sound at small n and at 0 or n."""
    if n <= 0:
        return None
    if not 0 <= successes <= n:
        raise ValueError(f"successes {successes} must be within 0..{n}")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def feedback_by_version(
    bind: Bind, *, since: datetime | None = None, until: datetime | None = None
) -> list[VersionStats]:
    """Ratings per model version of the feedback given in `[since, until)`, most rated first,
    each joined to the adapter whose served name it is (served names are unique, so one
    version is one adapter at most)."""
    from brightrun.registry.models import FeedbackValue, LexybrainFeedback, LexybrainResponse, ModelArtifact

    responses: Table = LexybrainResponse.__table__  # type: ignore[assignment]
    feedback: Table = LexybrainFeedback.__table__  # type: ignore[assignment]
    artifacts: Table = ModelArtifact.__table__  # type: ignore[assignment]
    if since is not None and until is not None and until <= since:
        raise InputError(f"--until {until.isoformat()} must be after --since {since.isoformat()}")

    def count(value: FeedbackValue) -> Any:
        return func.count(case((feedback.c.feedback == value.value, 1)))

    stmt = (
        select(
            responses.c.model_version,
            artifacts.c.id.label("artifact_id"),
            func.count(func.distinct(responses.c.id)).label("rated"),
            func.count().label("ratings"),
            count(FeedbackValue.positive).label("positive"),
            count(FeedbackValue.negative).label("negative"),
            count(FeedbackValue.neutral).label("neutral"),
        )
        .select_from(
            feedback.join(responses, feedback.c.response_id == responses.c.id).outerjoin(
                artifacts, artifacts.c.served_name == responses.c.model_version
            )
        )
        .group_by(responses.c.model_version, artifacts.c.id)
    )
    if since is not None:
        stmt = stmt.where(feedback.c.created_at >= since)
    if until is not None:
        stmt = stmt.where(feedback.c.created_at < until)
    with repo.transaction(bind) as conn:
        rows = conn.execute(stmt).all()
    stats = [
        VersionStats(
            r.model_version,
            int(r.rated),
            int(r.ratings),
            int(r.positive),
            int(r.negative),
            int(r.neutral),
            str(r.artifact_id) if r.artifact_id is not None else None,
        )
        for r in rows
    ]
    return sorted(stats, key=lambda s: (-s.ratings, s.model_version or ""))


def unknown_versions(stats: Sequence[VersionStats]) -> VersionStats | None:
    """The ratings of every version that names no registered adapter, summed into one line
    (`model_version` None), so that they are reported, never dropped; None when there are none."""
    unknown = [s for s in stats if s.artifact_id is None]
    if not unknown:
        return None
    return VersionStats(
        None,
        sum(s.rated_responses for s in unknown),
        sum(s.ratings for s in unknown),
        sum(s.positive for s in unknown),
        sum(s.negative for s in unknown),
        sum(s.neutral for s in unknown),
    )
