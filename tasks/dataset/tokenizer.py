"""The base model's tokenizer, loaded without torch (issue 16: a light orchestrator).

`AutoTokenizer` resolves the model's config first, which imports torch (about 1.2 s of a
7.6 s `brightrun prepare`). The dataset stage only needs the Rust tokenizer and the chat
template, which `PreTrainedTokenizerFast` reads from `tokenizer.json` and
`tokenizer_config.json` / `chat_template.jinja` directly.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from brightrun.errors import InputError

_TOKENIZER_FILES = ("tokenizer", "special_tokens", "chat_template")


def load_tokenizer(tokenizer: str | Path | Any, revision: str | None = None) -> Any:
    """A fast tokenizer from a local model directory or a hub id at `revision` (the trainer
    loads the same one), or a tokenizer object passed through."""
    if not isinstance(tokenizer, str | Path):
        return tokenizer
    from transformers import PreTrainedTokenizerFast

    try:
        return PreTrainedTokenizerFast.from_pretrained(str(tokenizer), revision=revision)
    except (OSError, ValueError) as exc:
        raise InputError(
            f"cannot load the tokenizer {str(tokenizer)!r}: {exc}. Pass a local model directory "
            "(with tokenizer.json) or a hub id reachable from here."
        ) from exc


def tokenizer_name(tokenizer: str | Path | Any) -> str:
    if isinstance(tokenizer, str | Path):
        return str(tokenizer)
    return str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)


def tokenizer_fingerprint(tokenizer: str | Path | Any, revision: str | None = None) -> str:
    """Identity of a tokenizer for the prepared-set cache: its files' bytes for a local
    directory (a rebuilt model with a new vocabulary must not reuse old token ids), else
    its name and revision."""
    if isinstance(tokenizer, str | Path) and Path(tokenizer).is_dir():
        digest = hashlib.sha256()
        for name in sorted(os.listdir(tokenizer)):
            if name.startswith(_TOKENIZER_FILES):
                digest.update(name.encode())
                digest.update((Path(tokenizer) / name).read_bytes())
        return digest.hexdigest()
    return f"{tokenizer_name(tokenizer)}@{revision or 'default'}"
