"""Validation of brightrun-lora-v4 files: every problem at once, each located (no tokenizer needed)."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tasks.dataset.schema import validate_dataset

SYSTEM = "You are a kind financial planning assistant."


def make_pair(
    conv: str, turn: int, history: list[dict[str, str]], *, target: str | None = "ok", quality: float = 4
) -> dict[str, Any]:
    return {
        "id": f"{conv}-p{turn}",
        "turn_number": turn,
        "system_prompt": SYSTEM,
        "conversation_history": copy.deepcopy(history),
        "current_user_input": f"question {turn} of {conv}?",
        "emotional_context": {"detected_emotions": {"primary": "hope"}},
        "target_response": target,
        "training_metadata": {"quality_score": quality, "difficulty_level": "x", "demonstrates_skills": []},
    }


def make_conversation(
    conv: str,
    turns: int = 3,
    *,
    targets: list[str | None] | None = None,
    qualities: list[float] | None = None,
) -> dict[str, Any]:
    """A consistent conversation: each pair's history is the earlier inputs and replies."""
    targets = targets or [f"Reply {t} for {conv}: take one small step." for t in range(1, turns + 1)]
    qualities = qualities or [4] * turns
    history: list[dict[str, str]] = []
    pairs = []
    for t in range(1, turns + 1):
        target = targets[t - 1]
        pair = make_pair(conv, t, history, target=target, quality=qualities[t - 1])
        pairs.append(pair)
        said = target if target is not None else f"(unrecorded reply {t} for {conv})"
        history += [
            {"role": "user", "content": pair["current_user_input"]},
            {"role": "assistant", "content": said},
        ]
    return {
        "conversation_metadata": {
            "conversation_id": conv,
            "total_turns": turns,
            "scaffolding": {"persona_key": "a", "emotional_arc_key": "b", "training_topic_key": "c"},
        },
        "training_pairs": pairs,
    }


def make_file(conversations: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "training_file_metadata": {
            "file_name": "test",
            "version": "4.0.0",
            "format_spec": "brightrun-lora-v4",
            "total_conversations": len(conversations),
        },
        "consultant_profile": {"name": "Test"},
        "conversations": conversations,
    }


def write(tmp_path: Path, data: Any, name: str = "data.json") -> Path:
    path = tmp_path / name
    path.write_bytes(data if isinstance(data, bytes) else json.dumps(data).encode())
    return path


def problems(tmp_path: Path, data: Any) -> list[str]:
    result = validate_dataset(write(tmp_path, data))
    assert not result.ok
    return result.messages()


def test_valid_file_has_no_problems(tmp_path: Path) -> None:
    result = validate_dataset(write(tmp_path, make_file([make_conversation("c1"), make_conversation("c2")])))
    assert result.ok, result.messages()
    assert (result.conversations, result.pairs) == (2, 6)
    assert result.sha256 is not None and len(result.sha256) == 64


def test_sample_files_are_valid(sample_dataset: Path) -> None:
    result = validate_dataset(sample_dataset)
    assert result.ok, result.messages()
    assert result.conversations == 12 and result.pairs == 72


def test_unknown_fields_are_kept_not_rejected(tmp_path: Path) -> None:
    data = make_file([make_conversation("c1")])
    data["extra_top"] = {"x": 1}
    data["conversations"][0]["notes"] = "kept"
    data["conversations"][0]["training_pairs"][0]["reviewer"] = "ana"
    data["conversations"][0]["training_pairs"][0]["training_metadata"]["rubric"] = [1, 2]
    assert validate_dataset(write(tmp_path, data)).ok


def test_not_json(tmp_path: Path) -> None:
    msgs = problems(tmp_path, b"this is not json at all")
    assert len(msgs) == 1 and "not valid JSON" in msgs[0]


def test_truncated_json_names_last_complete_conversation(tmp_path: Path) -> None:
    raw = json.dumps(make_file([make_conversation("c1"), make_conversation("c2")])).encode()
    cut = raw.index(b'"c2"') + 10
    msgs = problems(tmp_path, raw[:cut])
    assert any("truncated" in m and "after c1" in m for m in msgs), msgs


def test_top_level_must_be_object(tmp_path: Path) -> None:
    assert "top level must be a JSON object" in problems(tmp_path, [1, 2])[0]


def test_wrong_format_spec(tmp_path: Path) -> None:
    data = make_file([make_conversation("c1")])
    data["training_file_metadata"]["format_spec"] = "brightrun-lora-v3"
    msgs = problems(tmp_path, data)
    assert msgs == [
        "field training_file_metadata.format_spec: is 'brightrun-lora-v3'; this pipeline reads "
        "'brightrun-lora-v4' files"
    ]


def test_missing_required_fields_name_conversation_pair_and_field(tmp_path: Path) -> None:
    data = make_file([make_conversation("c1"), make_conversation("c2")])
    del data["conversations"][0]["training_pairs"][1]["current_user_input"]
    del data["conversations"][1]["conversation_metadata"]["conversation_id"]
    del data["conversations"][1]["training_pairs"][2]["target_response"]
    msgs = problems(tmp_path, data)
    assert "conversation c1, pair c1-p2 (#1) turn 2, field current_user_input: Field required" in msgs
    assert "conversation #1, field conversation_metadata.conversation_id: Field required" in msgs
    assert "conversation #1, pair c2-p3 (#2) turn 3, field target_response: Field required" in msgs


