"""Serving routes: which served names take what share of an endpoint's traffic (issue 24).

The live split of an endpoint is its `serving_routes` rows with `ended_at IS NULL`; the app
reads them through the view `serving_routes_live` and picks `model` per user by a sticky
hash (README, "Serve it on the customer's endpoint"). A split is replaced as a whole:
`open_split` ends every live route of the endpoint and opens the new ones in one
transaction, so a reader never sees two splits or shares that do not sum to 100.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from brightrun.registry.models import ServingRoute, utcnow


@dataclass(frozen=True)
class Route:
    endpoint_id: str
    served_name: str
    artifact_id: str
    share_percent: int
    started_at: datetime


def _route(row: ServingRoute) -> Route:
    return Route(row.endpoint_id, row.served_name, str(row.artifact_id), row.share_percent, row.started_at)


def live_routes(session: Session, endpoint_id: str) -> list[Route]:
    """The endpoint's live routes (ended_at IS NULL), largest share first."""
    rows = session.scalars(
        select(ServingRoute)
        .where(ServingRoute.endpoint_id == endpoint_id, ServingRoute.ended_at.is_(None))
        .order_by(ServingRoute.share_percent.desc(), ServingRoute.served_name)
    ).all()
    return [_route(r) for r in rows]


def check_split(routes: Sequence[tuple[str, str, int]]) -> None:
    """Shares are integers 0..100 summing to 100, one per served name (ValueError otherwise)."""
    if not routes:
        raise ValueError("a split needs at least one route")
    names = [name for name, _, _ in routes]
    if len(set(names)) != len(names):
        raise ValueError(f"a served name appears twice in the split: {names}")
    for name, _, share in routes:
        if isinstance(share, bool) or not isinstance(share, int) or not 0 <= share <= 100:
            raise ValueError(f"{name}: share {share!r} must be an integer percent between 0 and 100")
    total = sum(share for _, _, share in routes)
    if total != 100:
        raise ValueError(f"the shares {[s for _, _, s in routes]} sum to {total}, not 100")


def end_routes(session: Session, endpoint_id: str, *, now: datetime | None = None) -> int:
    """End every live route of the endpoint; returns how many were live."""
    result = session.execute(
        update(ServingRoute)
        .where(ServingRoute.endpoint_id == endpoint_id, ServingRoute.ended_at.is_(None))
        .values(ended_at=now or utcnow())
    )
    return int(result.rowcount or 0)


def open_split(
    session: Session,
    endpoint_id: str,
    routes: Sequence[tuple[str, str, int]],
    *,
    now: datetime | None = None,
) -> list[Route]:
    """End every live route of the endpoint and open (served_name, artifact_id, share_percent)
    rows; the shares must sum to 100 (ValueError otherwise, and nothing changes)."""
    check_split(routes)
    when = now or utcnow()
    end_routes(session, endpoint_id, now=when)
    rows = [
        ServingRoute(
            endpoint_id=endpoint_id,
            served_name=name,
            artifact_id=uuid.UUID(str(artifact_id)),
            share_percent=share,
            started_at=when,
        )
        for name, artifact_id, share in routes
    ]
    session.add_all(rows)
    session.flush()
    return sorted((_route(r) for r in rows), key=lambda r: (-r.share_percent, r.served_name))
