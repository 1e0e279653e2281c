"""The prepared dataset as the trainer reads it: downloaded from `data/` under the job prefix
(DESIGN.md §4), sha256-checked against `meta.json`, and loaded by the objective's reader."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from brightrun import prepared
from brightrun.errors import BrightrunError
from brightrun.spec import JobSpec
from brightrun.storage import Storage


@dataclass
class PreparedData:
    directory: Path
    meta: prepared.PreparedMeta
    train: list[Any]
    validation: list[Any]
    prompts: list[prepared.HeldOutPrompt]


def setup_data(
    storage: Storage,
    spec: JobSpec,
    work: Path,
    expected: str = prepared.FORMAT,
    load: Callable[[Path, int], list[Any]] | None = None,
) -> PreparedData:
    from trainer.data import load_examples

    load = load or load_examples
    directory = work / "data"
    prefix = spec.dataset_prefix.rstrip("/")
    meta_bytes = storage.get_bytes(f"{prefix}/{prepared.META}")
    meta = prepared.PreparedMeta.model_validate_json(meta_bytes)
    if meta.format != expected:
        raise BrightrunError(
            f"{prefix}/{prepared.META}: format {meta.format!r}, expected {expected!r} "
            f"for training.objective {spec.training.objective}"
        )
    directory.mkdir(parents=True, exist_ok=True)
    (directory / prepared.META).write_bytes(meta_bytes)
    for name in (prepared.TRAIN, prepared.VALIDATION, prepared.PROMPTS):
        key = f"{prefix}/{name}"
        if name == prepared.PROMPTS and not storage.exists(key):
            continue
        storage.get_file(key, directory / name, expected_sha256=meta.files_sha256.get(name))
    max_len = spec.training.max_seq_length
    return PreparedData(
        directory=directory,
        meta=meta,
        train=load(directory / prepared.TRAIN, max_len),
        validation=load(directory / prepared.VALIDATION, max_len),
        prompts=list(prepared.iter_prompts(directory / prepared.PROMPTS)),
    )
