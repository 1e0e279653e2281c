"""Fetch a training file once and hash it once, wherever the caller says it is.

Accepted: a relative or absolute path (on the machine running the stage), `file://`,
`s3://bucket/key` (opened through the caller's storage opener, so on the configured
endpoint) and `http(s)://` URLs, signed ones included. A download lands in
`cache_dir/<sha256>.json` (written to a temporary file, hashed while it streams, renamed:
a failed download leaves nothing). What comes back names the file by its bytes and by its
display name; a URL's query (a signature is a credential) appears in neither, nor in any
error message.

An http(s) fetch is bounded by the `FetchPolicy` (settings `BRIGHTRUN_FETCH_*`): at most
`max_bytes` (the Content-Length is checked first, then every byte as it streams),
redirects never or only to the same scheme, host and port, and no host that resolves to
a loopback, private, link-local (cloud metadata) or otherwise non-public address unless
`allow_private` (a dataset URL must not be a way to reach the worker's own network).
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import os
import socket
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from brightrun.errors import BrightrunError, InputError
from brightrun.settings import FetchPolicy
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


def fetch_source(
    dataset: str, cache_dir: Path, open_storage: StorageOpener, policy: FetchPolicy | None = None
) -> SourceFile:
    """`policy`: the settings' `fetch_policy` (default: `FetchPolicy()`, the safe one)."""
    if dataset.startswith("file://") or "://" not in dataset:
        return _local(dataset)
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    if dataset.startswith("s3://"):
        return _s3(dataset, cache_dir, open_storage)
    if dataset.startswith(("https://", "http://")):
        return _http(dataset, cache_dir, policy or FetchPolicy())
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


_MAX_REDIRECTS = 5


def check_host(url: str, policy: FetchPolicy) -> None:
    """Refuse a URL whose host resolves to a non-public address, unless the policy allows it."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if not host:
        raise InputError(f"dataset {shown(url)}: the URL names no host")
    if policy.allow_private:
        return
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise BrightrunError(f"dataset {shown(url)}: cannot resolve {host}: {exc.strerror or exc}") from None
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if not address.is_global or address.is_multicast:
            raise InputError(
                f"dataset {shown(url)}: {host} resolves to {address}, a loopback, private or "
                "link-local address; set BRIGHTRUN_FETCH_ALLOW_PRIVATE=true to fetch from it"
            )


def _same_origin(a: str, b: str) -> bool:
    pa, pb = urlsplit(a), urlsplit(b)
    return (pa.scheme, pa.hostname, pa.port) == (pb.scheme, pb.hostname, pb.port)


def _http(url: str, cache_dir: Path, policy: FetchPolicy) -> SourceFile:
    import httpx

    httpx_log = logging.getLogger("httpx")
    if _REDACT not in httpx_log.filters:
        httpx_log.addFilter(_REDACT)
    where = shown(url)  # a signed URL's query is a credential: never print it
    too_big = (
        f"dataset {where}: more than {policy.max_bytes} bytes; the limit is "
        f"BRIGHTRUN_FETCH_MAX_BYTES={policy.max_bytes}"
    )
    tmp = _partial(cache_dir)
    digest = hashlib.sha256()
    size = 0
    try:
        current = url
        with httpx.Client(follow_redirects=False, timeout=60) as client:
            for _ in range(_MAX_REDIRECTS + 1):
                check_host(current, policy)
                with open(tmp, "wb") as out, client.stream("GET", current) as r:
                    if r.is_redirect:
                        target = str(r.url.join(r.headers.get("location", "")))
                        if policy.redirects == "none" or not _same_origin(current, target):
                            raise InputError(
                                f"dataset {where}: HTTP {r.status_code} redirects to {shown(target)}; "
                                f"BRIGHTRUN_FETCH_REDIRECTS={policy.redirects} does not follow it "
                                "(use the final URL)"
                            )
                        current = target
                        continue
                    if r.status_code >= 400:
                        raise BrightrunError(f"dataset {where}: HTTP {r.status_code}")
                    declared = r.headers.get("content-length", "")
                    if declared.isdigit() and int(declared) > policy.max_bytes:
                        raise InputError(too_big)
                    for chunk in r.iter_bytes(CHUNK):
                        size += len(chunk)
                        if size > policy.max_bytes:
                            raise InputError(too_big)
                        out.write(chunk)
                        digest.update(chunk)
                    break
            else:
                raise InputError(f"dataset {where}: more than {_MAX_REDIRECTS} redirects")
        sha = digest.hexdigest()
        final = _cached(cache_dir, sha)
        os.replace(tmp, final)
        return SourceFile(final, sha, size, display_name(url))
    except httpx.HTTPError as exc:
        # The exception's text may quote the URL, query and all: name the type only.
        raise BrightrunError(f"dataset {where}: download failed: {type(exc).__name__}") from None
    finally:
        tmp.unlink(missing_ok=True)
