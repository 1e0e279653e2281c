"""The dataset stage's one door: `prepare_job_dataset`, called once per job by the flow.

    fetch the source once (hashed once) → refuse it when it holds a conversation of a
    registered evaluation set (the registry lookup here, the check in tasks/evalsets) → store
    it in the job's storage under its content hash → prepare it (cached by hash + tokenizer +
    options) → upload the prepared set under the job's `data/` → record the file and the
    writer's split in the registry → one result

The registry records `datasets/<sha256>.json` in the pipeline's own storage: never the
caller's string (a relative path means nothing to a later export; a signed URL's query is a
credential and expires).
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from brightrun import prepared
from brightrun.layout import JobLayout
from brightrun.registry import evalsets, feedback_rows
from brightrun.registry import repository as repo
from brightrun.resources import Resources
from brightrun.settings import DatasetLimits
from brightrun.spec import JobSpec
from brightrun.storage import Storage
from tasks.dataset.fetch import SourceFile, fetch_source
from tasks.dataset.prepare import DatasetReport, PrepareOptions, prepare_dataset
from tasks.dataset.report import render_report_markdown
from tasks.dataset.tokenizer import load_tokenizer, tokenizer_fingerprint
from tasks.evalsets.fingerprint import HeldOutSet, fingerprint_file, refuse_evaluation_conversations

DATASETS_PREFIX = "datasets"


class PreparedJobDataset(BaseModel):
    """What the dataset stage did for a job: where the source now lives, what it holds, how
    it was split, and the report for the UI."""

    model_config = ConfigDict(frozen=True)

    source_uri: str
    sha256: str
    display_name: str
    training_file_id: str
    report: DatasetReport
    train_examples: int
    validation_examples: int
    report_markdown: str


def source_key(sha256: str) -> str:
    return f"{DATASETS_PREFIX}/{sha256}.json"


def prepared_cache_dir(cache_dir: Path, source: SourceFile, spec: JobSpec, options: PrepareOptions) -> Path:
    """Input-addressed: the same bytes, tokenizer and options share one prepared directory."""
    tokenizer = tokenizer_fingerprint(spec.base_model, spec.base_model_revision)
    key = "\n".join([prepared.FORMAT, source.sha256, tokenizer, options.model_dump_json()])
    return cache_dir / "prepared" / hashlib.sha256(key.encode()).hexdigest()[:32]


def _prepare_cached(
    out_dir: Path, source: SourceFile, spec: JobSpec, options: PrepareOptions, limits: DatasetLimits
) -> DatasetReport:
    """The cached preparation when it is complete (meta.json is written last), else a new one:
    a cleaned cache or a half-deleted entry is rebuilt, never trusted."""
    try:
        meta = prepared.read_meta(out_dir)
        complete = meta.source_sha256 == source.sha256 and all(
            (out_dir / name).is_file() for name in (*meta.files_sha256, prepared.SPLITS)
        )
        if complete:
            return DatasetReport.model_validate_json((out_dir / prepared.REPORT).read_text())
    except (OSError, ValueError):
        pass  # no entry, or an unreadable one: prepared again below
    # An entry with meta.json is replaced atomically by prepare_dataset (a concurrent job
    # reading it sees whole files of identical content: preparation is deterministic). One
    # without meta.json was damaged by hand; prepare_dataset would refuse to replace it, as it
    # protects a user's --out, but the cache is ours.
    if out_dir.is_dir() and not (out_dir / prepared.META).exists():
        shutil.rmtree(out_dir, ignore_errors=True)
    tokenizer = load_tokenizer(spec.base_model, spec.base_model_revision)
    return prepare_dataset(
        source.path,
        tokenizer,
        out_dir,
        options,
        limits=limits,
        source_sha256=source.sha256,
        source_name=source.display_name,
    )


def _store_source(storage: Storage, source: SourceFile) -> str:
    """The source in the pipeline's storage under its content hash (once: same bytes, same key)."""
    key = source_key(source.sha256)
    if storage.stat(key) is None:
        storage.put_file(key, source.path)
    return storage.uri(key)


