"""Whether a training file may be trained on, by its review status (issue 19).

`training_files.review_status` is not in the schema yet (migration 0008 was not written in
this round, see the README's known limits); `is_accepted` is the one rule callers such as
the auto-retrain use, so that adding the column changes no caller.
"""

from __future__ import annotations

APPROVED = "approved"
PENDING = "pending"
REJECTED = "rejected"
REVIEW_STATUSES = (PENDING, APPROVED, REJECTED)


def is_accepted(review_status: str | None) -> bool:
    """True for an approved file and for one made before reviews existed (None); False for
    a pending or rejected one, and for any value this code does not know (fail closed)."""
    if review_status is None:
        return True
    return review_status.strip().lower() == APPROVED
