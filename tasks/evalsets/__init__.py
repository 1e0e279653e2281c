"""Evaluation sets (issue 25): the fixed exam the promotion gate scores every adapter on.

    fingerprint.py  a conversation's fingerprint; the check that refuses a training file
                    holding an evaluation conversation (pure)
    create.py       choose held-out conversations, store them content-addressed
                    (`evalsets/<sha256>.json`), register them; read a set back, verified

The registry side is `brightrun.registry.evalsets`. Nothing here imports Prefect or torch.
"""

from __future__ import annotations

from tasks.evalsets.create import (
    Selection,
    canonical_content,
    choose_conversations,
    create_evaluation_set,
    fetch_evaluation_set,
    storage_key,
)
from tasks.evalsets.fingerprint import (
    FileConversation,
    HeldOutSet,
    conversation_fingerprint,
    evaluation_conflicts,
    fingerprint_file,
    refuse_evaluation_conversations,
)

__all__ = [
    "FileConversation",
    "HeldOutSet",
    "Selection",
    "canonical_content",
    "choose_conversations",
    "conversation_fingerprint",
    "create_evaluation_set",
    "evaluation_conflicts",
    "fetch_evaluation_set",
    "fingerprint_file",
    "refuse_evaluation_conversations",
    "storage_key",
]
