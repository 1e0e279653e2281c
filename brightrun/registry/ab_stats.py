"""Users' thumbs per served name: what `feedback-stats` prints and what `decide_ab` decides on.

One aggregate over the customer's tables: `lexybrain_feedback` grouped per response first
(a response rated twice is one rated response with two ratings), joined to
`lexybrain_responses` by `response_id`, to `lexybrain_requests` for the user who asked
(LEFT: a response without its request still counts), and to `model_artifacts` through
`lexybrain_responses.model_version = model_artifacts.served_name` (LEFT: a version that
names no adapter is kept, its `artifact_id` None, never dropped).

The window is on the feedback's time (`feedback-stats`: what users said this week) or on
the response's (`decide_ab`: what an arm answered since the split began).

Indexes: it reads the customer's tables with the indexes they have (the primary keys); on
Postgres the plan is hash joins over the window, no index of ours is needed and none is
added to the customer's tables (benchmarks/bench_decide_ab.py measures it on 1,000,000
rated responses). An index on `lexybrain_responses (model_version, created_at)` would let a
narrow window skip the rest; that is the customer's to add (README, *A/B tests*).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import Connection, Engine, Table, case, func, literal, select

from brightrun.ab import ArmCounts
from brightrun.errors import InputError
from brightrun.registry import repository as repo
from brightrun.registry.feedback_rows import wilson_interval
from brightrun.registry.models import (
    FeedbackValue,
    LexybrainFeedback,
    LexybrainRequest,
    LexybrainResponse,
    ModelArtifact,
)

Bind = Engine | Connection
Window = Literal["feedback", "response"]

_feedback: Table = LexybrainFeedback.__table__  # type: ignore[assignment]
_responses: Table = LexybrainResponse.__table__  # type: ignore[assignment]
_requests: Table = LexybrainRequest.__table__  # type: ignore[assignment]
_artifacts: Table = ModelArtifact.__table__  # type: ignore[assignment]


@dataclass(frozen=True)
class ServedNameThumbs:
    """The thumbs one `model_version` got in a window."""

    model_version: str | None
    artifact_id: str | None  # None: the version names no registered adapter
    deployment_status: str | None
    rated_responses: int
    users: int  # distinct users who asked the rated responses (requests without a user: none)
    positive: int
    negative: int
    neutral: int

    @property
    def ratings(self) -> int:
        return self.positive + self.negative + self.neutral

    @property
    def positive_rate(self) -> float | None:
        return self.positive / self.ratings if self.ratings else None

    def interval(self, z: float = 1.96) -> tuple[float, float] | None:
        return wilson_interval(self.positive, self.ratings, z)

    def arm(self) -> ArmCounts:
        return ArmCounts(
            str(self.model_version),
            rated_responses=self.rated_responses,
            positive=self.positive,
            negative=self.negative,
            neutral=self.neutral,
        )


def thumbs_by_served_name(
    bind: Bind,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    served_names: Sequence[str] | None = None,
    window: Window = "feedback",
    count_users: bool = True,
) -> list[ServedNameThumbs]:
    """Thumbs per `model_version` in `[since, until)`, most rated first; only `served_names`
    when given (an arm without a rating is then reported with zeros). `count_users=False`
    skips the distinct count of users (about two thirds of the query's time on 1M rows),
    reporting 0."""
    if since is not None and until is not None and until <= since:
        raise InputError(f"--until {until.isoformat()} must be after --since {since.isoformat()}")

    def count(value: FeedbackValue) -> Any:
        return func.count(case((_feedback.c.feedback == value.value, 1)))

    per_response = select(
        _feedback.c.response_id,
        count(FeedbackValue.positive).label("positive"),
        count(FeedbackValue.negative).label("negative"),
        count(FeedbackValue.neutral).label("neutral"),
    ).group_by(_feedback.c.response_id)
    response_filters = []
    when = _feedback.c.created_at if window == "feedback" else _responses.c.created_at
    if window == "feedback":
        if since is not None:
            per_response = per_response.where(when >= since)
        if until is not None:
            per_response = per_response.where(when < until)
    else:
        if since is not None:
            response_filters.append(when >= since)
        if until is not None:
            response_filters.append(when < until)
    if served_names is not None:
        if not served_names:
            return []
        response_filters.append(_responses.c.model_version.in_(list(served_names)))
    rated = per_response.subquery("rated")
    stmt = (
        select(
            _responses.c.model_version,
            _artifacts.c.id.label("artifact_id"),
            _artifacts.c.deployment_status,
            func.count().label("rated_responses"),
            (func.count(func.distinct(_requests.c.user_id)) if count_users else literal(0)).label("users"),
            func.coalesce(func.sum(rated.c.positive), 0).label("positive"),
            func.coalesce(func.sum(rated.c.negative), 0).label("negative"),
            func.coalesce(func.sum(rated.c.neutral), 0).label("neutral"),
        )
        .select_from(
            (
                rated.join(_responses, _responses.c.id == rated.c.response_id).outerjoin(
                    _requests, _requests.c.id == _responses.c.request_id
                )
                if count_users
                else rated.join(_responses, _responses.c.id == rated.c.response_id)
            ).outerjoin(_artifacts, _artifacts.c.served_name == _responses.c.model_version)
        )
        .where(*response_filters)
        .group_by(_responses.c.model_version, _artifacts.c.id, _artifacts.c.deployment_status)
    )
    with repo._tx(bind) as conn:
        if conn.dialect.name == "postgresql":
            # Postgres's default 4 MB spills the per-response groups and the sorts to disk on a
            # million ratings; SET LOCAL ends with the transaction (safe behind a pooler).
            conn.exec_driver_sql("SET LOCAL work_mem = '64MB'")
        rows = conn.execute(stmt).all()
    found = [
        ServedNameThumbs(
            r.model_version,
            str(r.artifact_id) if r.artifact_id is not None else None,
            r.deployment_status,
            int(r.rated_responses),
            int(r.users),
            int(r.positive),
            int(r.negative),
            int(r.neutral),
        )
        for r in rows
    ]
    if served_names is not None:
        seen = {t.model_version for t in found}
        found += [ServedNameThumbs(n, None, None, 0, 0, 0, 0, 0) for n in served_names if n not in seen]
    return sorted(found, key=lambda t: (-t.ratings, t.model_version or ""))


def unknown_total(stats: Sequence[ServedNameThumbs]) -> ServedNameThumbs | None:
    """Every version that names no adapter, summed into one line (None when there are none).
    `users` is summed per version, so a user who rated two unknown versions counts twice."""
    unknown = [s for s in stats if s.artifact_id is None]
    if not unknown:
        return None
    return ServedNameThumbs(
        None,
        None,
        None,
        sum(s.rated_responses for s in unknown),
        sum(s.users for s in unknown),
        sum(s.positive for s in unknown),
        sum(s.negative for s in unknown),
        sum(s.neutral for s in unknown),
    )
