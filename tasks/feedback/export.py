"""Export of feedback-rated inference logs into a new training file (DESIGN.md §1, §6).

`export_window` is the whole export of one window `[since, until)`:

1. take the export lock (a Postgres advisory lock, or a file lock beside the SQLite
   registry) so two exports never run at once;
2. load the dedup keys of every earlier training file and validation split;
3. stream `lexybrain_feedback ⟕ lexybrain_responses ⟕ lexybrain_requests` through a
   server-side cursor, ordered by response, folding each response's ratings into one
   decision; selected logs become scrubbed, deduplicated examples spooled to disk;
   a connection lost mid-stream restarts the read from the window start (nothing is
   committed before the end, so the watermark still points there);
4. validate the file with the dataset validator, upload it with its chat JSONL,
   preference pairs and report, then register the `training_files` row and advance the
   watermark in one transaction.

The Prefect tasks at the bottom wrap this for the `export_feedback` flow; everything
above them is plain code that tests call directly.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import pickle
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from sqlalchemy import Engine, Text, cast, exc, insert, select, text
from sqlalchemy.engine import Connection, make_url

from brightrun.errors import BrightrunError
from brightrun.registry import repository as repo
from brightrun.registry.db import DatabaseUnavailable, is_disconnect, is_sqlite
from brightrun.registry.models import (
    LexybrainFeedback,
    LexybrainRequest,
    LexybrainResponse,
    Split,
    TrainingFileConversation,
    TrainingFileSource,
)
from brightrun.storage import Storage, StorageError, open_storage, split_uri
from tasks.feedback_select import (
    Deduper,
    LogRow,
    PairKeys,
    PreferencePairs,
    Rating,
    SelectionOptions,
    Skip,
    build_example,
    decide,
    group_by_response,
    pair_keys,
    wanted,
)
from tasks.feedback_write import ExportWriter, FileOptions, WrittenFiles, file_name

log = logging.getLogger("brightrun.export")

WATERMARK = "feedback_export"
STORAGE_PREFIX = "training_files/feedback_export"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Any 64-bit constant, fixed forever: every exporter must take the same advisory lock.
ADVISORY_LOCK_KEY = int.from_bytes(
    hashlib.sha256(b"brightrun.export_feedback").digest()[:8], "big", signed=True
)


class ExportError(BrightrunError):
    """The export could not complete; nothing was registered and the watermark did not move."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient  # worth another try later (a lost database, not bad data)


class ExportBusy(BrightrunError):
    """Another export holds the lock."""

    exit_code = 3


# ---------------------------------------------------------------- reading


def _as_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def log_query(since: datetime, until: datetime) -> Any:
    """Every feedback in the window joined to its response and request, ordered so that
    all ratings of one response are consecutive (oldest first)."""
    f = LexybrainFeedback.__table__
    r = LexybrainResponse.__table__
    q = LexybrainRequest.__table__
    return (
        select(
            f.c.id,
            f.c.response_id,
            f.c.user_id,
            f.c.feedback,
            f.c.notes,
            f.c.created_at,
            r.c.id.label("r_id"),
            r.c.request_id,
            # JSON columns come back as text: a malformed value must become a skip reason,
            # not an exception that ends the stream.
            cast(r.c.output, Text).label("output_text"),
            r.c.model_name,
            r.c.model_version,
            r.c.success,
            q.c.id.label("q_id"),
            q.c.user_id.label("q_user_id"),
            q.c.prompt,
            cast(q.c.context, Text).label("context_text"),
            q.c.insight_type,
        )
        .select_from(f.outerjoin(r, r.c.id == f.c.response_id).outerjoin(q, q.c.id == r.c.request_id))
        .where(f.c.created_at >= since, f.c.created_at < until)
        .order_by(f.c.response_id, f.c.created_at, f.c.id)
    )


def _sqlite_text(raw: bytes) -> str:
    # SQLite stores whatever bytes it was given; invalid UTF-8 must not end the stream.
    # Lone surrogates mark the bad bytes, and selection skips such logs as invalid_text.
    return raw.decode("utf-8", "surrogateescape")


