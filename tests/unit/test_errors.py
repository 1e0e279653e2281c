"""`validation_problems`: the one way a pydantic error becomes a located line for a person."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, ValidationError, field_validator

from brightrun.errors import VALUE_ERRORS, validation_problems


class Options(BaseModel):
    max_seq_length: int
    seed: int = 0

    @field_validator("seed")
    @classmethod
    def _small(cls, value: int) -> int:
        if value > 10:
            raise ValueError("must be at most 10")
        return value


def errors_of(data: dict[str, Any]) -> list[Any]:
    with pytest.raises(ValidationError) as caught:
        Options.model_validate(data)
    return caught.value.errors()


def test_each_error_names_its_location() -> None:
    assert validation_problems(errors_of({"max_seq_length": "ten"})) == [
        "max_seq_length: Input should be a valid integer, unable to parse string as an integer"
    ]


def test_a_section_prefixes_the_location_and_the_input_can_be_shown() -> None:
    got = validation_problems(errors_of({"max_seq_length": "ten"}), within=("training",), show_input=True)
    assert got == [
        "training.max_seq_length: Input should be a valid integer, "
        "unable to parse string as an integer (got 'ten')"
    ]


def test_an_option_is_named_as_typed_on_the_command_line() -> None:
    assert validation_problems(errors_of({}), as_option=True) == ["--max-seq-length: Field required"]


def test_input_shown_for_value_types_only_and_plain_validator_messages() -> None:
    errors = errors_of({"seed": 11})
    assert validation_problems(errors, show_input=VALUE_ERRORS, plain_value_errors=True) == [
        "max_seq_length: Field required",
        "seed: must be at most 10",
    ]
    assert validation_problems(errors)[1] == "seed: Value error, must be at most 10"


def test_a_whole_model_error_uses_the_empty_name_or_the_message_alone() -> None:
    error = {"loc": (), "msg": "bad", "type": "value_error"}
    assert validation_problems([error], empty="spec") == ["spec: bad"]
    assert validation_problems([error], empty=None) == ["bad"]


def test_a_date_option_is_read_as_utc_unless_zoned() -> None:
    from datetime import UTC, datetime, timedelta, timezone

    from cli.options import parse_when

    assert parse_when("2026-03-01", "--since") == datetime(2026, 3, 1, tzinfo=UTC)
    zoned = parse_when("2026-03-01T12:00:00+02:00", "--since")
    assert zoned is not None and zoned.utcoffset() == timezone(timedelta(hours=2)).utcoffset(None)
    assert parse_when(None, "--since") is None


def test_a_bad_date_names_its_option() -> None:
    from brightrun.errors import InputError
    from cli.options import parse_when

    with pytest.raises(InputError, match=r"--until 'yesterday' is not a date or time; use ISO 8601"):
        parse_when("yesterday", "--until")
