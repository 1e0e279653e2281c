"""Chat shape: the turns of one conversation gathered across the stream, then assembled.

The reader streams ratings ordered by response, not by conversation, so a conversation's
turns arrive scattered: `Conversations` keeps each one's scrubbed turns until the stream
ends (the memory of the grouped export grows with the window's rated chat turns; the
single-turn default keeps nothing) and hands them back in the order they were asked.
Each conversation also keeps its own `Pseudonyms`, so a person named in turn 1 and turn 4
gets one pseudonym. Pure logic.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

from tasks.feedback.scrub import Pseudonyms
from tasks.feedback.select import Example

_NEVER = datetime.min.replace(tzinfo=UTC)


@dataclass
class ChatTurn:
    example: Example
    trained: bool  # False: context only (rated down, neutral, a duplicate)


@dataclass
class _Gathered:
    turns: list[ChatTurn] = field(default_factory=list)
    names: Pseudonyms = field(default_factory=Pseudonyms)


def _asked(example: Example) -> tuple[datetime, str]:
    at = example.asked_at
    if at is not None and at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return (at or _NEVER, str(example.provenance.get("request_id")))


class Conversations:
    def __init__(self) -> None:
        self._by_key: dict[str, _Gathered] = {}

    def names(self, conversation: str | None) -> Pseudonyms | None:
        """The conversation's pseudonyms (None for a request that stands alone)."""
        if conversation is None:
            return None
        return self._by_key.setdefault(conversation, _Gathered()).names

    def add(self, example: Example, *, trained: bool) -> None:
        assert example.conversation is not None
        self._by_key.setdefault(example.conversation, _Gathered()).turns.append(ChatTurn(example, trained))

    def __len__(self) -> int:
        return len(self._by_key)

    def assembled(self) -> Iterator[tuple[str, list[ChatTurn]]]:
        """(conversation id in the file, turns in asked order) for every conversation with
        a turn to train on; conversations in the order of their first turn."""
        ready = []
        for gathered in self._by_key.values():
            turns = sorted(gathered.turns, key=lambda t: _asked(t.example))
            if turns and any(t.trained for t in turns):
                ready.append(turns)
        ready.sort(key=lambda turns: _asked(turns[0].example))
        for turns in ready:
            yield f"fb-chat-{turns[0].example.provenance['response_id']}", turns

    def context_only(self) -> int:
        """Conversations none of whose turns is trained (not exported)."""
        return sum(1 for g in self._by_key.values() if g.turns and not any(t.trained for t in g.turns))
