"""Adapter lifecycle in the registry: resolve, evaluate records, promote, roll back (issue 14).

`model_artifacts.deployment_status` walks the seed's values: `stored → testing → production
→ archived`. The rules:

- One production adapter per base model. Promoting to production archives the current one
  and sets `deployed_at`; `rollback` archives the current one and restores the adapter that
  was production before it (the newest archived one with a `deployed_at` that was not itself
  rolled back).
- The gate: promotion to production is refused when the candidate's validation loss is worse
  than the current production adapter's, measured on the same held-out set (an
  `adapter_evaluated` record against that very production adapter). `force` skips the gate
  and needs a reason, which is recorded.
- Only a completed job's `lora_adapter` can be promoted; an archived one comes back only by
  `rollback`.
- Two promotions at once: each call names the production adapter it expects to replace (the
  one it saw, or was evaluated against). Inside the transaction the base model is locked
  (Postgres: a transaction-scoped advisory lock on the base model; SQLite: the database write
  lock, taken by the first statement), the current production is read again, and a call
  whose expectation no longer holds is refused. So one wins, the other is refused, and the
  registry never holds two production adapters for one base model (checked again before
  commit). A partial unique index would make the database itself refuse a second one; it
  belongs in the registry's migration chain (see the report of issue 14).

Every change is a `training_job_events` row on the adapter's job (`adapter_promoted`,
`adapter_archived`, `adapter_rolled_back`, `adapter_evaluated`): the audit trail and what
rollback and the gate read. Functions take an Engine or a Connection first, as `repository`.

One concern, kept in one file past 600 lines on purpose: the lifecycle's views, its pure
rules and its locked writes read each other (promote and rollback check the rules and write
the records that the gate and the next rollback read), and a reviewer checks the invariants
above against all three at once.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import Connection, Engine, Table, and_, func, select, text, update

from brightrun.errors import BrightrunError, InputError
from brightrun.registry import repository as repo
from brightrun.registry import served_names, short_ids
from brightrun.registry.models import (
    ArtifactType,
    DeploymentStatus,
    JobStatus,
    ModelArtifact,
    TrainingJob,
    TrainingJobEvent,
    utcnow,
)

Bind = Engine | Connection

artifacts_t: Table = ModelArtifact.__table__  # type: ignore[assignment]
jobs_t: Table = TrainingJob.__table__  # type: ignore[assignment]
events_t: Table = TrainingJobEvent.__table__  # type: ignore[assignment]

PRODUCTION = "production"
EVALUATED = "adapter_evaluated"
PROMOTED = "adapter_promoted"
ARCHIVED = "adapter_archived"
ROLLED_BACK = "adapter_rolled_back"


class ArtifactNotFound(InputError):
    """No artifact answers to the given id, job id or `production`."""


class PromotionRefused(BrightrunError):
    """The promotion or rollback breaks a rule; nothing was changed."""


# ---------------------------------------------------------------- views


@dataclass(frozen=True)
class AdapterRow:
    """A `model_artifacts` row as this module needs it (seed column names)."""

    id: str
    training_job_id: str
    artifact_type: str
    storage_path: str
    file_size_bytes: int | None
    sha256: str | None
    base_model: str | None
    validation_loss: float | None
    validation_perplexity: float | None
    deployment_status: str
    deployed_at: datetime | None
    metadata: dict[str, Any]
    created_at: datetime
    served_name: str | None = None  # what the app sends as `model` (served_names.py)

    @property
    def job_id(self) -> str:
        return self.training_job_id


def _row(row: Any) -> AdapterRow:
    data = row._mapping
    values = {}
    for f in fields(AdapterRow):
        value = data[f.name]
        values[f.name] = str(value) if isinstance(value, uuid.UUID) else value
    values["metadata"] = dict(values["metadata"] or {})
    return AdapterRow(**values)


class ModelScore(BaseModel):
    """One side of a comparison: an adapter (by id) or the base model alone (`artifact_id` None)."""

    artifact_id: str | None
    label: str
    loss: float
    perplexity: float
    tokens: int


class ConversationResult(BaseModel):
    conversation_id: str
    candidate_loss: float
    against_loss: float
    tokens: int

    @property
    def winner(self) -> str:
        if self.candidate_loss < self.against_loss:
            return "candidate"
        if self.against_loss < self.candidate_loss:
            return "against"
        return "tie"


class EvaluationRecord(BaseModel):
    """Both models on the same held-out conversations: what `eval` reports and the gate reads."""

    candidate: ModelScore
    against: ModelScore
    base_model: str
    eval_set: str  # where the conversations came from, in words
    eval_set_sha256: str  # identifies the set: the same set gives the same digest
    evaluation_set: str | None = None  # a registered set's NAME@VERSION (issue 25), else None
    judge: dict[str, Any] | None = None  # the pairwise judge's verdicts (tasks/adapters/judge.py)
    conversations: int
    wins: dict[str, int] = Field(default_factory=dict)  # candidate / against / ties
    per_conversation: list[ConversationResult] = Field(default_factory=list)
    samples: list[dict[str, str]] = Field(default_factory=list)  # prompt, reference, candidate, against
    created_at: datetime = Field(default_factory=utcnow)

    @property
    def candidate_better_or_equal(self) -> bool:
        return self.candidate.loss <= self.against.loss


@dataclass(frozen=True)
class Change:
    """One adapter's status change, for webhooks and messages."""

    artifact: AdapterRow
    previous_status: str
    event: str


