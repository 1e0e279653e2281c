"""The chat shape of the feedback export (issue 19): conversation keys, free-text outputs,
the system prompt from the request context, and exam conversations held out (issue 25).
Pure: rows in, examples and files out, no database."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from brightrun.settings import load_settings
from tasks.dataset.schema import validate_dataset
from tasks.evalsets.fingerprint import fingerprint_file, turns_fingerprint
from tasks.feedback import ExportStats, process_rows
from tasks.feedback.dedup import Deduper
from tasks.feedback.read import LogRow
from tasks.feedback.select import PreferencePairs, SelectionOptions, Skip, build_example, decide
from tasks.feedback.shape import ExportShape
from tasks.feedback.write import ExportWriter, FileOptions

T0 = datetime(2026, 1, 1, tzinfo=UTC)
OPTS = SelectionOptions(default_system_prompt="You are the configured assistant.", pii_spacy_model="none")
CHAT = ExportShape(
    conversation_keys=["conversation_id", "session_id"],
    output_text_field="reply",
    system_prompt_key="system_prompt",
)


def row(n: int, *, context: Any = None, output: Any = None, rating: str = "positive", **kw: Any) -> LogRow:
    base = LogRow(
        feedback_id=f"f{n:03d}",
        response_id=f"r{n:03d}",
        feedback_user_id="rater-0001",
        rating=rating,
        notes=None,
        feedback_at=T0 + timedelta(minutes=n, seconds=30),
        response_found=True,
        request_id=f"q{n:03d}",
        request_found=True,
        output_text=json.dumps(output if output is not None else {"reply": f"answer {n}"}),
        model_name="chat",
        model_version="v1",
        success=True,
        request_user_id="user-0001",
        prompt=f"question {n}",
        context_text=None if context is None else json.dumps(context),
        insight_type="chat",
        requested_at=T0 + timedelta(minutes=n),
    )
    return replace(base, **kw)


def export(rows: list[LogRow], tmp_path: Path, shape: ExportShape, exam: frozenset[str] = frozenset()):
    stats = ExportStats()
    writer = ExportWriter(tmp_path / "out", T0, T0 + timedelta(days=1), FileOptions())
    process_rows(
        iter(sorted(rows, key=lambda r: r.response_id or "")),
        OPTS,
        Deduper(),
        writer,
        PreferencePairs(),
        stats,
        shape=shape,
        exam=exam,
    )
    written = writer.finish([])
    return stats, written, json.loads(written.training_file.read_text())


def test_the_shape_is_validated_once_with_none_meaning_each_request_alone() -> None:
    assert ExportShape(conversation_keys="none").conversation_keys == []
    assert ExportShape(conversation_keys="session_id, chat_id").conversation_keys == ["session_id", "chat_id"]
    assert ExportShape(output_text_field="json").output_text_field is None
    assert not ExportShape().grouped and not ExportShape().free_text
    with pytest.raises(ValidationError, match="conversation_keys"):
        ExportShape(conversation_keys="session id")
    with pytest.raises(ValidationError, match="output_text_field"):
        ExportShape(output_text_field="a b")
    settings = load_settings(
        export_conversation_keys="session_id", export_output_text_field="reply", export_system_prompt_key="sp"
    )
    assert ExportShape.from_settings(settings) == ExportShape(
        conversation_keys=["session_id"], output_text_field="reply", system_prompt_key="sp"
    )
    assert ExportShape.from_settings(load_settings()) == ExportShape()
    quiet = ExportShape(context_in_user_turn=False)
    assert quiet.rendered_context({"account_tier": "gold"}) is None


def test_free_text_outputs_become_the_target_from_the_named_field_or_a_bare_string() -> None:
    shape = ExportShape(output_text_field="reply")
    with_field = row(1, output={"reply": "Save 10 %.", "tokens": 4})
    from_field = build_example(decide([with_field], OPTS), OPTS, shape)
    assert from_field.example is not None and from_field.example.target == "Save 10 %."
    bare = build_example(decide([row(2, output="Plain text answer.")], OPTS), OPTS, shape)
    assert bare.example is not None and bare.example.target == "Plain text answer."
    missing = build_example(decide([row(3, output={"text": "elsewhere"})], OPTS), OPTS, shape)
    assert missing.skip is Skip.no_output_text


def test_json_mode_stays_the_default_and_refuses_free_text() -> None:
    built = build_example(decide([row(1, output="Plain text answer.")], OPTS), OPTS)
    assert built.skip is Skip.invalid_output_json
    insight = build_example(decide([row(2, output={"top": ["mugs"]})], OPTS), OPTS)
    assert insight.example is not None and insight.example.target == '{"top":["mugs"]}'
    assert insight.example.system_prompt == "You are the configured assistant."
    assert insight.example.conversation is None


def test_system_prompt_comes_from_the_context_else_the_configuration() -> None:
    context = {"system_prompt": "You are Penny.", "session_id": "s1", "account_tier": "gold"}
    own = build_example(decide([row(1, context=context)], OPTS), OPTS, CHAT).example
    assert own is not None and own.system_prompt == "You are Penny."
    # The keys the shape consumed are bookkeeping, not part of what the user asked.
    assert "session_id" not in own.user and "You are Penny" not in own.user and "gold" in own.user
    assert own.conversation == "session_id=s1"
    configured = build_example(decide([row(2, context={"session_id": "s1"})], OPTS), OPTS, CHAT).example
    assert configured is not None and configured.system_prompt == "You are the configured assistant."
    assert configured.user == "question 2"


def test_a_conversation_exports_its_turns_in_order_with_history(tmp_path: Path) -> None:
    ctx = {"conversation_id": "c-1", "system_prompt": "You are Penny."}
    rows = [
        # Response ids sort against the asked order: the order must come from requested_at.
        row(3, context=ctx, response_id="r-a"),
        row(1, context=ctx, response_id="r-c"),
        row(2, context=ctx, response_id="r-b", rating="negative"),
        row(4, context={"session_id": "other"}, response_id="r-d"),
        row(5, response_id="r-e"),  # no conversation id: stands alone
        row(6, context={"session_id": "down"}, response_id="r-f", rating="negative"),
    ]
    stats, written, data = export(rows, tmp_path, CHAT)
    assert validate_dataset(written.training_file).ok
    conversations = {c["conversation_metadata"]["conversation_id"]: c for c in data["conversations"]}
    chat = conversations["fb-chat-r-c"]
    pairs = chat["training_pairs"]
    assert [p["current_user_input"] for p in pairs] == ["question 1", "question 2", "question 3"]
    assert [p["turn_number"] for p in pairs] == [1, 2, 3]
    assert [p["target_response"] for p in pairs] == ["answer 1", None, "answer 3"]  # rated down: context
    assert pairs[2]["conversation_history"] == [
        {"role": "user", "content": "question 1"},
        {"role": "assistant", "content": "answer 1"},
        {"role": "user", "content": "question 2"},
        {"role": "assistant", "content": "answer 2"},
    ]
    assert {p["system_prompt"] for p in pairs} == {"You are Penny."}
    assert "fb-chat-r-d" in conversations and "fb-r-e" in conversations
    assert len(conversations) == 3 and written.examples == 3
    assert data["training_file_metadata"]["total_training_pairs"] == 5
    assert stats.context_only_conversations == 1  # "down": nothing to train on
    chat_lines = [json.loads(line) for line in written.chat_file.read_text().splitlines()]
    first = next(c for c in chat_lines if c["id"] == "fb-chat-r-c")
    assert [m["content"] for m in first["messages"]][1:] == [
        *("question 1", "answer 1", "question 2", "answer 2", "question 3", "answer 3")
    ]
    assert first["trained_turns"] == [1, 3]


def test_one_person_keeps_one_pseudonym_across_a_conversations_turns(tmp_path: Path) -> None:
    ctx = {"session_id": "s"}
    rows = [
        row(1, context=ctx, prompt="Hi, I'm Maria Lopez and I need a budget", response_id="r-2"),
        row(2, context=ctx, prompt="Maria again: what about rent?", response_id="r-1"),
    ]
    _, _, data = export(rows, tmp_path, CHAT)
    (conversation,) = data["conversations"]
    first, second = (p["current_user_input"] for p in conversation["training_pairs"])
    assert "Lopez" not in json.dumps(data) and "Maria" not in json.dumps(data)
    pseudonym_first = first.split("I'm ")[1].split(" and")[0].split()[0]
    assert second.startswith(f"{pseudonym_first} again")


def test_exam_conversations_are_held_out_in_both_shapes(tmp_path: Path) -> None:
    lone = [row(1), row(2)]
    _, written, _ = export(lone, tmp_path / "a", ExportShape(output_text_field="reply"))
    fingerprints = fingerprint_file(written.training_file)
    assert fingerprints is not None and len(fingerprints) == 2
    exam = frozenset({fingerprints[0].fingerprint})
    stats, written, data = export(lone, tmp_path / "b", ExportShape(output_text_field="reply"), exam)
    assert stats.held_out_for_exam == 1 and written.examples == 1
    assert data["conversations"][0]["conversation_metadata"]["conversation_id"] != (
        fingerprints[0].conversation_id
    )
    chat = [row(1, context={"session_id": "s"}), row(2, context={"session_id": "s"}), row(3)]
    exam = frozenset({turns_fingerprint([("question 1", "answer 1"), ("question 2", "answer 2")])})
    stats, written, data = export(chat, tmp_path / "c", CHAT, exam)
    assert stats.held_out_for_exam == 1 and written.examples == 1
    assert [c["conversation_metadata"]["conversation_id"] for c in data["conversations"]] == ["fb-r003"]
