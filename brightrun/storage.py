"""Object storage: one interface, a local-directory and an S3-compatible backend.

Guarantees both backends give:
- atomic writes: a reader never sees half an object under its final key (local:
  write to a temporary file in the same directory, fsync, rename; S3: an object
  only appears when its single or multipart upload completes);
- sha256 recorded on write (S3 object metadata; local: a `user.sha256` xattr set
  on the temporary file before the rename, when the filesystem supports it) and
  verified on read, plus an explicit `expected_sha256` for callers that hold a
  manifest;
- retries on transient errors (botocore "standard" retry mode).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

CHUNK = 1024 * 1024
MULTIPART_THRESHOLD = 64 * 1024 * 1024
_XATTR = "user.sha256"


class StorageError(RuntimeError):
    """A storage operation failed; the message names the object."""


class ObjectNotFound(StorageError):
    pass


class IntegrityError(StorageError):
    """An object's bytes do not match the sha256 recorded or expected for it."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    sha256: str | None


def _umask() -> int:
    """The process's umask, read without changing it where Linux says it (/proc), else by the
    set-and-restore dance."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _give_umask_mode(path: str | Path) -> None:
    """mkstemp makes 0600 files; a downloaded or stored file gets the mode any file the user
    creates gets (0644 under the usual umask 022)."""
    with contextlib.suppress(OSError):
        os.chmod(path, 0o666 & ~_umask())


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_s3_endpoint(configured: str | None = None) -> str | None:
    """The S3 endpoint: the configured one, else boto3's own variables (`AWS_ENDPOINT_URL_S3`
    before `AWS_ENDPOINT_URL`, the order boto3 reads them); None means AWS itself."""
    return configured or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _check_key(key: str) -> str:
    key = key.lstrip("/")
    if not key or any(part in ("", ".", "..") for part in key.rstrip("/").split("/")):
        raise StorageError(f"invalid storage key {key!r}")
    return key


class Storage(ABC):
    """Keys are '/'-separated paths relative to the storage root."""

    url: str

    @abstractmethod
    def put_file(self, key: str, path: Path) -> ObjectInfo: ...

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> ObjectInfo: ...

    @abstractmethod
    def get_file(self, key: str, dest: Path, *, expected_sha256: str | None = None) -> ObjectInfo:
        """Download to `dest` atomically, verifying the sha256."""

    @abstractmethod
    def get_bytes(self, key: str, *, expected_sha256: str | None = None) -> bytes: ...

    @abstractmethod
    def stat(self, key: str) -> ObjectInfo | None:
        """Size and recorded sha256, or None when the object does not exist."""

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Keys under `prefix`, sorted."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Delete one object; deleting a missing object is not an error."""

    @abstractmethod
    def uri(self, key: str = "") -> str:
        """A URI that `open_storage_for_uri` resolves back to this object."""

    def exists(self, key: str) -> bool:
        return self.stat(key) is not None

    def delete_prefix(self, prefix: str) -> int:
        keys = self.list(prefix)
        for key in keys:
            self.delete(key)
        return len(keys)

    def put_json(self, key: str, value: Any) -> ObjectInfo:
        import json

        return self.put_bytes(key, json.dumps(value, indent=2, sort_keys=True, default=str).encode())

    def get_json(self, key: str) -> Any:
        import json

        return json.loads(self.get_bytes(key))

    def put_dir(self, prefix: str, directory: Path) -> list[ObjectInfo]:
        """Upload every file below `directory` under `prefix/` (sorted, deterministic)."""
        infos = []
        for path in sorted(p for p in directory.rglob("*") if p.is_file()):
            rel = path.relative_to(directory).as_posix()
            infos.append(self.put_file(f"{prefix.rstrip('/')}/{rel}", path))
        return infos

    def get_dir(self, prefix: str, directory: Path) -> list[ObjectInfo]:
        prefix = prefix.rstrip("/") + "/"
        infos = []
        for key in self.list(prefix):
            infos.append(self.get_file(key, directory / key[len(prefix) :]))
        return infos


