"""Evaluation sets (issue 25): fingerprints, choosing held-out conversations, the registry,
the CLI, and the dataset stage refusing a training file that holds an exam conversation.

The backend tests take `resources` (the embedded SQLite registry here); the same tests run on
Postgres in tests/integration/test_evalsets_postgres.py.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from brightrun.errors import BrightrunError, InputError
from brightrun.registry import evalsets
from brightrun.registry import repository as repo
from brightrun.registry.evalsets import ConversationFingerprint
from brightrun.resources import Resources
from brightrun.spec import JobSpec
from brightrun.storage import sha256_bytes
from cli.main import app
from tasks.dataset.schema import Conversation
from tasks.dataset.stage import prepare_job_dataset
from tasks.evalsets import (
    FileConversation,
    HeldOutSet,
    Selection,
    canonical_content,
    choose_conversations,
    conversation_fingerprint,
    evaluation_conflicts,
)
from tests.fixtures.common import SAMPLE_DATASET


def sample() -> dict[str, Any]:
    return json.loads(SAMPLE_DATASET.read_text())


def conversations() -> list[Conversation]:
    return [Conversation.model_validate(c, strict=False) for c in sample()["conversations"]]


def disguised(raw: dict[str, Any], new_id: str) -> dict[str, Any]:
    """The same conversation with new ids, other whitespace and case, another system prompt."""
    out = copy.deepcopy(raw)
    out["conversation_metadata"]["conversation_id"] = new_id
    for i, pair in enumerate(out["training_pairs"]):
        pair["id"] = f"{new_id}-pair-{i}"
        pair["system_prompt"] = "You are a different assistant."
        pair["current_user_input"] = "  " + pair["current_user_input"].upper().replace(" ", "   ") + " \n"
        if pair["target_response"] is not None:
            pair["target_response"] = pair["target_response"].replace(" ", "\t ")
    return out


def cli(*args: str) -> tuple[int, str]:
    """The CLI in-process; a BrightrunError gives its exit code, as `brightrun` would."""
    result = CliRunner().invoke(app, list(args))
    if isinstance(result.exception, BrightrunError):
        return result.exception.exit_code, str(result.exception)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


# ---------------------------------------------------------------- pure


def test_a_fingerprint_ignores_ids_whitespace_case_and_system_prompt() -> None:
    raw = sample()["conversations"][0]
    original = Conversation.model_validate(raw, strict=False)
    copy_ = Conversation.model_validate(disguised(raw, "someone-else"), strict=False)
    assert conversation_fingerprint(original) == conversation_fingerprint(copy_)


def test_a_fingerprint_changes_with_any_user_or_assistant_turn() -> None:
    raw = sample()["conversations"][0]
    base = conversation_fingerprint(Conversation.model_validate(raw, strict=False))
    reply = copy.deepcopy(raw)
    reply["training_pairs"][-1]["target_response"] += " Also, call your bank."
    user = copy.deepcopy(raw)
    user["training_pairs"][0]["current_user_input"] = "Something else entirely."
    fingerprints = {
        conversation_fingerprint(Conversation.model_validate(r, strict=False)) for r in (reply, user)
    }
    assert base not in fingerprints and len(fingerprints) == 2
    others = {conversation_fingerprint(c) for c in conversations()}
    assert len(others) == len(conversations())  # the sample's conversations are all different


def test_choosing_is_deterministic_and_refuses_what_cannot_be_chosen() -> None:
    convs = conversations()
    first = choose_conversations(convs, Selection(take=3, seed=7))
    again = choose_conversations(list(reversed(convs)), Selection(take=3, seed=7))
    assert len(first) == 3 and {c.conversation_id for c in first} == {c.conversation_id for c in again}
    assert {c.conversation_id for c in choose_conversations(convs, Selection(take=3, seed=8))} != {
        c.conversation_id for c in first
    }
    picked = choose_conversations(convs, Selection(conversation_ids=(convs[4].conversation_id,)))
    assert [c.conversation_id for c in picked] == [convs[4].conversation_id]
    with pytest.raises(InputError, match="only 12 conversations"):
        choose_conversations(convs, Selection(take=13))
    with pytest.raises(InputError, match="not in the file") as info:
        choose_conversations(convs, Selection(conversation_ids=("nope",)))
    assert "nope: not found" in str(info.value)


def test_the_canonical_content_is_the_same_whatever_the_order() -> None:
    convs = conversations()[:4]
    a = canonical_content(convs, {"name": "Elena"})
    b = canonical_content(list(reversed(convs)), {"name": "Elena"})
    assert a == b and sha256_bytes(a) == sha256_bytes(b)
    assert canonical_content(convs[:3], {"name": "Elena"}) != a
    parsed = json.loads(a)
    assert parsed["training_file_metadata"]["format_spec"] == "brightrun-lora-v4"
    assert len(parsed["conversations"]) == 4


def test_conflicts_name_the_position_the_id_and_the_set() -> None:
    found = evaluation_conflicts(
        [FileConversation(1, "a", "f1"), FileConversation(17, "conv-17", "f2")],
        {"f2": HeldOutSet("exam-v1", 1)},
    )
    assert found == [
        "conversation 17 (id conv-17) is in evaluation set 'exam-v1' (version 1); remove it from the "
        "training file (an exam the model trained on measures nothing)"
    ]


def test_a_bad_reference_is_a_clear_input_error() -> None:
    assert evalsets.parse_ref("exam@2") == ("exam", 2)
    assert evalsets.parse_ref("exam") == ("exam", None)
    for bad in ("Exam", "exam@0", "exam@two", "", "../x"):
        with pytest.raises(InputError):
            evalsets.parse_ref(bad)


# ---------------------------------------------------------------- registry, CLI, dataset stage


@pytest.fixture
def resources(brightrun_home: Path) -> Iterator[Resources]:
    with Resources.from_settings() as res:
        yield res


def test_create_list_show_and_refuse_a_duplicate(resources: Resources, tmp_path: Path) -> None:
    rest = tmp_path / "rest.json"
    code, out = cli("evalset", "create", "exam", "--from", str(SAMPLE_DATASET), "--take", "3", "--seed", "1",
                    "--rest", str(rest), "--created-by", "maria", "--json")  # fmt: skip
    assert code == 0, out
    made = json.loads(out)
    assert (made["name"], made["version"], made["conversation_count"]) == ("exam", 1, 3)
    stored = resources.storage.get_bytes(made["storage_key"])
    assert made["storage_key"] == f"evalsets/{made['sha256']}.json" and sha256_bytes(stored) == made["sha256"]
    held_out = {c["conversation_metadata"]["conversation_id"] for c in json.loads(stored)["conversations"]}
    remaining = {
        c["conversation_metadata"]["conversation_id"] for c in json.loads(rest.read_text())["conversations"]
    }
    assert len(held_out) == 3 and len(remaining) == 9 and not held_out & remaining

    # The same conversations again, under any name: refused, nothing new registered.
    code, out = cli("evalset", "create", "other", "--from", str(SAMPLE_DATASET), "--take", "3", "--seed", "1")
    assert code == 2 and "already registered as evaluation set 'exam' (version 1)" in out
    # Another choice is the next version of the name.
    code, out = cli("evalset", "create", "exam", "--from", str(SAMPLE_DATASET), "--conversation",
                    "conv-0000-78255d68", "--json")  # fmt: skip
    assert code == 0 and json.loads(out)["version"] == 2
    code, out = cli("evalset", "create", "exam", "--from", str(SAMPLE_DATASET), "--take", "99")
    assert code == 2 and "only 12 conversations" in out
    code, out = cli("evalset", "create", "exam", "--from", str(SAMPLE_DATASET))
    assert code == 2 and "--take N or --conversation ID" in out

    code, out = cli("evalset", "list", "--json")
    assert code == 0 and [(r["name"], r["version"]) for r in json.loads(out)] == [("exam", 1), ("exam", 2)]
    code, out = cli("evalset", "show", "exam@1", "--json")
    shown = json.loads(out)
    assert code == 0 and shown["created_by"] == "maria"
    assert {c["conversation_id"] for c in shown["conversations"]} == held_out
    assert json.loads(cli("evalset", "show", "exam", "--json")[1])["version"] == 2  # newest
    code, out = cli("evalset", "show", "exam@9")
    assert code == 2 and "has no version 9; it has 1, 2" in out
    code, out = cli("evalset", "show", "nothing")
    assert code == 2 and "no evaluation set is named 'nothing'" in out


def test_registration_is_all_or_nothing(resources: Resources) -> None:
    engine = resources.registry
    twice = [ConversationFingerprint("a", "f" * 64), ConversationFingerprint("b", "f" * 64)]
    with pytest.raises(InputError, match="conversations a and b have the same user and assistant turns"):
        evalsets.register(engine, name="exam", sha256="0" * 64, storage_key="k", storage_url="u",
                          conversations=twice, source_description="", created_by=None)  # fmt: skip
    with pytest.raises(InputError, match="no conversations"):
        evalsets.register(engine, name="exam", sha256="0" * 64, storage_key="k", storage_url="u",
                          conversations=[], source_description="", created_by=None)  # fmt: skip
    assert evalsets.list_sets(engine) == [] and not evalsets.any_registered(engine)


HELD_OUT = "conv-0003-9b29b54b"


def _new_job(resources: Resources) -> tuple[str, JobSpec]:
    job = repo.create_job(resources.registry, job_name="evalset test", base_model="tiny-llama")
    return str(job.id), JobSpec(job_id=str(job.id), base_model="tiny-llama")


def test_the_dataset_stage_refuses_a_training_file_holding_an_exam_conversation(
    resources: Resources, tmp_path: Path
) -> None:
    code, out = cli("evalset", "create", "exam-v1", "--from", str(SAMPLE_DATASET), "--conversation",
                    HELD_OUT, "--json")  # fmt: skip
    assert code == 0, out
    data = sample()
    kept = [c for c in data["conversations"] if c["conversation_metadata"]["conversation_id"] != HELD_OUT]
    copies = [disguised(c, f"copy-{i}") for i, c in enumerate(kept[:5])]
    # The held-out conversation, disguised (new ids, whitespace, case, system prompt), 17th.
    exam = next(c for c in data["conversations"] if c["conversation_metadata"]["conversation_id"] == HELD_OUT)
    data["conversations"] = [*kept, *copies, disguised(exam, "sneaky-copy")]
    assert len(data["conversations"]) == 17
    training = tmp_path / "training.json"
    training.write_text(json.dumps(data))
    storage = resources.storage
    before = storage.list()
    job_id, spec = _new_job(resources)
    with pytest.raises(InputError) as info:
        prepare_job_dataset(resources, job_id=job_id, dataset=str(training), spec=spec, storage=storage)
    message = str(info.value)
    assert "1 conversation(s) of the training file are in a registered evaluation set" in message
    assert "conversation 17 (id sneaky-copy) is in evaluation set 'exam-v1' (version 1)" in message
    # Nothing stored, nothing recorded.
    assert storage.list() == before
    assert repo.get_job(resources.registry, job_id).training_file_id is None


def test_the_stage_prepares_the_rest_of_the_file(
    resources: Resources, tmp_path: Path, tiny_model: Path
) -> None:
    rest = tmp_path / "rest.json"
    code, out = cli(
        "evalset", "create", "exam", "--from", str(SAMPLE_DATASET), "--take", "2", "--rest", str(rest)
    )
    assert code == 0, out
    job = repo.create_job(resources.registry, job_name="evalset rest", base_model=str(tiny_model))
    spec = JobSpec(job_id=str(job.id), base_model=str(tiny_model), preprocessing={"validation_fraction": 0.2})
    done = prepare_job_dataset(
        resources, job_id=str(job.id), dataset=str(rest), spec=spec, storage=resources.storage
    )
    assert done.report.conversations == 10
    with pytest.raises(InputError, match="2 conversation"):
        prepare_job_dataset(
            resources, job_id=str(job.id), dataset=str(SAMPLE_DATASET), spec=spec, storage=resources.storage
        )


def _reviewed_logs(path: Path, count: int) -> tuple[Path, list[str]]:
    """A brightrun-lora-v4 file of `count` reviewed log conversations: new ones (their
    replies differ from every curated one), as the review export writes them."""
    data = sample()
    logs = []
    for i, raw in enumerate(data["conversations"][:count]):
        log = copy.deepcopy(raw)
        log["conversation_metadata"]["conversation_id"] = f"log-{i}"
        for j, pair in enumerate(log["training_pairs"]):
            pair["id"] = f"log-{i}-pair-{j}"
            if pair["target_response"] is not None:
                pair["target_response"] = f"(reviewed log {i}) " + pair["target_response"]
        logs.append(log)
    data["conversations"] = logs
    path.write_text(json.dumps(data))
    return path, [c["conversation_metadata"]["conversation_id"] for c in logs]


def test_reviewed_logs_are_held_out_whole_beside_the_curated_pick(
    resources: Resources, tmp_path: Path
) -> None:
    """Issue 25: an evaluation set from held-out conversations of the curated file plus
    reviewed logs; a training file holding one of those logs is refused too."""
    logs, log_ids = _reviewed_logs(tmp_path / "reviewed.json", 2)
    code, out = cli("evalset", "create", "exam", "--from", str(SAMPLE_DATASET), "--take", "2", "--seed", "3",
                    "--logs", str(logs), "--json")  # fmt: skip
    assert code == 0, out
    made = json.loads(out)
    assert made["conversation_count"] == 4
    shown = json.loads(cli("evalset", "show", "exam", "--json")[1])
    held = {c["conversation_id"] for c in shown["conversations"]}
    assert set(log_ids) <= held and len(held - set(log_ids)) == 2
    stored = json.loads(resources.storage.get_bytes(made["storage_key"]))
    assert {c["conversation_metadata"]["conversation_id"] for c in stored["conversations"]} == held

    # Only logs, no curated file: also a set (it may share conversations with another set).
    more, more_ids = _reviewed_logs(tmp_path / "more.json", 3)
    code, out = cli("evalset", "create", "logs-only", "--logs", str(more), "--json")
    assert code == 0 and json.loads(out)["conversation_count"] == 3, out

    training = tmp_path / "training.json"
    data = sample()
    data["conversations"] = [*data["conversations"], json.loads(more.read_text())["conversations"][2]]
    training.write_text(json.dumps(data))
    job_id, spec = _new_job(resources)
    with pytest.raises(InputError) as info:
        prepare_job_dataset(
            resources, job_id=job_id, dataset=str(training), spec=spec, storage=resources.storage
        )
    assert f"conversation 13 (id {more_ids[2]}) is in evaluation set 'logs-only' (version 1)" in str(
        info.value
    )
