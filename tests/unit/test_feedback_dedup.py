"""The export's split rule and where it looks for earlier training files (no database)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from brightrun.registry.repository import TrainingFileView
from brightrun.resources import Resources
from brightrun.settings import load_settings
from brightrun.storage import LocalStorage, S3Storage
from tasks.feedback.dedup import Deduper, Dup, EarlierFileUnreadable, add_earlier_file, locate, pair_keys
from tasks.feedback.select import Example, Rating


def _example(user: str, target: str) -> Example:
    return Example("sys", user, target, "market", Rating.positive, 5.0, {"response_id": "r"})


KEYS = [
    ("conv-train", [pair_keys("Trained prompt", "trained answer")]),
    ("conv-val", [pair_keys("Held-out prompt", "held-out answer")]),
    ("conv-dropped", [pair_keys("Dropped prompt", "dropped answer")]),
]


def test_the_recorded_split_decides_what_is_held_out() -> None:
    deduper = Deduper()
    held = add_earlier_file(deduper, KEYS, {"conv-train": "train", "conv-val": "validation"})
    assert held == 1
    # A validation prompt with another answer is a leak; a training prompt with another answer
    # is a new example; a conversation the split did not record (dropped) dedups only.
    assert deduper.check(_example("held-out prompt!", "new answer")) is Dup.validation_split
    assert deduper.check(_example("Trained prompt", "another answer")) is None
    assert deduper.check(_example("Trained prompt", "trained answer")) is Dup.earlier_training
    assert deduper.check(_example("Dropped prompt", "another answer")) is None


def test_a_file_without_a_recorded_split_is_held_out_whole() -> None:
    deduper = Deduper()
    assert add_earlier_file(deduper, KEYS, None) == 3
    assert deduper.check(_example("trained prompt", "another answer")) is Dup.validation_split


def _view(path: str, source: str | None = "upload") -> TrainingFileView:
    return TrainingFileView(
        id="00000000-0000-4000-8000-000000000001",
        name="f",
        source=source,
        json_file_path=path,
        sha256="0" * 64,
        format="brightrun-lora-v4",
        size_bytes=None,
        conversations=None,
        total_training_pairs=None,
        examples=None,
        window_start=None,
        window_end=None,
        metadata={},
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
    )


@pytest.fixture
def s3_resources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Resources:
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return Resources.from_settings(
        load_settings(
            home=tmp_path,
            storage_url="s3://pipe/prod",
            s3_endpoint_url="http://127.0.0.1:1",
            database_url="sqlite://",
        )
    )


def test_earlier_files_are_opened_where_recorded_on_the_configured_endpoint(s3_resources: Resources) -> None:
    storage, key = locate(s3_resources, _view("s3://pipe/prod/datasets/abc.json"))
    assert storage is s3_resources.storage and key == "datasets/abc.json"
    storage, key = locate(s3_resources, _view("datasets/abc.json"))  # a key of the pipeline's storage
    assert storage is s3_resources.storage and key == "datasets/abc.json"
    storage, key = locate(s3_resources, _view("s3://other/x/y.json"))
    assert isinstance(storage, S3Storage) and storage.endpoint_url == "http://127.0.0.1:1"
    assert storage.uri(key) == "s3://other/x/y.json"
    # The app's own rows are relative to its `training-files` bucket.
    storage, key = locate(s3_resources, _view("user-1/file.json", source=None))
    assert storage.uri(key) == "s3://training-files/user-1/file.json"
    storage, key = locate(s3_resources, _view("/data/old/file.json"))
    assert isinstance(storage, LocalStorage) and storage.uri(key) == "/data/old/file.json"


def test_a_recorded_url_is_refused_without_its_signature(s3_resources: Resources) -> None:
    with pytest.raises(EarlierFileUnreadable) as raised:
        locate(s3_resources, _view("https://cdn.example/d.json?X-Amz-Signature=secret"))
    assert "secret" not in str(raised.value) and "https://cdn.example/d.json" in str(raised.value)
