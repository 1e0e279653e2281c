"""Read: the rated inference logs of one window, streamed from LexyHub's tables.

`lexybrain_feedback ⟕ lexybrain_responses ⟕ lexybrain_requests` (DESIGN.md §6), one row per
feedback, ordered so that all ratings of one response are consecutive. The sources are
read-only to the pipeline; the registry's own tables are written by `register` through
`brightrun.registry.feedback_rows`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, Text, cast, select
from sqlalchemy.engine import Connection

from brightrun.registry.models import LexybrainFeedback, LexybrainRequest, LexybrainResponse


@dataclass(frozen=True)
class LogRow:
    """One feedback joined to its response and request (any of the joined sides may be absent)."""

    feedback_id: str
    response_id: str | None
    feedback_user_id: str | None
    rating: str | None
    notes: str | None
    feedback_at: datetime | None
    response_found: bool
    request_id: str | None
    request_found: bool
    output_text: str | None
    model_name: str | None
    model_version: str | None
    success: bool | None
    request_user_id: str | None
    prompt: str | None
    context_text: str | None
    insight_type: str | None
    requested_at: datetime | None = None  # orders the turns of one conversation


def _as_str(value: Any) -> str | None:
    return None if value is None else str(value)


def log_query(since: datetime, until: datetime) -> Select[Any]:
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
            q.c.requested_at,
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
def tolerant_text(conn: Connection) -> Iterator[None]:
    """On SQLite, read invalid UTF-8 as marked text instead of failing the whole read."""
    if conn.dialect.name != "sqlite":
        yield
        return
    dbapi = conn.connection.driver_connection
    previous = dbapi.text_factory  # type: ignore[union-attr]
    dbapi.text_factory = _sqlite_text  # type: ignore[union-attr]
    try:
        yield
    finally:
        dbapi.text_factory = previous  # type: ignore[union-attr]


def read_rows(
    conn: Connection,
    since: datetime,
    until: datetime,
    *,
    batch_size: int = 2000,
    on_progress: Callable[[int], None] | None = None,
    progress_every: int = 10_000,
    query: Select[Any] | None = None,
) -> Iterator[LogRow]:
    """Stream the window through a server-side cursor (`yield_per`), never the whole result.
    `query`: `log_query` narrowed further (the corrected responses of earlier windows)."""
    result = conn.execution_options(stream_results=True, yield_per=batch_size).execute(
        query if query is not None else log_query(since, until)
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
            requested_at=row.requested_at,
        )
