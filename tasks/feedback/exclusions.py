"""Approve with exclusions (issue 19): the reviewed file is the export without the examples the
reviewer left out, a training file of its own.

The original stays as it was exported (its sha256 is what makes a rerun of the window
idempotent) and is rejected as replaced; the reviewed copy is uploaded first, then registered
approved together with the original's rejection in one transaction, so a failure anywhere
leaves the original pending and nothing new registered.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import select, update

from brightrun.errors import InputError
from brightrun.registry import repository as repo
from brightrun.registry.binding import to_uuid
from brightrun.registry.models import TrainingFileSource, utcnow
from brightrun.registry.review import APPROVED, PENDING, REJECTED, ReviewRefused, files_t
from brightrun.registry.training_files import TrainingFileView
from brightrun.storage import Storage, sha256_file
from tasks.feedback.errors import ExportError

if TYPE_CHECKING:
    from brightrun.resources import Resources


def storage_key(storage: Storage, uri: str) -> str:
    """The key of `uri` in `storage` (the export registers `storage.uri(key)`)."""
    base = storage.uri("").rstrip("/") + "/"
    if not uri.startswith(base):
        raise ExportError(
            f"the training file {uri} is not in the pipeline's storage ({base}); cannot rewrite it"
        )
    return uri[len(base) :]


def _conversation_id(conversation: dict) -> str:
    return str(conversation["conversation_metadata"]["conversation_id"])


def _source_ref(conversation: dict) -> str:
    """The source response of a conversation (its last turn's), as the export recorded it."""
    pairs = conversation.get("training_pairs") or [{}]
    return str((pairs[-1].get("provenance") or {}).get("response_id", _conversation_id(conversation)))


def without_examples(document: dict, excluded: set[str]) -> tuple[dict, int]:
    """The brightrun-lora-v4 document without the conversations in `excluded`; its totals updated."""
    kept = [
        c for c in document["conversations"] if c["conversation_metadata"]["conversation_id"] not in excluded
    ]
    metadata = dict(document["training_file_metadata"])
    metadata["total_conversations"] = len(kept)
    metadata["total_training_pairs"] = sum(len(c["training_pairs"]) for c in kept)
    metadata["review_excluded"] = sorted(excluded)
    return {**document, "training_file_metadata": metadata, "conversations": kept}, len(kept)


def approve_without(
    resources: Resources, file_id: str, excluded: Sequence[str], *, reviewer: str, reason: str = ""
) -> TrainingFileView:
    """Register the reviewed copy of pending `file_id` without `excluded`, approved; reject the
    original as replaced. Returns the copy."""
    from tasks.feedback.register import conversation_refs
    from tasks.feedback.write import validate_written

    engine, storage = resources.registry, resources.storage
    original = repo.get_training_file(engine, file_id)
    if original.review_status != PENDING:
        raise ReviewRefused(
            f"training file {file_id} is {original.review_status}, not pending: only a pending export "
            "can be approved with exclusions"
        )
    wanted = set(excluded)
    key = storage_key(storage, original.json_file_path or "")
    document = json.loads(storage.get_bytes(key, expected_sha256=original.sha256))
    ids = {c["conversation_metadata"]["conversation_id"] for c in document["conversations"]}
    unknown = sorted(wanted - ids)
    if unknown:
        raise InputError(
            f"training file {file_id}: {len(unknown)} excluded example id(s) are not in it", unknown[:10]
        )
    reviewed, kept = without_examples(document, wanted)
    if kept == 0:
        raise InputError(
            f"training file {file_id}: excluding every example leaves nothing; reject it instead"
        )
    with tempfile.TemporaryDirectory(prefix="brightrun-review-") as tmp:
        path = Path(tmp) / Path(key).name.replace(".json", ".reviewed.json")
        path.write_text(json.dumps(reviewed, ensure_ascii=False), encoding="utf-8")
        from tasks.feedback.write import WrittenFiles

        written = WrittenFiles(path, path, None, sha256_file(path), path.stat().st_size, kept, 0)
        validate_written(written)
        new_key = key.rsplit("/", 1)[0] + "/" + path.name
        storage.put_file(new_key, path)
    refs = [(_conversation_id(c), _source_ref(c)) for c in reviewed["conversations"]]
    now, who = utcnow(), reviewer.strip()
    with engine.begin() as conn:
        copy, _ = repo.register_training_file(
            conn,
            name=f"{original.name}-reviewed",
            json_file_path=storage.uri(new_key),
            sha256=written.sha256,
            source=TrainingFileSource.feedback_export.value,
            size_bytes=written.size_bytes,
            conversations=kept,
            total_training_pairs=kept,
            examples=kept,
            metadata={
                **original.metadata,
                "reviewed_copy_of": original.id,
                "review_excluded": sorted(wanted),
            },
            conversation_refs=conversation_refs(refs),
            review_status=APPROVED,
        )
        conn.execute(
            update(files_t)
            .where(files_t.c.id == to_uuid(copy.id, "training file"))
            .values(
                reviewed_by=who, reviewed_at=now, review_reason=reason or None, review_excluded=sorted(wanted)
            )
        )
        changed = conn.execute(
            update(files_t)
            .where(files_t.c.id == to_uuid(original.id, "training file"), files_t.c.review_status == PENDING)
            .values(
                review_status=REJECTED,
                reviewed_by=who,
                reviewed_at=now,
                review_reason=f"replaced by {copy.id} without {len(wanted)} excluded example(s)",
                review_excluded=sorted(wanted),
            )
        ).rowcount
        if changed != 1:
            raise ReviewRefused(f"training file {file_id} was reviewed by someone else meanwhile; look again")
        row = conn.execute(select(files_t).where(files_t.c.id == to_uuid(copy.id, "training file"))).one()
    from brightrun.registry.binding import row_view

    return row_view(TrainingFileView, row)
