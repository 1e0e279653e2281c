"""The dataset stage's door, `prepare_job_dataset`, on local storage and on SeaweedFS.

Each run checks the whole contract: the source stored under its content hash in the job's
storage and recorded by that URI (never the caller's string), readable later through a new
`Resources`; the prepared set under the job's `data/`; the writer's split in the registry;
the job pointing at its training file; the source hashed once.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import MetaData, select

from brightrun import prepared
from brightrun.errors import BrightrunError, InputError
from brightrun.layout import JobLayout
from brightrun.registry import repository as repo
from brightrun.resources import Resources
from brightrun.settings import load_settings
from brightrun.spec import JobSpec
from brightrun.storage import Storage, open_storage, split_uri
from tasks.dataset.stage import PreparedJobDataset, prepare_job_dataset
from tests.fixtures.seaweed import SeaweedS3

pytestmark = pytest.mark.integration

SECRET = "SIGNATURE-0123456789abcdef"


@pytest.fixture
def resources(brightrun_home: Path) -> Iterator[Resources]:
    with Resources.from_settings(load_settings()) as res:
        yield res


@pytest.fixture
def hash_log(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every sha256 the dataset stage's own modules compute (the storage's integrity checks
    on write and read are the storage's business)."""
    import tasks.dataset.fetch
    import tasks.dataset.prepare
    import tasks.dataset.schema
    import tasks.dataset.split
    import tasks.dataset.stage
    import tasks.dataset.tokenizer

    real = hashlib.sha256
    seen: list[str] = []

    class Counting:
        def __init__(self, data: bytes = b"") -> None:
            self._h = real(data)

        def update(self, data: bytes) -> None:
            self._h.update(data)

        def digest(self) -> bytes:
            return self._h.digest()

        def hexdigest(self) -> str:
            seen.append(self._h.hexdigest())
            return seen[-1]

    fake = types.SimpleNamespace(sha256=Counting)
    for module in (
        tasks.dataset.fetch,
        tasks.dataset.schema,
        tasks.dataset.split,
        tasks.dataset.stage,
        tasks.dataset.tokenizer,
    ):
        monkeypatch.setattr(module, "hashlib", fake)
    real_file = tasks.dataset.prepare.sha256_file

    def counting_file(path: Path) -> str:
        seen.append(real_file(path))
        return seen[-1]

    monkeypatch.setattr(tasks.dataset.prepare, "sha256_file", counting_file)
    monkeypatch.setattr(tasks.dataset.fetch, "sha256_file", counting_file)
    return seen


def new_job(resources: Resources, tiny_model: Path) -> tuple[str, JobSpec]:
    job = repo.create_job(resources.registry, job_name="dataset-stage test", base_model=str(tiny_model))
    spec = JobSpec(job_id=str(job.id), base_model=str(tiny_model), preprocessing={"validation_fraction": 0.2})
    return str(job.id), spec


def check_contract(
    resources: Resources, result: PreparedJobDataset, storage: Storage, job_id: str, source: bytes
) -> None:
    sha = hashlib.sha256(source).hexdigest()
    assert result.sha256 == sha
    assert result.source_uri == storage.uri(f"datasets/{sha}.json")
    # Later, elsewhere: the recorded URI opens through a fresh Resources (configured endpoint).
    with Resources.from_settings(load_settings()) as later:
        training_file = repo.get_training_file(later.registry, result.training_file_id)
        assert training_file.json_file_path == result.source_uri and training_file.sha256 == sha
        parent, key = split_uri(training_file.json_file_path)
        assert later.open_storage(parent).get_bytes(key) == source
        assert str(repo.get_job(later.registry, job_id).training_file_id) == result.training_file_id
        recorded = repo.exported_conversations(later.registry)
    data = JobLayout(job_id).data_dir
    assert storage.exists(f"{data}/{prepared.META}") and storage.exists(f"{data}/{prepared.TRAIN}")
    # The registry holds the writer's split, conversation by conversation.
    splits = prepared.ConversationSplits.model_validate_json(storage.get_bytes(f"{data}/{prepared.SPLITS}"))
    assert {cid: ref.split for cid, ref in recorded.items()} == splits.by_conversation()
    validation_lines = storage.get_bytes(f"{data}/{prepared.VALIDATION}").decode().splitlines()
    validation_in_file = {
        prepared.PreparedExample.model_validate_json(line).conversation_id for line in validation_lines
    }
    assert validation_in_file and validation_in_file <= set(splits.validation)
    report = result.report
    assert (result.train_examples, result.validation_examples) == (
        report.train.examples,
        report.validation.examples,
    )
    assert result.validation_examples == len(validation_lines) > 0
    assert f"| kept targets | {report.kept_targets} |" in result.report_markdown


def test_relative_path_on_local_storage_hashed_once(
    resources: Resources,
    tiny_model: Path,
    sample_dataset: Path,
    monkeypatch: pytest.MonkeyPatch,
    hash_log: list[str],
) -> None:
    monkeypatch.chdir(sample_dataset.parent)
    job_id, spec = new_job(resources, tiny_model)
    storage = resources.storage
    result = prepare_job_dataset(
        resources, job_id=job_id, dataset=sample_dataset.name, spec=spec, storage=storage
    )
    source = sample_dataset.read_bytes()
    check_contract(resources, result, storage, job_id, source)
    assert result.display_name == sample_dataset.name
    assert hash_log.count(hashlib.sha256(source).hexdigest()) == 1


