"""The storage contract, run against every backend.

`StorageContract` holds the behaviour both backends promise (atomic writes, sha256
verified on read, list/delete/put_dir/get_dir, errors that name the object).
`TestLocalStorage` runs it on a directory here; tests/integration/test_storage_s3.py
runs the very same class against SeaweedFS.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from brightrun import storage as storage_mod
from brightrun.storage import (
    IntegrityError,
    LocalStorage,
    ObjectNotFound,
    Storage,
    StorageError,
    open_storage,
    split_uri,
)

BIG = 6 * 1024 * 1024 + 123  # over the lowered multipart threshold: at least two parts on S3


class StorageContract:
    """Subclasses provide `storage`, `corrupt(storage, key)` and `failing_upload(storage)`."""

    def corrupt(self, storage: Storage, key: str) -> None:
        raise NotImplementedError

    @contextlib.contextmanager
    def failing_upload(self, storage: Storage) -> Iterator[None]:
        raise NotImplementedError
        yield

    def test_bytes_round_trip_records_sha256(self, storage: Storage) -> None:
        info = storage.put_bytes("a/b.txt", b"hello")
        assert info.sha256 == hashlib.sha256(b"hello").hexdigest()
        assert storage.get_bytes("a/b.txt") == b"hello"
        stat = storage.stat("a/b.txt")
        assert stat is not None and stat.size == 5
        assert stat.sha256 == info.sha256
        assert storage.exists("a/b.txt") and not storage.exists("a/missing.txt")

    def test_file_round_trip_large(self, storage: Storage, tmp_path: Path) -> None:
        src = tmp_path / "big.bin"
        src.write_bytes(os.urandom(BIG))
        info = storage.put_file("blobs/big.bin", src)
        assert info.size == BIG
        dest = tmp_path / "out" / "big.bin"
        got = storage.get_file("blobs/big.bin", dest, expected_sha256=info.sha256)
        assert dest.read_bytes() == src.read_bytes()
        assert got.sha256 == hashlib.sha256(src.read_bytes()).hexdigest()
        assert [p.name for p in dest.parent.iterdir()] == ["big.bin"]  # no temp file left

    def test_overwrite_replaces_whole_object(self, storage: Storage) -> None:
        storage.put_bytes("k.json", b"first version, longer")
        storage.put_bytes("k.json", b"second")
        assert storage.get_bytes("k.json") == b"second"

    def test_json_helpers(self, storage: Storage) -> None:
        storage.put_json("spec.json", {"b": 1, "a": [1, 2]})
        assert storage.get_json("spec.json") == {"a": [1, 2], "b": 1}

    def test_missing_object_error_names_it(self, storage: Storage, tmp_path: Path) -> None:
        with pytest.raises(ObjectNotFound, match="nope/missing.bin"):
            storage.get_bytes("nope/missing.bin")
        with pytest.raises(ObjectNotFound, match="nope/missing.bin"):
            storage.get_file("nope/missing.bin", tmp_path / "x")
        assert not (tmp_path / "x").exists()
        assert storage.stat("nope/missing.bin") is None

    def test_list_delete_and_prefixes(self, storage: Storage) -> None:
        for key in ("jobs/1/b", "jobs/1/a", "jobs/10/c", "other/d"):
            storage.put_bytes(key, key.encode())
        assert storage.list("jobs/1/") == ["jobs/1/a", "jobs/1/b"]
        assert storage.list("jobs/") == ["jobs/1/a", "jobs/1/b", "jobs/10/c"]
        storage.delete("jobs/1/a")
        storage.delete("jobs/1/a")  # deleting a missing object is fine
        assert storage.list("jobs/1/") == ["jobs/1/b"]
        assert storage.delete_prefix("jobs/") == 2
        assert storage.list("jobs/") == []
        assert storage.list("") == ["other/d"]

    def test_put_dir_get_dir(self, storage: Storage, tmp_path: Path) -> None:
        src = tmp_path / "adapter"
        (src / "sub").mkdir(parents=True)
        (src / "adapter_config.json").write_text("{}")
        (src / "sub" / "weights.bin").write_bytes(b"\x00\x01" * 100)
        infos = storage.put_dir("jobs/x/adapter", src)
        assert [i.key for i in infos] == [
            "jobs/x/adapter/adapter_config.json",
            "jobs/x/adapter/sub/weights.bin",
        ]
        dest = tmp_path / "back"
        storage.get_dir("jobs/x/adapter", dest)
        assert (dest / "adapter_config.json").read_text() == "{}"
        assert (dest / "sub" / "weights.bin").read_bytes() == b"\x00\x01" * 100

    def test_corruption_detected_on_read(self, storage: Storage, tmp_path: Path) -> None:
        storage.put_bytes("ckpt/model.bin", b"A" * 1000)
        self.corrupt(storage, "ckpt/model.bin")
        with pytest.raises(IntegrityError, match="ckpt/model.bin"):
            storage.get_bytes("ckpt/model.bin")
        dest = tmp_path / "downloads" / "model.bin"
        with pytest.raises(IntegrityError, match="ckpt/model.bin"):
            storage.get_file("ckpt/model.bin", dest)
        assert list(dest.parent.iterdir()) == []  # neither the file nor a temp file

    def test_expected_sha256_mismatch(self, storage: Storage, tmp_path: Path) -> None:
        storage.put_bytes("m.bin", b"data")
        with pytest.raises(IntegrityError, match="m.bin"):
            storage.get_bytes("m.bin", expected_sha256="0" * 64)
        with pytest.raises(IntegrityError):
            storage.get_file("m.bin", tmp_path / "m.bin", expected_sha256="0" * 64)
        assert not (tmp_path / "m.bin").exists()

    def test_failed_upload_leaves_no_object(self, storage: Storage, tmp_path: Path) -> None:
        src = tmp_path / "big.bin"
        src.write_bytes(os.urandom(BIG))
        with self.failing_upload(storage), pytest.raises(Exception):  # noqa: B017 - any failure will do
            storage.put_file("ckpt/big.bin", src)
        assert storage.stat("ckpt/big.bin") is None
        assert storage.list("ckpt/") == []

    def test_failed_overwrite_keeps_previous_object(self, storage: Storage, tmp_path: Path) -> None:
        storage.put_bytes("ckpt/LATEST", b"step-10")
        src = tmp_path / "big.bin"
        src.write_bytes(os.urandom(BIG))
        with self.failing_upload(storage), pytest.raises(Exception):  # noqa: B017
            storage.put_file("ckpt/LATEST", src)
        assert storage.get_bytes("ckpt/LATEST") == b"step-10"

    def test_invalid_keys_rejected(self, storage: Storage) -> None:
        for key in ("", "a/../b", "a//b", "./a"):
            with pytest.raises(StorageError):
                storage.put_bytes(key, b"x")

    def test_uri_round_trip(self, storage: Storage) -> None:
        storage.put_bytes("jobs/j1/spec.json", b"{}")
        parent, name = split_uri(storage.uri("jobs/j1/spec.json"))
        assert name == "spec.json"
        assert parent.endswith("jobs/j1")


class TestLocalStorage(StorageContract):
    @pytest.fixture
    def storage(self, tmp_path: Path) -> LocalStorage:
        return LocalStorage(tmp_path / "store")

    def corrupt(self, storage: Storage, key: str) -> None:
        assert isinstance(storage, LocalStorage)
        with open(storage.root / key, "r+b") as f:  # in place: the recorded sha256 stays
            f.write(b"B")

    @contextlib.contextmanager
    def failing_upload(self, storage: Storage) -> Iterator[None]:
        real = storage_mod.shutil.copyfileobj

        def half_then_fail(src, dst, length=0):  # type: ignore[no-untyped-def]
            dst.write(src.read(1024 * 1024))
            raise OSError("disk went away mid-write")

        storage_mod.shutil.copyfileobj = half_then_fail  # type: ignore[assignment]
        try:
            yield
        finally:
            storage_mod.shutil.copyfileobj = real  # type: ignore[assignment]


def test_local_failed_upload_leaves_no_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalStorage(tmp_path / "store")
    src = tmp_path / "f.bin"
    src.write_bytes(b"x" * 10)

    def fail(*args: object, **kwargs: object) -> None:
        raise OSError("boom")

    monkeypatch.setattr(storage_mod.shutil, "copyfileobj", fail)
    with pytest.raises(OSError):
        store.put_file("d/f.bin", src)
    assert list((tmp_path / "store" / "d").iterdir()) == []


def test_open_storage_resolves_urls(tmp_path: Path) -> None:
    local = open_storage(str(tmp_path / "s"))
    assert isinstance(local, LocalStorage)
    assert isinstance(open_storage(f"file://{tmp_path / 's2'}"), LocalStorage)
    with pytest.raises(StorageError, match="gs://x"):
        open_storage("gs://x/y")
    with pytest.raises(StorageError, match="bucket"):
        open_storage("s3:///prefix")


def test_an_s3_storage_opened_without_an_endpoint_reads_boto3s_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://generic:8333")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://s3-only:8333")
    assert storage_mod.open_storage("s3://bucket/p").endpoint_url == "http://s3-only:8333"  # type: ignore[attr-defined]
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    assert storage_mod.resolve_s3_endpoint() == "http://generic:8333"
    assert storage_mod.resolve_s3_endpoint("http://configured:1") == "http://configured:1"