@dataclass(frozen=True)
class LifecycleResult:
    artifact: AdapterRow  # the adapter now in the target status
    changes: list[Change] = field(default_factory=list)
    message: str = ""


# ---------------------------------------------------------------- reading


def _id(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None


def get_artifact(bind: Bind, artifact_id: str) -> AdapterRow:
    aid = _id(artifact_id)
    with repo.transaction(bind) as conn:
        row = conn.execute(select(artifacts_t).where(artifacts_t.c.id == aid)).first() if aid else None
    if row is None:
        raise ArtifactNotFound(f"artifact {artifact_id} is not in the registry; `brightrun artifacts list`")
    return _row(row)


def production_adapters(bind: Bind, base_model: str | None = None) -> list[AdapterRow]:
    stmt = select(artifacts_t).where(artifacts_t.c.deployment_status == DeploymentStatus.production.value)
    if base_model is not None:
        stmt = stmt.where(artifacts_t.c.base_model == base_model)
    with repo.transaction(bind) as conn:
        return [_row(r) for r in conn.execute(stmt.order_by(artifacts_t.c.deployed_at.desc()))]


def production_adapter(bind: Bind, base_model: str) -> AdapterRow | None:
    found = production_adapters(bind, base_model)
    return found[0] if found else None


def resolve_artifact(
    bind: Bind,
    ref: str,
    *,
    base_model: str | None = None,
    artifact_type: str = ArtifactType.lora_adapter.value,
) -> AdapterRow:
    """An artifact by its id, its served name, its job's id (that job's `artifact_type`), or
    `production` (the production adapter of `base_model`, which may be omitted while only
    one base model has one)."""
    ref = ref.strip()
    if ref == PRODUCTION:
        found = production_adapters(bind, base_model)
        if not found:
            where = f" for base model {base_model}" if base_model else ""
            raise ArtifactNotFound(
                f"no adapter is in production{where}; promote one with "
                "`brightrun promote ARTIFACT --to production`"
            )
        models = sorted({a.base_model or "?" for a in found})
        if len(models) > 1:
            raise InputError(
                "several base models have a production adapter; say which with --base-model",
                [f"{m}: {next(a.id for a in found if (a.base_model or '?') == m)}" for m in models],
            )
        return found[0]
    rid = _id(ref)
    if rid is None and (prefix := short_ids.hex_prefix(ref)) is not None:
        # The 8 characters the CLI prints: an artifact's id first, else its job's.
        rid = short_ids.match_prefix(bind, artifacts_t, prefix, "artifact") or short_ids.match_prefix(
            bind, jobs_t, prefix, "job"
        )
    if rid is None:
        return _by_served_name(bind, ref)
    with repo.transaction(bind) as conn:
        row = conn.execute(select(artifacts_t).where(artifacts_t.c.id == rid)).first()
        if row is None:
            row = conn.execute(
                select(artifacts_t).where(
                    and_(artifacts_t.c.training_job_id == rid, artifacts_t.c.artifact_type == artifact_type)
                )
            ).first()
    if row is None:
        raise ArtifactNotFound(
            f"{ref} is neither an artifact nor a job with a registered {artifact_type}; "
            "`brightrun artifacts list` shows them"
        )
    return _row(row)


def _by_served_name(bind: Bind, ref: str) -> AdapterRow:
    if not served_names.looks_like_served_name(ref):
        raise ArtifactNotFound(f"{ref!r} is not an artifact id, a served name, a job id or `production`")
    with repo.transaction(bind) as conn:
        row = conn.execute(select(artifacts_t).where(artifacts_t.c.served_name == ref)).first()
    if row is None:
        raise ArtifactNotFound(
            f"no artifact is served as {ref!r}; `brightrun artifacts list` shows the served names"
        )
    return _row(row)


def evaluations(bind: Bind, candidate: AdapterRow) -> list[EvaluationRecord]:
    """The candidate's recorded evaluations, oldest first."""
    out = []
    for event in repo.list_events(bind, candidate.training_job_id, type=EVALUATED):
        record = EvaluationRecord.model_validate(event.payload)
        if record.candidate.artifact_id == candidate.id:
            out.append(record)
    return out


def latest_evaluation(
    bind: Bind, candidate: AdapterRow, against_id: str | None, evaluation_set: str | None = None
) -> EvaluationRecord | None:
    """`evaluation_set` (NAME@VERSION): only an evaluation on that registered set counts."""
    found = [
        e
        for e in evaluations(bind, candidate)
        if e.against.artifact_id == against_id
        and (evaluation_set is None or e.evaluation_set == evaluation_set)
    ]
    return found[-1] if found else None


def record_evaluation(bind: Bind, record: EvaluationRecord) -> None:
    """Store an evaluation as an `adapter_evaluated` event on the candidate's job."""
    if record.candidate.artifact_id is None:
        raise ValueError("the candidate of an evaluation must be an adapter")
    candidate = get_artifact(bind, record.candidate.artifact_id)
    repo.add_events(
        bind,
        [
            repo.NewEvent(
                job_id=candidate.training_job_id,
                type=EVALUATED,
                payload=record.model_dump(mode="json"),
            )
        ],
    )


# ---------------------------------------------------------------- rules (pure)


def check_promotable(artifact: AdapterRow, job_status: str, target: DeploymentStatus) -> None:
    """Raise PromotionRefused unless `artifact` may move to `target` (gate aside)."""
    if target not in (DeploymentStatus.testing, DeploymentStatus.production):
        raise InputError(f"--to must be testing or production, not {target.value}")
    if artifact.artifact_type != ArtifactType.lora_adapter.value:
        raise PromotionRefused(
            f"artifact {artifact.id} is a {artifact.artifact_type}; only lora_adapter artifacts are promoted"
        )
    if job_status != JobStatus.completed.value:
        raise PromotionRefused(
            f"artifact {artifact.id}: its job {artifact.training_job_id} is {job_status}, not completed; "
            "only a finished job's adapter can be promoted"
        )
    status = DeploymentStatus(artifact.deployment_status)
    if status is DeploymentStatus.archived:
        raise PromotionRefused(
            f"artifact {artifact.id} is archived; `brightrun rollback` restores the previous production "
            "adapter, or train again"
        )
    if status is DeploymentStatus.production and target is DeploymentStatus.testing:
        raise PromotionRefused(
            f"artifact {artifact.id} is in production; `brightrun rollback` takes it out of production"
        )


def gate_failure(
    candidate: AdapterRow, production: AdapterRow, evaluation: EvaluationRecord | None
) -> str | None:
    """Why the gate refuses (None: it passes)."""
    if evaluation is None:
        return (
            f"no evaluation of {candidate.id} against the production adapter {production.id} on the "
            f"same held-out set; run `brightrun eval {candidate.id} --against production` first"
        )
    if not evaluation.candidate_better_or_equal:
        return (
            f"validation loss {evaluation.candidate.loss:.4f} of {candidate.id} is worse than "
            f"{evaluation.against.loss:.4f} of the production adapter {production.id} on the same "
            f"{evaluation.conversations} conversations ({evaluation.eval_set})"
        )
    judged = evaluation.judge or {}
    if judged.get("ci95_high") is not None and judged["ci95_high"] < 0.5:  # the judge: clearly worse
        return (
            f"the judge prefers the production adapter {production.id}: win rate of {candidate.id} "
            f"{judged['win_rate']:.2f} (95% interval {judged['ci95_low']:.2f}-{judged['ci95_high']:.2f})"
        )
    return None


# ---------------------------------------------------------------- writing


def _lock_base_model(conn: Connection, base_model: str, artifact_id: uuid.UUID) -> None:
    """Serialize lifecycle changes of one base model's adapters (see the module docstring)."""
    if conn.dialect.name == "postgresql":
        key = int.from_bytes(
            hashlib.sha256(f"brightrun.production:{base_model}".encode()).digest()[:8], "big", signed=True
        )
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})
    else:
        # SQLite: a write as the first statement takes the database's write lock for the
        # whole transaction; a concurrent promotion waits here (busy_timeout) and then reads
        # what this one committed.
        conn.execute(
            update(artifacts_t)
            .where(artifacts_t.c.id == artifact_id)
            .values(deployment_status=artifacts_t.c.deployment_status)
        )


