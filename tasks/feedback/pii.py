"""Finding personal data in exported texts with Microsoft Presidio's recognizers.

`PiiAnalyzer.find(text)` returns the spans of personal data in one text. The numbers that
matter in finance come from Presidio's own recognizers (US SSN and ITIN, bank account,
ABA routing with its checksum, credit card with Luhn, IBAN with its check digits, phone
numbers through `phonenumbers`, e-mail, IP, US driver licence and passport, dates), run
directly without Presidio's NLP engine: Presidio's `AnalyzerEngine` insists on a spaCy
model and downloads one when it is missing, which must never happen in an export.

Names and places need a named-entity model. The model is configuration
(`BRIGHTRUN_PII_SPACY_MODEL`, a spaCy package name or a pipeline directory): when it is
installed its PERSON / GPE / LOC / FAC entities are used; when it is not (or the setting
is "none") one warning says so and names come from the fallback below (titles,
introductions, a list of common given names) and places only from street addresses
(`usaddress`). The fallback patterns also run beside a model, so they only ever add.

Speed: Presidio's recognizers are slow per call (the phone one walks eight regions), so
each family runs only on texts that could hold it: number recognizers on texts with a run
of seven or more digit-ish characters, e-mail on texts with an '@', the model on texts
with a capitalised word after the first one.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stdnum.us import itin as stdnum_itin
from stdnum.us import ssn as stdnum_ssn

log = logging.getLogger("brightrun.export")

NO_MODEL = ("", "none", "off", "false")

# Placeholders by kind: what a training file shows instead of the data.
EMAIL = "[EMAIL]"
PHONE = "[PHONE]"
CARD = "[CARD]"
IP = "[IP]"
SSN = "[SSN]"
ITIN = "[ITIN]"
BANK_ACCOUNT = "[BANK_ACCOUNT]"
ROUTING_NUMBER = "[ROUTING_NUMBER]"
IBAN = "[IBAN]"
DRIVER_LICENSE = "[DRIVER_LICENSE]"
PASSPORT = "[PASSPORT]"
DATE_OF_BIRTH = "[DATE_OF_BIRTH]"
ADDRESS = "[ADDRESS]"
LOCATION = "[LOCATION]"
# Names are not typed placeholders but consistent pseudonyms (see `Pseudonyms`); counted as:
PERSON = "[PERSON]"

_PRESIDIO_KIND = {
    "EMAIL_ADDRESS": EMAIL,
    "PHONE_NUMBER": PHONE,
    "CREDIT_CARD": CARD,
    "IP_ADDRESS": IP,
    "US_SSN": SSN,
    "US_ITIN": ITIN,
    "US_BANK_NUMBER": BANK_ACCOUNT,
    "ABA_ROUTING_NUMBER": ROUTING_NUMBER,
    "IBAN_CODE": IBAN,
    "US_DRIVER_LICENSE": DRIVER_LICENSE,
    "US_PASSPORT": PASSPORT,
    "DATE_TIME": DATE_OF_BIRTH,
}
# On overlapping spans of equal score the more specific kind wins (a routing number is
# also a valid 9-digit "phone" to phonenumbers).
_PRIORITY = [SSN, ITIN, ROUTING_NUMBER, CARD, IBAN, BANK_ACCOUNT, PASSPORT, DRIVER_LICENSE]
_PRIORITY += [DATE_OF_BIRTH, EMAIL, IP, ADDRESS, PERSON, LOCATION, PHONE]
_RANK = {kind: i for i, kind in enumerate(_PRIORITY)}

# Scores below this are Presidio's "weak" patterns (any 8-17 digits is a bank account at
# 0.05): they count only with one of the recognizer's context words just before them.
MIN_SCORE = 0.4
CONTEXT_WINDOW = 48
_BIRTH_CONTEXT = ("born", "birth", "dob", "d.o.b", "birthday")


@dataclass(frozen=True)
class Finding:
    start: int
    end: int
    kind: str
    score: float


def _import_presidio_without_torch() -> None:
    """Import presidio_analyzer with transformers and torch hidden: it imports them only for
    its optional Hugging Face recognizers (in try/except ImportError), which we do not use,
    and they would cost the export tens of seconds and break the orchestrator's rule that
    torch is never loaded there."""
    if "presidio_analyzer" in sys.modules:
        return
    hidden = [name for name in _OPTIONAL_HEAVY if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  # makes `import name` raise ImportError
    try:
        import presidio_analyzer  # noqa: F401
    finally:
        for name in hidden:
            if sys.modules.get(name, ...) is None:
                del sys.modules[name]


_OPTIONAL_HEAVY = ("transformers", "torch", "stanza", "gliner")


def _recognizers() -> tuple[list[Any], Any]:
    """Presidio's recognizers, imported here and not at module import: presidio_analyzer
    pulls in spaCy and transformers (seconds, and torch), which only an export needs."""
    _import_presidio_without_torch()
    from presidio_analyzer.predefined_recognizers import (
        AbaRoutingRecognizer,
        CreditCardRecognizer,
        DateRecognizer,
        EmailRecognizer,
        IbanRecognizer,
        IpRecognizer,
        PhoneRecognizer,
        UsBankRecognizer,
        UsItinRecognizer,
        UsLicenseRecognizer,
        UsPassportRecognizer,
        UsSsnRecognizer,
    )

    class _SsnRecognizer(UsSsnRecognizer):
        """Presidio's SSN recognizer, but a published sample number ("123-45-6789") counts: in
        a training file it reads like a real one, and an adapter cannot tell the difference."""

        def invalidate_result(self, pattern_text: str) -> bool:
            digits = "".join(c for c in pattern_text if c.isdigit())
            if digits in ("123456789", "987654320", "078051120"):
                return False
            return bool(super().invalidate_result(pattern_text))

    class _ItinRecognizer(UsItinRecognizer):
        """Presidio's ITIN patterns checked by python-stdnum (Presidio only matches the shape)."""

        def validate_result(self, pattern_text: str) -> bool | None:
            # Valid: keep the pattern's score (a bare 9-digit one still needs context); invalid: drop.
            return None if stdnum_itin.is_valid(pattern_text) else False

    class _OfflineEmailRecognizer(EmailRecognizer):
        """Presidio's e-mail pattern without its `tldextract` check, which fetches the public
        suffix list over the network on first use (an export must not depend on the internet)."""

        def validate_result(self, pattern_text: str) -> bool | None:
            return None

    numbers = [
        _SsnRecognizer(),
        _ItinRecognizer(),
        UsBankRecognizer(),
        AbaRoutingRecognizer(),
        CreditCardRecognizer(),
        IbanRecognizer(),
        IpRecognizer(),
        UsLicenseRecognizer(),
        UsPassportRecognizer(),
        DateRecognizer(),
        PhoneRecognizer(),
    ]
    return numbers, _OfflineEmailRecognizer()


