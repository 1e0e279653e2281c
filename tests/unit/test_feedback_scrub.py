"""PII scrubbing of exported texts."""

from __future__ import annotations

import json

import pytest

from tasks.feedback.scrub import CARD, EMAIL, IP, PHONE, USER_ID, Scrubber, luhn_valid


def test_luhn() -> None:
    assert luhn_valid("4111111111111111")
    assert not luhn_valid("4111111111111112")


@pytest.mark.parametrize(
    ("text", "expected", "kind"),
    [
        ("mail me at jane.doe+shop@example.co.uk please", "mail me at [EMAIL] please", EMAIL),
        ("card 4111 1111 1111 1111 expired", "card [CARD] expired", CARD),
        ("card 4111-1111-1111-1111.", "card [CARD].", CARD),
        ("call +1 (415) 555-0100 now", "call [PHONE] now", PHONE),
        ("ring 020 7946 0958 today", "ring [PHONE] today", PHONE),
        ("or 415.555.0100", "or [PHONE]", PHONE),
        ("+44 7911 123456", "[PHONE]", PHONE),
        ("from 192.168.100.200, ok", "from [IP], ok", IP),
    ],
)
def test_replaces_personal_data(text: str, expected: str, kind: str) -> None:
    scrubber = Scrubber()
    assert scrubber.text(text) == expected
    assert scrubber.counts[kind] == 1


@pytest.mark.parametrize(
    "text",
    [
        "sales grew 1,250,000 units on 2024-05-17",
        "order 4111 1111 1111 1112 (fails Luhn, 16 digits)",
        "pi is 3.14159265358979",
        "sku 12345678",
        "ids 123456789012",  # a bare run of 12 digits: not written like a phone
        "at 2024-05-17 12:30 and 2024-05-17T12:30:00Z",
        "version v1.2.3.4 and 10.5.1",
    ],
)
def test_leaves_ordinary_numbers(text: str) -> None:
    scrubber = Scrubber()
    assert scrubber.text(text) == text
    assert sum(scrubber.counts.values()) == 0


def test_user_id_replaced_case_insensitively_and_only_whole() -> None:
    uid = "9b2e4c1a-77aa-4f00-9c1e-0d5d1f3a2b10"
    scrubber = Scrubber([uid])
    out = scrubber.text(f"user {uid.upper()} asked; not x{uid}y")
    assert out.startswith(f"user {USER_ID} asked")
    assert scrubber.counts[USER_ID] == 1


def test_short_user_ids_are_not_replaced() -> None:
    scrubber = Scrubber(["7"])
    assert scrubber.text("7 items") == "7 items"


def test_json_values_stay_valid_json() -> None:
    scrubber = Scrubber(["user-abcdef"])
    value = {
        "contact": {"email": "a@b.io", "card": 4111111111111111, "n": 3, "ok": True},
        "user-abcdef": ["call 415-555-0100", None, 2.5],
    }
    out = scrubber.value(value)
    json.dumps(out)  # still serialisable
    assert out == {
        "contact": {"email": EMAIL, "card": CARD, "n": 3, "ok": True},
        USER_ID: [f"call {PHONE}", None, 2.5],
    }
    assert dict(scrubber.counts) == {EMAIL: 1, CARD: 1, PHONE: 1, USER_ID: 1}


def test_one_joined_look_tells_whether_a_log_needs_the_value_by_value_walk() -> None:
    from tests.unit.test_feedback_pii import SENTINELS

    plain = Scrubber()
    assert plain.needed("Request 4211: Stock mugs for shop 17?")
    assert not plain.finds_any("Request 4211: Stock mugs", {"Shop": "shop-17", "n": [3, 0.5]}, "Fine")
    for kind, sentence in SENTINELS.items():
        # Deep in a JSON value, as a key, or in the prompt: the joined look sees each kind.
        assert Scrubber().finds_any("Which items?", {"a": [{"b": sentence}]}), kind
        assert Scrubber().finds_any("Which items?", {sentence: 1}), kind
        assert Scrubber().finds_any(f"Which items? {sentence}", None), kind
    with_id = Scrubber(["user-4711"])
    assert with_id.needed("for user-4711") and with_id.finds_any("Stock mugs", None)
