"""Write: the export's files, a brightrun-lora-v4 training file, a chat JSONL beside it,
and the preference pairs JSONL.

Examples stream to spool files as they are selected, so memory stays flat however large
the window; `finish` assembles the final JSON (its metadata needs the totals) and hashes
it. Nothing in the files depends on when the export ran: the same window and the same
database produce the same bytes, which is what makes a rerun idempotent.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel, Field

from brightrun.storage import sha256_file
from tasks.feedback.errors import ExportError
from tasks.feedback.select import Example

FORMAT_SPEC = "brightrun-lora-v4"
FORMAT_VERSION = "4.0.0"
SOURCE = "feedback_export"


class FileOptions(BaseModel):
    """What the training file says about itself (its `training_file_metadata`)."""

    target_model: str = "lexybrain"
    vertical: str = "lexybrain_insights"
    consultant_profile: dict[str, Any] = Field(
        default_factory=lambda: {
            "name": "LexyBrain",
            "business": "LexyHub",
            "core_philosophy": {"principle_1": "Answer with structured, accurate insights."},
            "communication_style": {"tone": "precise", "techniques": ["structure"], "avoidances": ["filler"]},
        }
    )


def stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y%m%dT%H%M%S%fZ")


def file_name(since: datetime, until: datetime) -> str:
    return f"feedback-{stamp(since)}-{stamp(until)}"


def _dumps(value: Any) -> str:
    # Compact, UTF-8, keys in insertion order: the same bytes for the same examples.
    return orjson.dumps(value).decode()


def conversation(example: Example) -> dict[str, Any]:
    """One selected log as a one-turn conversation of the brightrun-lora-v4 format."""
    return {
        "conversation_metadata": {
            "conversation_id": example.example_id,
            "total_turns": 1,
            "scaffolding": {
                "persona_key": "lexybrain_user",
                "emotional_arc_key": "feedback_export",
                "training_topic_key": example.insight_type,
            },
        },
        "training_pairs": [
            {
                "id": example.example_id,
                "turn_number": 1,
                "system_prompt": example.system_prompt,
                "conversation_history": [],
                "current_user_input": example.user,
                "emotional_context": {},
                "target_response": example.target,
                "training_metadata": {
                    "quality_score": example.quality_score,
                    "difficulty_level": f"feedback_{example.rating.value}",
                    "demonstrates_skills": [example.insight_type],
                },
                "provenance": example.provenance,
            }
        ],
    }


def _pair(example: Example, turn_number: int, history: list[dict[str, str]], trained: bool) -> dict[str, Any]:
    return {
        "id": f"{example.example_id}-t{turn_number}",
        "turn_number": turn_number,
        "system_prompt": example.system_prompt,
        "conversation_history": history,
        "current_user_input": example.user,
        "emotional_context": {},
        # A turn that is not trained (rated down, neutral, a duplicate) is context only:
        # its answer reaches the model as the next turn's history, never as a target.
        "target_response": example.target if trained else None,
        "training_metadata": {
            "quality_score": example.quality_score,
            "difficulty_level": f"feedback_{example.rating.value}",
            "demonstrates_skills": [example.insight_type],
        },
        "provenance": example.provenance,
    }


def chat_conversation(conversation_id: str, turns: list[tuple[Example, bool]]) -> dict[str, Any]:
    """One chat conversation (its turns in order, each with `trained`) as a brightrun-lora-v4
    conversation: pair k carries turns 1..k-1 as its history."""
    pairs: list[dict[str, Any]] = []
    history: list[dict[str, str]] = []
    for number, (example, trained) in enumerate(turns, start=1):
        pairs.append(_pair(example, number, list(history), trained))
        history += [
            {"role": "user", "content": example.user},
            {"role": "assistant", "content": example.target},
        ]
    return {
        "conversation_metadata": {
            "conversation_id": conversation_id,
            "total_turns": len(turns),
            "scaffolding": {
                "persona_key": "chat_user",
                "emotional_arc_key": "feedback_export",
                "training_topic_key": turns[0][0].insight_type,
            },
        },
        "training_pairs": pairs,
    }


def chat_messages_record(conversation_id: str, turns: list[tuple[Example, bool]]) -> dict[str, Any]:
    """The chat JSONL line of a conversation: up to its last trained turn."""
    last = max(i for i, (_, trained) in enumerate(turns) if trained)
    messages = [{"role": "system", "content": turns[0][0].system_prompt}]
    for example, _ in turns[: last + 1]:
        messages += [
            {"role": "user", "content": example.user},
            {"role": "assistant", "content": example.target},
        ]
    return {
        "id": conversation_id,
        "messages": messages,
        "trained_turns": [i + 1 for i, (_, trained) in enumerate(turns[: last + 1]) if trained],
        "provenance": [example.provenance for example, _ in turns[: last + 1]],
    }


def chat_record(example: Example) -> dict[str, Any]:
    return {
        "id": example.example_id,
        "messages": [
            {"role": "system", "content": example.system_prompt},
            {"role": "user", "content": example.user},
            {"role": "assistant", "content": example.target},
        ],
        "provenance": example.provenance,
    }


def preference_record(chosen: Example, rejected: Example) -> dict[str, Any]:
    """TRL's conversational preference format (prompt / chosen / rejected messages)."""
    return {
        "id": f"pref-{rejected.provenance['response_id']}",
        "prompt": [
            {"role": "system", "content": chosen.system_prompt},
            {"role": "user", "content": chosen.user},
        ],
        "chosen": [{"role": "assistant", "content": chosen.target}],
        "rejected": [{"role": "assistant", "content": rejected.target}],
        "provenance": {"chosen": chosen.provenance, "rejected": rejected.provenance},
    }


