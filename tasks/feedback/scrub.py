"""Personal data scrubbing for exported inference logs.

Every text that leaves the database for a training file goes through `Scrubber`: the
personal data `pii.PiiAnalyzer` finds (Presidio's recognizers for the numbers finance
cares about, e-mails, phones, IPs; names and places from a spaCy model or the fallback;
street addresses) and the requesting user's id are replaced, and every replacement is
counted by kind so the export report can say what was removed. Names become pseudonyms,
the same one for the same person throughout one conversation (one `Scrubber`), so the
way a consultant addresses a client survives; everything else becomes a typed
placeholder (`[SSN]`, `[BANK_ACCOUNT]`, ...).

JSON values are scrubbed value by value (never as rendered text), so a scrubbed
output is still valid JSON; a number that is itself a card or phone number becomes
the placeholder string.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from typing import Any

from tasks.feedback.pii import (
    CARD,
    EMAIL,
    IP,
    PERSON,
    PHONE,
    PiiAnalyzer,
    needs_analysis,
    pii_analyzer,
)

USER_ID = "[USER_ID]"
# User ids shorter than this are too likely to occur by chance ("7") to replace safely.
MIN_USER_ID_LENGTH = 4

# Pseudonyms for people, none of them in the fallback's given-name list (so a scrubbed
# text scrubbed again keeps them) and none a real client's name we could tell apart from.
PSEUDONYMS = (
    ("Avery", "Quinlan"),
    ("Rowan", "Ellery"),
    ("Reese", "Harlow"),
    ("Emerson", "Vale"),
    ("Finley", "Marsh"),
    ("Hollis", "Brandt"),
    ("Marlow", "Sutter"),
    ("Tatum", "Rourke"),
    ("Kendall", "Voss"),
    ("Sasha", "Lindqvist"),
)

__all__ = ["CARD", "EMAIL", "IP", "PHONE", "USER_ID", "Pseudonyms", "Scrubber", "luhn_valid"]


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


@functools.lru_cache(maxsize=4096)
def _user_pattern(ids: tuple[str, ...]) -> re.Pattern[str]:
    alternatives = "|".join(re.escape(u) for u in sorted(ids, key=len, reverse=True))
    return re.compile(f"(?<![\\w-])(?:{alternatives})(?![\\w-])", re.IGNORECASE)


class Pseudonyms:
    """The same person, the same pseudonym, within one conversation: "Maria Lopez" and a
    later "Maria" or "Ms. Lopez" all become parts of one pseudonym."""

    def __init__(self) -> None:
        self._full: dict[str, tuple[str, str]] = {}
        self._parts: dict[str, str] = {}

    def __call__(self, name: str) -> str:
        tokens = name.split()
        key = " ".join(t.lower() for t in tokens)
        if key in self._full:
            first, last = self._full[key]
            return f"{first} {last}" if len(tokens) > 1 else first
        if len(tokens) == 1 and key in self._parts:
            return self._parts[key]
        lone_first = tokens[0].lower() if len(tokens) > 1 else None
        if lone_first in self._full:
            # "Maria" came first (a chat's turns can be scrubbed out of order), then
            # "Maria Lopez": the same person, so the pseudonym "Maria" already has.
            first, last = self._full[lone_first]
        else:
            first, last = PSEUDONYMS[len(self._full) % len(PSEUDONYMS)]
            if len(self._full) >= len(PSEUDONYMS):
                last = f"{last}-{len(self._full) // len(PSEUDONYMS) + 1}"
        self._full[key] = (first, last)
        if len(tokens) > 1:
            self._parts.setdefault(tokens[0].lower(), first)
            self._parts.setdefault(tokens[-1].lower(), last)
            return f"{first} {last}"
        self._parts.setdefault(key, first)
        return first


class Scrubber:
    """Scrubs one conversation's texts; `counts` accumulates replacements by placeholder."""

    def __init__(
        self,
        user_ids: list[str] | tuple[str, ...] = (),
        analyzer: PiiAnalyzer | None = None,
        names: Pseudonyms | None = None,
    ) -> None:
        self.counts: Counter[str] = Counter()
        self.analyzer = analyzer or pii_analyzer(None)
        # Shared by every turn of one conversation (the same person, the same pseudonym).
        self.names = names if names is not None else Pseudonyms()
        self._ids = tuple(sorted({u for u in user_ids if u and len(u) >= MIN_USER_ID_LENGTH}))
        self._ids_lower = tuple(u.lower() for u in self._ids)
        self._user_re: re.Pattern[str] | None = None

    def needed(self, *texts: str | None) -> bool:
        """False when none of `texts` can hold anything to scrub, checked on the raw texts
        at once so such logs skip the value-by-value walk."""
        needed = False
        ids_seen = False
        for text in texts:
            if not text:
                continue
            needed = needed or needs_analysis(text)
            if self._ids_lower and not ids_seen:
                lowered = text.lower()
                ids_seen = any(u in lowered for u in self._ids_lower)
        # No user id in the raw texts: none in their values either, so `text` skips the look.
        if not ids_seen:
            self._ids_lower = ()
        return needed or ids_seen

    def finds_any(self, prompt: str, *values: Any) -> bool:
        """Whether anything is to be replaced in the prompt or the JSON values, asked once
        over all their texts joined (one analysis instead of one per value: on the export
        benchmark nearly every log has a digit or a capital, and nearly none has personal
        data). A finding in any one text is also a finding in the joined texts, so a False
        here never lets personal data through; a match across two texts only costs the walk."""
        if self._ids_lower:
            return True
        texts = [prompt]
        for value in values:
            _collect_texts(value, texts)
        joined = "\n".join(t for t in texts if t)
        return needs_analysis(joined) and bool(self.analyzer.find(joined))

    def text(self, value: str) -> str:
        if self._ids_lower and any(u in value.lower() for u in self._ids_lower):
            if self._user_re is None:
                self._user_re = _user_pattern(self._ids)
            value, n = self._user_re.subn(USER_ID, value)
            if n:
                self.counts[USER_ID] += n
        if not needs_analysis(value):
            return value
        findings = self.analyzer.find(value)
        if not findings:
            return value
        pieces: list[str] = []
        cursor = 0
        for f in findings:
            pieces.append(value[cursor : f.start])
            original = value[f.start : f.end]
            if f.kind == PERSON:
                if original.strip(" .").lower() in _PSEUDONYM_WORDS:
                    pieces.append(original)  # already a pseudonym (a scrubbed text again)
                    cursor = f.end
                    continue
                pieces.append(self.names(original))
            else:
                pieces.append(f.kind)
            self.counts[f.kind] += 1
            cursor = f.end
        pieces.append(value[cursor:])
        return "".join(pieces)

    def value(self, value: Any) -> Any:
        """Scrub a JSON value recursively (keys too: a user id can be a key)."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, bool) or value is None or isinstance(value, float):
            return value
        if isinstance(value, int):
            as_text = str(value)
            scrubbed = self.text(as_text)
            return value if scrubbed == as_text else scrubbed
        if isinstance(value, dict):
            return {self.text(str(k)): self.value(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.value(v) for v in value]
        return value


def _collect_texts(value: Any, out: list[str]) -> None:
    """Every text `Scrubber.value` would scrub in a JSON value (strings, keys, integers)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, bool) or item is None or isinstance(item, float):
            continue
        elif isinstance(item, int):
            out.append(str(item))
        elif isinstance(item, dict):
            for k, v in item.items():
                out.append(str(k))
                stack.append(v)
        elif isinstance(item, list | tuple):
            stack.extend(item)


_PSEUDONYM_WORDS = frozenset(w.lower() for pair in PSEUDONYMS for w in (*pair, " ".join(pair)))
