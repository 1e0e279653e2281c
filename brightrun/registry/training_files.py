"""Training files: the app's `training_files` rows (with the columns a customer's table may add),
their conversations, and where a row's file lives.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    MetaData,
    Table,
    insert,
    inspect,
    select,
)

from brightrun.errors import InputError
from brightrun.registry.binding import Bind, dialect_insert, row_view, to_uuid, transaction
from brightrun.registry.db import retry_on_disconnect, training_file_values
from brightrun.registry.models import (
    Split,
    TrainingFile,
    TrainingFileConversation,
    TrainingFileSource,
    utcnow,
)

files_t: Table = TrainingFile.__table__  # type: ignore[assignment]
file_convs_t: Table = TrainingFileConversation.__table__  # type: ignore[assignment]


@dataclass(frozen=True)
class TrainingFileView:
    """A `training_files` row. The app's own rows (Supabase) have only `id`, `name`,
    `json_file_path` (relative to its `training-files` bucket) and `total_training_pairs`;
    the pipeline's columns read None there."""

    id: str
    name: str | None
    source: str | None
    json_file_path: str | None
    sha256: str | None
    format: str | None
    size_bytes: int | None
    conversations: int | None
    total_training_pairs: int | None
    examples: int | None
    window_start: datetime | None
    window_end: datetime | None
    metadata: dict[str, Any]
    created_at: datetime | None
    # Issue 19: None on a registry or app table without the review columns.
    review_status: str | None = None
    reviewed_by: str | None = None
    reviewed_at: datetime | None = None
    review_reason: str | None = None
    review_excluded: list[str] | None = None


@dataclass(frozen=True)
class ConversationRef:
    """One conversation of a training file: its split and the source row it came from."""

    conversation_id: str
    split: str = Split.train.value
    source_ref: str | None = None


@retry_on_disconnect
def register_training_file(
    bind: Bind,
    *,
    name: str,
    json_file_path: str,
    sha256: str,
    source: str = TrainingFileSource.upload.value,
    format: str = "brightrun-lora-v4",
    size_bytes: int | None = None,
    conversations: int | None = None,
    total_training_pairs: int | None = None,
    examples: int | None = None,
    window_start: datetime | None = None,
    window_end: datetime | None = None,
    metadata: Mapping[str, Any] | None = None,
    conversation_refs: Sequence[ConversationRef] = (),
    review_status: str = "approved",
) -> tuple[TrainingFileView, bool]:
    """Register a training file, idempotent on its sha256: returns (file, created).

    `json_file_path` is where the file is (a full URI or path: the pipeline's rows are not
    relative to the app's bucket).

    `conversation_refs` records which conversations (and source rows) the file holds and
    in which split, for later dedup (`exported_conversations`). Registering the same
    content again returns the first row and changes nothing.
    """
    TrainingFileSource(source)
    fid = uuid.uuid4()
    now = utcnow()
    values = {
        "id": fid,
        "name": name,
        "source": source,
        "json_file_path": json_file_path,
        "sha256": sha256,
        "format": format,
        "size_bytes": size_bytes,
        "conversations": conversations,
        "total_training_pairs": total_training_pairs,
        "examples": examples,
        "window_start": window_start,
        "window_end": window_end,
        "metadata": dict(metadata or {}),
        "review_status": review_status,
        "created_at": now,
        "updated_at": now,
    }
    with transaction(bind) as conn:
        row_values = _fill_app_columns(conn, {k: v for k, v in values.items() if v is not None})
        target = _with_app_columns([n for n in row_values if n not in files_t.c])
        result = conn.execute(
            dialect_insert(conn, target)
            # Unknown values are left out, not NULL: the app's own table may have NOT NULL
            # columns with defaults (e.g. total_training_pairs DEFAULT 0).
            .values(**row_values)
            .on_conflict_do_nothing(index_elements=["sha256"])
            .returning(target.c.id)
        ).first()
        created = result is not None
        if created and conversation_refs:
            conn.execute(
                insert(file_convs_t),
                [
                    {
                        "training_file_id": fid,
                        "conversation_id": ref.conversation_id,
                        "split": Split(ref.split).value,
                        "source_ref": ref.source_ref,
                    }
                    for ref in {r.conversation_id: r for r in conversation_refs}.values()
                ],
            )
        row = conn.execute(select(files_t).where(files_t.c.sha256 == sha256)).one()
        return row_view(TrainingFileView, row), created


