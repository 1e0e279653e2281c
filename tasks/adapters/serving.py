"""`brightrun serve`: the adapters to serve, fetched and verified, loaded on one base model.

Several adapters of one base share one process: the base is loaded once and each adapter is
added to the PEFT model under its own name, chosen per request by `model` (the served name).
Adapters of different bases (or of one base loaded differently, 4-bit vs plain) are refused:
one process holds one base. A merged model is served alone.

Built on the public functions of tasks.adapters (resolve, fetch and verify), so it keeps
working when that module becomes a package. Torch is imported lazily.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from brightrun.errors import InputError
from brightrun.registry import promotion
from brightrun.registry.promotion import AdapterRow
from brightrun.resources import Resources

if TYPE_CHECKING:
    from trainer.serving import BatchingEngine


@dataclass(frozen=True)
class AdapterChoice:
    """One adapter the user asked to serve: `ref` (artifact id, job id or `production`) and
    the name to serve it as (None: its served name)."""

    ref: str
    name: str | None = None


def parse_adapter_option(value: str) -> AdapterChoice:
    """`--adapter NAME=REF`."""
    name, sep, ref = value.partition("=")
    if not sep or not name.strip() or not ref.strip():
        raise InputError(f"--adapter {value!r}: write NAME=ARTIFACT, e.g. coach=production")
    return AdapterChoice(ref.strip(), name.strip())


def served_name(artifact: AdapterRow) -> str:
    """The name an adapter answers to: the registry's `served_name`, or its artifact id for a
    row registered before served names (the migration fills those, the app may insert others)."""
    return str(artifact.served_name or artifact.id)


def load_for_serving(
    resources: Resources,
    choices: Sequence[AdapterChoice],
    *,
    base_model: str | None = None,
    queue_size: int = 64,
    max_batch: int = 8,
) -> BatchingEngine:
    """A started-but-idle engine over every chosen adapter (all verified before any loads)."""
    from tasks.adapters import adapter_location, download_verified, fetch_adapter
    from trainer.inference import attach_adapter, device, load_base, load_tokenizer
    from trainer.serving import BatchingEngine, ServedModel

    if not choices:
        raise InputError("nothing to serve: give an ARTIFACT or --adapter NAME=ARTIFACT")
    found = [promotion.resolve_artifact(resources.registry, c.ref, base_model=base_model) for c in choices]
    names = [c.name or served_name(a) for c, a in zip(choices, found, strict=True)]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise InputError(f"two adapters would be served as {', '.join(map(repr, repeated))}; name them apart")
    dev = device()
    merged = [a for a in found if a.artifact_type == "merged_model"]
    if merged:
        if len(found) > 1:
            raise InputError(
                f"{merged[0].id} is a merged model: serve it alone (it has no adapters to switch)"
            )
        storage, prefix = adapter_location(resources, merged[0])
        cache = resources.settings.cache_dir / "merged" / merged[0].id
        if not cache.is_dir():
            download_verified(storage, prefix, cache)
        from trainer.inference import BaseModelSpec

        model = load_base(BaseModelSpec(str(cache)), dev)
        served = [ServedModel(names[0], load_tokenizer(cache), None, (merged[0].id, choices[0].ref))]
        return BatchingEngine(model, served, queue_size=queue_size, max_batch=max_batch, dev=dev)

    local = [fetch_adapter(resources, a) for a in found]
    first = local[0].base_spec()
    if base_model and choices[0].ref.strip() != promotion.PRODUCTION and base_model != local[0].base_model:
        from trainer.inference import BaseModelSpec

        first = BaseModelSpec(base_model, None, local[0].quantization)
    for other, art in zip(local[1:], found[1:], strict=True):
        spec = other.base_spec()
        if (spec.name, spec.revision, spec.quantization) != (
            local[0].base_model,
            local[0].base_model_revision,
            local[0].quantization,
        ):
            raise InputError(
                f"one process serves adapters of one base model: {found[0].id} runs on "
                f"{local[0].base_model} ({_loading(local[0].quantization.load_in_4bit)}), {art.id} on "
                f"{spec.name} ({_loading(spec.quantization.load_in_4bit)}); serve them separately"
            )
    model = load_base(first, dev)
    served = []
    for i, (lc, name, choice) in enumerate(zip(local, names, choices, strict=True)):
        # PEFT's own adapter names stay simple (they become module keys); the served name maps to them.
        model = attach_adapter(model, lc.directory, adapter_name=f"adapter{i}")
        aliases = tuple(dict.fromkeys(a for a in (lc.artifact.id, choice.ref) if a != name))
        served.append(ServedModel(name, load_tokenizer(lc.directory), f"adapter{i}", aliases))
    model.eval()
    return BatchingEngine(model, served, queue_size=queue_size, max_batch=max_batch, dev=dev)


def _loading(four_bit: bool) -> str:
    return "4-bit" if four_bit else "full precision"
