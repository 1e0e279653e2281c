"""Chat models: an artifact (id, job id or `production`) loaded ready to talk, for
`generate`, `chat` and `serve`. The torch side is `trainer.inference`, imported lazily so
the adapter room imports on a small worker without torch."""

from __future__ import annotations

from typing import TYPE_CHECKING

from brightrun.base_model import BaseModelSpec
from brightrun.registry import promotion
from brightrun.resources import Resources
from tasks.adapters.fetch import adapter_location, download_verified, fetch_adapter

if TYPE_CHECKING:
    from trainer.inference import ChatModel


def load_for_chat(resources: Resources, ref: str, *, base_model: str | None = None) -> ChatModel:
    """`generate`, `chat` and `serve`: the artifact (id, job id or `production`) ready to talk.

    `base_model` picks the production adapter of that base model, or, for an adapter, loads
    it onto another copy of its base (a local path to the same weights); a base that does
    not fit the adapter is refused.
    """
    from trainer.inference import load_chat_model, load_merged_model

    artifact = promotion.resolve_artifact(resources.registry, ref, base_model=base_model)
    if artifact.artifact_type == "merged_model":
        storage, prefix = adapter_location(resources, artifact)
        cache = resources.settings.cache_dir / "merged" / artifact.id
        if not cache.is_dir():
            download_verified(storage, prefix, cache)
        return load_merged_model(cache, artifact.id)
    local = fetch_adapter(resources, artifact)
    base = local.base_spec()
    if base_model and ref.strip() != promotion.PRODUCTION and base_model != local.base_model:
        base = BaseModelSpec(base_model, None, local.quantization)
    return load_chat_model(base, local.directory, artifact.id)
