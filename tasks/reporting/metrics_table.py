"""The metrics table: the latest metric records as rows the Prefect UI shows."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

TABLE_ROWS = 20


def metrics_table(records: Sequence[Mapping[str, Any]], rows: int = TABLE_ROWS) -> list[dict[str, Any]]:
    """The most recent `rows` metric records, newest first, with rounded columns."""

    def fmt(value: Any, digits: int = 4) -> Any:
        if isinstance(value, float):
            return float(f"{value:.{digits}g}") if math.isfinite(value) else str(value)
        return value

    out = []
    for rec in sorted(records, key=lambda r: (r.get("attempt", 1), r.get("step", 0)), reverse=True)[:rows]:
        out.append(
            {
                "step": rec.get("step"),
                "epoch": fmt(rec.get("epoch"), 3),
                "loss": fmt(rec.get("loss")),
                "eval_loss": fmt(rec.get("eval_loss")),
                "learning_rate": fmt(rec.get("learning_rate"), 3),
                "grad_norm": fmt(rec.get("grad_norm"), 3),
                "tokens_per_s": fmt(rec.get("tokens_per_s"), 3),
                "attempt": rec.get("attempt", 1),
            }
        )
    return out
