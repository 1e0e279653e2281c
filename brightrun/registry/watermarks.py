"""The feedback export's watermark: how far the export has read, advanced in the export's transaction."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import (
    Table,
    select,
    update,
)

from brightrun.registry.binding import Bind, dialect_insert, row_view, to_uuid, transaction
from brightrun.registry.db import retry_on_disconnect
from brightrun.registry.models import (
    FeedbackExportWatermark,
    utcnow,
)

watermarks_t: Table = FeedbackExportWatermark.__table__  # type: ignore[assignment]


@dataclass(frozen=True)
class Watermark:
    name: str
    position: datetime
    last_id: str | None
    training_file_id: str | None
    updated_at: datetime


@retry_on_disconnect
def get_watermark(bind: Bind, name: str = "feedback_export") -> Watermark | None:
    with transaction(bind) as conn:
        row = conn.execute(select(watermarks_t).where(watermarks_t.c.name == name)).first()
        return row_view(Watermark, row) if row is not None else None


@retry_on_disconnect
def advance_watermark(
    bind: Bind,
    name: str = "feedback_export",
    *,
    position: datetime,
    last_id: str | None = None,
    training_file_id: str | uuid.UUID | None = None,
) -> Watermark:
    """Move the watermark forward to (position, last_id); never backward.

    A call with an earlier or equal position changes nothing and returns the current one.
    Pass a Connection to commit it with the training file registration.
    """
    fid = to_uuid(training_file_id, "training file") if training_file_id else None
    with transaction(bind) as conn:
        stmt = select(watermarks_t).where(watermarks_t.c.name == name)
        if conn.dialect.name == "postgresql":
            stmt = stmt.with_for_update()
        row = conn.execute(stmt).first()
        now = utcnow()
        if row is None:
            conn.execute(
                dialect_insert(conn, watermarks_t)
                .values(name=name, position=position, last_id=last_id, training_file_id=fid, updated_at=now)
                .on_conflict_do_nothing(index_elements=["name"])
            )
        else:
            current = row_view(Watermark, row)
            if (position, last_id or "") > (current.position, current.last_id or ""):
                conn.execute(
                    update(watermarks_t)
                    .where(watermarks_t.c.name == name)
                    .values(position=position, last_id=last_id, training_file_id=fid, updated_at=now)
                )
        return row_view(
            Watermark, conn.execute(select(watermarks_t).where(watermarks_t.c.name == name)).one()
        )
