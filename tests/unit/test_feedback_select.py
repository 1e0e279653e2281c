"""Selection, example building, dedup and file writing of the feedback export (no database)."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tasks.dataset.schema import validate_dataset
from tasks.feedback import ExportStats, process_rows
from tasks.feedback.dedup import Deduper, Dup, normalize_text
from tasks.feedback.read import LogRow
from tasks.feedback.select import (
    PreferencePairs,
    Rating,
    SelectionOptions,
    Skip,
    build_example,
    canonical_json,
    decide,
)
from tasks.feedback.write import ExportWriter, FileOptions

T0 = datetime(2026, 1, 1, tzinfo=UTC)
USER = "0f9a8b7c-1111-2222-3333-444455556666"


def row(n: int = 1, **kw: object) -> LogRow:
    base = LogRow(
        feedback_id=f"f{n}",
        response_id=f"r{n}",
        feedback_user_id="rater-0001",
        rating="positive",
        notes=None,
        feedback_at=T0 + timedelta(minutes=n),
        response_found=True,
        request_id=f"q{n}",
        request_found=True,
        output_text=json.dumps({"b": 1, "a": [f"insight {n}"]}),
        model_name="lexy",
        model_version="v7",
        success=True,
        request_user_id=USER,
        prompt=f"What sells best in shop {n}?",
        context_text=json.dumps({"shop": f"shop-{n}"}),
        insight_type="market",
    )
    return replace(base, **kw)  # type: ignore[arg-type]


OPTS = SelectionOptions(system_prompts={"market": "You analyse markets."})


def test_canonical_json_is_order_independent_and_compact() -> None:
    assert canonical_json({"b": 1, "a": "é"}) == canonical_json({"a": "é", "b": 1}) == '{"a":"é","b":1}'
    assert canonical_json({"big": 2**70, "f": 0.1}) == '{"big":1180591620717411303424,"f":0.1}'


def test_example_has_system_prompt_user_turn_and_canonical_target() -> None:
    built = build_example(decide([row()], OPTS), OPTS)
    ex = built.example
    assert ex is not None
    assert ex.system_prompt == "You analyse markets."
    assert ex.user == 'What sells best in shop 1?\n\nContext:\n{"shop":"shop-1"}'
    assert ex.target == '{"a":["insight 1"],"b":1}'
    assert ex.provenance == {
        "request_id": "q1",
        "response_id": "r1",
        "feedback_id": "f1",
        "model_name": "lexy",
        "model_version": "v7",
        "rating": "positive",
        "votes": 1,
    }
    other = build_example(decide([row(insight_type="unknown")], OPTS), OPTS).example
    assert other is not None and other.system_prompt == OPTS.default_system_prompt


def test_personal_data_is_scrubbed_in_prompt_context_and_output() -> None:
    r = row(
        prompt=f"I am {USER}, email me at me@shop.com",
        context_text=json.dumps({"phone": "+1 415 555 0100"}),
        output_text=json.dumps({"note": "card 4111 1111 1111 1111 on file"}),
    )
    built = build_example(decide([r], OPTS), OPTS)
    assert built.example is not None
    text = built.example.user + built.example.target
    assert USER not in text and "me@shop.com" not in text and "4111" not in text and "555" not in text
    assert dict(built.scrubbed) == {"[USER_ID]": 1, "[EMAIL]": 1, "[PHONE]": 1, "[CARD]": 1}


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"output_text": "{not json"}, Skip.invalid_output_json),
        ({"output_text": json.dumps("plain text answer")}, Skip.invalid_output_json),
        ({"output_text": json.dumps('{"a": 1')}, Skip.invalid_output_json),
        ({"output_text": "NaN"}, Skip.invalid_output_json),
        ({"output_text": None}, Skip.empty_output),
        ({"output_text": "{}"}, Skip.empty_output),
        ({"request_found": False, "request_id": None}, Skip.request_missing),
        ({"response_found": False}, Skip.response_missing),
        ({"prompt": None}, Skip.null_prompt),
        ({"prompt": "   "}, Skip.null_prompt),
        ({"prompt": "bad \udcff byte"}, Skip.invalid_text),
        ({"success": False}, Skip.response_failed),
        ({"prompt": "x" * 9000}, Skip.prompt_too_long),
        ({"context_text": "{oops"}, Skip.invalid_context_json),
    ],
)
def test_bad_logs_are_skipped_with_a_reason(changes: dict[str, object], reason: Skip) -> None:
    built = build_example(decide([row(**changes)], OPTS), OPTS)
    assert built.example is None
    assert built.skip is reason


def test_double_encoded_output_is_decoded() -> None:
    built = build_example(decide([row(output_text=json.dumps(json.dumps({"k": 1})))], OPTS), OPTS)
    assert built.example is not None and built.example.target == '{"k":1}'


def test_latest_feedback_wins_and_one_vote_per_user() -> None:
    pos = row(1, feedback_id="a", rating="positive")
    neg_later = row(2, feedback_id="b", rating="negative", response_id="r1")
    d = decide([pos, neg_later], OPTS)
    assert d.rating is Rating.negative and d.row.feedback_id == "b"
    # Net vote: the same user voting twice counts once (their latest).
    net = SelectionOptions(latest_feedback_wins=False)
    votes = [
        row(1, feedback_id="a", feedback_user_id="u1", rating="negative"),
        row(2, feedback_id="b", feedback_user_id="u2", rating="positive", response_id="r1"),
        row(3, feedback_id="c", feedback_user_id="u1", rating="positive", response_id="r1"),
    ]
    d = decide(votes, net)
    assert d.rating is Rating.positive and d.votes == 2
    all_votes = SelectionOptions(latest_feedback_wins=False, one_vote_per_user=False)
    tie = decide(votes[:2], all_votes)
    assert tie.rating is None and tie.skip is Skip.conflicting_ratings


def test_neutral_with_notes_is_opt_in() -> None:
    neutral = row(rating="neutral", notes="good but terse")
    stats = ExportStats()
    process_rows(iter([neutral]), OPTS, Deduper(), None, PreferencePairs(), stats)
    assert stats.selected == 0 and stats.skipped[Skip.rated_neutral] == 1
    opts = SelectionOptions(include_neutral_with_notes=True)
    stats = ExportStats()
    process_rows(iter([neutral, row(2, rating="neutral")]), opts, Deduper(), None, PreferencePairs(), stats)
    assert stats.selected == 1 and stats.skipped[Skip.rated_neutral] == 1


def test_dedup_exact_near_earlier_and_validation() -> None:
    a = row(1, prompt="Best seller?", context_text=None, output_text='{"x": "Mugs!"}')
    exact = row(2, prompt="Best seller?", context_text=None, output_text='{"x":"Mugs!"}')
    near = row(3, prompt="best   SELLER", context_text=None, output_text='{"x": "mugs"}')
    earlier_user, earlier_target = "Old question", '{"y":1}'
    old = row(4, prompt=earlier_user, context_text=None, output_text=earlier_target)
    leaked = row(5, prompt="Held-out prompt", context_text=None, output_text='{"z": 2}')
    deduper = Deduper()
    deduper.add_earlier(earlier_user, earlier_target, validation=False)
    deduper.add_earlier("held-out PROMPT!", "a different answer", validation=True)
    stats = ExportStats()
    process_rows(iter([a, exact, near, old, leaked]), OPTS, deduper, None, PreferencePairs(), stats)
    assert stats.selected == 1
    assert dict(stats.deduped) == {
        Dup.exact_in_export: 1,
        Dup.near_in_export: 1,
        Dup.earlier_training: 1,
        Dup.validation_split: 1,
    }
    assert normalize_text("Héllo,  WORLD!") == "héllo world"


def test_preference_pairs_need_a_positive_for_the_same_prompt() -> None:
    good = row(1, prompt="Same q", context_text=None, output_text='{"a": "good"}')
    bad = row(2, prompt="same Q", context_text="{}", output_text='{"a": "bad"}', rating="negative")
    lonely_bad = row(3, prompt="Other", rating="negative")
    prefs = PreferencePairs()
    stats = ExportStats()
    process_rows(iter([good, bad, lonely_bad]), OPTS, Deduper(), None, prefs, stats)
    pairs = prefs.pairs()
    assert len(pairs) == 1
    chosen, rejected = pairs[0]
    assert chosen.target == '{"a":"good"}' and rejected.target == '{"a":"bad"}'
    assert stats.skipped[Skip.rated_negative] == 2


def test_written_file_passes_the_dataset_validator_and_is_deterministic(tmp_path: Path) -> None:
    def write(directory: Path) -> tuple[bytes, bytes]:
        writer = ExportWriter(directory, T0, T0 + timedelta(days=1), FileOptions())
        prefs = PreferencePairs()
        stats = ExportStats()
        rows = [row(i) for i in range(1, 6)] + [
            row(9, prompt="What sells best in shop 1?", context_text='{"shop":"shop-1"}', rating="negative")
        ]
        process_rows(iter(rows), OPTS, Deduper(), writer, prefs, stats)
        written = writer.finish(prefs.pairs())
        checked = validate_dataset(written.training_file)
        assert checked.ok, checked.messages()
        assert checked.conversations == 5 and checked.pairs == 5
        assert written.preferences_file is not None and written.preference_pairs == 1
        chat = [json.loads(line) for line in written.chat_file.read_text().splitlines()]
        assert [m["role"] for m in chat[0]["messages"]] == ["system", "user", "assistant"]
        assert chat[0]["provenance"]["feedback_id"] == "f1"
        return written.training_file.read_bytes(), written.chat_file.read_bytes()

    first = write(tmp_path / "a")
    assert first == write(tmp_path / "b")
    data = json.loads(first[0])
    meta = data["training_file_metadata"]
    assert meta["format_spec"] == "brightrun-lora-v4" and meta["total_training_pairs"] == 5
    assert data["conversations"][0]["training_pairs"][0]["provenance"]["response_id"] == "r1"