class TrainingFileColumnsUnfilled(InputError):
    """The app's training_files requires columns nobody gave a value for: nothing was written."""


def required_columns(conn: Connection, table: str) -> list[str]:
    """The table's NOT NULL columns without a default (nor identity or generated value)."""
    return [
        c["name"]
        for c in inspect(conn).get_columns(table)
        if not c["nullable"]
        and c.get("default") is None
        and not c.get("identity")
        and not c.get("computed")
        and c.get("autoincrement") is not True
    ]


def _with_app_columns(extra: Sequence[str]) -> Table:
    """training_files with the app's own columns too (untyped: the server casts the values)."""
    if not extra:
        return files_t
    return Table(
        "training_files", MetaData(), *(c._copy() for c in files_t.c), *(Column(name) for name in extra)
    )


def _fill_app_columns(conn: Connection, values: dict[str, Any]) -> dict[str, Any]:
    """`values` plus what the app's own training_files requires: the columns the pipeline
    knows (the app's bucket, JSONL path and counts, by the seed's names), then the
    configured ones (`created_by` from BRIGHTRUN_SERVICE_USER_ID, then
    BRIGHTRUN_TRAINING_FILE_DEFAULTS). Raises TrainingFileColumnsUnfilled, naming every
    column still without a value, before anything is written."""
    table = inspect(conn).get_columns("training_files")
    present = {c["name"] for c in table}
    path = str(values.get("json_file_path", ""))
    known: dict[str, Any] = {
        "jsonl_file_path": path,
        "total_conversations": values.get("conversations", 0),
        "total_training_pairs": values.get("total_training_pairs", 0),
        "description": f"{values.get('source', 'upload')} {values.get('name', '')}".strip(),
    }
    if path.startswith("s3://"):
        known["storage_bucket"] = path.removeprefix("s3://").split("/", 1)[0]
    configured = training_file_values(conn.engine)
    filled = dict(values)
    for name in required_columns(conn, "training_files"):
        if name in filled:
            continue
        if name in configured:
            filled[name] = configured[name]
        elif name in known:
            filled[name] = known[name]
    # Configured values also fill nullable columns (created_by is nullable in the seed).
    for name, value in configured.items():
        if name in present and name not in filled:
            filled[name] = value
    missing = [n for n in required_columns(conn, "training_files") if n not in filled]
    if missing:
        raise TrainingFileColumnsUnfilled(
            f"the app's training_files requires {', '.join(missing)}, which the pipeline cannot fill; "
            "set them in BRIGHTRUN_TRAINING_FILE_DEFAULTS, a JSON object, e.g. "
            + json.dumps(dict.fromkeys(missing, "..."))
            + " (nothing was written)"
        )
    # created_by comes from the service user: our own (SQLite) table has no such column.
    unknown = [n for n in configured if n not in present and n != "created_by"]
    if unknown:
        raise TrainingFileColumnsUnfilled(
            f"BRIGHTRUN_TRAINING_FILE_DEFAULTS names {', '.join(unknown)}, which training_files does not "
            "have; remove them (nothing was written)"
        )
    return filled


class TrainingFileNotFound(InputError):
    def __init__(self, file_id: object) -> None:
        super().__init__(f"training file {file_id} is not in the registry's training_files table")


@retry_on_disconnect
def get_training_file(bind: Bind, file_id: str | uuid.UUID) -> TrainingFileView:
    with transaction(bind) as conn:
        row = conn.execute(select(files_t).where(files_t.c.id == to_uuid(file_id, "training file"))).first()
        if row is None:
            raise TrainingFileNotFound(file_id)
        return row_view(TrainingFileView, row)


# The app keeps its training files in this Supabase Storage bucket; its rows' json_file_path
# is relative to it (the roadmap's start-job fetches `training-files/<json_file_path>`).
APP_TRAINING_FILES_BUCKET = "training-files"