def _set_status(conn: Connection, artifact_id: str, status: DeploymentStatus, **values: Any) -> None:
    conn.execute(
        update(artifacts_t)
        .where(artifacts_t.c.id == uuid.UUID(artifact_id))
        .values(deployment_status=status.value, updated_at=utcnow(), **values)
    )


def _current_production(conn: Connection, base_model: str) -> AdapterRow | None:
    rows = conn.execute(
        select(artifacts_t).where(
            and_(
                artifacts_t.c.base_model == base_model,
                artifacts_t.c.deployment_status == DeploymentStatus.production.value,
            )
        )
    ).all()
    if len(rows) > 1:  # cannot happen through this module; say so rather than pick one
        raise BrightrunError(
            f"the registry holds {len(rows)} production adapters for {base_model}: "
            + ", ".join(str(r.id) for r in rows)
        )
    return _row(rows[0]) if rows else None


def _assert_one_production(conn: Connection, base_model: str) -> None:
    count = conn.execute(
        select(func.count())
        .select_from(artifacts_t)
        .where(
            and_(
                artifacts_t.c.base_model == base_model,
                artifacts_t.c.deployment_status == DeploymentStatus.production.value,
            )
        )
    ).scalar_one()
    if count > 1:
        raise BrightrunError(f"refusing to commit {count} production adapters for {base_model}")