# ---------------------------------------------------------------- cheap prefilters

# Texts up to this long are cached by `PiiAnalyzer.find` (bounded: ~64k entries of at most
# 256 characters, a few tens of MB at worst).
_CACHED_TEXT_CHARS = 256
_CACHE_ENTRIES = 65_536
_DIGITISH_RE = re.compile(r"\d[\d ().\-/]{5,}\d")
# A capitalised word that is not the text's first word: the only texts a model needs.
_LATER_CAPITAL_RE = re.compile(r"\S\s+[A-Z][a-z]")

# ---------------------------------------------------------------- the name fallback

# Common US given names that are not also ordinary English words (no "Will", "May", "Mark").
GIVEN_NAMES = frozenset(
    """
    James John Robert Michael William David Richard Joseph Thomas Charles Christopher Daniel
    Matthew Anthony Donald Steven Paul Andrew Joshua Kenneth Kevin Brian George Timothy Ronald
    Edward Jason Jeffrey Ryan Jacob Gary Nicholas Eric Jonathan Stephen Larry Justin Scott
    Brandon Benjamin Samuel Gregory Alexander Patrick Raymond Jack Dennis Jerry Tyler Aaron Jose
    Adam Nathan Henry Douglas Zachary Peter Kyle Ethan Walter Noah Jeremy Christian Keith Roger
    Terry Austin Sean Gerald Carl Harold Dylan Arthur Lawrence Jordan Jesse Bryan Gabriel Logan
    Juan Carlos Luis Miguel Jorge Pedro Ahmed Mohammed Wei Raj Priya
    Mary Patricia Jennifer Linda Elizabeth Barbara Susan Jessica Sarah Karen Lisa Nancy Betty
    Margaret Sandra Ashley Kimberly Emily Donna Michelle Carol Amanda Dorothy Melissa Deborah
    Stephanie Rebecca Sharon Laura Cynthia Kathleen Amy Angela Shirley Anna Brenda Pamela Emma
    Nicole Helen Samantha Katherine Christine Debra Rachel Carolyn Janet Catherine Maria Heather
    Diane Ruth Julie Olivia Joyce Virginia Victoria Kelly Lauren Christina Joan Evelyn Judith
    Megan Andrea Cheryl Hannah Jacqueline Martha Gloria Teresa Sara Madison Frances Kathryn
    Janice Jean Abigail Alice Judy Sophia Denise Beverly Danielle Marilyn Isabella Diana Natalie
    Brittany Charlotte Marie Kayla Alexis Lori Sofia Lucia Ana Fatima Mei Aisha
    """.split()  # noqa: SIM905
)
_CAP = r"[A-Z][a-z]+(?:[-'][A-Z]?[a-z]+)?"
_TITLE_RE = re.compile(rf"\b(?:Mr|Mrs|Ms|Miss|Mx|Dr|Prof)\.?\s+({_CAP}(?:\s+{_CAP})?)")
_INTRO_RE = re.compile(
    rf"\b(?:[Mm]y name is|[Nn]ame:|I'm|I am|[Tt]his is|[Cc]lient|[Cc]ustomer)\s+({_CAP}\s+{_CAP})"
)
# Capitalised words looked up in a set: a regex alternation of ~190 names costs 5x more.
_CAPWORD_RE = re.compile(r"\b[A-Z][a-z]+\b")
_SURNAME_RE = re.compile(rf"\s+{_CAP}")