def record_source(
    resources: Resources,
    source: SourceFile,
    source_uri: str,
    report: DatasetReport,
    out_dir: Path,
    training_file_id: str | None,
) -> str:
    """The source's `training_files` row (registered once per sha256; an app's row when
    `training_file_id` is given) with this job's split recorded over it, so a later export
    knows what the job evaluated on. Returns the row's id."""
    splits = prepared.read_splits(out_dir)
    refs = [
        repo.ConversationRef(conversation_id=cid, split=split)
        for cid, split in sorted(splits.by_conversation().items())
    ]
    if training_file_id is not None:
        feedback_rows.record_split(resources.registry, training_file_id, refs)
        return str(training_file_id)
    training_file, created = repo.register_training_file(
        resources.registry,
        name=source.display_name,
        json_file_path=source_uri,
        sha256=source.sha256,
        source="upload",
        size_bytes=source.size,
        conversations=report.conversations,
        total_training_pairs=report.pairs,
        examples=report.sequences,
        conversation_refs=refs,
    )
    if not created:
        # Registered before (a feedback export's file, another job's): this job's split is
        # recorded over it, or a later export would not know what this job evaluated on.
        feedback_rows.record_split(resources.registry, training_file.id, refs)
    return str(training_file.id)


def refuse_held_out_conversations(resources: Resources, source: SourceFile) -> None:
    """`InputError` naming each conversation of `source` that is in a registered evaluation
    set. Not cached with the preparation: a set registered after a file was first prepared
    still keeps it out. No set registered: no scan."""
    engine = resources.registry
    if not evalsets.any_registered(engine):
        return
    conversations = fingerprint_file(source.path, resources.settings.dataset_limits)
    if conversations is None:
        return  # a file with problems: the preparation lists every one of them
    found = evalsets.sets_holding(engine, [c.fingerprint for c in conversations])
    held_out = {fp: HeldOutSet(row.name, row.version) for fp, row in found.items()}
    refuse_evaluation_conversations(source.display_name, conversations, held_out)


def prepare_job_dataset(
    resources: Resources,
    *,
    job_id: str,
    dataset: str,
    spec: JobSpec,
    storage: Storage,
    training_file_id: str | None = None,
) -> PreparedJobDataset:
    """Fetch, store, prepare, upload and record job `job_id`'s dataset (`dataset`: a path,
    `file://`, `s3://` or http(s) URL). Raises `InputError` for a file that cannot train,
    naming every problem; nothing is uploaded or recorded then.

    With `training_file_id` (a job started from the app's `training_files` row) the job keeps
    that row, and this job's split is recorded over it; the app's columns are not touched."""
    settings = resources.settings
    source = fetch_source(
        dataset, settings.cache_dir / DATASETS_PREFIX, resources.open_storage, settings.fetch_policy
    )
    refuse_held_out_conversations(resources, source)
    options = PrepareOptions.from_spec(spec)
    out_dir = prepared_cache_dir(settings.cache_dir, source, spec, options)
    report = _prepare_cached(out_dir, source, spec, options, settings.dataset_limits)
    # Only a file that prepared is stored and recorded: bad input leaves no trace.
    source_uri = _store_source(storage, source)
    layout = JobLayout(job_id)
    storage.put_dir(layout.key(spec.dataset_prefix), out_dir)
    training_file_id = record_source(resources, source, source_uri, report, out_dir, training_file_id)
    repo.update_job(resources.registry, job_id, training_file_id=training_file_id)
    return PreparedJobDataset(
        source_uri=source_uri,
        sha256=source.sha256,
        display_name=source.display_name,
        training_file_id=str(training_file_id),
        report=report,
        train_examples=report.train.examples,
        validation_examples=report.validation.examples,
        report_markdown=render_report_markdown(report),
    )
