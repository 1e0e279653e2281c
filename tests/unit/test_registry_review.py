"""The rule the auto-retrain uses to pick training files by review status."""

from __future__ import annotations

import pytest

from brightrun.registry.review import is_accepted


@pytest.mark.parametrize(
    ("status", "accepted"),
    [
        (None, True),
        ("approved", True),
        ("Approved ", True),
        ("pending", False),
        ("rejected", False),
        ("", False),
        ("typo", False),
    ],
)
def test_only_approved_or_pre_review_files_are_accepted(status: str | None, accepted: bool) -> None:
    assert is_accepted(status) is accepted
