"""Fetch and verify: a registered adapter's files, checked against its manifest.

An adapter is never used unverified: every file is checked against the adapter's
`MANIFEST.json` (sha256 and size, `brightrun.manifest`) when it is fetched, and a verified
copy is cached under `$BRIGHTRUN_HOME/cache/adapters/<artifact id>/<manifest sha256>/`.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from brightrun import layout
from brightrun import manifest as manifest_io
from brightrun.base_model import BaseModelSpec
from brightrun.errors import BrightrunError, InputError
from brightrun.protocol import Manifest
from brightrun.registry import repository as repo
from brightrun.registry.promotion import AdapterRow
from brightrun.resources import Resources
from brightrun.spec import JobSpec, QuantizationSettings, parse_spec
from brightrun.storage import ObjectNotFound, Storage, sha256_bytes

log = logging.getLogger("brightrun.adapters")


class AdapterCorrupt(BrightrunError):
    """The adapter's files in storage are missing or differ from its manifest."""

    def __init__(self, message: str, *problems: str) -> None:
        self.problems = list(problems)
        super().__init__("\n".join([message, *(f"  - {p}" for p in problems)]))


# ---------------------------------------------------------------- fetch and verify


@dataclass(frozen=True)
class LocalAdapter:
    """A verified local copy of a registered adapter, and how its base model is loaded."""

    artifact: AdapterRow
    directory: Path
    base_model: str
    base_model_revision: str | None
    quantization: QuantizationSettings
    max_seq_length: int | None
    manifest: Manifest

    def base_spec(self, *, full_precision: bool = False) -> BaseModelSpec:
        spec = BaseModelSpec(self.base_model, self.base_model_revision, self.quantization)
        return spec.full_precision() if full_precision else spec


def adapter_location(resources: Resources, artifact: AdapterRow) -> tuple[Storage, str]:
    """(storage, key prefix) of an artifact's files: the job's own storage and layout for a
    `lora_adapter`, the recorded `storage_path` for anything else."""
    if artifact.artifact_type == "lora_adapter":
        job = repo.get_job(resources.registry, artifact.training_job_id)
        return resources.job_storage(job), layout.JobLayout(artifact.training_job_id).adapter_dir
    parent, _, name = artifact.storage_path.rstrip("/").rpartition("/")
    return resources.open_storage(parent or "/"), name


def read_manifest(storage: Storage, prefix: str) -> tuple[Manifest, bytes]:
    try:
        return manifest_io.read_manifest(storage, prefix)
    except manifest_io.ManifestMissing as exc:
        raise AdapterCorrupt(f"{exc}: the adapter was never fully uploaded or was deleted") from None
    except manifest_io.ManifestUnreadable as exc:
        raise AdapterCorrupt(str(exc)) from exc


def download_verified(storage: Storage, prefix: str, out_dir: Path) -> Manifest:
    """Every file of the manifest into `out_dir` (plus the manifest), each checked; written to a
    temp dir beside `out_dir` and renamed, so a failure leaves nothing at `out_dir`."""
    manifest, data = read_manifest(storage, prefix)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.partial-"))
    try:
        problems = [
            f"{storage.uri(key)}: {reason}"
            for key, reason in manifest_io.download_files(storage, prefix, manifest, tmp)
        ]
        if not problems:
            problems = manifest_io.local_problems(tmp, manifest)
        if problems:
            raise AdapterCorrupt(
                f"the adapter at {storage.uri(prefix)} does not match its manifest; nothing was downloaded",
                *problems,
            )
        (tmp / layout.MANIFEST).write_bytes(data)
        if out_dir.exists():
            out_dir.rmdir()  # empty (checked by the caller)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _job_spec(resources: Resources, artifact: AdapterRow) -> JobSpec | None:
    try:
        job = repo.get_job(resources.registry, artifact.training_job_id)
        storage = resources.job_storage(job)
        return parse_spec(storage.get_bytes(layout.JobLayout(artifact.training_job_id).spec))
    except (ObjectNotFound, BrightrunError, ValueError) as exc:
        log.warning(
            "no readable spec.json for job %s (%s): loading the base plainly", artifact.training_job_id, exc
        )
        return None


def fetch_adapter(resources: Resources, artifact: AdapterRow) -> LocalAdapter:
    """A verified local copy of the artifact (cached), with its base model's loading recipe."""
    if artifact.artifact_type != "lora_adapter":
        raise InputError(f"artifact {artifact.id} is a {artifact.artifact_type}, not a lora_adapter")
    storage, prefix = adapter_location(resources, artifact)
    manifest, data = read_manifest(storage, prefix)
    cache = resources.settings.cache_dir / "adapters" / artifact.id / sha256_bytes(data)[:16]
    if cache.is_dir() and not manifest_io.local_problems(cache, manifest):
        # The cached copy is good, but the stored adapter must still be whole: a damaged
        # upload is reported, not papered over by an old copy.
        problems = manifest_io.stored_problems(storage, prefix, manifest, read_back=False)
        if problems:
            raise AdapterCorrupt(
                f"the adapter at {storage.uri(prefix)} does not match its manifest", *problems
            )
    else:
        if cache.exists():
            shutil.rmtree(cache)
        download_verified(storage, prefix, cache)
    spec = _job_spec(resources, artifact)
    config = (
        json.loads((cache / "adapter_config.json").read_text())
        if (cache / "adapter_config.json").exists()
        else {}
    )
    base_model = (
        (spec.base_model if spec else None) or artifact.base_model or config.get("base_model_name_or_path")
    )
    if not base_model:
        raise AdapterCorrupt(f"artifact {artifact.id} records no base model")
    return LocalAdapter(
        artifact=artifact,
        directory=cache,
        base_model=base_model,
        base_model_revision=spec.base_model_revision if spec else None,
        quantization=spec.quantization if spec else QuantizationSettings(load_in_4bit=False),
        max_seq_length=spec.training.max_seq_length if spec else None,
        manifest=manifest,
    )


def download_adapter(resources: Resources, artifact: AdapterRow, out_dir: Path) -> Manifest:
    """The artifact's files into `out_dir` (new or empty), verified against its manifest."""
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise InputError(f"{out_dir} exists and is not an empty directory; choose a new --out")
    storage, prefix = adapter_location(resources, artifact)
    return download_verified(storage, prefix, out_dir)


def presigned_urls(resources: Resources, artifact: AdapterRow, expires_s: int) -> dict[str, str]:
    """Time-limited GET URLs, one per file of the adapter (S3 storage only); the files are
    verified against the manifest first so a URL never hands out an altered file."""
    from brightrun.storage import S3Storage

    storage, prefix = adapter_location(resources, artifact)
    if not isinstance(storage, S3Storage):
        raise InputError(
            f"the adapter is on local storage ({storage.uri(prefix)}): --url needs S3; use --out DIR"
        )
    if not 1 <= expires_s <= 7 * 24 * 3600:
        raise InputError(f"--expires must be between 1 s and 7 days, not {expires_s}")
    manifest, _ = read_manifest(storage, prefix)
    problems = manifest_io.stored_problems(storage, prefix, manifest, read_back=False)
    if problems:
        raise AdapterCorrupt(f"the adapter at {storage.uri(prefix)} does not match its manifest", *problems)
    urls = {}
    for rel in [*manifest.files, layout.MANIFEST]:
        # S3Storage keeps its boto3 client private; presigning is a local computation on it.
        urls[rel] = storage._client.generate_presigned_url(
            "get_object",
            Params={"Bucket": storage.bucket, "Key": storage._key(f"{prefix}/{rel}")},
            ExpiresIn=expires_s,
        )
    return urls
