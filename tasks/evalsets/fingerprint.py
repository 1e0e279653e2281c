"""A conversation's fingerprint, and the check that keeps the exam out of training. Pure.

Fingerprint: sha256 over the conversation's user and assistant turns in order (each pair's
`current_user_input`, then its `target_response` when it has one), each normalised as the
feedback export's near-duplicate key is (`tasks.feedback.dedup.normalize_text`: NFKC,
case-folded, runs of punctuation and whitespace collapsed to one space). Ids, system
prompts, metadata, scaffolding and emotional context are left out, so a copy of a
conversation with new ids, other whitespace or a reworded system prompt is still caught.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from brightrun.errors import InputError
from brightrun.settings import DatasetLimits
from tasks.dataset.schema import Conversation, DatasetScanner
from tasks.feedback.dedup import normalize_text

FINGERPRINT_VERSION = "brightrun-evalset-fingerprint-1"


def conversation_fingerprint(conversation: Conversation) -> str:
    pairs = sorted(conversation.training_pairs, key=lambda p: p.turn_number)
    return turns_fingerprint((p.current_user_input, p.target_response) for p in pairs)


def turns_fingerprint(turns: Iterable[tuple[str, str | None]]) -> str:
    """The fingerprint of (user input, target or None) turns in order (the feedback export
    checks its conversations with this before it writes them)."""
    h = hashlib.sha256(FINGERPRINT_VERSION.encode())
    for user, target in turns:
        for role, text in (("user", user), ("assistant", target)):
            if text is None:
                continue
            normalised = normalize_text(text).encode("utf-8", "surrogatepass")
            h.update(b"\x1e" + role.encode() + b"\x1f" + normalised)
    return h.hexdigest()


@dataclass(frozen=True)
class FileConversation:
    """A conversation of a training file: its 1-based position, id and fingerprint."""

    position: int
    conversation_id: str
    fingerprint: str


@dataclass(frozen=True)
class HeldOutSet:
    """What the check needs to know of a registered set holding a conversation."""

    name: str
    version: int


def fingerprint_file(path: Path, limits: DatasetLimits | None = None) -> list[FileConversation] | None:
    """Every conversation of a brightrun-lora-v4 file with its fingerprint; None when the file
    has problems (the dataset stage reports those itself, every one, with their places)."""
    scanner = DatasetScanner(path, limits=limits)
    out = [
        FileConversation(position, conversation.conversation_id, conversation_fingerprint(conversation))
        for position, conversation in enumerate(scanner.conversations(), start=1)
    ]
    return out if scanner.result.ok else None


def evaluation_conflicts(
    conversations: Iterable[FileConversation], held_out: Mapping[str, HeldOutSet]
) -> list[str]:
    """One located message per training conversation that is in an evaluation set."""
    return [
        f"conversation {c.position} (id {c.conversation_id}) is in evaluation set "
        f"{held_out[c.fingerprint].name!r} (version {held_out[c.fingerprint].version}); "
        "remove it from the training file (an exam the model trained on measures nothing)"
        for c in conversations
        if c.fingerprint in held_out
    ]


def refuse_evaluation_conversations(
    source_name: str, conversations: Iterable[FileConversation], held_out: Mapping[str, HeldOutSet]
) -> None:
    problems = evaluation_conflicts(conversations, held_out)
    if problems:
        raise InputError(
            f"{source_name}: {len(problems)} conversation(s) of the training file are in a registered "
            "evaluation set; nothing was prepared, stored or recorded",
            problems,
        )
