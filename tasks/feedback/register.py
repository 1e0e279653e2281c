"""Register: upload the written files to the pipeline's storage, then record the training
file, its conversations and the advanced watermark in one registry transaction
(`brightrun.registry.feedback_rows.register_export`).

Upload first, register last: a failure in between leaves objects nobody refers to, never
a registered file that is not there.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Engine

from brightrun.registry import feedback_rows
from brightrun.registry import repository as repo
from brightrun.registry.models import Split, TrainingFileSource
from brightrun.storage import Storage
from tasks.feedback.errors import ExportError
from tasks.feedback.result import ExportResult, ExportStatus, render_report
from tasks.feedback.write import WrittenFiles, file_name

STORAGE_PREFIX = "training_files/feedback_export"


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def existing_export(engine: Engine, since: datetime, until: datetime) -> repo.TrainingFileView | None:
    """The training file an earlier run exported for exactly this window, if any."""
    for tf in repo.list_training_files(engine, source=TrainingFileSource.feedback_export.value, limit=None):
        if (
            tf.window_start is not None
            and tf.window_end is not None
            and (_utc(tf.window_start), _utc(tf.window_end)) == (since, until)
        ):
            return tf
    return None


def conversation_refs(refs: list[tuple[str, str]]) -> list[repo.ConversationRef]:
    """Every exported conversation with its source response.

    Recorded as `train`: the export does not split. The dataset stage decides the split
    when a job trains on this file and records it over these rows; until then nothing of
    this file has been held out for evaluation."""
    return [
        repo.ConversationRef(conversation_id=cid, split=Split.train.value, source_ref=ref)
        for cid, ref in refs
    ]


def publish(
    storage: Storage,
    engine: Engine,
    result: ExportResult,
    written: WrittenFiles,
    refs: list[tuple[str, str]],
    existing: repo.TrainingFileView | None,
    *,
    review_status: str = "pending",
    corrected: list[str] | None = None,
) -> None:
    """Upload to `storage`, then register and advance the watermark in one transaction;
    the file lands `review_status` (the review policy's decision) and the corrections of
    the `corrected` responses are marked as carried by it in the same transaction."""
    if existing is not None and existing.sha256 != written.sha256:
        # Registering it would train twice on everything the first file already holds.
        raise ExportError(
            f"the window [{result.since.isoformat()}, {result.until.isoformat()}) was already exported as "
            f"training file {existing.id} ({existing.examples} examples, "
            f"sha256 {(existing.sha256 or '')[:12]}), "
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
        ExportStatus.exported,
        f"{written.examples} example(s) in {result.files['training_file']}",
    )
    storage.put_bytes(keys["report"], render_report(result).encode())
    stats = result.stats
    tf, created = feedback_rows.register_export(
        engine,
        name=name,
        uri=result.files["training_file"],
        sha256=written.sha256,
        size_bytes=written.size_bytes,
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
            "corrections": stats.corrections,
            "files": result.files,
        },
        refs=conversation_refs(refs),
        review_status=review_status,
        corrections_exported=corrected or [],
    )
    result.review_status = review_status if created else (tf.review_status or "approved")
    result.training_file_id = tf.id
    result.training_file_uri = result.files["training_file"]
    if created:
        result.status = ExportStatus.exported
        result.message = f"exported {written.examples} example(s) to {result.training_file_uri}"
    else:
        result.status = ExportStatus.already_exported
        result.message = (
            f"this window was already exported as training file {tf.id} (same sha256); nothing new registered"
        )
