"""The export's split rule and where it looks for earlier training files (no database)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from brightrun.registry.repository import TrainingFileView
from brightrun.resources import Resources
from brightrun.settings import load_settings
from brightrun.storage import LocalStorage, S3Storage
from tasks.feedback.dedup import (
    Deduper,
    Dup,
    EarlierFileUnreadable,
    _file_keys,
    add_earlier_file,
    cache_name,
    dump_file_keys,
    load_file_keys,
    locate,
    pair_keys,
)
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


def _view(path: str, source: str | None = "upload", sha256: str | None = "0" * 64) -> TrainingFileView:
    return TrainingFileView(
        id="00000000-0000-4000-8000-000000000001",
        name="f",
        source=source,
        json_file_path=path,
        sha256=sha256,
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


# ---------------------------------------------------------------- the key cache (no pickle)


def test_the_key_cache_round_trips_as_json() -> None:
    keys = [*KEYS, ("conv-context", [pair_keys("Context only", None)])]
    assert load_file_keys(dump_file_keys(keys)) == keys


def test_a_cache_name_is_only_a_valid_sha256() -> None:
    assert cache_name("a" * 64) == "a" * 64 + ".json"
    for hostile in ["../../x", "A" * 64, "a" * 63, "a" * 64 + "/..", "", None]:
        assert cache_name(hostile) is None


def _resources(tmp_path: Path) -> Resources:
    return Resources.from_settings(load_settings(home=tmp_path, database_url="sqlite://"))


def test_a_planted_pickle_in_the_cache_is_never_loaded(tmp_path: Path) -> None:
    """A pickle planted as the cache file would run code if unpickled: it is read as JSON,
    refused, removed, and the training file is scanned again."""
    marker = tmp_path / "ran"
    sha = "b" * 64
    cache = tmp_path / "cache"
    cache.mkdir()

    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (Path.touch, (str(marker),))  # type: ignore[return-value]

    import pickle

    (cache / f"{sha}.json").write_bytes(pickle.dumps(Evil()))
    (cache / f"{sha}.pickle").write_bytes(pickle.dumps(Evil()))  # the old name: never opened
    with pytest.raises(EarlierFileUnreadable):  # the file itself does not exist: it was rescanned
        _file_keys(
            _resources(tmp_path),
            _view(str(tmp_path / "missing.json"), sha256=sha),
            tmp_path,
            cache,
            write_cache=True,
        )
    assert not marker.exists()
    assert not (cache / f"{sha}.json").exists()


def test_a_hostile_sha256_gets_no_cache_outside_the_cache_dir(tmp_path: Path) -> None:
    cache = tmp_path / "a" / "b" / "cache"
    cache.mkdir(parents=True)
    data = tmp_path / "data.json"
    data.write_text(
        '{"conversations": []}',
        encoding="utf-8",
    )
    escaped = tmp_path / "a" / "x.json"
    escaped.write_text(dump_file_keys(KEYS), encoding="utf-8")  # where cache/../../x.json points
    view = _view(str(data), sha256="../../x")
    resources = _resources(tmp_path)
    with pytest.raises(EarlierFileUnreadable):  # the hash check refuses it: never the planted keys
        _file_keys(resources, view, tmp_path, cache, write_cache=True)
    assert escaped.read_text(encoding="utf-8") == dump_file_keys(KEYS)
    assert list(cache.iterdir()) == []


@pytest.mark.parametrize("path", ["/etc/passwd", "https://internal.example/x.json", "file:///etc/passwd"])
def test_an_app_rows_absolute_path_or_url_is_refused_unless_configured(
    path: str, s3_resources: Resources, tmp_path: Path
) -> None:
    with pytest.raises(EarlierFileUnreadable, match="BRIGHTRUN_FETCH_ALLOW_LOCAL_PATHS"):
        locate(s3_resources, _view(path, source=None))
    s3_resources.settings.fetch_allow_local_paths = True
    if path == "/etc/passwd":
        storage, key = locate(s3_resources, _view(path, source=None))
        assert storage.uri(key) == "/etc/passwd"
