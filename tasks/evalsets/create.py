"""Make an evaluation set: choose held-out conversations, store them content-addressed,
register them; and read a registered set back, verified.

    choose (pure: `choose_conversations`) → canonical content (pure: `canonical_content`)
    → refuse a duplicate → store `evalsets/<sha256>.json` → register set + fingerprints
    → optionally write the curated file without them (`rest_out`)

Bad input raises `InputError` before anything is stored or registered.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ijson

from brightrun.errors import BrightrunError, InputError
from brightrun.registry import evalsets
from brightrun.registry.evalsets import ConversationFingerprint, EvaluationSetRow
from brightrun.resources import Resources
from brightrun.settings import DatasetLimits
from brightrun.storage import StorageError, sha256_bytes
from tasks.dataset.schema import FORMAT_SPEC, Conversation, DatasetScanner
from tasks.evalsets.fingerprint import conversation_fingerprint

PREFIX = "evalsets"


def storage_key(sha256: str) -> str:
    return f"{PREFIX}/{sha256}.json"


@dataclass(frozen=True)
class Selection:
    """Which conversations of the curated file: `take` at random with `seed`, or by id."""

    take: int | None = None
    seed: int = 0
    conversation_ids: tuple[str, ...] = ()

    def describe(self) -> str:
        if self.conversation_ids:
            return f"{len(self.conversation_ids)} conversation(s) by id"
        return f"{self.take} at random (seed {self.seed})"


@dataclass
class SourceFile:
    path: Path
    conversations: list[Conversation] = field(default_factory=list)
    consultant_profile: Any = None


def read_source(path: Path, limits: DatasetLimits | None = None) -> SourceFile:
    """Every conversation of a valid brightrun-lora-v4 file; `InputError` listing each problem."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    scanner = DatasetScanner(path, limits=limits)
    conversations = list(scanner.conversations())
    if not scanner.result.ok:
        raise InputError(
            f"{path}: {scanner.result.problem_count} problem(s) in the file", scanner.result.messages()
        )
    with open(path, "rb") as raw:  # the scan checked the file's bounds: this parse is safe
        profile = next(ijson.items(raw, "consultant_profile", use_float=True), None)
    return SourceFile(path, conversations, profile)


def choose_conversations(conversations: Sequence[Conversation], selection: Selection) -> list[Conversation]:
    """The held-out conversations, in the file's order. Pure and deterministic."""
    by_id = {c.conversation_id: c for c in conversations}
    if selection.conversation_ids:
        missing = [cid for cid in selection.conversation_ids if cid not in by_id]
        if missing:
            problems = [f"{cid}: not found" for cid in missing]
            raise InputError(f"{len(missing)} --conversation id(s) are not in the file", problems)
        wanted = set(selection.conversation_ids)
    else:
        take = selection.take or 0
        if take < 1:
            raise InputError("--take must be at least 1 (or name conversations with --conversation ID)")
        if take > len(by_id):
            raise InputError(f"--take {take}: the file holds only {len(by_id)} conversations")
        wanted = set(random.Random(selection.seed).sample(sorted(by_id), take))
    return [c for c in conversations if c.conversation_id in wanted]


def canonical_content(conversations: Sequence[Conversation], consultant_profile: Any) -> bytes:
    """The set as a brightrun-lora-v4 file, in one canonical form: conversations sorted by
    id, keys sorted, no insignificant whitespace. The same conversations give the same bytes
    (and sha256) whichever files, order or selection they came from."""
    ordered = sorted(conversations, key=lambda c: c.conversation_id)
    content = {
        "training_file_metadata": {
            "format_spec": FORMAT_SPEC,
            "file_name": "evaluation set",
            "total_conversations": len(ordered),
            "total_training_pairs": sum(len(c.training_pairs) for c in ordered),
        },
        "consultant_profile": consultant_profile,
        "conversations": [c.model_dump(mode="json") for c in ordered],
    }
    return json.dumps(content, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()


def create_evaluation_set(
    resources: Resources,
    *,
    name: str,
    curated: Path | None,
    selection: Selection,
    logs: Sequence[Path] = (),
    created_by: str | None = None,
    rest_out: Path | None = None,
) -> EvaluationSetRow:
    """Register the next version of `name` from `curated`'s chosen conversations plus every
    conversation of the reviewed-log files `logs`."""
    evalsets.check_name(name)
    if curated is None and not logs:
        raise InputError("give --from FILE (the curated training file) and/or --logs FILE")
    if rest_out is not None and curated is None:
        raise InputError("--rest needs --from FILE: it is that file without the held-out conversations")
    limits = resources.settings.dataset_limits
    chosen: list[Conversation] = []
    profile: Any = None
    sources: list[str] = []
    if curated is not None:
        source = read_source(curated, limits)
        chosen = choose_conversations(source.conversations, selection)
        profile = source.consultant_profile
        sources.append(f"{curated.name}: {selection.describe()}")
    for log_file in logs:
        log_source = read_source(log_file, limits)
        chosen += log_source.conversations
        profile = profile if profile is not None else log_source.consultant_profile
        sources.append(f"{log_file.name}: all {len(log_source.conversations)} reviewed log conversation(s)")
    if not chosen:
        raise InputError(f"evaluation set {name!r} would hold no conversations; nothing was registered")
    ids = [c.conversation_id for c in chosen]
    repeated = sorted({cid for cid in ids if ids.count(cid) > 1})
    if repeated:
        raise InputError("a conversation id appears in more than one source", repeated)
    content = canonical_content(chosen, profile)
    sha = sha256_bytes(content)
    engine = resources.registry
    existing = evalsets.by_sha256(engine, sha)
    if existing is not None:
        raise InputError(
            f"these conversations are already registered as evaluation set {existing.label} "
            f"(sha256 {sha[:12]}); nothing was registered"
        )
    storage = resources.storage
    key = storage_key(sha)
    if storage.stat(key) is None:
        storage.put_bytes(key, content)
    row = evalsets.register(
        engine,
        name=name,
        sha256=sha,
        storage_key=key,
        storage_url=resources.storage_url,
        conversations=[
            ConversationFingerprint(c.conversation_id, conversation_fingerprint(c)) for c in chosen
        ],
        source_description="; ".join(sources),
        created_by=created_by,
    )
    if rest_out is not None and curated is not None:
        write_without(curated, {c.conversation_id for c in chosen}, rest_out)
    return row


def write_without(path: Path, conversation_ids: set[str], out: Path) -> int:
    """`path` minus those conversations, written atomically to `out`; returns how many remain."""
    data = json.loads(Path(path).read_bytes())
    conversations = data["conversations"]
    kept = [c for c in conversations if c["conversation_metadata"]["conversation_id"] not in conversation_ids]
    data["conversations"] = kept
    meta = data.get("training_file_metadata") or {}
    if "total_conversations" in meta:
        meta["total_conversations"] = len(kept)
    if "total_training_pairs" in meta:
        meta["total_training_pairs"] = sum(len(c["training_pairs"]) for c in kept)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, ensure_ascii=False, indent=2)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return len(kept)


def fetch_evaluation_set(resources: Resources, row: EvaluationSetRow, dest: Path) -> Path:
    """The registered set's content at `dest`, verified against its registered sha256."""
    storage = resources.open_storage(row.storage_url)
    try:
        storage.get_file(row.storage_key, dest, expected_sha256=row.sha256)
    except StorageError as exc:
        raise BrightrunError(
            f"evaluation set {row.label}: cannot read {storage.uri(row.storage_key)} "
            f"(sha256 {row.sha256[:12]}): {exc}"
        ) from exc
    return dest
