"""Dedup: exact and near-duplicates within the export, and against earlier training data.

Pure logic first (keys, `Deduper`, `add_earlier_file`: the split rule), then the I/O that
builds the corpus of earlier training files (`load_earlier`): every training file the
registry holds, opened where the registry recorded it through the pipeline's resources,
with the train/validation split it recorded. The split is never derived here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import unicodedata
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from brightrun.errors import InputError
from brightrun.registry import feedback_rows
from brightrun.registry import repository as repo
from brightrun.registry.models import Split, TrainingFileSource
from brightrun.storage import Storage, StorageError
from tasks.feedback.errors import ExportError

if TYPE_CHECKING:
    from brightrun.resources import Resources

log = logging.getLogger("brightrun.export")


class Dup(StrEnum):
    exact_in_export = "exact_in_export"
    near_in_export = "near_in_export"
    earlier_training = "earlier_training"
    validation_split = "validation_split"


# ---------------------------------------------------------------- keys

_NORMALIZE_DROP = re.compile(r"[^\w]+", re.UNICODE)


def normalize_text(text: str) -> str:
    """Near-duplicate form: NFKC, case-folded, punctuation and whitespace runs collapsed."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return _NORMALIZE_DROP.sub(" ", text).strip()


def digest(*parts: str) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        h.update(part.encode("utf-8", "surrogatepass"))
        h.update(b"\x1e")
    return h.digest()


def exact_key(user: str, target: str) -> bytes:
    return digest("exact", user, target)


def near_key(user: str, target: str) -> bytes:
    return digest("near", normalize_text(user), normalize_text(target))


def prompt_key(user: str) -> bytes:
    return digest("prompt", normalize_text(user))


# (exact, near, prompt) keys of one earlier training pair; exact/near are None for a
# pair without a target (context only, never trained, but its prompt may be held out).
PairKeys = tuple[bytes | None, bytes | None, bytes]
# A training file's keys by conversation: [(conversation id, [keys of each pair])].
FileKeys = list[tuple[str, list[PairKeys]]]


def pair_keys(user: str, target: str | None) -> PairKeys:
    if target is None:
        return None, None, prompt_key(user)
    return exact_key(user, target), near_key(user, target), prompt_key(user)


class Keyed(Protocol):
    """What the deduper needs of an example (`select.Example` has it)."""

    @property
    def exact(self) -> bytes: ...
    @property
    def near(self) -> bytes: ...
    @property
    def prompt(self) -> bytes: ...


class Deduper:
    """Drops exact and near-duplicate examples: within the export, and against the
    examples of earlier training files (`seen`) and of validation splits (`validation`,
    where a shared prompt alone is a leak)."""

    def __init__(self, seen: set[bytes] | None = None, validation: set[bytes] | None = None) -> None:
        self.seen: set[bytes] = seen if seen is not None else set()
        self.validation: set[bytes] = validation if validation is not None else set()
        self._exported: set[bytes] = set()

    def fresh(self) -> Deduper:
        """The same earlier data, nothing exported yet (a retried read starts over)."""
        return Deduper(self.seen, self.validation)

    def add_earlier(self, user: str, target: str | None, *, validation: bool) -> None:
        self.add_keys(pair_keys(user, target), validation=validation)

    def add_keys(self, keys: PairKeys, *, validation: bool) -> None:
        exact, near, prompt = keys
        if exact is not None and near is not None:
            self.seen.add(exact)
            self.seen.add(near)
            if validation:
                self.validation.add(exact)
                self.validation.add(near)
        if validation:
            self.validation.add(prompt)

    def check(self, example: Keyed) -> Dup | None:
        exact, near = example.exact, example.near
        if exact in self.validation or near in self.validation or example.prompt in self.validation:
            return Dup.validation_split
        if exact in self.seen or near in self.seen:
            return Dup.earlier_training
        if exact in self._exported:
            return Dup.exact_in_export
        if near in self._exported:
            return Dup.near_in_export
        self._exported.add(exact)
        self._exported.add(near)
        return None


# ---------------------------------------------------------------- the split rule


def add_earlier_file(deduper: Deduper, conversations: FileKeys, splits: Mapping[str, str] | None) -> int:
    """Add one earlier training file to the corpus with the split the registry recorded for
    it (conversation id -> train | validation); returns how many pairs were validation.

    `splits` None means the file was registered without its split: nobody can tell which of
    its conversations a job evaluated on, so all of them are held out (their prompts never
    become training data). A conversation missing from a recorded split was never trained
    nor evaluated on (the dataset stage dropped it): dedup only, like training data."""
    validation_pairs = 0
    for cid, pairs in conversations:
        held_out = splits is None or splits.get(cid) == Split.validation.value
        for keys in pairs:
            deduper.add_keys(keys, validation=held_out)
        validation_pairs += len(pairs) if held_out else 0
    return validation_pairs