@contextlib.contextmanager
def _tolerant_text(conn: Connection) -> Iterator[None]:
    if conn.dialect.name != "sqlite":
        yield
        return
    dbapi = conn.connection.driver_connection
    previous = dbapi.text_factory
    dbapi.text_factory = _sqlite_text
    try:
        yield
    finally:
        dbapi.text_factory = previous


def read_rows(
    conn: Connection,
    since: datetime,
    until: datetime,
    *,
    batch_size: int = 2000,
    on_progress: Callable[[int], None] | None = None,
    progress_every: int = 10_000,
) -> Iterator[LogRow]:
    """Stream the window through a server-side cursor (`yield_per`), never the whole result."""
    result = conn.execution_options(stream_results=True, yield_per=batch_size).execute(
        log_query(since, until)
    )
    for n, row in enumerate(result, start=1):
        if on_progress is not None and n % progress_every == 0:
            on_progress(n)
        yield LogRow(
            feedback_id=str(row.id),
            response_id=_as_str(row.response_id),
            feedback_user_id=_as_str(row.user_id),
            rating=row.feedback,
            notes=row.notes,
            feedback_at=row.created_at,
            response_found=row.r_id is not None,
            request_id=_as_str(row.request_id),
            request_found=row.q_id is not None,
            output_text=row.output_text,
            model_name=row.model_name,
            model_version=row.model_version,
            success=row.success,
            request_user_id=_as_str(row.q_user_id),
            prompt=row.prompt,
            context_text=row.context_text,
            insight_type=row.insight_type,
        )


# ---------------------------------------------------------------- selection over a stream


@dataclass
class ExportStats:
    rows_read: int = 0
    responses: int = 0
    selected: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    deduped: Counter[str] = field(default_factory=Counter)
    scrubbed: Counter[str] = field(default_factory=Counter)
    ratings: Counter[str] = field(default_factory=Counter)
    preference_pairs: int = 0
    read_attempts: int = 0


def process_rows(
    rows: Iterator[LogRow],
    options: SelectionOptions,
    deduper: Deduper,
    writer: ExportWriter | None,
    preferences: PreferencePairs,
    stats: ExportStats,
) -> None:
    """Fold the stream into examples (written to `writer`) and preference candidates."""

    def counted() -> Iterator[LogRow]:
        for row in rows:
            stats.rows_read += 1
            yield row

    for group in group_by_response(counted()):
        stats.responses += 1
        decision = decide(group, options)
        if decision.rating is not None:
            stats.ratings[decision.rating.value] += 1
        skip = wanted(decision, options)
        if skip is Skip.rated_negative:
            built = build_example(decision, options)
            if built.example is not None:
                preferences.rejected(built.example)
            stats.skipped[skip.value] += 1
            continue
        if skip is not None:
            stats.skipped[skip.value] += 1
            continue
        built = build_example(decision, options)
        if built.example is None:
            assert built.skip is not None
            stats.skipped[built.skip.value] += 1
            continue
        if built.example.rating is Rating.positive:
            preferences.chosen(built.example)
        dup = deduper.check(built.example)
        if dup is not None:
            stats.deduped[dup.value] += 1
            continue
        stats.scrubbed.update(built.scrubbed)
        stats.selected += 1
        if writer is not None:
            writer.add(built.example)


# ---------------------------------------------------------------- earlier training data


def _validation_ids(conversation_ids: list[str], known: dict[str, repo.ConversationRef]) -> set[str]:
    """Which conversations of an earlier file are validation data: the splits recorded at
    registration when there are any, else the dataset stage's deterministic split
    (its `split_hash` and default `PrepareOptions`, including its rule that a file of two
    or more conversations always holds one out)."""
    recorded = {cid for cid in conversation_ids if cid in known and known[cid].split == Split.validation}
    if recorded or any(cid in known for cid in conversation_ids):
        return recorded
    from tasks.dataset import PrepareOptions, validation_conversation_ids

    return validation_conversation_ids(conversation_ids, PrepareOptions())


def open_file_storage(storage_path: str, default: Storage) -> tuple[Storage, str]:
    """A training file's storage and key: full URIs (s3://, absolute paths) or keys of `default`."""
    if storage_path.startswith(("s3://", "/", "file://")):
        parent, name = split_uri(storage_path)
        return open_storage(parent), name
    return default, storage_path