def test_missing_metadata_and_conversations(tmp_path: Path) -> None:
    msgs = problems(tmp_path, {"something": 1})
    assert "field training_file_metadata: missing" in msgs
    assert "field conversations: missing" in msgs


def test_wrong_types(tmp_path: Path) -> None:
    data = make_file([make_conversation("c1")])
    pair = data["conversations"][0]["training_pairs"][0]
    pair["turn_number"] = "1"
    pair["training_metadata"]["quality_score"] = "high"
    pair["conversation_history"] = "none"
    msgs = problems(tmp_path, data)
    assert any(
        m.startswith("conversation c1, pair c1-p1 (#0), field turn_number:") and "'1'" in m for m in msgs
    )
    assert any("field training_metadata.quality_score" in m for m in msgs)
    assert any("field conversation_history" in m for m in msgs)


def test_conversations_not_a_list(tmp_path: Path) -> None:
    data = make_file([])
    data["conversations"] = {"c1": 1}
    assert "field conversations: must be a list, got dict" in problems(tmp_path, data)


def test_empty_conversations(tmp_path: Path) -> None:
    msgs = problems(tmp_path, make_file([]))
    assert msgs == ["field conversations: is empty; a training file needs at least one conversation"]


def test_empty_training_pairs(tmp_path: Path) -> None:
    conv = make_conversation("c1")
    conv["training_pairs"] = []
    msgs = problems(tmp_path, make_file([conv]))
    assert len(msgs) == 1 and msgs[0].startswith("conversation c1, field training_pairs:")


def test_role_outside_system_user_assistant(tmp_path: Path) -> None:
    data = make_file([make_conversation("c1")])
    data["conversations"][0]["training_pairs"][1]["conversation_history"][0]["role"] = "tool"
    msgs = problems(tmp_path, data)
    assert len(msgs) == 1
    assert msgs[0].startswith("conversation c1, pair c1-p2 (#1) turn 2, field conversation_history[0].role:")
    assert "'tool'" in msgs[0]


def test_duplicate_pair_ids_across_conversations(tmp_path: Path) -> None:
    c1, c2 = make_conversation("c1"), make_conversation("c2")
    c2["training_pairs"][0]["id"] = "c1-p3"
    msgs = problems(tmp_path, make_file([c1, c2]))
    assert msgs == [
        "conversation c2, pair c1-p3 (#0) turn 1, field id: "
        "duplicate pair id (already used in conversation c1)"
    ]


def test_duplicate_conversation_ids(tmp_path: Path) -> None:
    c1, c2 = make_conversation("c1"), make_conversation("c2")
    c2["conversation_metadata"]["conversation_id"] = "c1"
    for p in c2["training_pairs"]:
        p["id"] += "-b"
    msgs = problems(tmp_path, make_file([c1, c2]))
    assert msgs == ["conversation c1, field conversation_metadata.conversation_id: duplicate conversation id"]


def test_turn_numbers_out_of_order(tmp_path: Path) -> None:
    data = make_file([make_conversation("c1")])
    data["conversations"][0]["training_pairs"][2]["turn_number"] = 2
    msgs = problems(tmp_path, data)
    assert msgs == [
        "conversation c1, pair c1-p3 (#2) turn 2, field turn_number: turn numbers must increase within a "
        "conversation; 2 follows 2"
    ]


def test_invalid_utf8_names_byte_and_line(tmp_path: Path) -> None:
    raw = json.dumps(make_file([make_conversation("c1"), make_conversation("c2")]), indent=1).encode()
    pos = raw.index(b"Reply 2 for c2")
    bad = raw[:pos] + b"\xff\xfe" + raw[pos:]
    msgs = problems(tmp_path, bad)
    line = bad[:pos].count(b"\n") + 1
    assert len(msgs) == 1
    assert f"invalid UTF-8 at byte {pos} (line {line})" in msgs[0]


def test_all_problems_reported_at_once(tmp_path: Path) -> None:
    convs = [make_conversation(f"c{i}") for i in range(5)]
    convs[1]["training_pairs"][0]["turn_number"] = 0
    convs[3]["training_pairs"][1]["system_prompt"] = None
    convs[4]["conversation_metadata"]["total_turns"] = "3"
    msgs = problems(tmp_path, make_file(convs))
    assert len(msgs) == 3
    assert [m.split(",")[0] for m in msgs] == ["conversation c1", "conversation c3", "conversation c4"]


def test_validator_imports_without_torch_transformers_or_prefect() -> None:
    code = (
        "import sys, tasks.dataset, tasks.dataset.schema;"
        "bad=[m for m in ('torch','transformers','prefect') if m in sys.modules];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])


def test_a_utf8_byte_order_mark_is_accepted_as_json_allows(tmp_path: Path) -> None:
    """Windows editors save UTF-8 with a BOM; it once failed late, after Prefect had started."""
    plain = write(tmp_path, make_file([make_conversation("c1"), make_conversation("c2")]))
    with_bom = tmp_path / "with-bom.json"
    with_bom.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes())
    result = validate_dataset(with_bom)
    assert result.ok, result.messages()
    assert (result.conversations, result.pairs) == (2, 6)
    # The recorded hash is the file's own bytes, as every other reader of the file sees them.
    import hashlib

    assert result.sha256 == hashlib.sha256(with_bom.read_bytes()).hexdigest()