_UNSET: Any = object()


def promote(
    bind: Bind,
    artifact_id: str,
    to: str | DeploymentStatus,
    *,
    force: bool = False,
    reason: str | None = None,
    expected_production: str | None = _UNSET,
    actor: str | None = None,
    evaluation_set: str | None = None,
) -> LifecycleResult:
    """Move an adapter to `testing` or `production` (rules in the module docstring).

    `expected_production`: the production adapter id this promotion means to replace (None:
    there is none). Defaults to what the registry says when the call starts, so of two
    promotions racing, the second finds production changed and is refused.
    """
    try:
        target = DeploymentStatus(to)
    except ValueError:
        raise InputError(f"--to must be testing or production, not {to!r}") from None
    if force and not (reason and reason.strip()):
        raise InputError("--force needs --reason TEXT: the reason is recorded with the promotion")
    first = get_artifact(bind, artifact_id)
    base_model = first.base_model or ""
    if expected_production is _UNSET:
        seen = production_adapter(bind, base_model) if target is DeploymentStatus.production else None
        expected_production = seen.id if seen else None
    aid = uuid.UUID(first.id)
    with repo.transaction(bind) as conn:
        _lock_base_model(conn, base_model, aid)
        row = conn.execute(select(artifacts_t).where(artifacts_t.c.id == aid)).first()
        if row is None:
            raise ArtifactNotFound(f"artifact {artifact_id} disappeared from the registry")
        candidate = _row(row)
        job_status = conn.execute(
            select(jobs_t.c.status).where(jobs_t.c.id == uuid.UUID(candidate.training_job_id))
        ).scalar_one()
        check_promotable(candidate, job_status, target)
        previous_status = candidate.deployment_status
        if previous_status == target.value:
            return LifecycleResult(candidate, [], f"{candidate.id} is already {target.value}")
        changes: list[Change] = []
        now = utcnow()
        event_payload: dict[str, Any] = {
            "artifact_id": candidate.id,
            "base_model": base_model,
            "from": previous_status,
            "to": target.value,
            "forced": force,
            "reason": reason,
            "actor": actor,
        }
        if target is DeploymentStatus.production:
            current = _current_production(conn, base_model)
            current_id = current.id if current else None
            if current_id != expected_production:
                raise PromotionRefused(
                    f"the production adapter of {base_model} changed while this promotion was prepared "
                    f"(expected {expected_production or 'none'}, now {current_id or 'none'}); "
                    "another promotion won; evaluate against the new production adapter and try again"
                )
            evaluation = latest_evaluation(conn, candidate, current_id, evaluation_set) if current else None
            if current is not None:
                failure = gate_failure(candidate, current, evaluation)
                if failure and not force:
                    raise PromotionRefused(f"promotion refused: {failure}; --force --reason TEXT overrides")
                event_payload["gate"] = failure or "passed"
            if evaluation is not None:
                event_payload["evaluation"] = {
                    "candidate_loss": evaluation.candidate.loss,
                    "production_loss": evaluation.against.loss,
                    "eval_set_sha256": evaluation.eval_set_sha256,
                    "evaluation_set": evaluation.evaluation_set,
                    "conversations": evaluation.conversations,
                }
            events: list[repo.NewEvent] = []
            if current is not None:
                _set_status(conn, current.id, DeploymentStatus.archived)
                changes.append(
                    Change(_replace(current, DeploymentStatus.archived), current.deployment_status, ARCHIVED)
                )
                events.append(
                    repo.NewEvent(
                        job_id=current.training_job_id,
                        type=ARCHIVED,
                        payload={"artifact_id": current.id, "replaced_by": candidate.id, "actor": actor},
                    )
                )
            event_payload["replaced"] = current_id
            _set_status(conn, candidate.id, target, deployed_at=now)
            events.append(
                repo.NewEvent(job_id=candidate.training_job_id, type=PROMOTED, payload=event_payload)
            )
            repo.add_events(conn, events)
            _assert_one_production(conn, base_model)
        else:
            _set_status(conn, candidate.id, target)
            repo.add_event(conn, candidate.training_job_id, PROMOTED, **event_payload)
        promoted = _row(conn.execute(select(artifacts_t).where(artifacts_t.c.id == aid)).one())
    changes.append(Change(promoted, previous_status, PROMOTED))
    note = f" (forced: {reason})" if force else ""
    return LifecycleResult(promoted, changes, f"{promoted.id} is now {target.value}{note}")