# ---------------------------------------------------------------- street addresses

_STREET_TYPES = (
    "Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Way|Place|Pl|"
    "Terrace|Ter|Parkway|Pkwy|Circle|Cir|Highway|Hwy|Square|Sq|Trail|Trl|Plaza"
)
_STREET_RE = re.compile(
    rf"\b\d{{1,6}}\s+(?:[A-Z][A-Za-z]*\.?\s+){{1,4}}(?:{_STREET_TYPES})\b\.?"
    r"(?:\s+(?:N|S|E|W|NE|NW|SE|SW)\b)?"
    r"(?:,?\s+(?:Apt|Suite|Unit|#)\.?\s*\w+)?"
    r"(?:,\s*[A-Z][a-z]+(?:\s[A-Z][a-z]+)?\b)?(?:,?\s+[A-Z]{2}\b)?(?:\s+\d{5}(?:-\d{4})?\b)?"
)


def _street_addresses(text: str) -> list[Finding]:
    """Street addresses: a house number, capitalised street words and a street type, then
    any city, state and ZIP; kept when usaddress parses the span as a street address."""
    import usaddress

    out = []
    for match in _STREET_RE.finditer(text):
        try:
            _, kind = usaddress.tag(match.group(0))
        except usaddress.RepeatedLabelError:
            kind = "Ambiguous"
        if kind == "Street Address":
            out.append(Finding(match.start(), match.end(), ADDRESS, 0.85))
    return out


def _fallback_names(text: str) -> list[Finding]:
    out = [Finding(m.start(1), m.end(1), PERSON, 0.6) for m in _TITLE_RE.finditer(text)]
    out += [Finding(m.start(1), m.end(1), PERSON, 0.6) for m in _INTRO_RE.finditer(text)]
    for m in _CAPWORD_RE.finditer(text):
        if m.group() in GIVEN_NAMES:
            surname = _SURNAME_RE.match(text, m.end())
            out.append(Finding(m.start(), surname.end() if surname else m.end(), PERSON, 0.5))
    return out


# Context words Presidio's recognizers lack (operators write "DL", "a/c", "licence").
_EXTRA_CONTEXT = {
    DRIVER_LICENSE: ("dl", "licence", "driver's"),
    BANK_ACCOUNT: ("a/c", "acct", "account no"),
    PASSPORT: ("passport no",),
}


@functools.lru_cache(maxsize=64)
def _context_re(words: tuple[str, ...]) -> re.Pattern[str]:
    alternatives = "|".join(re.escape(w.strip()) for w in sorted(words, key=len, reverse=True) if w.strip())
    return re.compile(rf"(?<![a-z])(?:{alternatives})(?![a-z])")


def _has_context(text: str, start: int, words: list[str] | tuple[str, ...]) -> bool:
    """A context word (a whole word, any case) in the few characters before `start`."""
    before = text[max(0, start - CONTEXT_WINDOW) : start].lower()
    return _context_re(tuple(words)).search(before) is not None


# ---------------------------------------------------------------- the analyzer


def _is_installed_package(name: str) -> bool:
    if not name.isidentifier():
        return False
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _load_spacy(name: str | None) -> tuple[Any | None, str]:
    """The configured spaCy pipeline, or None and the reason (never downloads one)."""
    if name is None or name.strip().lower() in NO_MODEL:
        return None, "no spaCy pipeline is configured (BRIGHTRUN_PII_SPACY_MODEL=none)"
    # Looked up before spaCy is imported: importing it pulls in thinc and torch (7 s and
    # ~200 MB on the export benchmark) only to learn that the pipeline is missing.
    if not (Path(name).is_dir() or _is_installed_package(name)):
        return None, f"the spaCy pipeline {name!r} (BRIGHTRUN_PII_SPACY_MODEL) is not installed"
    try:
        import spacy
    except ImportError:
        return None, "spaCy is not installed"
    try:
        return spacy.load(name, exclude=["lemmatizer", "parser", "tagger", "attribute_ruler"]), ""
    except (OSError, ValueError) as error:
        return None, f"the spaCy pipeline {name!r} could not be loaded ({error})"


