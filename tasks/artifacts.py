"""Adapter upload and `model_artifacts` registration (the flow's last stage).

The final adapter lives under the job's prefix, `jobs/<job_id>/adapter/`, with
`MANIFEST.json` (sha256 and size of every file) written last: the manifest is the commit
point, so a reader never trusts an adapter directory without one.

- `upload_adapter`: a local adapter directory (the local trainer's output, or one
  downloaded from a pod) goes up file by file; each object is verified after upload
  (size and sha256, downloading it again when the store records no sha256); the manifest
  goes last. If anything fails, every object this call wrote is deleted again, so a
  failed upload leaves no object under the final keys. Running it again with the same
  files rewrites nothing.
- `verify_stored_adapter`: the adapter the trainer already uploaded (DESIGN.md §4) is
  checked object by object against its manifest.
- `register_adapter`: the `model_artifacts` row (type `lora_adapter`, storage path, size,
  base model, LoRA config, validation loss and perplexity from `eval.json`, deployment
  status `stored`) and the job's `lora_artifact_path`, in one transaction; one row per
  job whatever the number of calls (`repository.register_artifact`).

`publish_adapter` chains them as one Prefect task; registration only happens after the
upload verified, so a failed upload leaves no row.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from sqlalchemy import Engine

from brightrun import layout
from brightrun.errors import BrightrunError
from brightrun.protocol import EvalReport, Manifest, ManifestEntry
from brightrun.registry import repository as repo
from brightrun.storage import ObjectNotFound, Storage, StorageError, sha256_bytes, sha256_file

log = logging.getLogger("brightrun.artifacts")


class AdapterUploadError(BrightrunError):
    """The adapter could not be uploaded or verified; nothing was registered."""


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


def build_manifest(directory: Path) -> Manifest:
    files = {
        p.relative_to(directory).as_posix(): ManifestEntry(sha256=sha256_file(p), size=p.stat().st_size)
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != layout.MANIFEST and not p.name.endswith(".partial")
    }
    if not files:
        raise AdapterUploadError(f"the adapter directory {directory} is empty; nothing to upload")
    return Manifest(files=files)


def verify_object(storage: Storage, key: str, entry: ManifestEntry) -> None:
    """Raise AdapterUploadError unless the stored object has the entry's size and sha256."""
    info = storage.stat(key)
    if info is None:
        raise AdapterUploadError(f"{storage.uri(key)} is missing after upload")
    if info.size != entry.size:
        raise AdapterUploadError(f"{storage.uri(key)} has {info.size} bytes, expected {entry.size}")
    if info.sha256 is not None:
        if info.sha256 != entry.sha256:
            raise AdapterUploadError(
                f"{storage.uri(key)}: sha256 {info.sha256[:12]}… != {entry.sha256[:12]}…"
            )
        return
    # The store recorded no digest (e.g. a filesystem without xattrs): read it back.
    with tempfile.TemporaryDirectory(prefix="brightrun-verify-") as tmp:
        try:
            storage.get_file(key, Path(tmp) / "object", expected_sha256=entry.sha256)
        except StorageError as exc:
            raise AdapterUploadError(f"{storage.uri(key)} failed verification: {exc}") from exc


def _matches(storage: Storage, key: str, entry: ManifestEntry) -> bool:
    info = storage.stat(key)
    return info is not None and info.size == entry.size and info.sha256 == entry.sha256


def _read_manifest(storage: Storage, key: str) -> tuple[Manifest, bytes] | None:
    try:
        data = storage.get_bytes(key)
    except ObjectNotFound:
        return None
    return Manifest.model_validate_json(data), data