def _replace(row: AdapterRow, status: DeploymentStatus) -> AdapterRow:
    from dataclasses import replace

    return replace(row, deployment_status=status.value)


def rollback(
    bind: Bind, base_model: str | None = None, *, reason: str | None = None, actor: str | None = None
) -> LifecycleResult:
    """Archive the production adapter of `base_model` and restore the one before it."""
    if base_model is None:
        found = production_adapters(bind)
        models = sorted({a.base_model or "" for a in found})
        if not models:
            raise PromotionRefused("no adapter is in production; there is nothing to roll back")
        if len(models) > 1:
            raise InputError(
                "several base models have a production adapter; say which with --base-model", models
            )
        base_model = models[0]
    seen = production_adapter(bind, base_model)
    if seen is None:
        raise PromotionRefused(f"no adapter of {base_model} is in production; there is nothing to roll back")
    with repo.transaction(bind) as conn:
        _lock_base_model(conn, base_model, uuid.UUID(seen.id))
        current = _current_production(conn, base_model)
        if current is None or current.id != seen.id:
            raise PromotionRefused(
                f"the production adapter of {base_model} changed during the rollback; look again "
                "(`brightrun artifacts list`) and retry"
            )
        previous = _previous_production(conn, base_model, exclude=current.id)
        if previous is None:
            raise PromotionRefused(
                f"{current.id} is the first production adapter of {base_model}: there is no earlier one "
                "to restore"
            )
        now = utcnow()
        _set_status(
            conn,
            current.id,
            DeploymentStatus.archived,
            metadata={**current.metadata, "rolled_back_at": now.isoformat()},
        )
        _set_status(conn, previous.id, DeploymentStatus.production, deployed_at=now)
        repo.add_events(
            conn,
            [
                repo.NewEvent(
                    job_id=current.training_job_id,
                    type=ROLLED_BACK,
                    payload={
                        "artifact_id": current.id,
                        "restored": previous.id,
                        "reason": reason,
                        "actor": actor,
                    },
                ),
                repo.NewEvent(
                    job_id=previous.training_job_id,
                    type=PROMOTED,
                    payload={
                        "artifact_id": previous.id,
                        "base_model": base_model,
                        "from": previous.deployment_status,
                        "to": DeploymentStatus.production.value,
                        "rollback_of": current.id,
                        "reason": reason,
                        "actor": actor,
                    },
                ),
            ],
        )
        _assert_one_production(conn, base_model)
        restored = _row(
            conn.execute(select(artifacts_t).where(artifacts_t.c.id == uuid.UUID(previous.id))).one()
        )
    changes = [
        Change(_replace(current, DeploymentStatus.archived), DeploymentStatus.production.value, ROLLED_BACK),
        Change(restored, previous.deployment_status, PROMOTED),
    ]
    return LifecycleResult(
        restored, changes, f"rolled back {base_model}: {current.id} archived, {restored.id} restored"
    )


