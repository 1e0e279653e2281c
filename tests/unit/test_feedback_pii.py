"""Personal data that matters in finance, found with Presidio's recognizers (tasks/feedback/pii.py)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tasks.feedback import pii
from tasks.feedback.pii import PiiAnalyzer, pii_analyzer
from tasks.feedback.scrub import Scrubber

# One of each kind, each in the words people use around it.
SENTINELS = {
    pii.SSN: "my SSN is 219-09-9999 thanks",
    pii.ITIN: "ITIN 912-70-1234 on file",
    pii.BANK_ACCOUNT: "account 12345678901 at the bank",
    pii.ROUTING_NUMBER: "routing 021000021",
    pii.CARD: "card 4111 1111 1111 1111 expired",
    pii.IBAN: "IBAN GB82 WEST 1234 5698 7654 32 please",
    pii.PHONE: "call +1 (415) 555-0100 now",
    pii.EMAIL: "mail maria@example.com",
    pii.IP: "from 192.168.100.200, ok",
    pii.DRIVER_LICENSE: "DL D1234567 renewed",
    pii.PASSPORT: "passport 340020013 scanned",
    pii.DATE_OF_BIRTH: "born 1980-04-12 in March",
    pii.ADDRESS: "lives at 42 Elm Street, Springfield now",
    pii.PERSON: "thanks, I'm Maria Lopez",
}
SECRETS = {
    pii.SSN: "219-09-9999",
    pii.ITIN: "912-70-1234",
    pii.BANK_ACCOUNT: "12345678901",
    pii.ROUTING_NUMBER: "021000021",
    pii.CARD: "4111 1111 1111 1111",
    pii.IBAN: "GB82 WEST",
    pii.PHONE: "555-0100",
    pii.EMAIL: "maria@example.com",
    pii.IP: "192.168.100.200",
    pii.DRIVER_LICENSE: "D1234567",
    pii.PASSPORT: "340020013",
    pii.DATE_OF_BIRTH: "1980-04-12",
    pii.ADDRESS: "Elm Street",
    pii.PERSON: "Lopez",
}


@pytest.mark.parametrize("kind", sorted(SENTINELS))
def test_each_kind_is_found_and_counted(kind: str) -> None:
    scrubber = Scrubber()
    out = scrubber.text(SENTINELS[kind])
    assert SECRETS[kind] not in out
    assert scrubber.counts[kind] == 1, dict(scrubber.counts)
    if kind != pii.PERSON:
        assert kind in out


def test_the_issue_example_keeps_nothing_personal() -> None:
    text = (
        "SSN 123-45-6789, routing 021000021 account 12345678901, I'm Maria Lopez at 42 Elm Street, "
        "Springfield. Card 4111 1111 1111 1111, mail maria@example.com"
    )
    scrubber = Scrubber()
    out = scrubber.text(text)
    for secret in ("123-45-6789", "021000021", "12345678901", "Maria", "Lopez", "Elm", "4111", "maria@"):
        assert secret not in out, out
    assert {k: scrubber.counts[k] for k in (pii.SSN, pii.ROUTING_NUMBER, pii.BANK_ACCOUNT)} == {
        pii.SSN: 1,
        pii.ROUTING_NUMBER: 1,
        pii.BANK_ACCOUNT: 1,
    }


@pytest.mark.parametrize(
    "text",
    [
        "sku 12345678 and order 123456789012",  # no account/passport/licence word nearby
        "the report of 2024-05-17 shows growth",  # a date that is not a birth date
        "Stock mugs for shop 42 next month",
    ],
)
def test_ordinary_text_is_left_alone(text: str) -> None:
    scrubber = Scrubber()
    assert scrubber.text(text) == text
    assert not scrubber.counts


def test_a_routing_number_must_pass_its_checksum() -> None:
    scrubber = Scrubber()
    scrubber.text("routing 021000022")  # phonenumbers may still call it a phone: that is fine
    assert scrubber.counts[pii.ROUTING_NUMBER] == 0


def test_the_same_person_keeps_one_pseudonym_in_a_conversation() -> None:
    scrubber = Scrubber()
    first = scrubber.text("I'm Maria Lopez, and Mr. John Carter is my adviser.")
    later = scrubber.text("Thanks Maria, Mr. Carter will call.")
    assert "Maria" not in first + later and "Carter" not in first + later
    # "Maria Lopez" → "Avery Quinlan", so a later "Maria" is "Avery"; Carter is someone else.
    assert "Avery Quinlan" in first
    assert later.startswith("Thanks Avery,")
    other = Scrubber().text("Mr. John Carter")
    assert other == "Mr. Avery Quinlan"  # a new conversation starts the list again


def test_a_missing_spacy_pipeline_falls_back_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="brightrun.export"):
        analyzer = PiiAnalyzer("en_core_web_not_installed")
    assert analyzer.ner_source == "fallback"
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "en_core_web_not_installed" in warnings[0] and "fallback" in warnings[0]
    out = Scrubber(analyzer=analyzer).text("I'm Maria Lopez from Kalamazoo")
    assert "Lopez" not in out and "Kalamazoo" in out  # no model: places only from street addresses


def test_none_means_no_model_and_no_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="brightrun.export"):
        assert PiiAnalyzer("none").ner_source == "fallback"
    assert not caplog.records


def test_a_configured_spacy_pipeline_finds_names_and_places(tmp_path: Path) -> None:
    spacy = pytest.importorskip("spacy")
    nlp = spacy.blank("en")
    ruler = nlp.add_pipe("entity_ruler")
    ruler.add_patterns(
        [
            {"label": "PERSON", "pattern": [{"LOWER": "thaddeus"}, {"LOWER": "oyelaran"}]},
            {"label": "GPE", "pattern": "Kalamazoo"},
        ]
    )
    nlp.to_disk(tmp_path / "ner")
    analyzer = pii_analyzer(str(tmp_path / "ner"))
    assert analyzer.ner_source.startswith("spacy:")
    scrubber = Scrubber(analyzer=analyzer)
    out = scrubber.text("Client Thaddeus Oyelaran moved to Kalamazoo last year")
    assert "Oyelaran" not in out and "Kalamazoo" not in out and pii.LOCATION in out
    assert scrubber.counts[pii.PERSON] == 1 and scrubber.counts[pii.LOCATION] == 1
    # The fallback alone misses both.
    assert Scrubber(analyzer=pii_analyzer("none")).text("moved to Kalamazoo") == "moved to Kalamazoo"


def test_json_values_are_scrubbed_value_by_value() -> None:
    scrubber = Scrubber()
    out = scrubber.value({"client": {"ssn": "536-90-4399", "note": "routing 021000021"}, "n": 3})
    assert out == {"client": {"ssn": pii.SSN, "note": f"routing {pii.ROUTING_NUMBER}"}, "n": 3}


def test_scrubbing_never_loads_torch() -> None:
    """The export runs on the orchestrator, which never loads torch (Presidio would)."""
    import subprocess
    import sys

    code = (
        "import sys; from tasks.feedback.scrub import Scrubber; "
        "Scrubber().text('SSN 219-09-9999 Maria Lopez'); "
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    )
    assert out.stdout.strip() == "[]"


def test_a_missing_spacy_pipeline_is_found_missing_without_importing_spacy() -> None:
    # Importing spaCy (and with it thinc and torch) cost the export 7 s and ~180 MB just to
    # learn that the configured pipeline is not installed.
    import subprocess
    import sys

    code = (
        "import sys; from tasks.feedback.pii import _load_spacy; "
        "nlp, reason = _load_spacy('en_core_web_not_installed'); "
        "print(nlp is None, 'spacy' in sys.modules, 'torch' in sys.modules, reason)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.startswith("True False False "), out
    assert "'en_core_web_not_installed' (BRIGHTRUN_PII_SPACY_MODEL) is not installed" in out
