"""Adapter upload + `model_artifacts` registration (tasks/artifacts.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from brightrun import layout
from brightrun.registry import open_registry_url
from brightrun.registry import repository as repo
from brightrun.storage import LocalStorage, ObjectInfo, Storage
from tasks.artifacts import AdapterUploadError, publish_adapter, upload_adapter, verify_stored_adapter

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


class FailingStorage(LocalStorage):
    """Dies on the n-th object upload, as a dropped connection would."""

    def __init__(self, root: Path, fail_on: int) -> None:
        super().__init__(root)
        self.fail_on, self.puts = fail_on, 0

    def put_file(self, key: str, path: Path) -> ObjectInfo:
        self.puts += 1
        if self.puts == self.fail_on:
            raise ConnectionResetError("connection reset by peer")
        return super().put_file(key, path)


def _job(engine: Engine) -> repo.Job:
    job = repo.create_job(engine, job_name="adapter", base_model="tiny-llama")
    for status in ("preprocessing", "model_loaded", "training"):
        repo.transition_job(engine, job.id, status)
    return job


def _publish_twice_leaves_one_row(engine: Engine, storage: Storage, adapter_dir: Path) -> None:
    job = _job(engine)
    storage.put_json(layout.JobLayout(job.id).eval, {"eval_loss": 1.5, "perplexity": 4.48, "eval_tokens": 10})
    first = publish_adapter.fn(engine, storage, job.id, adapter_dir)
    keys = storage.list(layout.JobLayout(job.id).adapter_dir + "/")
    manifest = storage.get_bytes(f"{layout.JobLayout(job.id).adapter_dir}/{layout.MANIFEST}")
    second = publish_adapter.fn(engine, storage, job.id, adapter_dir)
    assert second.id == first.id
    assert storage.list(layout.JobLayout(job.id).adapter_dir + "/") == keys
    assert storage.get_bytes(f"{layout.JobLayout(job.id).adapter_dir}/{layout.MANIFEST}") == manifest
    assert len(keys) == 5  # 4 files + MANIFEST.json
    (artifact,) = repo.list_artifacts(engine, job_id=job.id)
    assert artifact.artifact_type == "lora_adapter" and artifact.deployment_status == "stored"
    assert (artifact.validation_loss, artifact.perplexity, artifact.base_model) == (1.5, 4.48, "tiny-llama")
    assert artifact.lora_config["r"] == 8
    assert artifact.size_bytes == sum(p.stat().st_size for p in adapter_dir.rglob("*") if p.is_file())
    assert (
        repo.get_job(engine, job.id).lora_artifact_path
        == artifact.storage_path
        == storage.uri(layout.JobLayout(job.id).adapter_dir)
    )
    # The trainer-uploaded path (no local directory) verifies the same objects and keeps one row.
    assert publish_adapter.fn(engine, storage, job.id).id == first.id


def test_publish_twice_leaves_one_row_local(engine: Engine, adapter_dir: Path, tmp_path: Path) -> None:
    _publish_twice_leaves_one_row(engine, LocalStorage(tmp_path / "store"), adapter_dir)


def test_publish_twice_leaves_one_row_s3(engine: Engine, adapter_dir: Path, s3_storage: Storage) -> None:
    _publish_twice_leaves_one_row(engine, s3_storage, adapter_dir)


@pytest.mark.parametrize("fail_on", [1, 3])
def test_upload_dying_half_way_leaves_no_row_and_no_object(
    engine: Engine, adapter_dir: Path, tmp_path: Path, fail_on: int
) -> None:
    storage = FailingStorage(tmp_path / "store", fail_on=fail_on)
    job = _job(engine)
    with pytest.raises(AdapterUploadError, match="connection reset"):
        publish_adapter.fn(engine, storage, job.id, adapter_dir)
    assert storage.puts == fail_on
    assert storage.list(layout.JobLayout(job.id).adapter_dir) == []
    assert repo.list_artifacts(engine, job_id=job.id) == []
    assert repo.get_job(engine, job.id).lora_artifact_path is None
    # The retry (storage healthy again) completes.
    storage.fail_on = 0
    assert publish_adapter.fn(engine, storage, job.id, adapter_dir).job_id == job.id


def test_corrupt_stored_adapter_is_refused(engine: Engine, adapter_dir: Path, tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "store")
    job = _job(engine)
    upload_adapter(storage, job.id, adapter_dir)
    key = f"{layout.JobLayout(job.id).adapter_dir}/README.md"
    storage.put_bytes(key, b"# tampered, same length\n"[: (adapter_dir / "README.md").stat().st_size])
    with pytest.raises(AdapterUploadError, match="README.md"):
        verify_stored_adapter(storage, job.id)
    storage.delete(f"{layout.JobLayout(job.id).adapter_dir}/{layout.MANIFEST}")
    with pytest.raises(AdapterUploadError, match="no MANIFEST.json"):
        publish_adapter.fn(engine, storage, job.id)
    assert repo.list_artifacts(engine, job_id=job.id) == []
