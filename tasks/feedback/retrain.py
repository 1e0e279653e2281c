"""What the automatic retrain after an export trains on (issue 25): the curated set(s) plus
every accepted feedback file, mixed with a stated replay share, continuing from production.

A round that trained on the newest export alone, from a fresh LoRA, could lose what the
curated conversations taught; replaying them at a fixed share of the training examples, and
starting from the adapter users already have, keeps it. Pure functions: the flow
(flows/export_feedback.py) reads the rows and starts the run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from brightrun.registry.models import TrainingFileSource
from brightrun.registry.repository import TrainingFileView


def is_accepted(row: Any) -> bool:
    """A feedback file may train once a reviewer approved it; a registry without review
    (no `review_status` column or value) accepts every file. The one place that decides."""
    from brightrun.registry.review import is_accepted as status_accepted

    status = getattr(row, "review_status", None)
    if status is None and isinstance(row, dict):
        status = row.get("review_status")
    if status is None:
        status = (getattr(row, "metadata", None) or {}).get("review_status")
    return status_accepted(status)


def is_feedback(row: TrainingFileView) -> bool:
    return row.source == TrainingFileSource.feedback_export.value


def file_source(row: TrainingFileView) -> str:
    """How `train_adapter` finds the file: the pipeline's own URI or path, else the row's id
    (an app row whose path is relative to its bucket)."""
    path = row.json_file_path or ""
    return path if ("://" in path or path.startswith("/")) else row.id


def _examples(row: TrainingFileView) -> int:
    return row.examples or row.total_training_pairs or 0


def replay_weight(curated_examples: int, feedback_examples: int, replay_share: float) -> float:
    """The curated files' weight (feedback files weigh 1) so that curated examples make up
    `replay_share` of the training examples: w·c / (w·c + f) = share."""
    if not 0 < replay_share < 1:
        raise ValueError(f"replay_share must be between 0 and 1 (exclusive), not {replay_share}")
    if curated_examples <= 0 or feedback_examples <= 0:
        return 1.0
    weight = replay_share * feedback_examples / ((1 - replay_share) * curated_examples)
    return round(min(100.0, max(0.01, weight)), 4)


def retrain_datasets(
    files: Sequence[TrainingFileView], curated_ids: Sequence[str] | None, replay_share: float
) -> list[dict[str, Any]]:
    """`datasets` for train_adapter: curated files first (each keeps its split, and a
    conversation held out anywhere never trains), then every accepted feedback file, oldest
    first. `curated_ids` None: every registered file that is not a feedback export."""
    curated = [f for f in files if (f.id in curated_ids if curated_ids is not None else not is_feedback(f))]
    feedback = sorted(
        (f for f in files if is_feedback(f) and is_accepted(f)),
        key=lambda f: (f.created_at is None, f.created_at),
    )
    weight = replay_weight(sum(map(_examples, curated)), sum(map(_examples, feedback)), replay_share)
    return [{"source": file_source(f), "weight": weight} for f in curated] + [
        {"source": file_source(f), "weight": 1.0} for f in feedback
    ]


def continue_from(production_lora_config: dict[str, Any] | None) -> dict[str, Any]:
    """The train_adapter parameters that continue from production: its adapter, with its own
    rank and target modules (else refused); nothing when there is no production adapter."""
    if not production_lora_config:
        return {}
    lora = {
        "r": production_lora_config.get("r"),
        "alpha": production_lora_config.get("lora_alpha"),
        "target_modules": production_lora_config.get("target_modules"),
    }
    return {"init_adapter": "production", "lora": {k: v for k, v in lora.items() if v is not None}}