def test_absolute_path_reuses_the_cache_and_rebuilds_a_deleted_entry(
    resources: Resources, tiny_model: Path, sample_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tasks.dataset.stage as stage

    storage = resources.storage
    job_a, spec_a = new_job(resources, tiny_model)
    first = prepare_job_dataset(
        resources, job_id=job_a, dataset=str(sample_dataset), spec=spec_a, storage=storage
    )
    check_contract(resources, first, storage, job_a, sample_dataset.read_bytes())
    (entry,) = (resources.settings.cache_dir / "prepared").iterdir()

    # Same bytes, tokenizer and options: the second job is served from the cache.
    calls: list[Path] = []
    real = stage.prepare_dataset

    def spy(source: Path, *args: object, **kwargs: object) -> object:
        calls.append(source)
        return real(source, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(stage, "prepare_dataset", spy)
    job_b, spec_b = new_job(resources, tiny_model)
    second = prepare_job_dataset(
        resources, job_id=job_b, dataset=f"file://{sample_dataset}", spec=spec_b, storage=storage
    )
    assert calls == [] and second.training_file_id == first.training_file_id
    check_contract(resources, second, storage, job_b, sample_dataset.read_bytes())

    # A cleaned cache (or half of one) is rebuilt, not trusted.
    (entry / prepared.TRAIN).unlink()
    job_c, spec_c = new_job(resources, tiny_model)
    prepare_job_dataset(resources, job_id=job_c, dataset=str(sample_dataset), spec=spec_c, storage=storage)
    assert len(calls) == 1 and (entry / prepared.TRAIN).is_file()
    (entry / prepared.META).unlink()
    job_d, spec_d = new_job(resources, tiny_model)
    prepare_job_dataset(resources, job_id=job_d, dataset=str(sample_dataset), spec=spec_d, storage=storage)
    assert len(calls) == 2 and (entry / prepared.META).is_file()
    shutil.rmtree(entry)
    job_e, spec_e = new_job(resources, tiny_model)
    prepare_job_dataset(resources, job_id=job_e, dataset=str(sample_dataset), spec=spec_e, storage=storage)
    assert len(calls) == 3 and storage.exists(f"{JobLayout(job_e).data_dir}/{prepared.TRAIN}")


def test_signed_url_signature_is_stored_nowhere(
    resources: Resources,
    tiny_model: Path,
    sample_dataset: Path,
    http_server: str,
    hash_log: list[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    resources.settings.fetch_allow_private = True  # BRIGHTRUN_FETCH_ALLOW_PRIVATE: the server is 127.0.0.1
    url = f"{http_server}/{sample_dataset.name}?X-Amz-Credential=abc&X-Amz-Signature={SECRET}"
    job_id, spec = new_job(resources, tiny_model)
    storage = resources.storage
    result = prepare_job_dataset(resources, job_id=job_id, dataset=url, spec=spec, storage=storage)
    source = sample_dataset.read_bytes()
    check_contract(resources, result, storage, job_id, source)
    assert result.display_name == sample_dataset.name
    assert hash_log.count(hashlib.sha256(source).hexdigest()) == 1
    assert SECRET not in result.model_dump_json()
    with resources.registry.connect() as conn:
        meta = MetaData()
        meta.reflect(conn)
        for table in meta.sorted_tables:
            assert SECRET not in repr(conn.execute(select(table)).all()), table.name
    assert not [k for k in storage.list() if SECRET in k]
    assert not [p for p in resources.settings.home.rglob("*") if SECRET in p.name]
    assert SECRET not in caplog.text

    # A failed download names the URL without its query.
    job_id, spec = new_job(resources, tiny_model)
    missing = f"{http_server}/missing.json?sig={SECRET}"
    with pytest.raises(BrightrunError) as info:
        prepare_job_dataset(resources, job_id=job_id, dataset=missing, spec=spec, storage=storage)
    assert "HTTP 404" in str(info.value) and SECRET not in str(info.value)


def test_bad_file_records_and_uploads_nothing(resources: Resources, tiny_model: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"training_file_metadata": {"format_spec": "alpaca"}, "conversations": []}')
    job_id, spec = new_job(resources, tiny_model)
    storage = resources.storage
    with pytest.raises(InputError, match="format_spec"):
        prepare_job_dataset(resources, job_id=job_id, dataset=str(bad), spec=spec, storage=storage)
    assert storage.list() == []
    assert repo.get_job(resources.registry, job_id).training_file_id is None


@pytest.fixture
def only_brightrun_endpoint(seaweed: SeaweedS3, s3_storage_env: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """SeaweedFS as the storage, its endpoint given only as BRIGHTRUN_S3_ENDPOINT_URL."""
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("BRIGHTRUN_S3_ENDPOINT_URL", seaweed.endpoint_url)
    return s3_storage_env


@pytest.mark.parametrize("given_as", ["s3_uri", "relative_path"])
def test_on_seaweedfs_with_only_the_brightrun_endpoint(
    given_as: str,
    brightrun_home: Path,
    only_brightrun_endpoint: str,
    seaweed: SeaweedS3,
    tiny_model: Path,
    sample_dataset: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if given_as == "s3_uri":
        upload = open_storage(only_brightrun_endpoint, endpoint_url=seaweed.endpoint_url)
        upload.put_file("incoming/my data.json", sample_dataset)
        dataset = upload.uri("incoming/my data.json")
    else:
        monkeypatch.chdir(sample_dataset.parent)
        dataset = sample_dataset.name
    with Resources.from_settings(load_settings()) as resources:
        storage = resources.storage
        assert storage.url == only_brightrun_endpoint
        job_id, spec = new_job(resources, tiny_model)
        result = prepare_job_dataset(resources, job_id=job_id, dataset=dataset, spec=spec, storage=storage)
        check_contract(resources, result, storage, job_id, sample_dataset.read_bytes())
    assert result.source_uri.startswith(only_brightrun_endpoint + "/datasets/")
    assert result.display_name == ("my data.json" if given_as == "s3_uri" else sample_dataset.name)