def upload_adapter(storage: Storage, job_id: str, adapter_dir: Path) -> StoredAdapter:
    """Upload `adapter_dir` to `jobs/<job_id>/adapter/` (see the module docstring)."""
    adapter_dir = Path(adapter_dir)
    if not adapter_dir.is_dir():
        raise AdapterUploadError(f"adapter directory {adapter_dir} does not exist")
    prefix = layout.JobLayout(job_id).adapter_dir
    manifest_key = f"{prefix}/{layout.MANIFEST}"
    manifest = build_manifest(adapter_dir)

    existing = _read_manifest(storage, manifest_key)
    if existing is not None and existing[0].files == manifest.files:
        try:
            for rel, entry in manifest.files.items():
                verify_object(storage, f"{prefix}/{rel}", entry)
        except AdapterUploadError as exc:
            log.warning("re-uploading the adapter of job %s: %s", job_id, exc)
        else:
            log.info("adapter of job %s already uploaded and verified at %s", job_id, storage.uri(prefix))
            return StoredAdapter(prefix, storage.uri(prefix), existing[0], sha256_bytes(existing[1]))

    written: list[str] = []
    try:
        # An old manifest must not vouch for a directory that is being overwritten.
        if existing is not None:
            storage.delete(manifest_key)
        for rel, entry in manifest.files.items():
            key = f"{prefix}/{rel}"
            if _matches(storage, key, entry):
                continue
            written.append(key)
            storage.put_file(key, adapter_dir / rel)
            verify_object(storage, key, entry)
        data = manifest.model_dump_json(indent=2).encode()
        written.append(manifest_key)
        storage.put_bytes(manifest_key, data)
        verify_object(storage, manifest_key, ManifestEntry(sha256=sha256_bytes(data), size=len(data)))
    except BaseException as exc:
        for key in reversed(written):
            try:
                storage.delete(key)
            except Exception as cleanup_error:  # keep the original error; say what was left
                log.error("could not delete %s after a failed upload: %s", storage.uri(key), cleanup_error)
        if isinstance(exc, BrightrunError | KeyboardInterrupt | SystemExit):
            raise
        if isinstance(exc, Exception):
            raise AdapterUploadError(
                f"uploading the adapter of job {job_id} to {storage.uri(prefix)} failed: {exc}; "
                "nothing was registered, run the flow again to retry"
            ) from exc
        raise
    log.info("uploaded adapter of job %s to %s (%d files)", job_id, storage.uri(prefix), len(manifest.files))
    return StoredAdapter(prefix, storage.uri(prefix), manifest, sha256_bytes(data))


def verify_stored_adapter(storage: Storage, job_id: str) -> StoredAdapter:
    """Check the adapter the trainer uploaded against its manifest, object by object."""
    prefix = layout.JobLayout(job_id).adapter_dir
    found = _read_manifest(storage, f"{prefix}/{layout.MANIFEST}")
    if found is None:
        raise AdapterUploadError(
            f"{storage.uri(prefix)} has no {layout.MANIFEST}: "
            "the trainer did not finish uploading the adapter"
        )
    manifest, data = found
    for rel, entry in manifest.files.items():
        verify_object(storage, f"{prefix}/{rel}", entry)
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
        job_id=job_id,
        artifact_type="lora_adapter",
        storage_path=stored.uri,
        size_bytes=stored.size_bytes,
        sha256=stored.manifest_sha256,
        base_model=base_model,
        lora_config=json.loads(json.dumps(dict(lora_config), default=str)),
        validation_loss=eval_report.eval_loss if eval_report else None,
        perplexity=eval_report.perplexity if eval_report else None,
        metadata={"files": len(stored.manifest.files), **dict(metadata or {})},
    )


@task(name="upload-adapter", retries=2, retry_delay_seconds=[5, 30], cache_policy=NO_CACHE)
def upload_adapter_task(storage: Storage, job_id: str, adapter_dir: Path) -> StoredAdapter:
    return upload_adapter(storage, job_id, adapter_dir)


@task(name="register-adapter", retries=3, retry_delay_seconds=[2, 10, 30], cache_policy=NO_CACHE)
def register_adapter_task(
    engine: Engine,
    storage: Storage,
    job_id: str,
    stored: StoredAdapter,
    base_model: str | None = None,
    eval_report: EvalReport | None = None,
) -> repo.Artifact:
    return register_adapter(engine, storage, job_id, stored, base_model=base_model, eval_report=eval_report)


@task(name="publish-adapter", retries=2, retry_delay_seconds=[5, 30], cache_policy=NO_CACHE)
def publish_adapter(
    engine: Engine,
    storage: Storage,
    job_id: str,
    adapter_dir: Path | None = None,
    base_model: str | None = None,
    eval_report: EvalReport | None = None,
) -> repo.Artifact:
    """Upload (when `adapter_dir` is given) or verify the trainer's upload, then register.

    Idempotent: a second run for the same job leaves the same objects and one row.
    """
    stored = (
        upload_adapter(storage, job_id, adapter_dir)
        if adapter_dir is not None
        else verify_stored_adapter(storage, job_id)
    )
    artifact = register_adapter(
        engine, storage, job_id, stored, base_model=base_model, eval_report=eval_report
    )
    log.info("registered adapter %s of job %s at %s", artifact.id, job_id, artifact.storage_path)
    return artifact