def training_file_location(json_file_path: str, bucket_url: str = f"s3://{APP_TRAINING_FILES_BUCKET}") -> str:
    """Where a `json_file_path` points: a URI or absolute path as it is (the pipeline's own
    rows); a relative path (the app's rows) under `bucket_url`, the app's `training-files`
    bucket (with the configured S3 endpoint, e.g. Supabase Storage's S3 gateway)."""
    path = json_file_path.strip()
    if not path:
        raise InputError("the training file's json_file_path is empty")
    if "://" in path or path.startswith("/"):
        return path
    bucket = bucket_url.rstrip("/")
    prefix = f"{APP_TRAINING_FILES_BUCKET}/"
    if path.startswith(prefix) and bucket.endswith("/" + APP_TRAINING_FILES_BUCKET):
        path = path[len(prefix) :]  # some app rows repeat the bucket name
    return f"{bucket}/{path.lstrip('/')}"


def check_app_path(training_file: TrainingFileView, *, allow_local_paths: bool = False) -> None:
    """The app's own rows (no `source`) name a path in its training-files bucket. One that is
    an absolute path or a URL would make the pipeline read a file of the worker's machine or
    fetch from anywhere on the app user's say: refused unless BRIGHTRUN_FETCH_ALLOW_LOCAL_PATHS."""
    path = (training_file.json_file_path or "").strip()
    if training_file.source is None and not allow_local_paths and ("://" in path or path.startswith("/")):
        shown = path.split("?", 1)[0]
        raise InputError(
            f"training file {training_file.id}: json_file_path {shown!r} is an absolute path or a URL, "
            "not a path in the app's training-files bucket; set BRIGHTRUN_FETCH_ALLOW_LOCAL_PATHS=true "
            "to allow it"
        )


@retry_on_disconnect
def resolve_training_file(
    bind: Bind,
    file_id: str | uuid.UUID,
    *,
    bucket_url: str = f"s3://{APP_TRAINING_FILES_BUCKET}",
    allow_local_paths: bool = False,
) -> tuple[TrainingFileView, str]:
    """A job started from a `training_file_id` (the app's way): the row and the dataset's URI.

    Raises `TrainingFileNotFound` (exit 2) for an unknown id and InputError for a row
    without a `json_file_path`, or an app row whose path is absolute or a URL (`check_app_path`).
    """
    training_file = get_training_file(bind, file_id)
    if not training_file.json_file_path:
        raise InputError(f"training file {file_id} has no json_file_path: nothing to train on")
    check_app_path(training_file, allow_local_paths=allow_local_paths)
    return training_file, training_file_location(training_file.json_file_path, bucket_url)


@retry_on_disconnect
def list_training_files(
    bind: Bind, *, source: str | None = None, limit: int | None = 100
) -> list[TrainingFileView]:
    """Newest first."""
    stmt = select(files_t).order_by(files_t.c.created_at.desc(), files_t.c.id)
    if source is not None:
        stmt = stmt.where(files_t.c.source == TrainingFileSource(source).value)
    if limit is not None:
        stmt = stmt.limit(limit)
    with transaction(bind) as conn:
        return [row_view(TrainingFileView, row) for row in conn.execute(stmt)]


@retry_on_disconnect
def exported_conversations(bind: Bind, *, split: str | None = None) -> dict[str, ConversationRef]:
    """Every conversation recorded in any training file (optionally one split), by id.

    Source refs are included: dedup on either `conversation_id` or `source_ref`.
    """
    stmt = select(file_convs_t.c.conversation_id, file_convs_t.c.split, file_convs_t.c.source_ref)
    if split is not None:
        stmt = stmt.where(file_convs_t.c.split == Split(split).value)
    with transaction(bind) as conn:
        out: dict[str, ConversationRef] = {}
        for cid, sp, ref in conn.execute(stmt):
            # A conversation ever used for validation stays validation-only.
            if cid not in out or sp == Split.validation.value:
                out[cid] = ConversationRef(conversation_id=cid, split=sp, source_ref=ref)
        return out
