"""People's scores of an adapter's sample replies (issue 25): `model_artifacts.human_eval_score`
and, in the same transaction, a `human_eval_scored` event on the adapter's job saying who
scored, when, and each reply's score."""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import update

from brightrun.errors import InputError
from brightrun.registry import repository as repo
from brightrun.registry.models import utcnow
from brightrun.registry.promotion import AdapterRow, Bind, artifacts_t, get_artifact

SCORED = "human_eval_scored"


def check_scores(scores: Sequence[float], where: str) -> list[float]:
    if not scores:
        raise InputError(f"{where}: no scores given")
    bad = [
        f"score {i + 1}: {s!r}" for i, s in enumerate(scores) if not (math.isfinite(s) and 0.0 <= s <= 1.0)
    ]
    if bad:
        raise InputError(f"{where}: every score must be between 0 and 1", bad)
    return list(scores)


def record_human_score(
    bind: Bind,
    artifact_id: str,
    scores: Sequence[float],
    *,
    scored_by: str,
    details: Sequence[dict[str, Any]] = (),
    where: str = "--score",
) -> tuple[AdapterRow, float]:
    """Write the mean of `scores` (each 0..1) as the adapter's `human_eval_score`."""
    if not scored_by.strip():
        raise InputError("--by NAME: say who scored (it is recorded)")
    values = check_scores(scores, where)
    mean = sum(values) / len(values)
    artifact = get_artifact(bind, artifact_id)
    with repo._tx(bind) as conn:
        conn.execute(
            update(artifacts_t)
            .where(artifacts_t.c.id == uuid.UUID(artifact.id))
            .values(human_eval_score=mean, updated_at=utcnow())
        )
        repo.add_event(
            conn,
            artifact.training_job_id,
            SCORED,
            artifact_id=artifact.id,
            human_eval_score=mean,
            scores=values,
            replies=list(details),
            scored_by=scored_by,
            scored_at=utcnow().isoformat(),
        )
    return get_artifact(bind, artifact.id), mean
