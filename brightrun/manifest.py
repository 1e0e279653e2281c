"""`MANIFEST.json`: how a directory in storage (an adapter, a merged model, a checkpoint) is
built, read and checked, in one place.

The manifest lists the sha256 and size of every file and is written last: it is the commit
point, so a reader never trusts a directory without one. The trainer builds and uploads it
(checkpoints, the final adapter), the orchestrator verifies it before registering
(`tasks/adapters/publish.py`), and every download checks each file against it
(`tasks/adapters/fetch.py`, the trainer's resume). All of them call the functions here, so a
file is judged the same way everywhere.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from brightrun import layout
from brightrun.errors import BrightrunError
from brightrun.protocol import Manifest, ManifestEntry
from brightrun.storage import LocalStorage, ObjectNotFound, Storage, StorageError, sha256_file

__all__ = [
    "Manifest",
    "ManifestEntry",
    "ManifestMissing",
    "ManifestUnreadable",
    "build_manifest",
    "download_files",
    "encode",
    "local_problems",
    "read_manifest",
    "stored_problems",
]


class ManifestMissing(BrightrunError):
    """No `MANIFEST.json` under the prefix: the upload never finished (or was deleted)."""


class ManifestUnreadable(BrightrunError):
    """A `MANIFEST.json` that does not parse."""


def build_manifest(directory: Path, step: int | None = None) -> Manifest:
    """sha256 and size of every file under `directory` (any manifest there excluded)."""
    return Manifest(
        files={
            p.relative_to(directory).as_posix(): ManifestEntry(sha256=sha256_file(p), size=p.stat().st_size)
            for p in sorted(Path(directory).rglob("*"))
            if p.is_file() and p.name != layout.MANIFEST
        },
        step=step,
    )


def encode(manifest: Manifest) -> bytes:
    """The bytes written as `MANIFEST.json` (their sha256 identifies the whole directory)."""
    return manifest.model_dump_json(indent=2).encode()


def read_manifest(storage: Storage, prefix: str) -> tuple[Manifest, bytes]:
    """The manifest under `prefix` and its raw bytes."""
    key = f"{prefix}/{layout.MANIFEST}"
    try:
        data = storage.get_bytes(key)
    except ObjectNotFound:
        raise ManifestMissing(f"{storage.uri(key)} is missing") from None
    try:
        return Manifest.model_validate_json(data), data
    except ValueError as exc:
        raise ManifestUnreadable(f"{storage.uri(key)} is not a valid manifest: {exc}") from exc


def local_problems(directory: Path, manifest: Manifest) -> list[str]:
    """Problems of a local copy against the manifest (empty: it verifies)."""
    problems = []
    for rel, entry in manifest.files.items():
        path = Path(directory) / rel
        if not path.is_file():
            problems.append(f"{rel}: missing")
        elif path.stat().st_size != entry.size:
            problems.append(f"{rel}: {path.stat().st_size} bytes, manifest says {entry.size}")
        elif sha256_file(path) != entry.sha256:
            problems.append(f"{rel}: sha256 differs from the manifest")
    return problems


def stored_problems(storage: Storage, prefix: str, manifest: Manifest, *, read_back: bool) -> list[str]:
    """Problems of the stored objects against the manifest, each naming its object.

    Size and the digest the store recorded are compared without a download; a local store's
    files are hashed (cheap, and a recorded digest could be stale). Where the store recorded
    no digest, `read_back` downloads the object and hashes it (registration does, so nothing
    unverified is registered); without it such an object is judged by its size alone.
    """
    problems = []
    for rel, entry in manifest.files.items():
        key = f"{prefix}/{rel}"
        info = storage.stat(key)
        if info is None:
            problems.append(f"{storage.uri(key)}: missing")
            continue
        if info.size != entry.size:
            problems.append(f"{storage.uri(key)}: {info.size} bytes, manifest says {entry.size}")
            continue
        digest = sha256_file(storage.root / key) if isinstance(storage, LocalStorage) else info.sha256
        if digest is None and read_back:
            with tempfile.TemporaryDirectory(prefix="brightrun-verify-") as tmp:
                try:
                    storage.get_file(key, Path(tmp) / "object", expected_sha256=entry.sha256)
                except StorageError as exc:
                    problems.append(f"{storage.uri(key)}: {exc}")
            continue
        if digest is not None and digest != entry.sha256:
            problems.append(f"{storage.uri(key)}: sha256 {digest[:12]}… differs from the manifest's")
    return problems


def download_files(storage: Storage, prefix: str, manifest: Manifest, dest: Path) -> list[tuple[str, str]]:
    """Every file of the manifest into `dest`, each checked on the way (sha256, then size).
    Returns (key, reason) per file that failed; empty when all verified."""
    problems = []
    for rel, entry in manifest.files.items():
        key = f"{prefix}/{rel}"
        target = Path(dest) / rel
        try:
            info = storage.get_file(key, target, expected_sha256=entry.sha256)
        except ObjectNotFound:
            problems.append((key, "missing"))
            continue
        except StorageError as exc:
            problems.append((key, str(exc)))
            continue
        if info.size != entry.size or target.stat().st_size != entry.size:
            problems.append((key, f"size {info.size} != manifest {entry.size}"))
    return problems