class PiiAnalyzer:
    """Finds personal data in a text. Build one per export (`pii_analyzer`), not per text."""

    def __init__(self, spacy_model: str | None = None) -> None:
        self.spacy_model = spacy_model
        self._nlp, reason = _load_spacy(spacy_model)
        if self._nlp is None:
            self.ner_source = "fallback"
            if spacy_model is not None and spacy_model.strip().lower() not in NO_MODEL:
                log.warning(
                    "PII: %s; names now come from the built-in fallback (titles, introductions, "
                    "common given names) and places only from street addresses (usaddress)",
                    reason,
                )
        else:
            self.ner_source = f"spacy:{spacy_model}"
        self._numbers, self._email = _recognizers()
        self._cached_find = functools.lru_cache(maxsize=_CACHE_ENTRIES)(lambda text: tuple(self._find(text)))

    def find(self, text: str) -> list[Finding]:
        """Every span of personal data in `text`, overlaps resolved (left to right)."""
        # Logs repeat their values (shop ids, regions, item names): each distinct short text
        # is analysed once per process. Findings are spans only; pseudonyms stay per Scrubber.
        if len(text) <= _CACHED_TEXT_CHARS:
            return list(self._cached_find(text))
        return self._find(text)

    def _find(self, text: str) -> list[Finding]:
        found: list[Finding] = []
        if "@" in text:
            found += self._presidio(self._email, text)
        if _DIGITISH_RE.search(text):
            for recognizer in self._numbers:
                found += self._presidio(recognizer, text)
            found += _street_addresses(text)
        elif _DIGIT_RE.search(text):
            found += _street_addresses(text)
        found += _fallback_names(text)
        if self._nlp is not None and _LATER_CAPITAL_RE.search(text):
            found += self._entities(text)
        return resolve_overlaps(found)

    def _presidio(self, recognizer: Any, text: str) -> list[Finding]:
        out = []
        for result in recognizer.analyze(text, recognizer.supported_entities, None):
            kind = _PRESIDIO_KIND.get(result.entity_type)
            if kind is None:
                continue
            score = float(result.score)
            if kind == DATE_OF_BIRTH:
                # Only a date said to be a birth date: other dates are what insights are about.
                if not _has_context(text, result.start, _BIRTH_CONTEXT):
                    continue
                score = max(score, 0.85)
            elif kind == SSN and not _has_context(text, result.start, recognizer.context):
                # Presidio rates an unlabelled 123-45-6789 at 0.5; python-stdnum says whether
                # the number could be issued at all.
                if not stdnum_ssn.is_valid(text[result.start : result.end]):
                    continue
            elif score < MIN_SCORE:
                context = (*(recognizer.context or ()), *_EXTRA_CONTEXT.get(kind, ()))
                if not _has_context(text, result.start, context):
                    continue
                score = max(score + 0.35, MIN_SCORE)
            out.append(Finding(result.start, result.end, kind, score))
        return out

    def _entities(self, text: str) -> list[Finding]:
        assert self._nlp is not None
        out = []
        for ent in self._nlp(text).ents:
            if ent.label_ in ("PERSON", "PER"):
                out.append(Finding(ent.start_char, ent.end_char, PERSON, 0.85))
            elif ent.label_ in ("GPE", "LOC", "FAC"):
                out.append(Finding(ent.start_char, ent.end_char, LOCATION, 0.85))
        return out


def resolve_overlaps(found: list[Finding]) -> list[Finding]:
    """Non-overlapping findings: of overlapping ones the higher score wins, then the longer
    span, then the more specific kind."""
    ordered = sorted(found, key=lambda f: (-f.score, -(f.end - f.start), _RANK.get(f.kind, 99), f.start))
    kept: list[Finding] = []
    for f in ordered:
        if all(f.end <= k.start or f.start >= k.end for k in kept):
            kept.append(f)
    return sorted(kept, key=lambda f: f.start)


@functools.lru_cache(maxsize=8)
def pii_analyzer(spacy_model: str | None = None) -> PiiAnalyzer:
    """One analyzer per configured model for the process (loading recognizers takes ~50 ms
    and a spaCy pipeline seconds)."""
    return PiiAnalyzer(spacy_model)


def needs_analysis(text: str) -> bool:
    """False when `text` cannot hold anything `PiiAnalyzer.find` finds: no '@', no digit,
    no capitalised word."""
    return _NEEDS_RE.search(text) is not None


_NEEDS_RE = re.compile(r"[@0-9]|[A-Z][a-z]")
_DIGIT_RE = re.compile(r"[0-9]")
