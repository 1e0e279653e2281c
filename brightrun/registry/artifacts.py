"""Model artifacts: one row per (job, type), registered idempotently, with its served name."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Table,
    and_,
    select,
    update,
)

from brightrun.registry import served_names
from brightrun.registry.binding import Bind, dialect_insert, row_view, to_uuid, transaction
from brightrun.registry.db import retry_on_disconnect
from brightrun.registry.jobs import job_row
from brightrun.registry.models import (
    ArtifactType,
    DeploymentStatus,
    ModelArtifact,
    TrainingJob,
    utcnow,
)

artifacts_t: Table = ModelArtifact.__table__  # type: ignore[assignment]
jobs_t: Table = TrainingJob.__table__  # type: ignore[assignment]


@dataclass(frozen=True)
class Artifact:
    id: str
    training_job_id: str
    artifact_type: str
    storage_path: str
    file_size_bytes: int | None
    sha256: str | None
    base_model: str | None
    lora_config: dict[str, Any]
    validation_loss: float | None
    validation_perplexity: float | None
    human_eval_score: float | None
    deployment_status: str
    deployed_at: datetime | None
    created_by: str | None
    metadata: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    served_name: str | None  # NULL only on a row the app inserted itself


@retry_on_disconnect
def register_artifact(
    bind: Bind,
    *,
    training_job_id: str | uuid.UUID,
    storage_path: str,
    artifact_type: str = ArtifactType.lora_adapter.value,
    file_size_bytes: int | None = None,
    sha256: str | None = None,
    base_model: str | None = None,
    lora_config: Mapping[str, Any] | None = None,
    validation_loss: float | None = None,
    validation_perplexity: float | None = None,
    human_eval_score: float | None = None,
    created_by: str | uuid.UUID | None = None,
    metadata: Mapping[str, Any] | None = None,
    set_job_artifact_path: bool = True,
) -> Artifact:
    """Insert or refresh the job's artifact of this type: one row per (job, type), always.

    Concurrent calls converge on one row (INSERT ... ON CONFLICT DO UPDATE). In the same
    transaction, a `lora_adapter` sets the job's `lora_artifact_path`. `deployment_status`
    starts `stored` and is never reset by a re-registration.
    """
    jid = to_uuid(training_job_id)
    ArtifactType(artifact_type)
    now = utcnow()
    values = {
        "storage_path": storage_path,
        "file_size_bytes": file_size_bytes,
        "sha256": sha256,
        "base_model": base_model,
        "lora_config": dict(lora_config or {}),
        "validation_loss": validation_loss,
        "validation_perplexity": validation_perplexity,
        "human_eval_score": human_eval_score,
        "created_by": to_uuid(created_by, "user") if created_by else None,
        "metadata": dict(metadata or {}),
    }
    with transaction(bind) as conn:
        job = job_row(conn, jid)
        artifact_id = uuid.uuid4()
        stmt = dialect_insert(conn, artifacts_t).values(
            id=artifact_id,
            training_job_id=jid,
            artifact_type=artifact_type,
            # Set once: a re-registration (the update below) keeps the name it was served as.
            served_name=served_names.served_name(job.job_name, artifact_id),
            deployment_status=DeploymentStatus.stored.value,
            created_at=now,
            updated_at=now,
            **values,
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=["training_job_id", "artifact_type"], set_={**values, "updated_at": now}
        )
        conn.execute(stmt)
        if set_job_artifact_path and artifact_type == ArtifactType.lora_adapter.value:
            conn.execute(
                update(jobs_t)
                .where(jobs_t.c.id == jid)
                .values(lora_artifact_path=storage_path, updated_at=now)
            )
        row = conn.execute(
            select(artifacts_t).where(
                and_(artifacts_t.c.training_job_id == jid, artifacts_t.c.artifact_type == artifact_type)
            )
        ).one()
        return row_view(Artifact, row)


@retry_on_disconnect
def list_artifacts(
    bind: Bind,
    *,
    training_job_id: str | uuid.UUID | None = None,
    artifact_type: str | None = None,
    deployment_status: str | None = None,
    limit: int | None = 100,
) -> list[Artifact]:
    """Newest first."""
    stmt = select(artifacts_t).order_by(artifacts_t.c.created_at.desc(), artifacts_t.c.id)
    if training_job_id is not None:
        stmt = stmt.where(artifacts_t.c.training_job_id == to_uuid(training_job_id))
    if artifact_type is not None:
        stmt = stmt.where(artifacts_t.c.artifact_type == ArtifactType(artifact_type).value)
    if deployment_status is not None:
        stmt = stmt.where(artifacts_t.c.deployment_status == DeploymentStatus(deployment_status).value)
    if limit is not None:
        stmt = stmt.limit(limit)
    with transaction(bind) as conn:
        return [row_view(Artifact, row) for row in conn.execute(stmt)]