# ---------------------------------------------------------------- earlier training files (I/O)


class EarlierFileUnreadable(ExportError):
    """An earlier training file the registry lists cannot be read: deduping without it
    could put its examples (or its validation prompts) into training again."""


@dataclass
class EarlierCorpus:
    """What the dedup corpus was made of (for the report)."""

    files: int = 0
    pairs: int = 0
    validation_pairs: int = 0
    unsplit_files: int = 0  # registered without their split: held out whole
    cached_files: int = 0
    app_files_skipped: int = 0  # the app's own rows no job of the pipeline trained on


def _redacted(uri: str) -> str:
    # A signed URL's query is its signature: never in a message or a log.
    return uri.split("?", 1)[0] + ("?…" if "?" in uri else "")


def locate(resources: Resources, tf: repo.TrainingFileView) -> tuple[Storage, str]:
    """The storage and key of an earlier training file, where the registry recorded it.

    The pipeline records a full URI or path (the job's dataset is `datasets/<sha256>.json`
    in the pipeline's storage; an export's file is under `training_files/`): a URI under the
    pipeline's storage is a key of `resources.storage`, any other s3:// URI opens its bucket
    on the configured endpoint, a path opens its directory. A relative path is a key of the
    pipeline's storage on a pipeline row, and a path in the app's `training-files` bucket on
    the app's own rows (no `source`), as `repo.training_file_location` says."""
    path = (tf.json_file_path or "").strip()
    if not path:
        raise EarlierFileUnreadable(f"training file {tf.id} has no json_file_path")
    storage = resources.storage
    if tf.source is None:
        try:
            repo.check_app_path(tf, allow_local_paths=resources.settings.fetch_allow_local_paths)
        except InputError as error:
            raise EarlierFileUnreadable(str(error)) from error
        path = repo.training_file_location(path)
    root = storage.uri().rstrip("/")
    if path.startswith(root + "/"):
        return storage, path[len(root) + 1 :]
    if path.startswith("s3://"):
        bucket, _, key = path[len("s3://") :].partition("/")
        if not bucket or not key:
            raise EarlierFileUnreadable(f"{path!r} names no object")
        return resources.open_storage(f"s3://{bucket}"), key
    if path.startswith("file://"):
        path = path[len("file://") :]
    if "://" in path:
        raise EarlierFileUnreadable(
            f"{_redacted(path)} is a URL, not a place in the pipeline's storage; register the file "
            "as its copy in storage (datasets/<sha256>.json)"
        )
    if path.startswith("/"):
        local = Path(path)
        return resources.open_storage(str(local.parent)), local.name
    return storage, path


def scan_file_keys(path: Path) -> FileKeys:
    """Dedup keys of every pair of a training file, by conversation (streamed: a large
    earlier file never sits in memory, only 3 digests per pair)."""
    from tasks.dataset.schema import DatasetScanner

    return [
        (
            conv.conversation_metadata.conversation_id,
            [pair_keys(p.current_user_input, p.target_response) for p in conv.training_pairs],
        )
        for conv in DatasetScanner(path).conversations()
    ]


_SHA256 = re.compile(r"[0-9a-f]{64}")
_CACHE_FORMAT = "brightrun-dedup-keys-v1"
_DIGEST_HEX = re.compile(r"[0-9a-f]{32}")


def cache_name(sha256: str | None) -> str | None:
    """The cache file's name for a training file, or None (no cache) when the registered
    sha256 is not 64 hex characters: the value comes from the database, and a name like
    '../../x' must never choose where this machine reads or writes."""
    if sha256 is None or not _SHA256.fullmatch(sha256):
        return None
    return f"{sha256}.json"


def dump_file_keys(keys: FileKeys) -> str:
    """The cache's text: JSON of hex digests (data only: reading it runs nothing)."""
    return json.dumps(
        {
            "format": _CACHE_FORMAT,
            "conversations": [
                [cid, [[k.hex() if k is not None else None for k in pair] for pair in pairs]]
                for cid, pairs in keys
            ],
        },
        separators=(",", ":"),
    )


def _digest(value: object) -> bytes:
    if not isinstance(value, str) or not _DIGEST_HEX.fullmatch(value):
        raise ValueError(f"not a digest: {value!r:.40}")
    return bytes.fromhex(value)


def _optional_digest(value: object) -> bytes | None:
    return None if value is None else _digest(value)