class LocalStorage(Storage):
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.url = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    @contextlib.contextmanager
    def _atomic(self, key: str) -> Iterator[BinaryIO]:
        final = self._path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".partial")
        try:
            with os.fdopen(fd, "wb") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            digest = sha256_file(Path(tmp))
            with contextlib.suppress(OSError):
                os.setxattr(tmp, _XATTR, digest.encode())
            _give_umask_mode(tmp)
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def put_file(self, key: str, path: Path) -> ObjectInfo:
        with self._atomic(key) as out, open(path, "rb") as src:
            shutil.copyfileobj(src, out, CHUNK)
        return self._info(key)

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        with self._atomic(key) as out:
            out.write(data)
        return self._info(key)

    def _info(self, key: str) -> ObjectInfo:
        path = self._path(key)
        try:
            recorded = os.getxattr(path, _XATTR).decode()
        except OSError:
            recorded = None
        return ObjectInfo(key=_check_key(key), size=path.stat().st_size, sha256=recorded)

    def stat(self, key: str) -> ObjectInfo | None:
        path = self._path(key)
        if not path.is_file():
            return None
        return self._info(key)

    def _verify(self, key: str, path: Path, expected: str | None) -> ObjectInfo:
        info = self._info(key)
        actual = sha256_file(path)
        for want in (expected, info.sha256):
            if want is not None and want != actual:
                raise IntegrityError(f"{self.uri(key)}: sha256 {actual[:12]}… does not match {want[:12]}…")
        return ObjectInfo(key=info.key, size=info.size, sha256=actual)

    def get_file(self, key: str, dest: Path, *, expected_sha256: str | None = None) -> ObjectInfo:
        src = self._path(key)
        if not src.is_file():
            raise ObjectNotFound(f"{self.uri(key)} does not exist")
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".partial")
        os.close(fd)
        try:
            shutil.copyfile(src, tmp)
            info = self._verify(key, Path(tmp), expected_sha256)
            _give_umask_mode(tmp)
            os.replace(tmp, dest)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return info

    def get_bytes(self, key: str, *, expected_sha256: str | None = None) -> bytes:
        path = self._path(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ObjectNotFound(f"{self.uri(key)} does not exist") from None
        actual = sha256_bytes(data)
        for want in (expected_sha256, self._info(key).sha256):
            if want is not None and want != actual:
                raise IntegrityError(f"{self.uri(key)}: sha256 does not match {want[:12]}…")
        return data

    def list(self, prefix: str = "") -> list[str]:
        base = self.root
        keys = []
        for path in base.rglob("*"):
            if path.is_file() and not path.name.endswith(".partial"):
                key = path.relative_to(base).as_posix()
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def delete(self, key: str) -> None:
        path = self._path(key)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        # Object stores have no directories: leave no empty one behind (pruned checkpoints).
        parent = path.parent
        while parent != self.root and self.root in parent.parents:
            try:
                parent.rmdir()
            except OSError:  # not empty, or already gone
                break
            parent = parent.parent

    def uri(self, key: str = "") -> str:
        return str(self.root / key) if key else str(self.root)


class S3Storage(Storage):
    """Any S3-compatible store (AWS S3, R2, Supabase Storage, SeaweedFS)."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        client: Any | None = None,
        multipart_threshold: int = MULTIPART_THRESHOLD,
    ) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self.url = f"s3://{bucket}/{self.prefix}".rstrip("/")
        # A session of its own: boto3's default session caches the first credentials it resolves,
        # so a process that switches AWS_* settings (tests, a worker serving several jobs) would
        # keep using stale keys.
        self._client = client or boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint_url,
            config=Config(
                retries={"mode": "standard", "max_attempts": 6},
                connect_timeout=10,
                read_timeout=120,
                signature_version="s3v4",
                s3={"addressing_style": "path"},
            ),
        )
        # S3 parts must be >= 5 MiB (except the last); tests lower the threshold to exercise multipart.
        self._transfer = TransferConfig(
            multipart_threshold=multipart_threshold,
            multipart_chunksize=max(multipart_threshold, 5 * 1024 * 1024),
        )

    def _key(self, key: str) -> str:
        key = _check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _error(self, key: str, exc: Exception) -> StorageError:
        from botocore.exceptions import ClientError

        if isinstance(exc, ClientError):
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("404", "NoSuchKey", "NotFound"):
                return ObjectNotFound(f"{self.uri(key)} does not exist")
            if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                return StorageError(
                    f"{self.uri(key)}: access denied ({code}); check AWS_ACCESS_KEY_ID / "
                    "AWS_SECRET_ACCESS_KEY and the bucket policy"
                )
            if code == "NoSuchBucket":
                return StorageError(f"bucket {self.bucket!r} does not exist ({self.url})")
        return StorageError(f"{self.uri(key)}: {type(exc).__name__}: {exc}")

    def put_file(self, key: str, path: Path) -> ObjectInfo:
        digest = sha256_file(path)
        try:
            self._client.upload_file(
                str(path),
                self.bucket,
                self._key(key),
                ExtraArgs={"Metadata": {"sha256": digest}},
                Config=self._transfer,
            )
        except Exception as exc:  # boto raises many types; all become StorageError
            raise self._error(key, exc) from exc
        return ObjectInfo(key=_check_key(key), size=path.stat().st_size, sha256=digest)

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        digest = sha256_bytes(data)
        try:
            self._client.put_object(
                Bucket=self.bucket, Key=self._key(key), Body=data, Metadata={"sha256": digest}
            )
        except Exception as exc:
            raise self._error(key, exc) from exc
        return ObjectInfo(key=_check_key(key), size=len(data), sha256=digest)

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            head = self._client.head_object(Bucket=self.bucket, Key=self._key(key))
        except Exception as exc:
            err = self._error(key, exc)
            if isinstance(err, ObjectNotFound):
                return None
            raise err from exc
        return ObjectInfo(
            key=_check_key(key),
            size=int(head["ContentLength"]),
            sha256=head.get("Metadata", {}).get("sha256"),
        )

    def get_file(self, key: str, dest: Path, *, expected_sha256: str | None = None) -> ObjectInfo:
        info = self.stat(key)
        if info is None:
            raise ObjectNotFound(f"{self.uri(key)} does not exist")
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".partial")
        os.close(fd)
        try:
            try:
                self._client.download_file(self.bucket, self._key(key), tmp, Config=self._transfer)
            except Exception as exc:
                raise self._error(key, exc) from exc
            actual = sha256_file(Path(tmp))
            for want in (expected_sha256, info.sha256):
                if want is not None and want != actual:
                    raise IntegrityError(f"{self.uri(key)}: sha256 does not match {want[:12]}…")
            _give_umask_mode(tmp)
            os.replace(tmp, dest)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return ObjectInfo(key=info.key, size=info.size, sha256=actual)

    def get_bytes(self, key: str, *, expected_sha256: str | None = None) -> bytes:
        try:
            obj = self._client.get_object(Bucket=self.bucket, Key=self._key(key))
            data = obj["Body"].read()
        except Exception as exc:
            raise self._error(key, exc) from exc
        actual = sha256_bytes(data)
        for want in (expected_sha256, obj.get("Metadata", {}).get("sha256")):
            if want is not None and want != actual:
                raise IntegrityError(f"{self.uri(key)}: sha256 does not match {want[:12]}…")
        return data

    def list(self, prefix: str = "") -> list[str]:
        full = f"{self.prefix}/{prefix}" if self.prefix else prefix
        strip = len(self.prefix) + 1 if self.prefix else 0
        keys: list[str] = []
        try:
            for page in self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=full
            ):
                keys.extend(obj["Key"][strip:] for obj in page.get("Contents", []))
        except Exception as exc:
            raise self._error(prefix or "/", exc) from exc
        return sorted(keys)

    def delete(self, key: str) -> None:
        try:
            self._client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except Exception as exc:
            err = self._error(key, exc)
            if not isinstance(err, ObjectNotFound):
                raise err from exc

    def uri(self, key: str = "") -> str:
        return f"{self.url}/{_check_key(key)}" if key else self.url


def open_storage(url: str, *, endpoint_url: str | None = None) -> Storage:
    """`s3://bucket/prefix` or a directory (optionally `file://`)."""
    if url.startswith("s3://"):
        rest = url[len("s3://") :]
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise StorageError(f"{url!r}: an s3:// URL needs a bucket name")
        return S3Storage(bucket, prefix, endpoint_url=resolve_s3_endpoint(endpoint_url))
    if url.startswith("file://"):
        url = url[len("file://") :]
    if "://" in url:
        raise StorageError(f"{url!r}: storage must be a directory or s3://bucket/prefix")
    return LocalStorage(url)


def split_uri(uri: str) -> tuple[str, str]:
    """Split an object URI into (parent URL, last segment): `.../jobs/abc/spec.json` ->
    (`.../jobs/abc`, `spec.json`). The trainer opens its job's storage this way."""
    parent, _, name = uri.rstrip("/").rpartition("/")
    if not parent or not name:
        raise StorageError(f"{uri!r} is not an object URI")
    return parent, name
