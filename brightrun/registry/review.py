"""Review before training (issue 19): a training file's review status, and reviewers'
corrections of rated responses (migration 0010).

`is_accepted` is the one rule callers such as the auto-retrain use. A status changes with one
conditional UPDATE (from the status the reviewer saw), so a reviewer in the Prefect form and
another in the CLI cannot overwrite each other's decision.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, Table, insert, or_, select, update

from brightrun.errors import InputError
from brightrun.registry.binding import Bind, row_view, to_uuid, transaction
from brightrun.registry.db import retry_on_disconnect
from brightrun.registry.models import (
    FeedbackCorrection,
    LexybrainFeedback,
    LexybrainResponse,
    TrainingFile,
    TrainingFileSource,
    utcnow,
)
from brightrun.registry.training_files import TrainingFileNotFound, TrainingFileView

APPROVED = "approved"
PENDING = "pending"
REJECTED = "rejected"
REVIEW_STATUSES = (PENDING, APPROVED, REJECTED)

files_t: Table = TrainingFile.__table__  # type: ignore[assignment]
corrections_t: Table = FeedbackCorrection.__table__  # type: ignore[assignment]
responses_t: Table = LexybrainResponse.__table__  # type: ignore[assignment]
feedback_t: Table = LexybrainFeedback.__table__  # type: ignore[assignment]


def is_accepted(review_status: str | None) -> bool:
    """True for an approved file and for one made before reviews existed (None); False for
    a pending or rejected one, and for any value this code does not know (fail closed)."""
    if review_status is None:
        return True
    return review_status.strip().lower() == APPROVED


class ReviewRefused(InputError):
    """The file's status does not allow this decision (e.g. approving a rejected file)."""


@retry_on_disconnect
def resolve_training_file_id(bind: Bind, ref: str) -> str:
    """A training file's full id from its id or a unique prefix (as the CLI prints it)."""
    from brightrun.registry.short_ids import hex_prefix, match_prefix

    prefix = hex_prefix(ref)
    if prefix is None:
        return str(to_uuid(ref.strip(), "training file"))
    found = match_prefix(bind, files_t, prefix, "training file")
    if found is None:
        raise TrainingFileNotFound(ref)
    return str(found)


@retry_on_disconnect
def list_for_review(
    bind: Bind, status: str | None = PENDING, limit: int | None = 100
) -> list[TrainingFileView]:
    """Feedback exports with `status` (None: every status), newest first."""
    stmt = select(files_t).where(files_t.c.source == TrainingFileSource.feedback_export.value)
    if status is not None:
        if status not in REVIEW_STATUSES:
            raise InputError(f"--status {status!r} is not one of {', '.join(REVIEW_STATUSES)}")
        column = files_t.c.review_status
        # A file from before reviews (NULL) is approved.
        stmt = stmt.where(or_(column == status, column.is_(None)) if status == APPROVED else column == status)
    stmt = stmt.order_by(files_t.c.created_at.desc(), files_t.c.id)
    if limit is not None:
        stmt = stmt.limit(limit)
    with transaction(bind) as conn:
        return [row_view(TrainingFileView, row) for row in conn.execute(stmt)]


def _allowed(current: str | None, decision: str) -> str | None:
    """Why `decision` is refused on a file in `current`, or None when it is allowed."""
    if current == REJECTED and decision == APPROVED:
        return "it was rejected; a rejected export stays rejected (export the window again to retrain on it)"
    if current == REJECTED and decision == REJECTED:
        return "it is already rejected"
    if current == APPROVED and decision == APPROVED:
        return "it is already approved"
    return None


