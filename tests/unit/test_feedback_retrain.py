"""The automatic retrain's data and starting point (tasks/feedback/retrain.py)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from brightrun.registry.repository import TrainingFileView
from tasks.feedback.retrain import continue_from, is_accepted, replay_weight, retrain_datasets


def _file(id_: str, source: str, examples: int, day: int, **metadata: object) -> TrainingFileView:
    return TrainingFileView(
        id=id_,
        name=id_,
        source=source,
        json_file_path=f"/store/datasets/{id_}.json",
        sha256=None,
        format=None,
        size_bytes=None,
        conversations=None,
        total_training_pairs=None,
        examples=examples,
        window_start=None,
        window_end=None,
        metadata=dict(metadata),
        created_at=datetime(2026, 3, day, tzinfo=UTC),
    )


def test_a_file_is_accepted_without_review_or_when_approved() -> None:
    assert is_accepted(_file("a", "feedback_export", 1, 1))
    assert is_accepted({"review_status": "approved"})
    assert not is_accepted({"review_status": "rejected"})
    assert not is_accepted({"review_status": "pending"})
    assert not is_accepted(_file("b", "feedback_export", 1, 1, review_status="pending"))


def test_the_replay_weight_gives_the_curated_files_their_share() -> None:
    w = replay_weight(curated_examples=242, feedback_examples=600, replay_share=0.3)
    assert w * 242 / (w * 242 + 600) == pytest.approx(0.3, abs=1e-4)
    assert replay_weight(0, 600, 0.3) == 1.0
    with pytest.raises(ValueError, match="between 0 and 1"):
        replay_weight(1, 1, 1.0)


def test_curated_first_then_every_accepted_feedback_file_oldest_first() -> None:
    files = [
        _file("fb-new", "feedback_export", 300, 9),
        _file("fb-rejected", "feedback_export", 500, 8, review_status="rejected"),
        _file("curated", "upload", 242, 1),
        _file("fb-old", "feedback_export", 300, 2),
    ]
    datasets = retrain_datasets(files, None, replay_share=0.5)
    assert [d["source"] for d in datasets] == [
        "/store/datasets/curated.json",
        "/store/datasets/fb-old.json",
        "/store/datasets/fb-new.json",
    ]
    assert datasets[0]["weight"] == pytest.approx(600 / 242, abs=1e-3)
    assert {d["weight"] for d in datasets[1:]} == {1.0}
    # Named curated files only; an app row with a bucket-relative path is passed by its id.
    app_row = replace(files[2], id="11111111-1111-1111-1111-111111111111", json_file_path="curated.json")
    named = retrain_datasets([app_row, files[0]], [app_row.id], replay_share=0.5)
    assert named[0]["source"] == app_row.id


def test_continuing_from_production_takes_its_rank_and_targets() -> None:
    params = continue_from({"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]})
    assert params == {
        "init_adapter": "production",
        "lora": {"r": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj"]},
    }
    assert continue_from(None) == {}