FileKeys = list[tuple[str, list[PairKeys]]]


def scan_file_keys(path: Path) -> FileKeys:
    """Dedup keys of every pair of a training file, by conversation (streamed: a large
    earlier file never sits in memory, only 3 digests per pair)."""
    from tasks.dataset_schema import DatasetScanner

    return [
        (
            conv.conversation_metadata.conversation_id,
            [pair_keys(p.current_user_input, p.target_response) for p in conv.training_pairs],
        )
        for conv in DatasetScanner(path).conversations()
    ]


def _file_keys(
    tf: repo.TrainingFileView, storage: Storage, workdir: Path, cache_dir: Path | None
) -> FileKeys:
    """A training file's keys, from the local cache when this machine has scanned it
    before (files are immutable: the cache is keyed by the registered sha256)."""
    cached = cache_dir / f"{tf.sha256}.pickle" if cache_dir is not None else None
    if cached is not None and cached.is_file():
        try:
            with open(cached, "rb") as f:
                return pickle.load(f)  # our own cache under BRIGHTRUN_HOME
        except (OSError, pickle.PickleError, EOFError, ValueError):
            cached.unlink(missing_ok=True)
    src, key = open_file_storage(tf.storage_path, storage)
    local = workdir / f"earlier-{tf.id}.json"
    try:
        src.get_file(key, local, expected_sha256=tf.sha256)
    except Exception as error:
        raise ExportError(
            f"cannot read earlier training file {tf.name} ({tf.storage_path}) to dedup against it: "
            f"{error}; restore the object or remove its training_files row"
        ) from error
    try:
        keys = scan_file_keys(local)
    finally:
        local.unlink(missing_ok=True)
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".{uuid.uuid4().hex}.partial")
        with open(tmp, "wb") as f:
            pickle.dump(keys, f, protocol=pickle.HIGHEST_PROTOCOL)
        tmp.replace(cached)
    return keys


def load_earlier(
    engine: Engine,
    storage: Storage,
    workdir: Path,
    *,
    exclude_window: tuple[datetime, datetime] | None = None,
    created_before: datetime | None = None,
    cache_dir: Path | None = None,
) -> tuple[Deduper, dict[str, int]]:
    """Dedup keys of every earlier training file (and which of its pairs are validation).

    A rerun of a window excludes its own earlier output and anything registered after it,
    so it sees exactly what the first run saw and writes the same bytes."""
    deduper = Deduper()
    known = repo.exported_conversations(engine)
    files = repo.list_training_files(engine, limit=None)
    loaded = {"files": 0, "pairs": 0, "validation_pairs": 0}
    for tf in sorted(files, key=lambda t: (t.created_at, t.id)):
        if created_before is not None and tf.created_at >= created_before:
            continue
        if (
            exclude_window is not None
            and tf.source == TrainingFileSource.feedback_export
            and tf.window_start is not None
            and tf.window_end is not None
            and (_utc(tf.window_start), _utc(tf.window_end)) == exclude_window
        ):
            continue
        conversations = _file_keys(tf, storage, workdir, cache_dir)
        validation = _validation_ids([cid for cid, _ in conversations], known)
        for cid, pairs in conversations:
            is_val = cid in validation
            for keys in pairs:
                deduper.add_keys(keys, validation=is_val)
            loaded["pairs"] += len(pairs)
            loaded["validation_pairs"] += len(pairs) if is_val else 0
        loaded["files"] += 1
    return deduper, loaded


# ---------------------------------------------------------------- locking


def _sqlite_lock_path(engine: Engine) -> Path:
    database = make_url(engine.url).database
    if database and database != ":memory:":
        return Path(database).expanduser().with_suffix(".export_feedback.lock")
    return Path(tempfile.gettempdir()) / "brightrun.export_feedback.lock"


