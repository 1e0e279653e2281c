"""Publish: the uploaded adapter verified and registered in `model_artifacts` (the training
flow's last stage; its Prefect task is `tasks/adapters/task.py` `publish_adapter`).

The final adapter lives under the job's prefix, `jobs/<job_id>/adapter/`, with
`MANIFEST.json` (sha256 and size of every file) written last: the manifest is the commit
point, so a reader never trusts an adapter directory without one.

The trainer uploads the adapter itself (trainer/checkpoints.py `upload_with_manifest`):
the orchestrator never holds the weights. Here:

- `verify_stored_adapter`: the adapter the trainer uploaded (DESIGN.md §4) is checked
  object by object against its manifest (size and sha256, reading it back when the store
  records no sha256).
- `register_adapter`: the `model_artifacts` row (type `lora_adapter`, storage path, size,
  base model, LoRA config, validation loss and perplexity from `eval.json`, deployment
  status `stored`) and the job's `lora_artifact_path`, in one transaction; one row per
  job whatever the number of calls (`repository.register_artifact`).

`publish` chains them (the Prefect task wraps it); registration only happens after the
adapter verified, so a missing or altered file leaves no row.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine

from brightrun import layout
from brightrun import manifest as manifest_io
from brightrun.errors import BrightrunError
from brightrun.protocol import EvalReport, Manifest
from brightrun.registry import repository as repo
from brightrun.storage import ObjectNotFound, Storage, sha256_bytes

log = logging.getLogger("brightrun.artifacts")


class AdapterUploadError(BrightrunError):
    """The stored adapter is missing or does not match its manifest; nothing was registered."""


@dataclass(frozen=True)
class StoredAdapter:
    """A verified adapter in storage."""

    prefix: str  # storage key of the adapter directory, e.g. jobs/<id>/adapter
    uri: str  # the same, as a URI the dashboard and `open_storage` understand
    manifest: Manifest
    manifest_sha256: str  # identifies the whole adapter

    @property
    def size_bytes(self) -> int:
        return self.manifest.total_size


def verify_stored_adapter(storage: Storage, job_id: str) -> StoredAdapter:
    """Check the adapter the trainer uploaded against its manifest, object by object
    (reading an object back when the store recorded no sha256)."""
    prefix = layout.JobLayout(job_id).adapter_dir
    try:
        manifest, data = manifest_io.read_manifest(storage, prefix)
    except manifest_io.ManifestMissing:
        raise AdapterUploadError(
            f"{storage.uri(prefix)} has no {layout.MANIFEST}: "
            "the trainer did not finish uploading the adapter"
        ) from None
    except manifest_io.ManifestUnreadable as exc:
        raise AdapterUploadError(str(exc)) from exc
    problems = manifest_io.stored_problems(storage, prefix, manifest, read_back=True)
    if problems:
        raise AdapterUploadError(
            "\n".join([f"the adapter at {storage.uri(prefix)} does not match its manifest:", *problems])
        )
    return StoredAdapter(prefix, storage.uri(prefix), manifest, sha256_bytes(data))


def _optional_json(storage: Storage, key: str) -> Any | None:
    try:
        return storage.get_json(key)
    except ObjectNotFound:
        return None


def register_adapter(
    engine: Engine,
    storage: Storage,
    job_id: str,
    stored: StoredAdapter,
    *,
    base_model: str | None = None,
    lora_config: Mapping[str, Any] | None = None,
    eval_report: EvalReport | Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> repo.Artifact:
    """The `model_artifacts` row for a verified adapter, with the job's `lora_artifact_path`.

    LoRA config, base model and eval figures default to what storage holds beside the
    adapter (`adapter_config.json`, the job's `eval.json`).
    """
    if lora_config is None:
        lora_config = _optional_json(storage, f"{stored.prefix}/adapter_config.json") or {}
    if eval_report is None:
        raw = _optional_json(storage, layout.JobLayout(job_id).eval)
        eval_report = EvalReport.model_validate(raw) if raw is not None else None
    elif not isinstance(eval_report, EvalReport):
        eval_report = EvalReport.model_validate(dict(eval_report))
    base_model = base_model or lora_config.get("base_model_name_or_path")
    return repo.register_artifact(
        engine,
        training_job_id=job_id,
        artifact_type="lora_adapter",
        storage_path=stored.uri,
        file_size_bytes=stored.size_bytes,
        sha256=stored.manifest_sha256,
        base_model=base_model,
        lora_config=json.loads(json.dumps(dict(lora_config), default=str)),
        validation_loss=eval_report.eval_loss if eval_report else None,
        validation_perplexity=eval_report.perplexity if eval_report else None,
        metadata={"files": len(stored.manifest.files), **dict(metadata or {})},
    )


def publish(
    engine: Engine,
    storage: Storage,
    job_id: str,
    base_model: str | None = None,
    eval_report: EvalReport | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> repo.Artifact:
    """Verify the adapter the trainer uploaded, then register it (`metadata`: e.g. its lineage).

    Idempotent: a second run for the same job leaves one row.
    """
    stored = verify_stored_adapter(storage, job_id)
    artifact = register_adapter(
        engine, storage, job_id, stored, base_model=base_model, eval_report=eval_report, metadata=metadata
    )
    log.info("registered adapter %s of job %s at %s", artifact.id, job_id, artifact.storage_path)
    return artifact