def load_file_keys(text: str) -> FileKeys:
    """Parse `dump_file_keys`' text; ValueError on anything else (the caller rescans)."""
    data = json.loads(text)
    if not isinstance(data, dict) or data.get("format") != _CACHE_FORMAT:
        raise ValueError("not a dedup key cache")
    keys: FileKeys = []
    for entry in data.get("conversations") or []:
        if not isinstance(entry, list) or len(entry) != 2 or not isinstance(entry[0], str):
            raise ValueError("malformed conversation entry")
        cid, raw_pairs = entry
        if not isinstance(raw_pairs, list):
            raise ValueError("malformed pair list")
        pairs: list[PairKeys] = []
        for raw in raw_pairs:
            if not isinstance(raw, list) or len(raw) != 3:
                raise ValueError("malformed pair keys")
            pairs.append((_optional_digest(raw[0]), _optional_digest(raw[1]), _digest(raw[2])))
        keys.append((cid, pairs))
    return keys


def _file_keys(
    resources: Resources,
    tf: repo.TrainingFileView,
    workdir: Path,
    cache_dir: Path | None,
    *,
    write_cache: bool,
) -> tuple[FileKeys, bool]:
    """A training file's keys, from the local cache when this machine has scanned it before
    (files are immutable: the cache is keyed by the registered sha256; a row without a
    valid one is read every time). Returns (keys, from the cache)."""
    name = cache_name(tf.sha256) if cache_dir is not None else None
    cached = cache_dir / name if cache_dir is not None and name is not None else None
    if cached is not None and cached.is_file():
        try:
            return load_file_keys(cached.read_text(encoding="utf-8")), True
        except (OSError, ValueError, UnicodeDecodeError):
            cached.unlink(missing_ok=True)  # stale or damaged: rescan and rewrite it
    local = workdir / f"earlier-{tf.id}.json"
    try:
        storage, key = locate(resources, tf)
        storage.get_file(key, local, expected_sha256=tf.sha256)
    except (StorageError, EarlierFileUnreadable, OSError) as error:
        raise EarlierFileUnreadable(
            f"cannot read earlier training file {tf.name or tf.id} ({_redacted(tf.json_file_path or '')}) "
            f"to dedup against it: {error}; restore the object or remove its training_files row"
        ) from error
    try:
        keys = scan_file_keys(local)
    finally:
        local.unlink(missing_ok=True)
    if cached is not None and write_cache:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".{uuid.uuid4().hex}.partial")
        tmp.write_text(dump_file_keys(keys), encoding="utf-8")
        tmp.replace(cached)
    return keys, False


def _window(tf: repo.TrainingFileView) -> tuple[datetime, datetime] | None:
    if tf.window_start is None or tf.window_end is None:
        return None
    return tf.window_start.astimezone(UTC), tf.window_end.astimezone(UTC)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def load_earlier(
    resources: Resources,
    workdir: Path,
    *,
    exclude_window: tuple[datetime, datetime] | None = None,
    created_before: datetime | None = None,
    cache_dir: Path | None = None,
    write_cache: bool = True,
) -> tuple[Deduper, EarlierCorpus]:
    """Dedup keys of every earlier training file, with the split each one recorded.

    A rerun of a window excludes its own earlier output and anything registered after it,
    so it sees exactly what the first run saw and writes the same bytes. The app's own rows
    (no `source`) that no job of the pipeline trained on (no recorded split) are not read:
    the pipeline never trained or evaluated on them."""
    engine = resources.registry
    files = [
        tf
        for tf in sorted(
            repo.list_training_files(engine, limit=None), key=lambda t: (t.created_at or _EPOCH, t.id)
        )
        if (created_before is None or (tf.created_at or _EPOCH) < created_before)
        and not (
            exclude_window is not None
            and tf.source == TrainingFileSource.feedback_export
            and _window(tf) == exclude_window
        )
    ]
    splits = feedback_rows.recorded_splits(engine, [tf.id for tf in files])
    deduper, corpus = Deduper(), EarlierCorpus()
    for tf in files:
        recorded = splits.get(str(tf.id))
        if tf.source is None and recorded is None:
            corpus.app_files_skipped += 1
            continue
        keys, was_cached = _file_keys(resources, tf, workdir, cache_dir, write_cache=write_cache)
        if recorded is None:
            corpus.unsplit_files += 1
            log.warning(
                "training file %s (%s) was registered without its train/validation split: all its "
                "conversations are held out of this export",
                tf.name,
                tf.id,
            )
        corpus.validation_pairs += add_earlier_file(deduper, keys, recorded)
        corpus.pairs += sum(len(p) for _, p in keys)
        corpus.files += 1
        corpus.cached_files += int(was_cached)
    return deduper, corpus
