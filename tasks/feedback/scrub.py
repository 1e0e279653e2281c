"""Personal data scrubbing for exported inference logs.

Every text that leaves the database for a training file goes through `Scrubber`:
e-mail addresses, phone numbers, card-like numbers (13-19 digits passing the Luhn
check), IPv4 addresses and the requesting user's id are replaced by placeholders, and every
replacement is counted by kind so the export report can say what was removed.

JSON values are scrubbed value by value (never as rendered text), so a scrubbed
output is still valid JSON; a number that is itself a card or phone number becomes
the placeholder string.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from typing import Any

EMAIL = "[EMAIL]"
PHONE = "[PHONE]"
CARD = "[CARD]"
IP = "[IP]"
USER_ID = "[USER_ID]"

_EMAIL_RE = re.compile(r"(?<![\w.+-])[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?![\w-])")
# Digit runs with the separators people type inside card and phone numbers; validated below.
_NUMBERISH_RE = re.compile(r"(?<![\w+])\+?\(?\d[\d ().\-]{7,}\d(?![\w:])")
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4_RE = re.compile(rf"(?<![\w.]){_OCTET}(?:\.{_OCTET}){{3}}(?![\w.])")
# A date (or a date and an hour, as in "2024-05-17 12:30") is not a phone number.
_DATE_RE = re.compile(r"^\d{4}[-./]\d{1,2}[-./]\d{1,2}\b|^\d{1,2}[-./]\d{1,2}[-./]\d{4}$")
# A decimal amount or a thousands-grouped number ("1,250,000.00", "3.14159265") is not a phone.
_AMOUNT_RE = re.compile(r"^\d+\.\d+$")
# User ids shorter than this are too likely to occur by chance ("7") to replace safely.
MIN_USER_ID_LENGTH = 4


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


def _classify_number(candidate: str) -> str | None:
    """CARD, PHONE or None (a date, an amount, an id-like run we leave alone)."""
    stripped = candidate.strip()
    if _DATE_RE.match(stripped) or _AMOUNT_RE.match(stripped):
        return None
    digits = re.sub(r"\D", "", stripped)
    n = len(digits)
    if 13 <= n <= 19 and luhn_valid(digits) and re.fullmatch(r"[\d \-]+", stripped):
        return CARD
    # Phone numbers: 10-15 digits (E.164 allows 15), or 8-9 when written with a leading '+'.
    if 10 <= n <= 15 or (stripped.startswith("+") and 8 <= n <= 15):
        separators = re.sub(r"[\d+]", "", stripped)
        # A bare run of 10-15 digits is as likely an order number as a phone: only count it
        # when written like a phone (with separators or a '+'), unless it is exactly 10 digits.
        if separators or stripped.startswith("+") or n == 10:
            return PHONE
    return None


# A cheap superset of what the patterns above find (an '@', or 8+ digit-ish characters
# starting with a digit): a text without a match cannot need scrubbing.
_CANDIDATE_RE = re.compile(r"@|\d[\d ().\-]{7}")


@functools.lru_cache(maxsize=4096)
def _user_pattern(ids: tuple[str, ...]) -> re.Pattern[str]:
    alternatives = "|".join(re.escape(u) for u in sorted(ids, key=len, reverse=True))
    return re.compile(f"(?<![\\w-])(?:{alternatives})(?![\\w-])", re.IGNORECASE)


class Scrubber:
    """Scrubs one log's texts; `counts` accumulates replacements by placeholder."""

    def __init__(self, user_ids: list[str] | tuple[str, ...] = ()) -> None:
        self.counts: Counter[str] = Counter()
        self._ids = tuple(sorted({u for u in user_ids if u and len(u) >= MIN_USER_ID_LENGTH}))
        self._ids_lower = tuple(u.lower() for u in self._ids)
        self._user_re: re.Pattern[str] | None = None

    def needed(self, *texts: str | None) -> bool:
        """False when none of `texts` can hold anything to scrub: the common case, checked
        on the raw texts at once so most logs skip the value-by-value walk."""
        for text in texts:
            if not text:
                continue
            if _CANDIDATE_RE.search(text):
                return True
            if self._ids_lower:
                lowered = text.lower()
                if any(u in lowered for u in self._ids_lower):
                    return True
        return False

    def text(self, value: str) -> str:
        if self._ids_lower and any(u in value.lower() for u in self._ids_lower):
            if self._user_re is None:
                self._user_re = _user_pattern(self._ids)
            value, n = self._user_re.subn(USER_ID, value)
            if n:
                self.counts[USER_ID] += n
        value, n = _EMAIL_RE.subn(EMAIL, value)
        if n:
            self.counts[EMAIL] += n
        value, n = _IPV4_RE.subn(IP, value)
        if n:
            self.counts[IP] += n
        value = _NUMBERISH_RE.sub(self._number, value)
        return value

    def _number(self, match: re.Match[str]) -> str:
        raw = match.group(0)
        # The pattern may swallow a trailing/leading bracket or dot that belongs to the prose.
        kind = _classify_number(raw)
        if kind is None:
            return raw
        self.counts[kind] += 1
        return kind

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
