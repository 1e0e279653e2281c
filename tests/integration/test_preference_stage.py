"""The preference door of the dataset stage on both registries (SQLite, Postgres): a
preference file stored by content, uploaded as the job's `data/`, registered once as a
`brightrun-preferences-v1` training file, the cache reused; a bad file leaves no trace."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from brightrun import prepared
from brightrun.errors import InputError
from brightrun.layout import JobLayout
from brightrun.registry import repository as repo
from brightrun.registry import upgrade
from brightrun.resources import Resources
from brightrun.spec import JobSpec
from tasks.dataset.stage_preferences import prepare_job_preferences
from tests.fixtures.preferences import write_kto

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", "postgres"])
def resources(
    request: pytest.FixtureRequest, brightrun_home: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Resources]:
    if request.param == "postgres":
        url = request.getfixturevalue("postgres_url")
        upgrade(url)
        monkeypatch.setenv("BRIGHTRUN_DATABASE_URL", url)
    with Resources.from_settings() as res:
        yield res


def _job(resources: Resources, tiny_model: Path) -> tuple[str, JobSpec]:
    job = repo.create_job(resources.registry, job_name="preference stage", base_model=str(tiny_model))
    spec = JobSpec(
        job_id=str(job.id),
        base_model=str(tiny_model),
        training={"objective": "kto", "max_seq_length": 256},
        preprocessing={"validation_fraction": 0.25},
    )
    return str(job.id), spec


def test_preference_file_is_stored_uploaded_and_registered_once(
    resources: Resources, tiny_model: Path, sample_dataset: Path, tmp_path: Path
) -> None:
    source = write_kto(sample_dataset, tmp_path / "thumbs.preferences.jsonl")
    storage = resources.storage
    job_a, spec_a = _job(resources, tiny_model)
    first = prepare_job_preferences(
        resources, job_id=job_a, dataset=str(source), spec=spec_a, storage=storage
    )
    lines = [json.loads(x) for x in source.read_text().splitlines()]
    distinct = {json.dumps([r["prompt"], r["completion"], r["label"]], sort_keys=True) for r in lines}
    assert first.objective == "kto" and first.validation_examples > 0
    assert first.duplicates == len(lines) - len(distinct) and first.records == len(distinct)
    data = JobLayout(job_a).data_dir
    assert storage.exists(f"{data}/{prepared.META}") and storage.exists(f"{data}/{prepared.VALIDATION}")
    row = repo.get_training_file(resources.registry, first.training_file_id)
    assert row.format == prepared.PREFERENCE_FORMAT and row.json_file_path == first.source_uri
    assert str(repo.get_job(resources.registry, job_a).training_file_id) == first.training_file_id

    job_b, spec_b = _job(resources, tiny_model)
    second = prepare_job_preferences(
        resources, job_id=job_b, dataset=str(source), spec=spec_b, storage=storage
    )
    assert second.training_file_id == first.training_file_id  # same bytes, one row
    assert len(list((resources.settings.cache_dir / "prepared-preferences").iterdir())) == 1

    bad = tmp_path / "bad.jsonl"
    bad.write_text(source.read_text().splitlines()[0].replace('"label": true', '"label": "up"') + "\n")
    job_c, spec_c = _job(resources, tiny_model)
    with pytest.raises(InputError) as caught:
        prepare_job_preferences(resources, job_id=job_c, dataset=str(bad), spec=spec_c, storage=storage)
    assert caught.value.problems[0].startswith("bad.jsonl:1: label: expected true")
    assert not storage.exists(f"{JobLayout(job_c).data_dir}/{prepared.META}")
    assert repo.get_job(resources.registry, job_c).training_file_id is None