@retry_on_disconnect
def decide_review(
    bind: Bind,
    file_id: str,
    decision: str,
    *,
    reviewer: str,
    reason: str | None = None,
    excluded: Sequence[str] = (),
) -> TrainingFileView:
    """Approve or reject a training file. Raises ReviewRefused when its status does not allow
    it (a rejected file is never approved) and InputError for a bad decision or exclusion."""
    if decision not in (APPROVED, REJECTED):
        raise InputError(f"a review decides {APPROVED} or {REJECTED}, not {decision!r}")
    if not reviewer.strip():
        raise InputError("the reviewer is empty: give --reviewer or set BRIGHTRUN_REVIEWER")
    if decision == REJECTED and not (reason or "").strip():
        raise InputError("a rejection needs a reason (--reason) that says what is wrong with the file")
    fid = to_uuid(file_id, "training file")
    with transaction(bind) as conn:
        row = conn.execute(select(files_t).where(files_t.c.id == fid)).first()
        if row is None:
            raise TrainingFileNotFound(file_id)
        current = row_view(TrainingFileView, row)
        why = _allowed(current.review_status, decision)
        if why is not None:
            raise ReviewRefused(f"training file {file_id} cannot be {decision}: {why}")
        unknown = sorted(set(excluded) - _example_ids(conn, fid))
        if unknown:
            raise InputError(
                f"training file {file_id}: {len(unknown)} excluded example id(s) are not in the file",
                unknown[:10],
            )
        changed = conn.execute(
            update(files_t)
            .where(files_t.c.id == fid)
            .where(
                files_t.c.review_status.is_(None)
                if current.review_status is None
                else files_t.c.review_status == current.review_status
            )
            .values(
                review_status=decision,
                reviewed_by=reviewer.strip(),
                reviewed_at=utcnow(),
                review_reason=(reason or "").strip() or None,
                review_excluded=sorted(set(excluded)) or None,
                updated_at=utcnow(),
            )
        ).rowcount
        if changed != 1:
            raise ReviewRefused(f"training file {file_id} was reviewed by someone else meanwhile; look again")
        return row_view(TrainingFileView, conn.execute(select(files_t).where(files_t.c.id == fid)).one())


def _example_ids(conn: Connection, fid: uuid.UUID) -> set[str]:
    from brightrun.registry.models import TrainingFileConversation

    convs = TrainingFileConversation.__table__
    return {
        cid for (cid,) in conn.execute(select(convs.c.conversation_id).where(convs.c.training_file_id == fid))
    }


# ---------------------------------------------------------------- corrections


@dataclass(frozen=True)
class CorrectionView:
    id: str
    response_id: str
    corrected_text: str
    reviewer: str
    created_at: datetime
    exported_in: str | None


def _response_uuid(response_id: str) -> uuid.UUID:
    return to_uuid(response_id.strip(), "response")


@retry_on_disconnect
def add_correction(bind: Bind, response_id: str, corrected_text: str, *, reviewer: str) -> CorrectionView:
    """Record a reviewer's corrected answer for a rated response. Refused for an unknown or
    unrated response, an empty text, and (for a response whose output is JSON, LexyBrain's
    insights) a correction that is not a JSON object or array."""
    rid = _response_uuid(response_id)
    text = corrected_text.strip()
    if not text:
        raise InputError("the correction is empty: give the corrected answer with --text or --file")
    if not reviewer.strip():
        raise InputError("the reviewer is empty: give --reviewer or set BRIGHTRUN_REVIEWER")
    with transaction(bind) as conn:
        response = conn.execute(select(responses_t.c.output).where(responses_t.c.id == rid)).first()
        if response is None:
            raise InputError(f"response {response_id} is not in lexybrain_responses")
        rated = conn.execute(select(feedback_t.c.id).where(feedback_t.c.response_id == rid).limit(1)).first()
        if rated is None:
            raise InputError(f"response {response_id} has no rating: only a rated response can be corrected")
        if isinstance(response.output, dict | list):
            try:
                parsed = json.loads(text)
            except ValueError as exc:
                raise InputError(
                    f"response {response_id} answered with JSON; the correction must be JSON too ({exc})"
                ) from None
            if not isinstance(parsed, dict | list) or not parsed:
                raise InputError(
                    f"response {response_id} answered with a JSON object or array; the correction must be one"
                )
        values = {
            "id": str(uuid.uuid4()),
            "response_id": str(rid),
            "corrected_text": text,
            "reviewer": reviewer.strip(),
            "created_at": utcnow(),
            "exported_in": None,
        }
        conn.execute(insert(corrections_t).values(**values))
        return CorrectionView(**values)  # type: ignore[arg-type]


@retry_on_disconnect
def corrections_to_export(bind: Bind) -> dict[str, CorrectionView]:
    """The newest correction of each response that no training file carries yet."""
    stmt = (
        select(corrections_t)
        .where(corrections_t.c.exported_in.is_(None))
        .order_by(corrections_t.c.created_at, corrections_t.c.id)
    )
    with transaction(bind) as conn:
        return {row.response_id: row_view(CorrectionView, row) for row in conn.execute(stmt)}


def mark_corrections_exported(conn: Connection, response_ids: Sequence[str], training_file_id: str) -> None:
    """Inside the export's registration transaction: these responses' corrections are in that file."""
    conn.execute(
        update(corrections_t)
        .where(corrections_t.c.response_id.in_(list(response_ids)), corrections_t.c.exported_in.is_(None))
        .values(exported_in=str(training_file_id))
    )
