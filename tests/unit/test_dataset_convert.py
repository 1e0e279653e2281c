"""Merging, masking and windowing with a real tokenizer and its chat template."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from brightrun.prepared import IGNORE_INDEX
from tasks.dataset.convert import (
    CandidateSequence,
    ChatEncoder,
    ConversionStats,
    Msg,
    build_runs,
    plan_windows,
)
from tasks.dataset.schema import Conversation, validate_dataset
from tests.unit.test_dataset_schema import SYSTEM, make_conversation

CHATML = (
    "{% for m in messages %}"
    "{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@pytest.fixture(scope="module")
def tokenizer(tiny_model: Path) -> Any:
    from tasks.dataset.tokenizer import load_tokenizer

    return load_tokenizer(tiny_model)


@pytest.fixture(scope="module")
def encoder(tokenizer: Any) -> ChatEncoder:
    return ChatEncoder(tokenizer)


def conv(raw: dict[str, Any]) -> Conversation:
    return Conversation.model_validate(raw)


def trained_segments(ids: list[int], labels: list[int]) -> list[list[int]]:
    segments: list[list[int]] = []
    current: list[int] = []
    for token, label in zip(ids, labels, strict=True):
        if label != IGNORE_INDEX:
            assert label == token
            current.append(token)
        elif current:
            segments.append(current)
            current = []
    if current:
        segments.append(current)
    return segments


def per_pair_supervision(
    encoder: ChatEncoder, raw: dict[str, Any], min_quality: float
) -> dict[str, list[int]]:
    """What one example per pair would train: pair id -> trained token ids."""
    out = {}
    for pair in raw["training_pairs"]:
        if pair["target_response"] is None or pair["training_metadata"]["quality_score"] < min_quality:
            continue
        msgs = [Msg(t["role"], t["content"]) for t in pair["conversation_history"]]
        msgs += [
            Msg("user", pair["current_user_input"]),
            Msg("assistant", pair["target_response"], pair["id"], True),
        ]
        enc = encoder.encode_many([(pair["system_prompt"], msgs)])[0]
        (segment,) = trained_segments(enc.input_ids, enc.labels)
        out[pair["id"]] = segment
    return out


def merged_supervision(encoder: ChatEncoder, runs: list[CandidateSequence]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for enc in encoder.encode_many([(r.system, r.messages) for r in runs]):
        segments = trained_segments(enc.input_ids, enc.labels)
        assert len(segments) == len(enc.pair_ids)
        for pid, seg in zip(enc.pair_ids, segments, strict=True):
            assert pid not in out, f"{pid} trained twice"
            out[pid] = seg
    return out


def test_consistent_conversation_becomes_one_sequence(encoder: ChatEncoder, tokenizer: Any) -> None:
    raw = make_conversation("c1", 4)
    stats = ConversionStats()
    runs = build_runs(conv(raw), 3, stats)
    assert len(runs) == 1 and stats.merged_conversations == 1 and stats.mismatches == 0
    assert [m.role for m in runs[0].messages] == ["user", "assistant"] * 4
    (enc,) = encoder.encode_many([(runs[0].system, runs[0].messages)])
    assert enc.pair_ids == [p["id"] for p in raw["training_pairs"]]
    decoded = [tokenizer.decode(s) for s in trained_segments(enc.input_ids, enc.labels)]
    # The reply and its end-of-turn token, nothing of the next header.
    assert decoded == [p["target_response"] + "<|eot_id|>" for p in raw["training_pairs"]]
    assert tokenizer.decode(enc.input_ids).count(SYSTEM) == 1


def test_same_supervision_as_one_example_per_pair(encoder: ChatEncoder, sample_dataset: Path) -> None:
    import json

    data = json.loads(sample_dataset.read_text())
    for raw in data["conversations"][:6]:
        runs = build_runs(conv(raw), 3, ConversionStats())
        assert merged_supervision(encoder, runs) == per_pair_supervision(encoder, raw, 3)


def test_null_target_is_context_filled_from_next_history(encoder: ChatEncoder, tokenizer: Any) -> None:
    raw = make_conversation("c1", 3, targets=["first reply.", None, "third reply."])
    stats = ConversionStats()
    (run,) = build_runs(conv(raw), 3, stats)
    assert stats.skipped["null_target"] == 1 and stats.kept_targets == 2
    assert run.messages[3].content == "(unrecorded reply 2 for c1)" and not run.messages[3].trained
    (enc,) = encoder.encode_many([(run.system, run.messages)])
    assert "(unrecorded reply 2 for c1)" in tokenizer.decode(enc.input_ids)
    assert [tokenizer.decode(s) for s in trained_segments(enc.input_ids, enc.labels)] == [
        "first reply.<|eot_id|>",
        "third reply.<|eot_id|>",
    ]


def test_low_quality_targets_are_context_only(encoder: ChatEncoder) -> None:
    raw = make_conversation("c1", 3, qualities=[4, 2, 4])
    stats = ConversionStats()
    (run,) = build_runs(conv(raw), 3, stats)
    assert stats.skipped["below_min_quality"] == 1
    assert run.trained_pairs() == ["c1-p1", "c1-p3"]
    assert stats.quality_histogram == {"4": 2, "2": 1}


def test_trailing_untrained_turns_are_dropped() -> None:
    raw = make_conversation("c1", 3, qualities=[4, 1, 1])
    (run,) = build_runs(conv(raw), 3, ConversionStats())
    assert len(run.messages) == 2


def test_disagreeing_history_splits_into_consistent_runs(encoder: ChatEncoder) -> None:
    raw = make_conversation("c1", 4)
    # Pair 3 remembers a different reply to turn 1: it cannot share a sequence with pairs 1-2.
    raw["training_pairs"][2]["conversation_history"][1]["content"] = "an edited earlier reply"
    raw["training_pairs"][3]["conversation_history"][1]["content"] = "an edited earlier reply"
    stats = ConversionStats()
    runs = build_runs(conv(raw), 3, stats)
    assert stats.mismatches == 1 and stats.split_conversations == 1
    assert stats.mismatch_examples == ["conversation c1, pair c1-p3 (#2) turn 3, field conversation_history"]
    assert [r.trained_pairs() for r in runs] == [["c1-p1", "c1-p2"], ["c1-p3", "c1-p4"]]
    assert merged_supervision(encoder, runs) == per_pair_supervision(encoder, raw, 3)


def test_changed_system_prompt_starts_a_new_run() -> None:
    raw = make_conversation("c1", 3)
    raw["training_pairs"][2]["system_prompt"] = "another persona"
    stats = ConversionStats()
    runs = build_runs(conv(raw), 3, stats)
    assert len(runs) == 2 and runs[1].system == "another persona"
    assert stats.mismatch_examples[0].endswith("field system_prompt")


def test_mask_works_with_another_chat_template(tokenizer: Any) -> None:
    chatml = copy.deepcopy(tokenizer)
    chatml.chat_template = CHATML
    encoder = ChatEncoder(chatml)
    raw = make_conversation("c1", 2)
    (run,) = build_runs(conv(raw), 3, ConversionStats())
    (enc,) = encoder.encode_many([(run.system, run.messages)])
    decoded = [chatml.decode(s) for s in trained_segments(enc.input_ids, enc.labels)]
    assert decoded == [p["target_response"] + "<|im_end|>\n" for p in raw["training_pairs"]]


def test_over_long_run_is_windowed_keeping_system_and_every_target(encoder: ChatEncoder) -> None:
    raw = make_conversation("c1", 8)
    (run,) = build_runs(conv(raw), 3, ConversionStats())
    full = encoder.length(run.system, run.messages)
    limit = full // 2
    windows, unfit = plan_windows(encoder, run, limit)
    assert unfit == [] and len(windows) >= 2
    encoded = encoder.encode_many(windows)
    assert all(len(e.input_ids) <= limit for e in encoded)
    assert [pid for e in encoded for pid in e.pair_ids] == run.trained_pairs()
    for system, msgs in windows:
        assert system == SYSTEM and msgs[0].role == "user" and msgs[-1].trained
    # The later window still carries older history as context where it fits.
    assert len(windows[1][1]) > 2


def test_target_that_cannot_fit_is_reported(encoder: ChatEncoder) -> None:
    raw = make_conversation("c1", 2, targets=["short.", "long " * 300])
    (run,) = build_runs(conv(raw), 3, ConversionStats())
    windows, unfit = plan_windows(encoder, run, 120)
    assert [m.pair_id for m in unfit] == ["c1-p2"]
    assert [w[1][-1].pair_id for w in windows] == ["c1-p1"]


def test_sample_histories_are_consistent(sample_dataset: Path) -> None:
    import ijson

    from tasks.dataset.schema import DatasetScanner

    scanner = DatasetScanner(sample_dataset)
    stats = ConversionStats()
    for c in scanner.conversations():
        build_runs(c, 3, stats)
    assert stats.mismatches == 0 and stats.merged_conversations == 12
    assert validate_dataset(sample_dataset).ok and ijson


def test_fast_render_matches_apply_chat_template(tokenizer: Any, sample_dataset: Path) -> None:
    import json

    fast = ChatEncoder(tokenizer)
    assert fast._fast_render is not None
    slow = ChatEncoder(tokenizer)
    slow._fast_render = None  # the public apply_chat_template path
    runs = []
    for raw in json.loads(sample_dataset.read_text())["conversations"][:4]:
        runs += [(r.system, r.messages) for r in build_runs(conv(raw), 3, ConversionStats())]
    assert [(e.input_ids, e.labels) for e in fast.encode_many(runs)] == [
        (e.input_ids, e.labels) for e in slow.encode_many(runs)
    ]


NUMBERED = (
    "{{ bos_token }}{% for message in messages %}{{ loop.index }}|{{ message['role'] }}: "
    "{{ message['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}{{ (messages | length) + 1 }}|assistant: {% endif %}"
)


@pytest.mark.parametrize("template", ["llama3", "chatml", "numbered"])
def test_every_render_path_gives_the_same_mask(tokenizer: Any, sample_dataset: Path, template: str) -> None:
    """One render per conversation (role frames), one per message, or one per prefix: the
    cheaper paths are taken only where they reproduce the template, and then agree exactly.
    A template whose text depends on the turn's position (numbered) falls back."""
    import json

    tok = copy.deepcopy(tokenizer)
    tok.chat_template = {"llama3": tok.chat_template, "chatml": CHATML, "numbered": NUMBERED}[template]
    runs = []
    for raw in json.loads(sample_dataset.read_text())["conversations"][:3]:
        runs += [(r.system, r.messages) for r in build_runs(conv(raw), 3, ConversionStats())]
    fast = ChatEncoder(tok)
    per_message = ChatEncoder(tok)
    per_message._structural = lambda *a: None  # type: ignore[method-assign]
    prefixes = ChatEncoder(tok)
    prefixes._fast_render = None
    expected = [(e.input_ids, e.labels) for e in prefixes.encode_many(runs)]
    assert [(e.input_ids, e.labels) for e in fast.encode_many(runs)] == expected
    assert [(e.input_ids, e.labels) for e in per_message.encode_many(runs)] == expected
    structural = [fast._structural(system, msgs) for system, msgs in runs]
    assert all(r is None for r in structural) if template == "numbered" else all(structural)
