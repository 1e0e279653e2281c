"""`brightrun download` from S3 storage (SeaweedFS): verified files, and time-limited URLs."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from brightrun import layout
from brightrun.manifest import build_manifest as directory_manifest
from brightrun.registry import repository as repo
from brightrun.resources import Resources
from tasks.adapters.task import publish_adapter
from tests.integration.test_adapters import cli

pytestmark = pytest.mark.integration


@pytest.fixture
def s3_adapter(brightrun_home: Path, s3_storage_env: str, tmp_path: Path) -> tuple[str, Path]:
    """A completed job whose adapter files are on S3, registered in the embedded registry."""
    source = tmp_path / "adapter"
    source.mkdir()
    (source / "adapter_model.safetensors").write_bytes(bytes(range(256)) * 300)
    (source / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "tiny", "r": 8}))
    (source / "README.md").write_text("# adapter\n")
    with Resources.from_settings() as resources:
        engine = resources.registry
        job = repo.create_job(engine, job_name="s3", base_model="tiny")
        for step in ("preprocessing", "model_loaded", "training", "completed"):
            repo.transition_job(engine, job.id, step)
        storage, prefix = resources.storage, layout.JobLayout(job.id).adapter_dir
        for path in source.iterdir():  # as the trainer uploads: files, then the manifest
            storage.put_file(f"{prefix}/{path.name}", path)
        storage.put_bytes(
            f"{prefix}/{layout.MANIFEST}", directory_manifest(source).model_dump_json().encode()
        )
        art = publish_adapter.fn(engine, storage, job.id)
    return art.id, source


def test_download_and_signed_urls_from_s3(s3_adapter: tuple[str, Path], tmp_path: Path) -> None:
    artifact_id, source = s3_adapter
    code, out = cli("download", artifact_id, "--out", str(tmp_path / "copy"))
    assert code == 0, out
    for name in ("adapter_model.safetensors", "adapter_config.json", "README.md"):
        assert (tmp_path / "copy" / name).read_bytes() == (source / name).read_bytes()

    code, out = cli("download", artifact_id, "--url", "--expires", "600", "--json")
    assert code == 0, out
    urls = json.loads(out)["files"]
    assert set(urls) == {"adapter_model.safetensors", "adapter_config.json", "README.md", layout.MANIFEST}
    fetched = httpx.get(urls["adapter_model.safetensors"], timeout=30)
    assert (
        fetched.status_code == 200 and fetched.content == (source / "adapter_model.safetensors").read_bytes()
    )
    assert "X-Amz-Expires=600" in urls["README.md"]
    tampered = httpx.get(urls["README.md"].replace("X-Amz-Expires=600", "X-Amz-Expires=6000"), timeout=30)
    assert tampered.status_code == 403  # the signature covers the expiry

    with Resources.from_settings() as resources:
        job_id = repo.get_job(
            resources.registry, repo.list_artifacts(resources.registry)[0].training_job_id
        ).id
        resources.storage.delete(f"{layout.JobLayout(job_id).adapter_dir}/README.md")
    code, out = cli("download", artifact_id, "--url")
    assert code == 1 and "README.md: missing" in out
    code, out = cli("download", artifact_id, "--out", str(tmp_path / "broken"))
    assert code == 1 and "README.md" in out and not (tmp_path / "broken").exists()