@contextlib.contextmanager
def export_lock(engine: Engine, *, wait_s: float = 0.0, poll_s: float = 0.5) -> Iterator[None]:
    """Hold the exporters' lock for the block, or raise ExportBusy after `wait_s`.

    Postgres: a session advisory lock on a dedicated connection (released when that
    connection ends, so a crashed exporter never leaves it held). SQLite: an flock on a
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
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        while not conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": ADVISORY_LOCK_KEY}).scalar():
            if time.monotonic() >= deadline:
                raise ExportBusy(
                    "another export holds the registry's export lock; try again when it finishes"
                )
            time.sleep(poll_s)
        try:
            yield
        finally:
            with contextlib.suppress(exc.DBAPIError):
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": ADVISORY_LOCK_KEY})


# ---------------------------------------------------------------- the export


@dataclass
class ExportResult:
    since: datetime
    until: datetime
    stats: ExportStats
    dry_run: bool
    status: str  # exported | already_exported | empty | no_examples | dry_run
    message: str
    training_file_id: str | None = None
    training_file_uri: str | None = None
    sha256: str | None = None
    examples: int = 0
    files: dict[str, str] = field(default_factory=dict)
    earlier: dict[str, int] = field(default_factory=dict)
    report: str = ""

    def summary(self) -> dict[str, Any]:
        out = asdict(self)
        out["since"], out["until"] = self.since.isoformat(), self.until.isoformat()
        out.pop("report")
        return out


def resolve_window(
    engine: Engine, since: datetime | None, until: datetime | None, settle_delay_s: float, now: datetime
) -> tuple[datetime, datetime]:
    if since is None:
        mark = repo.get_watermark(engine, WATERMARK)
        since = _utc(mark.position) if mark is not None else EPOCH
    until = until if until is not None else (now - timedelta(seconds=settle_delay_s)).replace(microsecond=0)
    since, until = _utc(since), _utc(until)
    return since, until


def _read_with_retries(
    engine: Engine,
    since: datetime,
    until: datetime,
    options: SelectionOptions,
    earlier: Deduper,
    make_writer: Callable[[], ExportWriter | None],
    *,
    max_attempts: int,
    retry_delay_s: float,
    on_progress: Callable[[int], None] | None,
    progress_every: int,
    batch_size: int,
) -> tuple[ExportStats, ExportWriter | None, PreferencePairs]:
    """Read the whole window; a lost connection discards everything read and starts over
    from the window start (the watermark), so no partial file can ever be registered."""
    attempt = 0
    while True:
        attempt += 1
        stats, preferences, writer = ExportStats(read_attempts=attempt), PreferencePairs(), make_writer()
        try:
            with engine.connect() as conn, _tolerant_text(conn):
                rows = read_rows(
                    conn,
                    since,
                    until,
                    batch_size=batch_size,
                    on_progress=on_progress,
                    progress_every=progress_every,
                )
                process_rows(rows, options, earlier.fresh(), writer, preferences, stats)
            return stats, writer, preferences
        except exc.DBAPIError as error:
            if writer is not None:
                writer.abort()
            if not is_disconnect(error) or attempt >= max_attempts:
                raise ExportError(
                    f"reading the inference logs for [{since.isoformat()}, {until.isoformat()}) failed "
                    f"after {attempt} attempt(s): {str(error.orig or error).splitlines()[0]}; nothing was "
                    "registered and the watermark did not move, so the next run retries this window",
                    transient=is_disconnect(error),
                ) from error
            log.warning(
                "connection lost after %d rows (attempt %d); re-reading the window", stats.rows_read, attempt
            )
            engine.dispose()
            time.sleep(retry_delay_s)
        except BaseException:
            if writer is not None:
                writer.abort()
            raise


def export_window(
    engine: Engine,
    storage: Storage,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    settle_delay_s: float = 900.0,
    options: SelectionOptions | None = None,
    file_options: FileOptions | None = None,
    dry_run: bool = False,
    lock_wait_s: float = 0.0,
    max_read_attempts: int = 3,
    retry_delay_s: float = 0.5,
    workdir: Path | None = None,
    now: datetime | None = None,
    on_progress: Callable[[int], None] | None = None,
    progress_every: int = 10_000,
    batch_size: int = 2000,
    cache_dir: Path | None = None,
) -> ExportResult:
    """Export the ratings of `[since, until)` (defaults: the watermark, now minus the settle
    delay) as a new training file; see the module docstring for the steps.

    Returns what happened (`status`: exported, already_exported, empty, no_examples or
    dry_run) with the counts and the markdown report. Raises ExportBusy when another export
    holds the lock after `lock_wait_s`, ExportError when the window cannot be exported
    (nothing registered, watermark unchanged)."""
    options = options or SelectionOptions()
    file_options = file_options or FileOptions()
    now = _utc(now or datetime.now(UTC))
    with export_lock(engine, wait_s=lock_wait_s), contextlib.ExitStack() as stack:
        since_, until_ = resolve_window(engine, since, until, settle_delay_s, now)
        if until_ <= since_:
            stats = ExportStats()
            return _finish(
                ExportResult(
                    since_,
                    until_,
                    stats,
                    dry_run,
                    "empty",
                    f"nothing to export: the window [{since_.isoformat()}, {until_.isoformat()}) is empty "
                    "(the watermark is already there, or inside the settle delay)",
                )
            )
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="brightrun-export-")))
        existing = _existing_export(engine, since_, until_)
        earlier, loaded = load_earlier(
            engine,
            storage,
            workdir,
            exclude_window=(since_, until_),
            created_before=existing.created_at if existing is not None else None,
            cache_dir=cache_dir,
        )
        out_dir = workdir / "out"
        stats, writer, preferences = _read_with_retries(
            engine,
            since_,
            until_,
            options,
            earlier,
            lambda: ExportWriter(out_dir, since_, until_, file_options),
            max_attempts=max_read_attempts,
            retry_delay_s=retry_delay_s,
            on_progress=on_progress,
            progress_every=progress_every,
            batch_size=batch_size,
        )
        assert writer is not None
        pairs = preferences.pairs()
        stats.preference_pairs = len(pairs)
        result = ExportResult(since_, until_, stats, dry_run, "", "", earlier=loaded)
        if stats.rows_read == 0:
            writer.abort()
            result.status = "empty"
            result.message = (
                f"no ratings in [{since_.isoformat()}, {until_.isoformat()}): no file written, nothing "
                "registered, the watermark stays where it was"
            )
            return _finish(result)
        if stats.selected == 0:
            writer.abort()
            result.status = "no_examples"
            result.message = (
                f"{stats.rows_read} rating(s) read but none became a new training example "
                "(see skipped and deduped); no file written"
            )
            if not dry_run:
                repo.advance_watermark(engine, WATERMARK, position=until_)
                result.message += "; the watermark moved to the window end"
            return _finish(result)
        written = writer.finish(pairs)
        _validate(written)
        result.sha256, result.examples = written.sha256, written.examples
        if dry_run:
            result.status = "dry_run"
            result.message = (
                f"dry run: {written.examples} example(s) would be exported (sha256 {written.sha256[:12]}); "
                "nothing uploaded or registered"
            )
            return _finish(result)
        _publish(engine, storage, result, written, writer.refs, existing)
        return _finish(result)


def _existing_export(engine: Engine, since: datetime, until: datetime) -> repo.TrainingFileView | None:
    for tf in repo.list_training_files(engine, source=TrainingFileSource.feedback_export.value, limit=None):
        if (
            tf.window_start is not None
            and tf.window_end is not None
            and (_utc(tf.window_start), _utc(tf.window_end)) == (since, until)
        ):
            return tf
    return None


def _validate(written: WrittenFiles) -> None:
    from tasks.dataset_schema import validate_dataset

    checked = validate_dataset(written.training_file)
    if not checked.ok:
        raise ExportError(
            f"the exported file {written.training_file.name} failed the dataset validator "
            f"({checked.problem_count} problem(s)): "
            + "; ".join(checked.messages()[:5])
            + "; this is a bug in the export, please report it"
        )


def _publish(
    engine: Engine,
    storage: Storage,
    result: ExportResult,
    written: WrittenFiles,
    refs: list[tuple[str, str]],
    existing: repo.TrainingFileView | None,
) -> None:
    """Upload, then register and advance the watermark in one transaction."""
    if existing is not None and existing.sha256 != written.sha256:
        # Registering it would train twice on everything the first file already holds.
        raise ExportError(
            f"the window [{result.since.isoformat()}, {result.until.isoformat()}) was already exported as "
            f"training file {existing.id} ({existing.examples} examples, sha256 {existing.sha256[:12]}), "
            f"but its logs have changed since (now {written.examples} examples, sha256 "
            f"{written.sha256[:12]}); nothing was registered. Export the new ratings with a later window, "
            "or delete that training file's row to replace it"
        )
    name = file_name(result.since, result.until)
    prefix = f"{STORAGE_PREFIX}/{name}"
    keys = {
        "training_file": f"{prefix}/{written.training_file.name}",
        "chat": f"{prefix}/{written.chat_file.name}",
    }
    storage.put_file(keys["training_file"], written.training_file)
    storage.put_file(keys["chat"], written.chat_file)
    if written.preferences_file is not None:
        keys["preferences"] = f"{prefix}/{written.preferences_file.name}"
        storage.put_file(keys["preferences"], written.preferences_file)
    keys["report"] = f"{prefix}/report.md"
    result.files = {k: storage.uri(v) for k, v in keys.items()}
    # The stored report describes the file (the same for a rerun, like the file itself);
    # the run's own report, with the registration outcome, is rendered at the end.
    result.status, result.message = (
        "exported",
        f"{written.examples} example(s) in {result.files['training_file']}",
    )
    storage.put_bytes(keys["report"], render_report(result).encode())
    refs = _conversation_refs(refs)
    stats = result.stats
    with engine.begin() as conn:
        tf, created = repo.register_training_file(
            conn,
            name=name,
            storage_path=storage.uri(keys["training_file"]),
            sha256=written.sha256,
            source=TrainingFileSource.feedback_export.value,
            size_bytes=written.size_bytes,
            conversations=written.examples,
            training_pairs=written.examples,
            examples=written.examples,
            window_start=result.since,
            window_end=result.until,
            metadata={
                "rows_read": stats.rows_read,
                "selected": stats.selected,
                "skipped": dict(stats.skipped),
                "deduped": dict(stats.deduped),
                "scrubbed": dict(stats.scrubbed),
                "preference_pairs": stats.preference_pairs,
                "files": result.files,
            },
        )
        if created:
            _insert_refs(conn, tf.id, refs)
        repo.advance_watermark(conn, WATERMARK, position=result.until, training_file_id=tf.id)
    result.training_file_id = tf.id
    result.training_file_uri = result.files["training_file"]
    if created:
        result.status = "exported"
        result.message = f"exported {written.examples} example(s) to {result.training_file_uri}"
    else:
        result.status = "already_exported"
        result.message = (
            f"this window was already exported as training file {tf.id} (same sha256); nothing new registered"
        )


def _insert_refs(conn: Connection, file_id: str, refs: list[repo.ConversationRef]) -> None:
    """Record the file's conversations in the registration's transaction. Postgres gets
    COPY: a 100k-example export would spend seconds in INSERTs otherwise."""
    table = TrainingFileConversation.__table__
    if not refs:
        return
    if conn.dialect.name == "postgresql":
        raw = conn.connection.driver_connection
        columns = "training_file_id, conversation_id, split, source_ref"
        with raw.cursor() as cur, cur.copy(f"COPY {table.name} ({columns}) FROM STDIN") as copy:
            for ref in refs:
                copy.write_row((file_id, ref.conversation_id, ref.split, ref.source_ref))
        return
    conn.execute(
        insert(table),
        [
            {
                "training_file_id": uuid.UUID(str(file_id)),
                "conversation_id": r.conversation_id,
                "split": r.split,
                "source_ref": r.source_ref,
            }
            for r in refs
        ],
    )


def _conversation_refs(refs: list[tuple[str, str]]) -> list[repo.ConversationRef]:
    """Every exported conversation with its source response and its future split, as the
    dataset stage will split this file (so later exports keep validation data out)."""
    validation = _validation_ids([cid for cid, _ in refs], {})
    return [
        repo.ConversationRef(
            conversation_id=cid,
            split=Split.validation.value if cid in validation else Split.train.value,
            source_ref=ref,
        )
        for cid, ref in refs
    ]


# ---------------------------------------------------------------- the report


def _table(counter: Counter[str]) -> list[str]:
    if not counter:
        return ["| (none) | 0 |"]
    return [f"| {k} | {v} |" for k, v in sorted(counter.items())]


def render_report(result: ExportResult) -> str:
    s = result.stats
    lines = [
        f"# Feedback export {result.since.isoformat()} → {result.until.isoformat()}",
        "",
        f"**{result.status}**: {result.message}",
        "",
        "| measure | count |",
        "|---|---|",
        f"| rows read | {s.rows_read} |",
        f"| rated responses | {s.responses} |",
        f"| selected (exported examples) | {s.selected} |",
        f"| skipped | {sum(s.skipped.values())} |",
        f"| deduped | {sum(s.deduped.values())} |",
        f"| personal data replaced | {sum(s.scrubbed.values())} |",
        f"| preference pairs | {s.preference_pairs} |",
        f"| read attempts | {s.read_attempts} |",
        "",
        "## Skipped by reason",
        "",
        "| reason | responses |",
        "|---|---|",
        *_table(s.skipped),
        "",
        "## Deduped",
        "",
        "| against | examples |",
        "|---|---|",
        *_table(s.deduped),
        "",
        "## Personal data replaced",
        "",
        "| kind | replacements |",
        "|---|---|",
        *_table(s.scrubbed),
        "",
    ]
    if result.sha256:
        lines += [f"Training file sha256: `{result.sha256}`", ""]
    for kind, uri in sorted(result.files.items()):
        lines.append(f"- {kind}: `{uri}`")
    if result.earlier:
        lines += [
            "",
            f"Dedup corpus: {result.earlier.get('files', 0)} earlier training file(s), "
            f"{result.earlier.get('pairs', 0)} pairs "
            f"({result.earlier.get('validation_pairs', 0)} validation).",
        ]
    return "\n".join(lines) + "\n"


def _finish(result: ExportResult) -> ExportResult:
    result.report = render_report(result)
    log.info(result.message)
    return result


# ---------------------------------------------------------------- Prefect tasks


def _transient_failure(task: Any, task_run: Any, state: Any) -> bool:
    """Retry the export task only for what a later try can cure (a lost database or
    object store), never for bad data, a busy lock or a changed window."""
    error = state.data if isinstance(state.data, BaseException) else None
    if error is None:
        try:
            state.result()
        except BaseException as raised:
            error = raised
    return isinstance(error, DatabaseUnavailable | StorageError) or getattr(error, "transient", False)


@task(
    name="export-feedback-window",
    retries=1,
    retry_delay_seconds=30,
    retry_condition_fn=_transient_failure,
)
def export_feedback_window(
    since: datetime | None,
    until: datetime | None,
    settle_delay_s: float,
    selection: SelectionOptions,
    file_options: FileOptions,
    dry_run: bool,
    lock_wait_s: float,
) -> ExportResult | None:
    """Export one window; a lost database connection is retried inside (from the window
    start), and the task retry covers anything else transient. Either way nothing is
    registered until the whole file is uploaded."""
    from brightrun.registry import open_registry
    from brightrun.settings import load_settings
    from brightrun.storage import open_storage

    settings = load_settings()
    engine = open_registry(settings)
    try:
        storage = open_storage(settings.resolved_storage_url, endpoint_url=settings.resolved_s3_endpoint_url)
        return export_window(
            engine,
            storage,
            since=since,
            until=until,
            settle_delay_s=settle_delay_s,
            options=selection,
            file_options=file_options,
            dry_run=dry_run,
            lock_wait_s=lock_wait_s,
            cache_dir=settings.cache_dir / "feedback-dedup",
        )
    except ExportBusy as busy:
        get_run_logger().warning("%s", busy)
        return None
    finally:
        engine.dispose()


@task(name="start-training")
def start_training(
    deployment: str, training_file_uri: str, base_model: str, preset: str | None, job_name: str
) -> dict[str, Any]:
    """Start `train_adapter` on the new file without waiting for it (timeout=0); the
    subflow link makes the training run appear under this export run in the UI."""
    from prefect.deployments import run_deployment

    run = run_deployment(
        name=deployment,
        parameters={
            "dataset": training_file_uri,
            "base_model": base_model,
            "preset": preset,
            "job_name": job_name,
        },
        timeout=0,
        as_subflow=True,
        tags=["brightrun", "feedback-export"],
    )
    return {"flow_run_id": str(run.id), "flow_run_name": run.name, "deployment": deployment}
