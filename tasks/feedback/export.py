"""The feedback export's one door: `export_feedback_window`.

Rated inference logs of one window `[since, until)` become a new training file:

1. take the exporters' lock (`feedback_rows.export_lock`) so two exports never run at once;
2. `dedup.load_earlier`: the keys of every earlier training file, opened where the registry
   recorded it, with the train/validation split it recorded;
3. `read` streams the logs through a server-side cursor, `select` folds each response's
   ratings into one decision and builds scrubbed (`scrub`) examples, `dedup` drops
   duplicates, `write` spools them to disk; a connection lost mid-stream restarts the read
   from the window start (nothing is committed before the end);
4. `write.validate_written` checks the file with the dataset validator, and `register`
   uploads it to the pipeline's storage, then registers it and advances the watermark in
   one transaction.

Everything comes from the `Resources` handed in (storage with its endpoint, registry);
`tasks/feedback/task.py` wraps the door as Prefect tasks for the `export_feedback` flow,
so this module (and every other one in the package) imports without Prefect.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field
from sqlalchemy import Engine, exc

from brightrun.registry import evalsets
from brightrun.registry import repository as repo
from brightrun.registry.db import is_disconnect
from brightrun.registry.feedback_rows import WATERMARK, export_lock
from tasks.feedback.conversations import Conversations
from tasks.feedback.corrections import CorrectionPass, add_earlier_corrections, load_corrections
from tasks.feedback.cross_window import earlier_pairs
from tasks.feedback.dedup import Deduper, load_earlier
from tasks.feedback.errors import ExportError
from tasks.feedback.read import LogRow, read_rows, tolerant_text
from tasks.feedback.register import existing_export, publish
from tasks.feedback.result import ExportResult, ExportStats, ExportStatus, render_report
from tasks.feedback.review import ReviewPolicy, review_decision
from tasks.feedback.select import (
    PreferencePairs,
    Rating,
    SelectionOptions,
    Skip,
    build_example,
    decide,
    group_by_response,
    wanted,
)
from tasks.feedback.shape import ExportShape
from tasks.feedback.write import ExportWriter, FileOptions, validate_written

if TYPE_CHECKING:
    from brightrun.resources import Resources

log = logging.getLogger("brightrun.export")

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class ExportOptions(BaseModel):
    """How one export runs. Validated once, at the flow's or the CLI's boundary."""

    selection: SelectionOptions = Field(default_factory=SelectionOptions)
    file: FileOptions = Field(default_factory=FileOptions)
    shape: ExportShape | None = Field(
        default=None, description="The logs' shape (None: from the BRIGHTRUN_EXPORT_* settings)"
    )
    settle_delay_s: float = Field(
        default=900.0, ge=0, description="Default window end: now minus this (late ratings still land)"
    )
    lock_wait_s: float = Field(default=0.0, ge=0, description="Wait this long for a running export")
    max_read_attempts: int = Field(default=3, ge=1, description="Reads of the window after lost connections")
    retry_delay_s: float = Field(default=0.5, ge=0)
    batch_size: int = Field(default=2000, gt=0, description="Rows fetched per round trip")
    cache_earlier_keys: bool = Field(
        default=True, description="Keep earlier files' dedup keys under BRIGHTRUN_HOME/cache (by sha256)"
    )
    review: ReviewPolicy = Field(default_factory=ReviewPolicy, description="Issue 19: pending or approved")


# ---------------------------------------------------------------- the fold (pure)


def turns_fingerprint(turns: Iterable[tuple[str, str | None]]) -> str:
    # Imported here: tasks.evalsets imports this package (its dedup normaliser) at load time.
    from tasks.evalsets.fingerprint import turns_fingerprint as fingerprint

    return fingerprint(turns)


def process_rows(
    rows: Iterator[LogRow],
    options: SelectionOptions,
    deduper: Deduper,
    writer: ExportWriter | None,
    preferences: PreferencePairs,
    stats: ExportStats,
    corrections: CorrectionPass | None = None,
    *,
    shape: ExportShape | None = None,
    exam: frozenset[str] = frozenset(),
) -> None:
    """Fold the stream into examples (written to `writer`) and preference candidates.

    `shape` grouped: turns with a conversation id are gathered and written as conversations
    once the stream ends. `exam`: fingerprints of registered evaluation conversations; an
    example or conversation that is one of them is held out, never written."""
    shape = shape or ExportShape()
    chats = Conversations() if shape.grouped else None
    names = chats.names if chats is not None else None

    def counted() -> Iterator[LogRow]:
        for row in rows:
            stats.rows_read += 1
            yield row

    for group in group_by_response(counted()):
        stats.responses += 1
        decision = decide(group, options)
        if decision.rating is not None:
            stats.ratings[decision.rating.value] += 1
        if corrections is not None and corrections.wants(decision):
            # A reviewer's correction replaces the answer, whatever its rating (issue 19).
            corrected = corrections.take(decision)
            if corrected is not None:
                stats.corrections += 1
                stats.selected += 1
                if writer is not None:
                    writer.add(corrected)
            continue
        skip = wanted(decision, options)
        # A chat turn that is not trained is still its conversation's history.
        as_context = chats is not None and skip in (Skip.rated_negative, Skip.rated_neutral)
        if skip is Skip.rated_negative or as_context:
            built = build_example(decision, options, shape, names)
            if built.example is not None:
                if skip is Skip.rated_negative:
                    preferences.rejected(built.example)
                if chats is not None and built.example.conversation is not None:
                    chats.add(built.example, trained=False)
                    stats.scrubbed.update(built.scrubbed)
            assert skip is not None
            stats.skipped[skip.value] += 1
            continue
        if skip is not None:
            stats.skipped[skip.value] += 1
            continue
        built = build_example(decision, options, shape, names)
        if built.example is None:
            assert built.skip is not None
            stats.skipped[built.skip.value] += 1
            continue
        example = built.example
        if chats is not None and example.conversation is not None:
            if example.rating is Rating.positive:
                preferences.chosen(example)
            dup = deduper.check(example)
            if dup is not None:
                stats.deduped[dup.value] += 1
            chats.add(example, trained=dup is None)
            stats.scrubbed.update(built.scrubbed)
            continue
        if exam and turns_fingerprint([(example.user, example.target)]) in exam:
            stats.held_out_for_exam += 1
            continue
        if example.rating is Rating.positive:
            preferences.chosen(example)
        dup = deduper.check(example)
        if dup is not None:
            stats.deduped[dup.value] += 1
            continue
        stats.scrubbed.update(built.scrubbed)
        stats.selected += 1
        if writer is not None:
            writer.add(example)
    if chats is not None:
        _write_conversations(chats, writer, stats, exam)


def _write_conversations(
    chats: Conversations, writer: ExportWriter | None, stats: ExportStats, exam: frozenset[str]
) -> None:
    stats.context_only_conversations += chats.context_only()
    for conversation_id, turns in chats.assembled():
        pairs = [(t.example, t.trained) for t in turns]
        fingerprint = turns_fingerprint((e.user, e.target if trained else None) for e, trained in pairs)
        if exam and fingerprint in exam:
            stats.held_out_for_exam += 1
            continue
        stats.selected += 1
        if writer is not None:
            writer.add_conversation(conversation_id, pairs)


# ---------------------------------------------------------------- the window


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def resolve_window(
    engine: Engine | None,
    since: datetime | None,
    until: datetime | None,
    settle_delay_s: float,
    now: datetime,
) -> tuple[datetime, datetime]:
    """Defaults: from the watermark of the last export (the epoch before any) to now minus
    the settle delay. `engine` None: no registry yet, so no watermark."""
    if since is None:
        mark = repo.get_watermark(engine, WATERMARK) if engine is not None else None
        since = _utc(mark.position) if mark is not None else EPOCH
    until = until if until is not None else (now - timedelta(seconds=settle_delay_s)).replace(microsecond=0)
    return _utc(since), _utc(until)


def _read_with_retries(
    engine: Engine,
    since: datetime,
    until: datetime,
    options: ExportOptions,
    earlier: Deduper,
    out_dir: Path,
    *,
    exam: frozenset[str],
    on_progress: Callable[[int], None] | None,
    progress_every: int,
    corrections: CorrectionPass,
) -> tuple[ExportStats, ExportWriter, PreferencePairs]:
    """Read the whole window; a lost connection discards everything read and starts over
    from the window start (the watermark), so no partial file can ever be registered."""
    attempt = 0
    while True:
        attempt += 1
        stats, preferences = ExportStats(read_attempts=attempt), PreferencePairs()
        writer = ExportWriter(out_dir, since, until, options.file)
        corrections.reset()
        try:
            with engine.connect() as conn, tolerant_text(conn):
                rows = read_rows(
                    conn,
                    since,
                    until,
                    batch_size=options.batch_size,
                    on_progress=on_progress,
                    progress_every=progress_every,
                )
                process_rows(
                    rows,
                    options.selection,
                    earlier.fresh(),
                    writer,
                    preferences,
                    stats,
                    shape=options.shape,
                    exam=exam,
                    corrections=corrections,
                )
                add_earlier_corrections(conn, corrections, since, writer, stats, options.batch_size)
            return stats, writer, preferences
        except exc.DBAPIError as error:
            writer.abort()
            if not is_disconnect(error) or attempt >= options.max_read_attempts:
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
            time.sleep(options.retry_delay_s)
        except BaseException:
            writer.abort()
            raise


def _finish(result: ExportResult) -> ExportResult:
    result.report = render_report(result)
    log.info(result.message)
    return result


def _empty(since: datetime, until: datetime, dry_run: bool, message: str) -> ExportResult:
    return _finish(ExportResult(since, until, ExportStats(), dry_run, ExportStatus.empty, message))


# ---------------------------------------------------------------- the door


def export_feedback_window(
    resources: Resources,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    options: ExportOptions | None = None,
    dry_run: bool = False,
    now: datetime | None = None,
    workdir: Path | None = None,
    on_progress: Callable[[int], None] | None = None,
    progress_every: int = 10_000,
) -> ExportResult:
    """Export the ratings of `[since, until)` (defaults: the watermark, now minus the settle
    delay) as a new training file in `resources.storage`, registered in `resources.registry`.

    `dry_run` reads, selects and reports, and writes nothing: no object, no registry row, no
    watermark, no dedup cache, not even an embedded registry that does not exist yet.
    Returns what happened (`ExportResult.status`). Raises ExportBusy when another export
    holds the lock after `options.lock_wait_s`, ExportError when the window cannot be
    exported (nothing registered, watermark unchanged)."""
    options = options or ExportOptions()
    if options.selection.pii_spacy_model is None:
        selection = options.selection.model_copy(
            update={"pii_spacy_model": resources.settings.pii_spacy_model}
        )
        options = options.model_copy(update={"selection": selection})
    if options.shape is None:
        options = options.model_copy(update={"shape": ExportShape.from_settings(resources.settings)})
    now = _utc(now or datetime.now(UTC))
    if dry_run and not resources.registry_exists():
        since_, until_ = resolve_window(None, since, until, options.settle_delay_s, now)
        return _empty(since_, until_, dry_run, "dry run: no registry yet, so no ratings to export")
    engine = resources.registry
    # A dry run changes nothing, so it needs no lock (and leaves no lock file behind).
    lock = contextlib.nullcontext() if dry_run else export_lock(engine, wait_s=options.lock_wait_s)
    with lock, contextlib.ExitStack() as stack:
        since_, until_ = resolve_window(engine, since, until, options.settle_delay_s, now)
        if until_ <= since_:
            return _empty(
                since_,
                until_,
                dry_run,
                f"nothing to export: the window [{since_.isoformat()}, {until_.isoformat()}) is empty "
                "(the watermark is already there, or inside the settle delay)",
            )
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="brightrun-export-")))
        existing = existing_export(engine, since_, until_)
        earlier, corpus = load_earlier(
            resources,
            workdir,
            exclude_window=(since_, until_),
            created_before=existing.created_at if existing is not None else None,
            cache_dir=resources.settings.cache_dir / "feedback-dedup" if options.cache_earlier_keys else None,
            write_cache=not dry_run,
        )
        corrections = CorrectionPass(load_corrections(engine), options.selection)
        stats, writer, preferences = _read_with_retries(
            engine,
            since_,
            until_,
            options,
            earlier,
            workdir / "out",
            exam=evalsets.all_fingerprints(engine),
            on_progress=on_progress,
            progress_every=progress_every,
            corrections=corrections,
        )
        # Pairs within the window, across windows (issue 25), and the reviewers' corrections.
        pairs = preferences.pairs() + earlier_pairs(engine, preferences, since_, options.selection)
        pairs += corrections.pairs
        stats.preference_pairs = len(pairs)
        result = ExportResult(since_, until_, stats, dry_run, ExportStatus.empty, "", earlier=corpus)
        window = f"[{since_.isoformat()}, {until_.isoformat()})"
        if stats.rows_read == 0 and stats.corrections == 0:
            writer.abort()
            result.message = (
                f"no ratings in {window}: no file written, nothing registered, "
                "the watermark stays where it was"
            )
            return _finish(result)
        if stats.selected == 0:
            writer.abort()
            result.status = ExportStatus.no_examples
            result.message = (
                f"{stats.rows_read} rating(s) read but none became a new training example "
                "(see skipped and deduped); no file written"
            )
            if not dry_run:
                repo.advance_watermark(engine, WATERMARK, position=until_)
                result.message += "; the watermark moved to the window end"
            return _finish(result)
        written = writer.finish(pairs)
        validate_written(written)
        result.sha256, result.examples = written.sha256, written.examples
        if dry_run:
            result.status = ExportStatus.dry_run
            result.message = (
                f"dry run: {written.examples} example(s) would be exported (sha256 {written.sha256[:12]}); "
                "nothing uploaded or registered"
            )
            return _finish(result)
        publish(
            resources.storage,
            engine,
            result,
            written,
            writer.refs,
            existing,
            review_status=review_decision(stats, options.review),
            corrected=corrections.exported_response_ids(),
        )
        return _finish(result)
