"""The storage contract against a real S3-compatible server (SeaweedFS)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from brightrun.storage import S3Storage, Storage, StorageError
from tests.fixtures.seaweed import SeaweedS3
from tests.unit.test_storage import StorageContract

pytestmark = pytest.mark.integration

SMALL_THRESHOLD = 1024 * 1024


class TestS3Storage(StorageContract):
    @pytest.fixture
    def storage(self, seaweed: SeaweedS3, s3_storage_env: str, s3_prefix: str) -> S3Storage:
        # A low threshold so the contract's 6 MiB files take the multipart path.
        return S3Storage(
            seaweed.bucket, s3_prefix, endpoint_url=seaweed.endpoint_url, multipart_threshold=SMALL_THRESHOLD
        )

    @pytest.fixture(autouse=True)
    def _server(self, seaweed: SeaweedS3) -> None:
        self.server = seaweed

    def corrupt(self, storage: Storage, key: str) -> None:
        assert isinstance(storage, S3Storage)
        full = storage._key(key)
        client = self.server.client()
        recorded = client.head_object(Bucket=storage.bucket, Key=full)["Metadata"]["sha256"]
        client.put_object(Bucket=storage.bucket, Key=full, Body=b"B" * 1000, Metadata={"sha256": recorded})

    @contextlib.contextmanager
    def failing_upload(self, storage: Storage) -> Iterator[None]:
        assert isinstance(storage, S3Storage)
        events = storage._client.meta.events
        calls = {"n": 0}

        def fail_second_part(**kwargs: object) -> None:
            calls["n"] += 1
            if calls["n"] >= 2:
                raise ConnectionAbortedError("connection dropped mid-upload")

        events.register("before-send.s3.UploadPart", fail_second_part)
        events.register("before-send.s3.PutObject", fail_second_part)
        try:
            yield
        finally:
            events.unregister("before-send.s3.UploadPart", fail_second_part)
            events.unregister("before-send.s3.PutObject", fail_second_part)
        assert calls["n"] >= 2, "the upload never reached the failing part"

    def test_multipart_upload_used_and_aborted(self, storage: S3Storage, tmp_path) -> None:  # type: ignore[no-untyped-def]
        src = tmp_path / "big.bin"
        src.write_bytes(b"z" * (6 * 1024 * 1024 + 1))
        seen: list[str] = []
        storage._client.meta.events.register(
            "before-send.s3.*", lambda request, **kw: seen.append(kw.get("event_name", "").split(".")[-1])
        )
        storage.put_file("mp/big.bin", src)
        assert "CreateMultipartUpload" in seen and "CompleteMultipartUpload" in seen
        with self.failing_upload(storage), pytest.raises(Exception):  # noqa: B017
            storage.put_file("mp/failed.bin", src)
        pending = self.server.client().list_multipart_uploads(
            Bucket=storage.bucket, Prefix=storage._key("mp/")
        )
        assert pending.get("Uploads", []) == []

    def test_bad_credentials_error_names_object(
        self, seaweed: SeaweedS3, s3_prefix: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "wrong")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
        monkeypatch.setenv("AWS_DEFAULT_REGION", seaweed.region)
        store = S3Storage(seaweed.bucket, s3_prefix, endpoint_url=seaweed.endpoint_url)
        with pytest.raises(StorageError, match="x.json"):
            store.put_bytes("x.json", b"{}")

    def test_missing_bucket_named(self, seaweed: SeaweedS3, s3_storage_env: str) -> None:
        store = S3Storage("no-such-bucket-brightrun", "p", endpoint_url=seaweed.endpoint_url)
        with pytest.raises(StorageError, match="no-such-bucket-brightrun"):
            store.get_bytes("a.json")
