"""The chat-shaped export end to end (issue 19) and exam conversations held out of every
export (issue 25), through the export's door on SQLite and Postgres: a multi-turn,
free-text fixture (tests/fixtures/data/chat_logs.json) becomes a valid brightrun-lora-v4
file whose conversations keep their turns in order."""

from __future__ import annotations

import json
import random
from datetime import timedelta
from pathlib import Path
from typing import Any

from brightrun.registry import evalsets
from brightrun.registry.evalsets import ConversationFingerprint
from brightrun.resources import Resources
from tasks.dataset.schema import validate_dataset
from tasks.evalsets.fingerprint import fingerprint_file
from tasks.feedback import ExportOptions, export_feedback_window
from tasks.feedback.select import SelectionOptions
from tasks.feedback.shape import ExportShape
from tests.integration.test_export_feedback import W1, W2, Logs, resources  # noqa: F401 - fixture

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "data" / "chat_logs.json"
CONFIGURED_PROMPT = "You are the bank's assistant."
CHAT = ExportOptions(
    selection=SelectionOptions(default_system_prompt=CONFIGURED_PROMPT, pii_spacy_model="none"),
    shape=ExportShape(
        conversation_keys=["conversation_id", "session_id"],
        output_text_field="reply",
        system_prompt_key="system_prompt",
        context_in_user_turn=False,
    ),
)


def load_fixture(logs: Logs, window_start: Any) -> dict[str, Any]:
    fixture = json.loads(FIXTURE.read_text())
    turns = [
        (conversation, turn) for conversation in fixture["conversations"] for turn in conversation["turns"]
    ]
    random.Random(3).shuffle(turns)  # inserted out of order: the order must come from the times
    for conversation, turn in turns:
        context: dict[str, Any] = {"session_id": conversation["session_id"], "channel": "app"}
        if conversation["system_prompt"]:
            context["system_prompt"] = conversation["system_prompt"]
        logs.add(
            window_start + timedelta(minutes=turn["minute"]),
            prompt=turn["prompt"],
            output={"reply": turn["reply"], "tokens": len(turn["reply"].split())},
            rating=turn["rating"],
            context=context,
            insight_type="chat",
        )
    return fixture


def test_multi_turn_free_text_logs_export_as_ordered_conversations(resources: Resources) -> None:  # noqa: F811
    fixture = load_fixture(Logs(resources.registry), W1[0])
    result = export_feedback_window(resources, since=W1[0], until=W1[1], options=CHAT)
    assert result.status == "exported", result.message
    path = Path(result.training_file_uri or "")
    assert validate_dataset(path).ok
    data = json.loads(path.read_text())
    exported = data["conversations"]
    # sess-003's only turn was rated down: nothing to train on, so not exported.
    assert len(exported) == 2 and result.stats.context_only_conversations == 1
    assert "| conversations with no turn to train on | 1 |" in result.report
    by_first_input = {c["training_pairs"][0]["current_user_input"]: c for c in exported}
    for source in fixture["conversations"][:2]:
        conversation = by_first_input[source["turns"][0]["prompt"]]
        pairs = conversation["training_pairs"]
        assert [p["current_user_input"] for p in pairs] == [t["prompt"] for t in source["turns"]]
        assert [p["turn_number"] for p in pairs] == list(range(1, len(pairs) + 1))
        assert [p["target_response"] for p in pairs] == [
            t["reply"] if t["rating"] == "positive" else None for t in source["turns"]
        ]
        last = pairs[-1]["conversation_history"]
        assert [m["content"] for m in last] == [
            text for t in source["turns"][:-1] for text in (t["prompt"], t["reply"])
        ]
        assert {p["system_prompt"] for p in pairs} == {source["system_prompt"] or CONFIGURED_PROMPT}
        assert all("app" not in p["current_user_input"] for p in pairs)
    assert data["training_file_metadata"]["total_training_pairs"] == 6


def test_exam_conversations_are_held_out_and_counted(resources: Resources) -> None:  # noqa: F811
    logs = Logs(resources.registry)
    options = CHAT.model_copy(update={"shape": ExportShape(output_text_field="reply")})
    for minute, question in enumerate(["How do I budget?", "What is an ETF?", "Should I refinance?"]):
        logs.add(W1[0] + timedelta(minutes=minute), prompt=question, output={"reply": f"About {question}"})
        logs.add(W2[0] + timedelta(minutes=minute), prompt=question, output={"reply": f"About {question}"})
    first = export_feedback_window(resources, since=W1[0], until=W1[1], options=options)
    assert first.examples == 3
    exam = fingerprint_file(Path(first.training_file_uri or ""))
    assert exam is not None
    evalsets.register(
        resources.registry,
        name="exam",
        sha256="0" * 64,
        storage_key="evalsets/exam.json",
        storage_url="file:///exam.json",
        conversations=[ConversationFingerprint(c.conversation_id, c.fingerprint) for c in exam[:2]],
        source_description="two of the first export's conversations",
        created_by="test",
    )
    # The second window asks the same questions again and gets the same answers.
    second = export_feedback_window(resources, since=W2[0], until=W2[1], options=options, dry_run=True)
    assert second.stats.held_out_for_exam == 2, second.report
    assert "| held out for the exam | 2 |" in second.report
    # The third is no exam conversation: the earlier file's dedup drops it as before.
    assert sum(second.stats.deduped.values()) == 1 and second.stats.selected == 0
