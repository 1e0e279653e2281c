"""Training metrics: one row per (job, attempt, step), merged and bulk-copied."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Connection,
    Table,
    func,
    select,
)

from brightrun.registry.binding import Bind, dialect_insert, row_view, to_uuid, transaction
from brightrun.registry.db import retry_on_disconnect
from brightrun.registry.models import (
    TrainingMetric,
    utcnow,
)

metrics_t: Table = TrainingMetric.__table__  # type: ignore[assignment]


@dataclass(frozen=True)
class MetricRecord:
    step: int
    attempt: int = 0
    epoch: float | None = None
    loss: float | None = None
    eval_loss: float | None = None
    learning_rate: float | None = None
    grad_norm: float | None = None
    tokens_per_s: float | None = None
    recorded_at: datetime | None = None

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, attempt: int | None = None) -> MetricRecord:
        """From a trainer metrics record (extra keys ignored; `time`/`timestamp` accepted)."""
        recorded = data.get("recorded_at") or data.get("timestamp") or data.get("time")
        if isinstance(recorded, str):
            recorded = datetime.fromisoformat(recorded.replace("Z", "+00:00"))
        elif isinstance(recorded, int | float):
            from datetime import UTC

            recorded = datetime.fromtimestamp(recorded, UTC)

        def num(name: str) -> float | None:
            value = data.get(name)
            return None if value is None else float(value)

        return cls(
            step=int(data["step"]),
            attempt=int(attempt if attempt is not None else data.get("attempt", 0)),
            epoch=num("epoch"),
            loss=num("loss"),
            eval_loss=num("eval_loss"),
            learning_rate=num("learning_rate"),
            grad_norm=num("grad_norm"),
            tokens_per_s=num("tokens_per_s"),
            recorded_at=recorded,
        )


@dataclass(frozen=True)
class MetricPoint:
    training_job_id: str
    attempt: int
    step: int
    epoch: float | None
    loss: float | None
    eval_loss: float | None
    learning_rate: float | None
    grad_norm: float | None
    tokens_per_s: float | None
    recorded_at: datetime


_METRIC_VALUES = ("epoch", "loss", "eval_loss", "learning_rate", "grad_norm", "tokens_per_s")
_METRIC_COLUMNS = ("id", "training_job_id", "attempt", "step", *_METRIC_VALUES, "recorded_at")


def merge_metric_records(records: Iterable[MetricRecord | Mapping[str, Any]]) -> list[MetricRecord]:
    """One record per (attempt, step): a later record's non-null values win.

    A train record and an eval record of the same step become one row.
    """
    merged: dict[tuple[int, int], MetricRecord] = {}
    for rec in records:
        r = rec if isinstance(rec, MetricRecord) else MetricRecord.from_mapping(rec)
        key = (r.attempt, r.step)
        old = merged.get(key)
        if old is None:
            merged[key] = r
            continue
        updates = {name: getattr(r, name) for name in (*_METRIC_VALUES, "recorded_at")}
        merged[key] = MetricRecord(
            step=r.step,
            attempt=r.attempt,
            **{k: (v if v is not None else getattr(old, k)) for k, v in updates.items()},
        )
    return list(merged.values())


@retry_on_disconnect
def add_metrics(
    bind: Bind, job_id: str | uuid.UUID, records: Iterable[MetricRecord | Mapping[str, Any]]
) -> int:
    """Write a batch of metric rows; re-sending a (attempt, step) merges into its row.

    Postgres: COPY into a temporary table, then one INSERT ... ON CONFLICT (100k rows in
    well under a second of server time). SQLite: one executemany. Returns the rows written.
    """
    jid = to_uuid(job_id)
    merged = merge_metric_records(records)
    if not merged:
        return 0
    now = utcnow()
    with transaction(bind) as conn:
        if conn.dialect.name == "postgresql":
            _copy_metrics(conn, jid, merged, now)
        else:
            rows = [
                {
                    "id": uuid.uuid4(),
                    "training_job_id": jid,
                    "attempt": r.attempt,
                    "step": r.step,
                    **{name: getattr(r, name) for name in _METRIC_VALUES},
                    "recorded_at": r.recorded_at or now,
                }
                for r in merged
            ]
            stmt = dialect_insert(conn, metrics_t)
            stmt = stmt.on_conflict_do_update(
                index_elements=["training_job_id", "attempt", "step"],
                set_={
                    name: func.coalesce(getattr(stmt.excluded, name), metrics_t.c[name])
                    for name in (*_METRIC_VALUES, "recorded_at")
                },
            )
            conn.execute(stmt, rows)
    return len(merged)


def _copy_metrics(conn: Connection, job_id: uuid.UUID, records: list[MetricRecord], now: datetime) -> None:
    cols = ", ".join(_METRIC_COLUMNS)
    updates = ", ".join(
        f"{name} = COALESCE(EXCLUDED.{name}, training_metrics_history.{name})"
        for name in (*_METRIC_VALUES, "recorded_at")
    )
    raw = conn.connection.driver_connection
    assert raw is not None
    with raw.cursor() as cur:
        cur.execute(
            "CREATE TEMP TABLE IF NOT EXISTS _brightrun_metrics_in "
            "(LIKE training_metrics_history INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        )
        with cur.copy(f"COPY _brightrun_metrics_in ({cols}) FROM STDIN") as copy:
            for r in records:
                copy.write_row(
                    (
                        uuid.uuid4(),
                        job_id,
                        r.attempt,
                        r.step,
                        r.epoch,
                        r.loss,
                        r.eval_loss,
                        r.learning_rate,
                        r.grad_norm,
                        r.tokens_per_s,
                        r.recorded_at or now,
                    )
                )
        cur.execute(
            f"INSERT INTO training_metrics_history ({cols}) SELECT {cols} FROM _brightrun_metrics_in "
            f"ON CONFLICT (training_job_id, attempt, step) DO UPDATE SET {updates}"
        )
        cur.execute("DELETE FROM _brightrun_metrics_in")


@retry_on_disconnect
def list_metrics(
    bind: Bind, job_id: str | uuid.UUID, *, attempt: int | None = None, limit: int | None = None
) -> list[MetricPoint]:
    """Ordered by attempt then step."""
    stmt = select(metrics_t).where(metrics_t.c.training_job_id == to_uuid(job_id))
    if attempt is not None:
        stmt = stmt.where(metrics_t.c.attempt == attempt)
    stmt = stmt.order_by(metrics_t.c.attempt, metrics_t.c.step)
    if limit is not None:
        stmt = stmt.limit(limit)
    with transaction(bind) as conn:
        return [row_view(MetricPoint, row) for row in conn.execute(stmt)]