def retire_candidate(bind: Bind, artifact_id: str, *, reason: str | None = None) -> LifecycleResult:
    """A `testing` adapter that its endpoint no longer serves (an A/B candidate rolled back):
    archived, with an `adapter_archived` event. Production leaves only by promote or rollback."""
    with repo.transaction(bind) as conn:
        row = conn.execute(select(artifacts_t).where(artifacts_t.c.id == uuid.UUID(artifact_id))).one()
        artifact = _row(row)
        if artifact.deployment_status != DeploymentStatus.testing.value:
            raise PromotionRefused(f"artifact {artifact_id} is {artifact.deployment_status}, not testing")
        _set_status(conn, artifact.id, DeploymentStatus.archived)
        repo.add_events(
            conn,
            [
                repo.NewEvent(
                    job_id=artifact.training_job_id,
                    type=ARCHIVED,
                    payload={
                        "artifact_id": artifact.id,
                        "from": artifact.deployment_status,
                        "reason": reason,
                    },
                )
            ],
        )
    archived = _replace(artifact, DeploymentStatus.archived)
    return LifecycleResult(
        archived, [Change(archived, artifact.deployment_status, ARCHIVED)], f"{artifact.id} archived"
    )


def _previous_production(conn: Connection, base_model: str, *, exclude: str) -> AdapterRow | None:
    """The newest archived adapter that was in production and was not itself rolled back."""
    rows = conn.execute(
        select(artifacts_t)
        .where(
            and_(
                artifacts_t.c.base_model == base_model,
                artifacts_t.c.deployment_status == DeploymentStatus.archived.value,
                artifacts_t.c.deployed_at.is_not(None),
                artifacts_t.c.id != uuid.UUID(exclude),
            )
        )
        .order_by(artifacts_t.c.deployed_at.desc())
    ).all()
    for r in rows:
        candidate = _row(r)
        if "rolled_back_at" not in candidate.metadata:
            return candidate
    return None


def history(bind: Bind, artifacts: Sequence[AdapterRow]) -> list[repo.JobEvent]:
    """Lifecycle events of these adapters' jobs, oldest first."""
    kinds = {EVALUATED, PROMOTED, ARCHIVED, ROLLED_BACK}
    out = []
    for job_id in dict.fromkeys(a.training_job_id for a in artifacts):
        out.extend(e for e in repo.list_events(bind, job_id) if e.type in kinds)
    return sorted(out, key=lambda e: e.created_at)
