"""Served names: the stable, short name an adapter is served and logged under (issue 24).

The app sends it as `model` in an OpenAI-style request and logs the response's `model` as
`lexybrain_responses.model_version`, so the users' thumbs join back to the adapter. vLLM
takes a LoRA module name on its command line (`--lora-modules name=path`) and in JSON, so
the name keeps to lowercase letters, digits, '-' and '_', starts with a letter or digit,
and is at most 40 characters: a slug of the job name, '-', and the first 8 hex digits of the
artifact id (what makes it unique; the registry's unique index guarantees it).

Pure: the repository and the migration's backfill both call `served_name`.
"""

from __future__ import annotations

import re
import uuid

MAX_LENGTH = 40
ID_CHARS = 8
#: What the app may send as `model`, and vLLM accepts as a LoRA name.
PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")
_NOT_SLUG = re.compile(r"[^a-z0-9]+")
FALLBACK = "adapter"


def slug(text: str, max_length: int) -> str:
    """`text` lowercased, every run of other characters one '-', trimmed to `max_length`."""
    out = _NOT_SLUG.sub("-", text.lower()).strip("-")[:max_length].rstrip("-")
    return out or FALLBACK


def served_name(job_name: str, artifact_id: str | uuid.UUID) -> str:
    """e.g. `support-bot-v3-1a2b3c4d` for job "Support bot v3" and artifact 1a2b3c4d-…"""
    suffix = uuid.UUID(str(artifact_id)).hex[:ID_CHARS]
    name = f"{slug(job_name, MAX_LENGTH - ID_CHARS - 1)}-{suffix}"
    if not PATTERN.match(name):  # by construction it matches; this names a bug in slug()
        raise ValueError(f"served name {name!r} (job {job_name!r}) is not a valid vLLM LoRA name")
    return name


def looks_like_served_name(ref: str) -> bool:
    """Whether a CLI reference could be a served name (not a UUID or `production`)."""
    return bool(PATTERN.match(ref.strip()))
