"""Fetching a training file once: local path, s3:// (SeaweedFS) and https-style URLs, by content hash."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from brightrun.errors import BrightrunError, InputError
from brightrun.settings import FetchPolicy
from brightrun.storage import S3Storage, open_storage
from tasks.dataset.fetch import SourceFile, fetch_source
from tests.fixtures.seaweed import SeaweedS3

pytestmark = pytest.mark.integration


def fetch_dataset(uri: str, cache: Path, *, endpoint_url: str | None = None) -> Path:
    return fetch(uri, cache, endpoint_url=endpoint_url).path


# The test servers listen on 127.0.0.1: the one address the default policy refuses.
LOCAL_OK = FetchPolicy(allow_private=True)


def fetch(
    uri: str, cache: Path, *, endpoint_url: str | None = None, policy: FetchPolicy = LOCAL_OK
) -> SourceFile:
    return fetch_source(uri, cache, lambda url: open_storage(url, endpoint_url=endpoint_url), policy)


def test_local_path_is_used_in_place(sample_dataset: Path, tmp_path: Path) -> None:
    assert fetch_dataset(str(sample_dataset), tmp_path / "cache") == sample_dataset
    assert fetch_dataset(f"file://{sample_dataset}", tmp_path / "cache") == sample_dataset
    with pytest.raises(InputError, match="no such file"):
        fetch_dataset(str(tmp_path / "missing.json"), tmp_path / "cache")
    with pytest.raises(InputError, match="ftp://x"):
        fetch_dataset("ftp://x/y.json", tmp_path / "cache")


def test_s3_fetch_caches_by_content_hash(
    seaweed: SeaweedS3, s3_storage: S3Storage, sample_dataset: Path, tmp_path: Path
) -> None:
    s3_storage.put_file("datasets/sample.json", sample_dataset)
    uri = s3_storage.uri("datasets/sample.json")
    cache = tmp_path / "cache"
    got = fetch_dataset(uri, cache, endpoint_url=seaweed.endpoint_url)
    digest = hashlib.sha256(sample_dataset.read_bytes()).hexdigest()
    assert got == cache / f"{digest}.json" and got.read_bytes() == sample_dataset.read_bytes()
    # A second fetch finds the recorded sha256 in the cache and does not download again.
    got.write_bytes(got.read_bytes())  # same content, new mtime
    before = got.stat().st_mtime_ns
    assert fetch_dataset(uri, cache, endpoint_url=seaweed.endpoint_url) == got
    assert got.stat().st_mtime_ns == before
    assert sorted(p.name for p in cache.iterdir()) == [got.name]


def test_s3_missing_object_is_an_input_error(
    seaweed: SeaweedS3, s3_storage: S3Storage, tmp_path: Path
) -> None:
    with pytest.raises(InputError, match="nope.json"):
        fetch_dataset(s3_storage.uri("nope.json"), tmp_path / "cache", endpoint_url=seaweed.endpoint_url)
    assert list((tmp_path / "cache").iterdir()) == []


def test_http_fetch_and_failed_download_leaves_nothing(
    http_server: str, sample_dataset: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    fetched = fetch(f"{http_server}/{sample_dataset.name}?X-Amz-Signature=secret", cache)
    got = fetched.path
    assert got.read_bytes() == sample_dataset.read_bytes()
    assert fetched.sha256 == hashlib.sha256(got.read_bytes()).hexdigest()
    assert got.name == f"{fetched.sha256}.json"
    assert fetched.display_name == sample_dataset.name and fetched.size == got.stat().st_size
    with pytest.raises(BrightrunError) as info:
        fetch_dataset(f"{http_server}/missing.json?X-Amz-Signature=secret", cache)
    assert "HTTP 404" in str(info.value) and "secret" not in str(info.value)
    with pytest.raises(BrightrunError):
        fetch_dataset(f"{http_server}/broken.json", cache)
    assert [p.name for p in cache.iterdir()] == [got.name]


def test_http_fetch_refuses_loopback_unless_allowed(
    http_server: str, sample_dataset: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(InputError) as info:
        fetch(f"{http_server}/{sample_dataset.name}", cache, policy=FetchPolicy())
    assert "127.0.0.1" in str(info.value) and "BRIGHTRUN_FETCH_ALLOW_PRIVATE" in str(info.value)
    assert list(cache.iterdir()) == []


def test_http_fetch_size_cap_and_redirect_policy(
    http_server: str, sample_dataset: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    size = sample_dataset.stat().st_size
    with pytest.raises(InputError, match=f"more than {size - 1} bytes.*BRIGHTRUN_FETCH_MAX_BYTES"):
        fetch(
            f"{http_server}/{sample_dataset.name}",
            cache,
            policy=FetchPolicy(allow_private=True, max_bytes=size - 1),
        )
    assert list(cache.iterdir()) == []
    # A redirect to another host (here the cloud metadata address) is never followed.
    with pytest.raises(InputError, match="redirects to http://169.254.169.254"):
        fetch(f"{http_server}/redirect-away", cache)
    # Same host: followed by default, refused with BRIGHTRUN_FETCH_REDIRECTS=none.
    same = f"{http_server}/redirect-here/{sample_dataset.name}"
    assert fetch(same, cache).path.read_bytes() == sample_dataset.read_bytes()
    with pytest.raises(InputError, match="BRIGHTRUN_FETCH_REDIRECTS=none"):
        fetch(same, cache, policy=FetchPolicy(allow_private=True, redirects="none"))
