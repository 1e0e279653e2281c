"""Cumulative data (tasks/dataset/mixture.py): weights, dedup across sources, kept splits."""

from __future__ import annotations

from pathlib import Path

from brightrun import prepared
from tasks.dataset.mixture import PreparedPart, copies, merge_prepared, mixture_markdown


def _example(conversation: str, n: int) -> prepared.PreparedExample:
    return prepared.PreparedExample(
        input_ids=[1, n, n + 1, 2], labels=[-100, -100, n + 1, 2], conversation_id=conversation
    )


def _prepared(root: Path, name: str, train: dict[str, int], validation: dict[str, int]) -> Path:
    d = root / name
    d.mkdir()
    (d / prepared.TRAIN).write_text(
        "".join(_example(c, n).model_dump_json() + "\n" for c, n in train.items())
    )
    (d / prepared.VALIDATION).write_text(
        "".join(_example(c, n).model_dump_json() + "\n" for c, n in validation.items())
    )
    splits = prepared.ConversationSplits(train=sorted(train), validation=sorted(validation))
    (d / prepared.SPLITS).write_text(splits.model_dump_json())
    meta = prepared.PreparedMeta(
        tokenizer="t",
        max_seq_length=64,
        source_sha256=name * 8,
        source_name=name,
        min_quality=3,
        validation_fraction=0.1,
        seed=1,
        train_examples=len(train),
        validation_examples=len(validation),
        train_tokens=0,
        trained_tokens=0,
    )
    (d / prepared.META).write_text(meta.model_dump_json())
    return d


def _conversations(path: Path) -> list[str]:
    return [e.conversation_id for e in prepared.iter_examples(path)]


def test_a_held_out_conversation_never_trains_and_duplicates_count_once(tmp_path: Path) -> None:
    curated = _prepared(tmp_path, "curated", {"c1": 10, "c2": 20}, {"c3": 30})
    # The feedback file repeats c1 (same tokens) and holds out c2, which curated trains on;
    # it also trains on c3, which curated holds out.
    feedback = _prepared(tmp_path, "feedback", {"c1": 10, "c3": 30, "f1": 40}, {"c2": 20})
    out = tmp_path / "mix"
    report = merge_prepared(
        [
            PreparedPart(name="curated", sha256="a" * 64, directory=curated, weight=1),
            PreparedPart(name="feedback", sha256="b" * 64, directory=feedback, weight=1),
        ],
        out,
        seed=1,
    )
    assert sorted(_conversations(out / prepared.TRAIN)) == ["c1", "f1"]
    assert sorted(_conversations(out / prepared.VALIDATION)) == ["c2", "c3"]
    cur, fb = report.parts
    assert (cur.held_out_elsewhere, cur.duplicates, cur.trained_examples) == (1, 0, 1)
    assert (fb.held_out_elsewhere, fb.duplicates, fb.trained_examples) == (1, 1, 1)
    splits = prepared.read_splits(out)
    assert set(splits.train).isdisjoint(splits.validation)
    meta = prepared.read_meta(out)
    assert (meta.train_examples, meta.validation_examples, meta.source_sha256) == (2, 2, report.sha256)
    assert meta.files_sha256[prepared.TRAIN] and meta.trained_tokens == 4
    assert "| feedback | 1 | 3 | 1 | 1 | 1 | 1 | 50.0% |" in mixture_markdown(report)


def test_weights_repeat_or_thin_a_source_deterministically(tmp_path: Path) -> None:
    a = _prepared(tmp_path, "a", {f"a{i}": i * 3 for i in range(100)}, {})
    b = _prepared(tmp_path, "b", {f"b{i}": 1000 + i * 3 for i in range(100)}, {})
    parts = [
        PreparedPart(name="a", sha256="a" * 64, directory=a, weight=2),
        PreparedPart(name="b", sha256="b" * 64, directory=b, weight=0.5),
    ]
    report = merge_prepared(parts, tmp_path / "m1", seed=7)
    again = merge_prepared(parts, tmp_path / "m2", seed=7)
    assert report.parts[0].trained_examples == 200
    assert 30 <= report.parts[1].trained_examples <= 70  # about half, chosen by hash
    assert (tmp_path / "m1" / prepared.TRAIN).read_bytes() == (tmp_path / "m2" / prepared.TRAIN).read_bytes()
    assert report.sha256 == again.sha256
    assert abs(sum(p.share for p in report.parts) - 1) < 1e-9
    assert {copies(1.0, str(i), 3) for i in range(50)} == {1}
