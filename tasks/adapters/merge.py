"""Merge: an adapter folded into its full-precision base, optionally uploaded beside the
adapter with a manifest and registered as the job's `merged_model`."""

from __future__ import annotations

from pathlib import Path

from brightrun import layout
from brightrun import manifest as manifest_io
from brightrun.registry import promotion
from brightrun.registry import repository as repo
from brightrun.resources import Resources
from brightrun.storage import sha256_bytes
from tasks.adapters.fetch import fetch_adapter


def export_merged(
    resources: Resources, ref: str, out_dir: Path, *, dtype: str = "auto", register: bool = True
) -> tuple[Path, repo.Artifact | None]:
    """The adapter merged into its full-precision base at `out_dir`; with `register`, also
    uploaded beside the adapter (`jobs/<id>/merged/`, with a manifest) and registered as the
    job's `merged_model` artifact."""
    from trainer.inference import merge_adapter

    artifact = promotion.resolve_artifact(resources.registry, ref)
    local = fetch_adapter(resources, artifact)
    merge_adapter(local.base_spec(full_precision=True), local.directory, Path(out_dir), dtype=dtype)
    if not register:
        return Path(out_dir), None
    job = repo.get_job(resources.registry, artifact.training_job_id)
    storage = resources.job_storage(job)
    prefix = layout.JobLayout(artifact.training_job_id).key("merged")
    manifest = manifest_io.build_manifest(Path(out_dir))
    for rel in manifest.files:
        storage.put_file(f"{prefix}/{rel}", Path(out_dir) / rel)
    data = manifest_io.encode(manifest)
    storage.put_bytes(f"{prefix}/{layout.MANIFEST}", data)
    registered = repo.register_artifact(
        resources.registry,
        training_job_id=artifact.training_job_id,
        artifact_type="merged_model",
        storage_path=storage.uri(prefix),
        file_size_bytes=manifest.total_size,
        sha256=sha256_bytes(data),
        base_model=artifact.base_model,
        metadata={"merged_from": artifact.id, "dtype": dtype, "format": "safetensors"},
        set_job_artifact_path=False,
    )
    return Path(out_dir), registered