@dataclass(frozen=True)
class WrittenFiles:
    training_file: Path
    chat_file: Path
    preferences_file: Path | None
    sha256: str
    size_bytes: int
    examples: int
    preference_pairs: int


class ExportWriter:
    """Streams examples into `directory`; `finish` produces the final files."""

    def __init__(self, directory: Path, since: datetime, until: datetime, options: FileOptions) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.name = file_name(since, until)
        self.since, self.until = since, until
        self.options = options
        self._spool_path = directory / f".{self.name}.conversations.spool"
        self._spool = open(self._spool_path, "w", encoding="utf-8")  # noqa: SIM115 - closed in finish
        self.chat_path = directory / f"{self.name}.chat.jsonl"
        self._chat = open(self.chat_path, "w", encoding="utf-8")  # noqa: SIM115
        self.examples = 0
        self.pairs = 0
        # (conversation id, source response id) of every example, for the registry.
        self.refs: list[tuple[str, str]] = []

    def add(self, example: Example) -> None:
        if self.examples:
            self._spool.write(",\n")
        self._spool.write(_dumps(conversation(example)))
        self._chat.write(_dumps(chat_record(example)) + "\n")
        self.refs.append((example.example_id, str(example.provenance["response_id"])))
        self.examples += 1
        self.pairs += 1

    def add_conversation(self, conversation_id: str, turns: list[tuple[Example, bool]]) -> None:
        """A chat conversation, its turns in order; at least one of them is trained."""
        if self.examples:
            self._spool.write(",\n")
        self._spool.write(_dumps(chat_conversation(conversation_id, turns)))
        self._chat.write(_dumps(chat_messages_record(conversation_id, turns)) + "\n")
        last_trained = next(e for e, trained in reversed(turns) if trained)
        self.refs.append((conversation_id, str(last_trained.provenance["response_id"])))
        self.examples += 1
        self.pairs += len(turns)

    def close(self) -> None:
        for f in (self._spool, self._chat):
            if not f.closed:
                f.close()

    def finish(self, pairs: list[tuple[Example, Example]]) -> WrittenFiles:
        self.close()
        metadata = {
            "file_name": self.name,
            "version": FORMAT_VERSION,
            "format_spec": FORMAT_SPEC,
            "target_model": self.options.target_model,
            "vertical": self.options.vertical,
            "total_conversations": self.examples,
            "total_training_pairs": self.pairs,
            "source": SOURCE,
            "window": {
                "since": self.since.astimezone(UTC).isoformat(),
                "until": self.until.astimezone(UTC).isoformat(),
            },
        }
        path = self.directory / f"{self.name}.json"
        with open(path, "w", encoding="utf-8") as out:
            out.write('{"training_file_metadata":')
            out.write(_dumps(metadata))
            out.write(',\n"consultant_profile":')
            out.write(_dumps(self.options.consultant_profile))
            out.write(',\n"conversations":[\n')
            with open(self._spool_path, encoding="utf-8") as spool:
                shutil.copyfileobj(spool, out, 1 << 20)
            out.write("\n]}\n")
        self._spool_path.unlink()
        preferences: Path | None = None
        if pairs:
            preferences = self.directory / f"{self.name}.preferences.jsonl"
            with open(preferences, "w", encoding="utf-8") as out:
                for chosen, rejected in pairs:
                    out.write(_dumps(preference_record(chosen, rejected)) + "\n")
        return WrittenFiles(
            training_file=path,
            chat_file=self.chat_path,
            preferences_file=preferences,
            sha256=sha256_file(path),
            size_bytes=path.stat().st_size,
            examples=self.examples,
            preference_pairs=len(pairs),
        )

    def abort(self) -> None:
        """Drop everything written so far (a failed read must leave no partial file)."""
        self.close()
        for path in (self._spool_path, self.chat_path):
            path.unlink(missing_ok=True)


def validate_written(written: WrittenFiles) -> None:
    """The file must pass the dataset stage's own validator before anything is uploaded."""
    from tasks.dataset.schema import validate_dataset

    checked = validate_dataset(written.training_file)
    if not checked.ok:
        raise ExportError(
            f"the exported file {written.training_file.name} failed the dataset validator "
            f"({checked.problem_count} problem(s)): "
            + "; ".join(checked.messages()[:5])
            + "; this is a bug in the export, please report it"
        )
