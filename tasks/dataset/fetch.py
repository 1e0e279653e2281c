"""Fetch a training file once and hash it once, wherever the caller says it is.

Accepted: a relative or absolute path (on the machine running the stage), `file://`,
`s3://bucket/key` (opened through the caller's storage opener, so on the configured
endpoint) and `http(s)://` URLs, signed ones included. A download lands in
`cache_dir/<sha256>.json` (written to a temporary file, hashed while it streams, renamed:
a failed download leaves nothing). What comes back names the file by its bytes and by its
display name; a URL's query (a signature is a credential) appears in neither, nor in any
error message.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from brightrun.errors import BrightrunError, InputError
from brightrun.storage import CHUNK, ObjectNotFound, Storage, StorageError, sha256_file, split_uri

#: Opens a storage URL (`Resources.open_storage`: one client per URL, the configured endpoint).
StorageOpener = Callable[[str], Storage]


@dataclass(frozen=True)
class SourceFile:
    """A training file on this machine, identified by its content."""

    path: Path
    sha256: str
    size: int
    display_name: str


def display_name(dataset: str) -> str:
    """What people call the file: its last path segment, never a URL's query or fragment."""
    if "://" in dataset and not dataset.startswith("file://"):
        path = urlsplit(dataset).path
    else:
        path = dataset.removeprefix("file://")
    return unquote(path.rstrip("/").rsplit("/", 1)[-1]) or "dataset.json"


def shown(dataset: str) -> str:
    """`dataset` fit for a message or a log line: without its query and fragment."""
    return dataset.split("?", 1)[0].split("#", 1)[0]


def fetch_source(dataset: str, cache_dir: Path, open_storage: StorageOpener) -> SourceFile:
    if dataset.startswith("file://") or "://" not in dataset:
        return _local(dataset)
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    if dataset.startswith("s3://"):
        return _s3(dataset, cache_dir, open_storage)
    if dataset.startswith(("https://", "http://")):
        return _http(dataset, cache_dir)
    raise InputError(f"dataset {shown(dataset)!r}: use a local path, s3://bucket/key or an https:// URL")


def _local(dataset: str) -> SourceFile:
    path = Path(dataset.removeprefix("file://")).expanduser()
    if not path.is_file():
        raise InputError(f"dataset {dataset}: no such file (relative paths are from {Path.cwd()})")
    path = path.resolve()
    return SourceFile(path, sha256_file(path), path.stat().st_size, path.name)


def _cached(cache_dir: Path, digest: str) -> Path:
    return cache_dir / f"{digest}.json"


def _partial(cache_dir: Path) -> Path:
    fd, name = tempfile.mkstemp(dir=cache_dir, prefix=".download-", suffix=".partial")
    os.close(fd)
    return Path(name)


def _s3(uri: str, cache_dir: Path, open_storage: StorageOpener) -> SourceFile:
    parent, name = split_uri(uri)
    if parent.count("/") < 2 or parent == "s3:/":
        raise InputError(f"dataset {uri!r}: an s3 URI needs a bucket and a key (s3://bucket/key)")
    try:
        storage = open_storage(parent)
        info = storage.stat(name)
        if info is None:
            raise InputError(f"dataset {uri}: no such object")
        if info.sha256 and _cached(cache_dir, info.sha256).is_file():
            return SourceFile(_cached(cache_dir, info.sha256), info.sha256, info.size, name)
        tmp = _partial(cache_dir)
        try:
            # The storage verifies the bytes against the sha256 recorded at upload and returns
            # the digest it computed: that is the one hash of this source.
            got = storage.get_file(name, tmp)
            assert got.sha256 is not None
            final = _cached(cache_dir, got.sha256)
            os.replace(tmp, final)
            return SourceFile(final, got.sha256, got.size, name)
        finally:
            tmp.unlink(missing_ok=True)
    except ObjectNotFound as exc:
        raise InputError(f"dataset {uri}: no such object") from exc
    except StorageError as exc:
        raise BrightrunError(f"dataset {uri}: download failed: {exc}") from exc


class _RedactQueries(logging.Filter):
    """httpx logs every request's full URL at INFO: a signed URL's query is a credential."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                shown(str(a)) + "?<redacted>" if "URL" in type(a).__name__ and "?" in str(a) else a
                for a in record.args
            )
        return True


_REDACT = _RedactQueries()


def _http(url: str, cache_dir: Path) -> SourceFile:
    import httpx

    httpx_log = logging.getLogger("httpx")
    if _REDACT not in httpx_log.filters:
        httpx_log.addFilter(_REDACT)
    where = shown(url)  # a signed URL's query is a credential: never print it
    tmp = _partial(cache_dir)
    digest = hashlib.sha256()
    size = 0
    try:
        with open(tmp, "wb") as out, httpx.stream("GET", url, follow_redirects=True, timeout=60) as r:
            if r.status_code >= 400:
                raise BrightrunError(f"dataset {where}: HTTP {r.status_code}")
            for chunk in r.iter_bytes(CHUNK):
                out.write(chunk)
                digest.update(chunk)
                size += len(chunk)
        sha = digest.hexdigest()
        final = _cached(cache_dir, sha)
        os.replace(tmp, final)
        return SourceFile(final, sha, size, display_name(url))
    except httpx.HTTPError as exc:
        # The exception's text may quote the URL, query and all: name the type only.
        raise BrightrunError(f"dataset {where}: download failed: {type(exc).__name__}") from None
    finally:
        tmp.unlink(missing_ok=True)
