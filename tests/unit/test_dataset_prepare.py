"""`prepare_dataset` end to end: the prepared-dataset contract, atomic output, the report."""

from __future__ import annotations

from pathlib import Path

import pytest

from brightrun import prepared
from brightrun.errors import InputError
from tasks.dataset import (
    DatasetReport,
    PrepareOptions,
    load_and_validate,
    prepare_dataset,
    render_report_markdown,
)
from tests.unit.test_dataset_schema import make_conversation, make_file, write


@pytest.fixture(scope="module")
def sample_prepared(
    tiny_model: Path, sample_dataset: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, DatasetReport]:
    out = tmp_path_factory.mktemp("prepared") / "data"
    return out, prepare_dataset(sample_dataset, tiny_model, out, PrepareOptions())


def test_prepared_directory_follows_the_contract(
    sample_prepared: tuple[Path, DatasetReport], sample_dataset: Path
) -> None:
    out, report = sample_prepared
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [
            prepared.META,
            prepared.TRAIN,
            prepared.VALIDATION,
            prepared.PROMPTS,
            prepared.REPORT,
            prepared.SPLITS,
        ]
    )
    meta = prepared.read_meta(out)
    assert meta.source_sha256 == load_and_validate(sample_dataset).sha256
    train = list(prepared.iter_examples(out / prepared.TRAIN))
    val = list(prepared.iter_examples(out / prepared.VALIDATION))
    assert meta.train_examples == len(train) and meta.validation_examples == len(val) > 0
    assert {e.conversation_id for e in train}.isdisjoint({e.conversation_id for e in val})
    for ex in train + val:
        assert len(ex.input_ids) == len(ex.labels) <= 2048
        assert ex.labels[0] == prepared.IGNORE_INDEX  # the system prompt is never trained
    from brightrun.storage import sha256_file

    assert meta.files_sha256 == {n: sha256_file(out / n) for n in meta.files_sha256}
    prompts = list(prepared.iter_prompts(out / prepared.PROMPTS))
    assert prompts and all(p.conversation_id in {e.conversation_id for e in val} for p in prompts)
    assert prompts[0].messages[-1]["role"] == "user"


def test_report_counts_add_up(sample_prepared: tuple[Path, DatasetReport]) -> None:
    out, report = sample_prepared
    assert DatasetReport.model_validate_json((out / prepared.REPORT).read_text()) == report
    assert report.conversations == 12 and report.pairs == 72
    assert report.kept_targets + sum(report.skipped_targets.values()) == report.pairs
    assert report.skipped_targets["null_target"] == 3
    assert sum(report.quality_histogram.values()) == report.pairs
    assert (
        report.sequences == report.train.examples + report.validation.examples == 12
    )  # one per conversation
    assert report.total_tokens == report.train.tokens + report.validation.tokens
    trained = sum(
        sum(1 for x in ex.labels if x != prepared.IGNORE_INDEX)
        for name in (prepared.TRAIN, prepared.VALIDATION)
        for ex in prepared.iter_examples(out / name)
    )
    assert report.trained_tokens == trained
    assert (
        sum(len(ex.pair_ids) for ex in prepared.iter_examples(out / prepared.TRAIN))
        + sum(len(ex.pair_ids) for ex in prepared.iter_examples(out / prepared.VALIDATION))
        == report.kept_targets
    )
    md = render_report_markdown(report)
    assert f"| kept targets | {report.kept_targets} |" in md and "| 3 | 46 |" in md


def test_prepare_is_deterministic(
    sample_prepared: tuple[Path, DatasetReport], tiny_model: Path, sample_dataset: Path, tmp_path: Path
) -> None:
    out, _ = sample_prepared
    again = tmp_path / "again"
    prepare_dataset(sample_dataset, tiny_model, again, PrepareOptions())
    for name in (prepared.TRAIN, prepared.VALIDATION, prepared.PROMPTS):
        assert (again / name).read_bytes() == (out / name).read_bytes()


