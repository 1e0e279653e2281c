"""Where the feedback export finds earlier training files: wherever the registry recorded
them, opened through the pipeline's `Resources` (the configured S3 endpoint included), with
the train/validation split the registry recorded for them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from brightrun.registry import feedback_rows
from brightrun.registry import repository as repo
from brightrun.registry.models import Split
from brightrun.resources import Resources
from brightrun.settings import load_settings
from brightrun.storage import sha256_file
from tasks.feedback import export_feedback_window
from tasks.feedback.dedup import Dup
from tasks.feedback.select import Example, Rating, canonical_json
from tasks.feedback.write import ExportWriter, FileOptions
from tests.fixtures.http import serve_directory
from tests.integration.test_export_feedback import W1, Logs, make_resources

pytestmark = pytest.mark.integration

# What the export makes of a log with this prompt and output (see Logs.add).
PROMPT = "Which listing sells best?"
OUTPUT = {"top": ["mugs"], "n": 3}


def earlier_file(directory: Path, pairs: list[tuple[str, str, str]]) -> Path:
    """A brightrun-lora-v4 file of one-pair conversations: (conversation id, user, target)."""
    writer = ExportWriter(directory, W1[0], W1[1], FileOptions())
    for cid, user, target in pairs:
        writer.add(
            Example(
                system_prompt="You analyse markets.",
                user=user,
                target=target,
                insight_type="market",
                rating=Rating.positive,
                quality_score=5.0,
                provenance={"response_id": cid.removeprefix("fb-")},
            )
        )
    return writer.finish([]).training_file


@pytest.fixture
def resources(tmp_path: Path) -> Iterator[Resources]:
    res = make_resources(tmp_path, f"sqlite:///{tmp_path / 'registry.db'}")
    yield res
    res.close()


@pytest.mark.parametrize("recorded_as", ["uri", "key"])
def test_a_jobs_dataset_in_the_pipelines_storage_is_read_with_its_recorded_split(
    resources: Resources, tmp_path: Path, recorded_as: str
) -> None:
    """A job trained from a relative path or a signed https URL records its dataset as
    `datasets/<sha256>.json` in the pipeline's storage, never the caller's string: a later
    export reads it there, and holds out the conversations the job validated on."""
    path = earlier_file(
        tmp_path / "made",
        [
            ("fb-trained", PROMPT, canonical_json(OUTPUT)),
            ("fb-held-out", "What should I price candles at?", '{"price":12}'),
        ],
    )
    sha = sha256_file(path)
    key = f"datasets/{sha}.json"
    resources.storage.put_file(key, path)
    engine = resources.registry
    repo.register_training_file(
        engine,
        name="brightrun-sample",
        json_file_path=resources.storage.uri(key) if recorded_as == "uri" else key,
        sha256=sha,
        conversation_refs=[
            repo.ConversationRef("fb-trained", Split.train.value),
            repo.ConversationRef("fb-held-out", Split.validation.value),
        ],
    )
    logs = Logs(engine)
    logs.add(W1[0] + timedelta(seconds=3600), prompt=PROMPT, output=OUTPUT)  # trained on already
    logs.add(
        W1[0] + timedelta(seconds=7200), prompt="what should I price candles at", output={"price": 9}
    )  # a leak
    logs.add(W1[0] + timedelta(seconds=9000), prompt="Fresh question", output={"a": 1})
    result = export_feedback_window(resources, since=W1[0], until=W1[1])
    assert result.status == "exported", result.message
    assert result.stats.deduped == {Dup.earlier_training: 1, Dup.validation_split: 1}
    assert result.examples == 1
    assert result.earlier.files == 1 and result.earlier.validation_pairs == 1
    assert result.earlier.unsplit_files == 0


@pytest.mark.parametrize("given_as", ["relative_path", "signed_url"])
def test_a_dataset_a_job_trained_on_is_read_by_a_later_export(
    resources: Resources, tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch, given_as: str
) -> None:
    """The dataset stage stores the job's dataset as `datasets/<sha256>.json` in the pipeline's
    storage and records the split it chose; the export reads both, whatever string the
    job was given."""
    from brightrun.spec import JobSpec
    from tasks.dataset.stage import prepare_job_dataset

    pairs = [
        (f"fb-c{i}", f"Question number {i} about my shop?", canonical_json({"answer": i})) for i in range(6)
    ]
    path = earlier_file(tmp_path / "made", pairs)
    engine = resources.registry
    job = repo.create_job(engine, job_name="from-feedback", base_model=str(tiny_model))
    spec = JobSpec(job_id=job.id, base_model=str(tiny_model))
    with contextlib.ExitStack() as stack:
        if given_as == "relative_path":
            monkeypatch.chdir(tmp_path)
            dataset = str(path.relative_to(tmp_path))
        else:
            base = stack.enter_context(serve_directory(path.parent))
            resources.settings.fetch_allow_private = True  # BRIGHTRUN_FETCH_ALLOW_PRIVATE: a 127.0.0.1 CDN
            dataset = f"{base}/{path.name}?X-Amz-Signature=secret-signature&X-Amz-Expires=60"
        done = prepare_job_dataset(
            resources, job_id=job.id, dataset=dataset, spec=spec, storage=resources.storage
        )
    sha = sha256_file(path)
    recorded = repo.get_training_file(engine, done.training_file_id)
    assert recorded.json_file_path == resources.storage.uri(f"datasets/{sha}.json")
    splits = feedback_rows.recorded_splits(engine)[recorded.id]
    held_out = {cid for cid, split in splits.items() if split == Split.validation.value}
    assert held_out and len(held_out) < len(pairs)

    # Every question is asked and rated again: trained ones are duplicates, held-out ones leaks
    # (the same prompt with another answer would be one too).
    logs = Logs(engine)
    for i, (cid, user, _) in enumerate(pairs):
        answer = {"answer": i} if cid not in held_out else {"answer": "something else"}
        logs.add(W1[0] + timedelta(minutes=i), prompt=user, output=answer)
    result = export_feedback_window(resources, since=W1[0], until=W1[1], dry_run=True)
    assert result.earlier.files == 1 and result.earlier.unsplit_files == 0
    assert result.stats.deduped == {
        Dup.earlier_training: len(pairs) - len(held_out),
        Dup.validation_split: len(held_out),
    }
    assert "secret-signature" not in result.report


def test_a_file_registered_without_its_split_is_held_out_whole(resources: Resources, tmp_path: Path) -> None:
    path = earlier_file(tmp_path / "made", [("fb-unknown", PROMPT, canonical_json(OUTPUT))])
    resources.storage.put_file("uploads/old.json", path)
    repo.register_training_file(
        resources.registry,
        name="old upload",
        json_file_path=resources.storage.uri("uploads/old.json"),
        sha256=sha256_file(path),
    )
    # The same prompt with another answer: a job may have evaluated on that conversation.
    Logs(resources.registry).add(W1[0] + timedelta(seconds=3600), prompt=PROMPT, output={"top": ["candles"]})
    result = export_feedback_window(resources, since=W1[0], until=W1[1], dry_run=True)
    assert result.stats.deduped == {Dup.validation_split: 1}
    assert result.earlier.unsplit_files == 1
    assert "registered without their train/validation split" in result.report


def test_earlier_files_on_s3_are_read_with_only_the_brightrun_endpoint_set(
    seaweed: object, s3_prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.fixtures.seaweed import SeaweedS3

    assert isinstance(seaweed, SeaweedS3)
    for name, value in seaweed.env().items():
        if not name.startswith("AWS_ENDPOINT_URL"):
            monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv("BRIGHTRUN_S3_ENDPOINT_URL", seaweed.endpoint_url)
    monkeypatch.setenv("BRIGHTRUN_STORAGE_URL", seaweed.storage_url(s3_prefix))
    monkeypatch.setenv("BRIGHTRUN_HOME", str(tmp_path / "home"))
    for name in ("BRIGHTRUN_DATABASE_URL", "BRIGHTRUN_CONFIG"):
        monkeypatch.delenv(name, raising=False)

    s3 = seaweed.client()
    # One earlier file outside the pipeline's storage (another prefix of the bucket), one a
    # job's dataset inside it: both must be opened on the configured endpoint.
    outside = earlier_file(tmp_path / "a", [("fb-a", PROMPT, canonical_json(OUTPUT))])
    outside_key = f"{s3_prefix}-elsewhere/earlier.json"
    s3.upload_file(str(outside), seaweed.bucket, outside_key)
    inside = earlier_file(tmp_path / "b", [("fb-b", "Second question", '{"b":2}')])
    inside_sha = sha256_file(inside)
    s3.upload_file(str(inside), seaweed.bucket, f"{s3_prefix}/datasets/{inside_sha}.json")

    with Resources.from_settings(load_settings()) as resources:
        engine = resources.registry
        for name, uri, sha in (
            ("outside", f"s3://{seaweed.bucket}/{outside_key}", sha256_file(outside)),
            ("inside", f"{seaweed.storage_url(s3_prefix)}/datasets/{inside_sha}.json", inside_sha),
        ):
            repo.register_training_file(
                engine,
                name=name,
                json_file_path=uri,
                sha256=sha,
                conversation_refs=[repo.ConversationRef(f"fb-{name[0]}", Split.train.value)],
            )
        logs = Logs(engine)
        logs.add(W1[0] + timedelta(seconds=3600), prompt=PROMPT, output=OUTPUT)
        logs.add(W1[0] + timedelta(seconds=4000), prompt="Second question", output={"b": 2})
        logs.add(W1[0] + timedelta(seconds=5000), prompt="Fresh question", output={"a": 1})
        result = export_feedback_window(resources, since=W1[0], until=W1[1])

    assert result.status == "exported", result.message
    assert result.earlier.files == 2
    assert result.stats.deduped == {Dup.earlier_training: 2} and result.examples == 1
    # The new file went to the pipeline's storage, on the same endpoint.
    uri = result.training_file_uri or ""
    assert uri.startswith(seaweed.storage_url(s3_prefix) + "/training_files/")
    head = s3.head_object(Bucket=seaweed.bucket, Key=uri.removeprefix(f"s3://{seaweed.bucket}/"))
    assert head["ContentLength"] > 0
