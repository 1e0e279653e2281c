"""A/B tests' helpers: two adapters split on an endpoint, simulated users who rate the answers
(each user sticks to one arm, as the app routes them), and an applier that does the registry
side of `tasks.adapters.deploy.apply_routes` (the split and the statuses) and records calls."""

from __future__ import annotations

import random
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, insert, inspect, update
from sqlalchemy.orm import Session

from brightrun.ab import pick_served_name
from brightrun.registry import promotion as pm
from brightrun.registry import repository as repo
from brightrun.registry.models import LexybrainFeedback, LexybrainRequest, LexybrainResponse, ModelArtifact
from brightrun.registry.routes import live_routes, open_split
from brightrun.resources import Resources

BASE = "tiny-llama"
ENDPOINT = "ep-ab-test"
T0 = datetime(2026, 3, 1, tzinfo=UTC)


def adapter(engine: Engine, name: str) -> pm.AdapterRow:
    job = repo.create_job(engine, job_name=name, base_model=BASE)
    for step in ("preprocessing", "model_loaded", "training", "completed"):
        repo.transition_job(engine, job.id, step)
    art = repo.register_artifact(
        engine, training_job_id=job.id, storage_path=f"/s/jobs/{job.id}/adapter", base_model=BASE
    )
    return pm.get_artifact(engine, art.id)


def split(engine: Engine, share: int = 10, *, at: datetime = T0) -> tuple[pm.AdapterRow, pm.AdapterRow]:
    """Production (in production) and a candidate (stored) on ENDPOINT, `share`% to the candidate."""
    prod, cand = adapter(engine, "coach v1"), adapter(engine, "coach v2")
    pm.promote(engine, prod.id, "production")
    with Session(engine) as session, session.begin():
        open_split(
            session,
            ENDPOINT,
            [(str(prod.served_name), prod.id, 100 - share), (str(cand.served_name), cand.id, share)],
            now=at,
        )
    return pm.get_artifact(engine, prod.id), cand


def simulate_users(
    engine: Engine,
    positive_rate: Mapping[str, float],
    *,
    users: int,
    start: datetime = T0,
    seed: int = 24,
    extra_versions: Sequence[str] = (),
    endpoint_id: str = ENDPOINT,
) -> dict[str, int]:
    """Each user asks once, is answered by their sticky arm and rates it up with that arm's
    probability (else down). Returns rated responses per served name."""
    with Session(engine) as session:
        shares = [(r.served_name, r.share_percent) for r in live_routes(session, endpoint_id)]
    rng = random.Random(seed)
    # The customer's lexybrain_requests.user_id references auth.users, which the pipeline may
    # not write: there the simulated users stay anonymous (their id still picks their arm).
    anonymous = any(
        fk["referred_table"] == "users" for fk in inspect(engine).get_foreign_keys("lexybrain_requests")
    )
    requests, responses, feedback = [], [], []
    counts: dict[str, int] = {}
    for i in range(users):
        user = uuid.UUID(int=rng.getrandbits(128), version=4)
        name = pick_served_name(str(user), shares)
        if extra_versions and i % 20 == 0:
            name = extra_versions[i % len(extra_versions)]  # an answer logged under another label
        at = start + timedelta(seconds=10 * i + 1)
        q, r = uuid.uuid4(), uuid.uuid4()
        stored = None if anonymous else user
        requests.append({"id": q, "user_id": stored, "prompt": f"q{i}", "requested_at": at})
        responses.append({"id": r, "request_id": q, "model_version": name, "created_at": at})
        up = rng.random() < positive_rate.get(name, 0.5)
        value = "positive" if up else "negative"
        feedback.append(
            {"id": uuid.uuid4(), "response_id": r, "user_id": stored, "feedback": value, "created_at": at}
        )
        counts[name] = counts.get(name, 0) + 1
    with engine.begin() as conn:
        conn.execute(insert(LexybrainRequest.__table__), requests)
        conn.execute(insert(LexybrainResponse.__table__), responses)
        conn.execute(insert(LexybrainFeedback.__table__), feedback)
    return counts


@dataclass
class RecordingApplier:
    """The registry side of deploy's `apply_routes`: the new split is recorded, the adapter at
    100% becomes production, a dropped one archived."""

    calls: list[dict[str, Any]] = field(default_factory=list)

    def apply_routes(
        self, resources: Resources, endpoint_id: str, routes: Sequence[tuple[str, int]], *, reason: str
    ) -> dict[str, Any]:
        engine = resources.registry
        self.calls.append({"endpoint_id": endpoint_id, "routes": list(routes), "reason": reason})
        with Session(engine) as session:
            before = live_routes(session, endpoint_id)
        kept = {name for name, _ in routes}
        by_name = {r.served_name: r.artifact_id for r in before}
        if len(routes) == 1:
            winner = pm.get_artifact(engine, by_name[routes[0][0]])
            if winner.deployment_status != "production":
                pm.promote(engine, winner.id, "production", force=True, reason=reason)
        for r in before:
            if (
                r.served_name not in kept
                and pm.get_artifact(engine, r.artifact_id).deployment_status != "archived"
            ):
                with engine.begin() as conn:
                    conn.execute(
                        update(ModelArtifact.__table__)
                        .where(ModelArtifact.__table__.c.id == uuid.UUID(r.artifact_id))
                        .values(deployment_status="archived")
                    )
        with Session(engine) as session, session.begin():
            open_split(session, endpoint_id, [(n, by_name[n], s) for n, s in routes])
        return {"routes": list(routes)}