def test_rerun_replaces_output_atomically(tiny_model: Path, tmp_path: Path) -> None:
    src = write(tmp_path, make_file([make_conversation(f"c{i}", 3) for i in range(4)]))
    out = tmp_path / "out"
    prepare_dataset(src, tiny_model, out, PrepareOptions(validation_fraction=0.0))
    first = prepared.read_meta(out)
    assert first.validation_examples == 0
    prepare_dataset(src, tiny_model, out, PrepareOptions(validation_fraction=0.5, seed=1))
    assert prepared.read_meta(out).validation_examples > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.json", "out"]


def test_small_file_still_gets_a_validation_conversation(tiny_model: Path, tmp_path: Path) -> None:
    src = write(tmp_path, make_file([make_conversation(f"c{i}", 2) for i in range(3)]))
    report = prepare_dataset(src, tiny_model, tmp_path / "out", PrepareOptions(validation_fraction=0.01))
    assert report.validation.conversations == 1 and report.train.conversations == 2
    val = list(prepared.iter_examples(tmp_path / "out" / prepared.VALIDATION))
    train = list(prepared.iter_examples(tmp_path / "out" / prepared.TRAIN))
    assert len(val) == 1 and len(train) == 2
    assert val[0].conversation_id not in {e.conversation_id for e in train}


def test_refuses_to_replace_a_directory_that_is_not_a_prepared_set(tiny_model: Path, tmp_path: Path) -> None:
    src = write(tmp_path, make_file([make_conversation("c1")]))
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(InputError, match="not a prepared dataset"):
        prepare_dataset(src, tiny_model, out, PrepareOptions())
    assert (out / "precious.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.json", "out"]


def test_overlong_targets_skipped_when_asked(tiny_model: Path, tmp_path: Path) -> None:
    conv = make_conversation("c1", 2, targets=["short.", "long " * 400])
    src = write(tmp_path, make_file([conv, make_conversation("c2", 2)]))
    report = prepare_dataset(
        src, tiny_model, tmp_path / "out", PrepareOptions(max_seq_length=128, skip_overlong_targets=True)
    )
    assert report.skipped_targets["too_long"] == 1
    assert report.too_long_targets == ["conversation c1, pair c1-p2, field target_response"]
    assert report.kept_targets == 3 and report.longest_sequence <= 128


def test_load_and_validate_raises_with_every_problem(tmp_path: Path) -> None:
    data = make_file([make_conversation("c1"), make_conversation("c2")])
    data["conversations"][0]["training_pairs"][0]["turn_number"] = -1
    data["conversations"][1]["training_pairs"][1]["training_metadata"] = {}
    with pytest.raises(InputError) as info:
        load_and_validate(write(tmp_path, data))
    assert len(info.value.problems) == 2
    assert "conversation c2, pair c2-p2 (#1) turn 2, field training_metadata.quality_score" in str(info.value)


def test_the_recorded_split_is_what_the_writer_wrote(sample_prepared: tuple[Path, DatasetReport]) -> None:
    """splits.json is the one record of the split: every conversation, in the file it went to."""
    out, report = sample_prepared
    splits = prepared.read_splits(out)
    in_files = {
        name: {e.conversation_id for e in prepared.iter_examples(out / f)}
        for name, f in (("train", prepared.TRAIN), ("validation", prepared.VALIDATION))
    }
    assert in_files["validation"] and set(splits.validation) >= in_files["validation"]
    assert set(splits.train) >= in_files["train"] and not set(splits.train) & set(splits.validation)
    assert len(splits.train) + len(splits.validation) == report.conversations
    assert report.options == PrepareOptions()


def test_a_file_with_a_byte_order_mark_prepares_like_the_same_file_without(
    sample_prepared: tuple[Path, DatasetReport], sample_dataset: Path, tiny_model: Path, tmp_path: Path
) -> None:
    with_bom = tmp_path / "bom.json"
    with_bom.write_bytes(b"\xef\xbb\xbf" + sample_dataset.read_bytes())
    report = prepare_dataset(with_bom, tiny_model, tmp_path / "out", PrepareOptions())
    reference = sample_prepared[1]
    assert (report.conversations, report.pairs, report.total_tokens, report.trained_tokens) == (
        reference.conversations,
        reference.pairs,
        reference.total_tokens,
        reference.trained_tokens,
    )
    assert report.train == reference.train and report.validation == reference.validation
