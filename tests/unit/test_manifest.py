"""brightrun/manifest.py: the one place a MANIFEST.json is built, read and checked."""

from __future__ import annotations

from pathlib import Path

import pytest

from brightrun import layout
from brightrun import manifest as m
from brightrun.storage import LocalStorage


def adapter_dir(root: Path) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "adapter_model.safetensors").write_bytes(b"weights" * 10)
    (root / "sub" / "tokenizer.json").write_text("{}")
    (root / layout.MANIFEST).write_text("old manifest, never listed")
    return root


def test_build_lists_every_file_but_the_manifest(tmp_path: Path) -> None:
    manifest = m.build_manifest(adapter_dir(tmp_path / "a"), step=3)
    assert sorted(manifest.files) == ["adapter_model.safetensors", "sub/tokenizer.json"]
    assert manifest.step == 3 and manifest.total_size == 72
    assert m.local_problems(tmp_path / "a", manifest) == []


def test_local_problems_name_each_file(tmp_path: Path) -> None:
    d = adapter_dir(tmp_path / "a")
    manifest = m.build_manifest(d)
    (d / "adapter_model.safetensors").write_bytes(b"Weights" * 10)  # same size, other bytes
    (d / "sub" / "tokenizer.json").unlink()
    assert m.local_problems(d, manifest) == [
        "adapter_model.safetensors: sha256 differs from the manifest",
        "sub/tokenizer.json: missing",
    ]


def test_stored_read_and_download(tmp_path: Path) -> None:
    d = adapter_dir(tmp_path / "a")
    storage = LocalStorage(tmp_path / "store")
    manifest = m.build_manifest(d)
    for rel in manifest.files:
        storage.put_file(f"jobs/x/adapter/{rel}", d / rel)
    with pytest.raises(m.ManifestMissing, match="MANIFEST.json is missing"):
        m.read_manifest(storage, "jobs/x/adapter")
    storage.put_bytes(f"jobs/x/adapter/{layout.MANIFEST}", m.encode(manifest))
    read, data = m.read_manifest(storage, "jobs/x/adapter")
    assert read.files == manifest.files and data == m.encode(manifest)
    assert m.stored_problems(storage, "jobs/x/adapter", read, read_back=True) == []
    assert m.download_files(storage, "jobs/x/adapter", read, tmp_path / "copy") == []
    assert m.local_problems(tmp_path / "copy", read) == []

    storage.put_bytes("jobs/x/adapter/sub/tokenizer.json", b"{ }")  # one byte more
    storage.delete("jobs/x/adapter/adapter_model.safetensors")
    problems = m.stored_problems(storage, "jobs/x/adapter", read, read_back=True)
    assert len(problems) == 2
    assert "adapter_model.safetensors: missing" in problems[0]
    assert "tokenizer.json: 3 bytes, manifest says 2" in problems[1]
    failed = dict(m.download_files(storage, "jobs/x/adapter", read, tmp_path / "again"))
    assert failed["jobs/x/adapter/adapter_model.safetensors"] == "missing"
    assert "jobs/x/adapter/sub/tokenizer.json" in failed

    storage.put_bytes(f"jobs/x/adapter/{layout.MANIFEST}", b"not json")
    with pytest.raises(m.ManifestUnreadable, match="not a valid manifest"):
        m.read_manifest(storage, "jobs/x/adapter")
