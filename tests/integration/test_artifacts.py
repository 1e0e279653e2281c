"""Adapter upload + `model_artifacts` registration (tasks/adapters/publish.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from brightrun import layout
from brightrun.registry import open_registry_url
from brightrun.registry import repository as repo
from brightrun.storage import LocalStorage, Storage
from tasks.adapters.publish import AdapterUploadError, verify_stored_adapter
from tasks.adapters.task import publish_adapter

pytestmark = pytest.mark.integration


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    eng = open_registry_url(f"sqlite:///{tmp_path / 'registry.db'}")
    yield eng
    eng.dispose()


@pytest.fixture
def adapter_dir(tmp_path: Path) -> Path:
    d = tmp_path / "adapter"
    (d / "tokenizer").mkdir(parents=True)
    (d / "adapter_model.safetensors").write_bytes(bytes(range(256)) * 400)
    (d / "adapter_config.json").write_text(
        json.dumps({"base_model_name_or_path": "tiny-llama", "r": 8, "lora_alpha": 16, "peft_type": "LORA"})
    )
    (d / "tokenizer" / "tokenizer.json").write_text('{"model": {}}')
    (d / "README.md").write_text("# adapter\n")
    return d


def _trainer_upload(storage: Storage, job_id: str, adapter_dir: Path, *, manifest: bool = True) -> None:
    """The adapter as the trainer uploads it: every file, then MANIFEST.json (the commit point)."""
    from trainer.checkpoints import upload_with_manifest

    prefix = layout.JobLayout(job_id).adapter_dir
    if manifest:
        upload_with_manifest(storage, prefix, adapter_dir, before_manifest=lambda: None)
        return
    for path in sorted(p for p in adapter_dir.rglob("*") if p.is_file()):  # died before the manifest
        storage.put_file(f"{prefix}/{path.relative_to(adapter_dir).as_posix()}", path)


def _job(engine: Engine) -> repo.Job:
    job = repo.create_job(engine, job_name="adapter", base_model="tiny-llama")
    for status in ("preprocessing", "model_loaded", "training"):
        repo.transition_job(engine, job.id, status)
    return job


def _publish_twice_leaves_one_row(engine: Engine, storage: Storage, adapter_dir: Path) -> None:
    job = _job(engine)
    storage.put_json(layout.JobLayout(job.id).eval, {"eval_loss": 1.5, "perplexity": 4.48, "eval_tokens": 10})
    _trainer_upload(storage, job.id, adapter_dir)
    first = publish_adapter.fn(engine, storage, job.id)
    keys = storage.list(layout.JobLayout(job.id).adapter_dir + "/")
    manifest = storage.get_bytes(f"{layout.JobLayout(job.id).adapter_dir}/{layout.MANIFEST}")
    second = publish_adapter.fn(engine, storage, job.id)
    assert second.id == first.id
    assert storage.list(layout.JobLayout(job.id).adapter_dir + "/") == keys
    assert storage.get_bytes(f"{layout.JobLayout(job.id).adapter_dir}/{layout.MANIFEST}") == manifest
    assert len(keys) == 5  # 4 files + MANIFEST.json
    (artifact,) = repo.list_artifacts(engine, training_job_id=job.id)
    assert artifact.artifact_type == "lora_adapter" and artifact.deployment_status == "stored"
    assert (artifact.validation_loss, artifact.validation_perplexity) == (1.5, 4.48)
    assert artifact.base_model == "tiny-llama"
    assert artifact.lora_config["r"] == 8
    assert artifact.file_size_bytes == sum(p.stat().st_size for p in adapter_dir.rglob("*") if p.is_file())
    assert (
        repo.get_job(engine, job.id).lora_artifact_path
        == artifact.storage_path
        == storage.uri(layout.JobLayout(job.id).adapter_dir)
    )


def test_publish_twice_leaves_one_row_local(engine: Engine, adapter_dir: Path, tmp_path: Path) -> None:
    _publish_twice_leaves_one_row(engine, LocalStorage(tmp_path / "store"), adapter_dir)


def test_publish_twice_leaves_one_row_s3(engine: Engine, adapter_dir: Path, s3_storage: Storage) -> None:
    _publish_twice_leaves_one_row(engine, s3_storage, adapter_dir)


def test_an_adapter_without_its_manifest_is_not_registered(
    engine: Engine, adapter_dir: Path, tmp_path: Path
) -> None:
    storage = LocalStorage(tmp_path / "store")
    job = _job(engine)
    _trainer_upload(storage, job.id, adapter_dir, manifest=False)  # the pod died mid-upload
    with pytest.raises(AdapterUploadError, match="no MANIFEST.json"):
        publish_adapter.fn(engine, storage, job.id)
    assert repo.list_artifacts(engine, training_job_id=job.id) == []
    assert repo.get_job(engine, job.id).lora_artifact_path is None
    _trainer_upload(storage, job.id, adapter_dir)  # the resumed trainer finished the upload
    assert publish_adapter.fn(engine, storage, job.id).training_job_id == job.id


def test_corrupt_stored_adapter_is_refused(engine: Engine, adapter_dir: Path, tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "store")
    job = _job(engine)
    _trainer_upload(storage, job.id, adapter_dir)
    key = f"{layout.JobLayout(job.id).adapter_dir}/README.md"
    storage.put_bytes(key, b"# tampered, same length\n"[: (adapter_dir / "README.md").stat().st_size])
    with pytest.raises(AdapterUploadError, match="README.md"):
        verify_stored_adapter(storage, job.id)
    storage.delete(f"{layout.JobLayout(job.id).adapter_dir}/{layout.MANIFEST}")
    with pytest.raises(AdapterUploadError, match="no MANIFEST.json"):
        publish_adapter.fn(engine, storage, job.id)
    assert repo.list_artifacts(engine, training_job_id=job.id) == []
