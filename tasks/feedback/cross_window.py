"""Preference pairs across export windows (issue 25): a thumbs-down answer is paired with a
thumbs-up answer to the same prompt however far apart their windows are.

Within a window `select.PreferencePairs` pairs them. Across windows, an export looks back
(the app's logs before its window, read through `read.log_query`) for the prompts it could
not pair:
- a negative in this window takes an earlier positive as its chosen side;
- a positive in this window takes the earlier negatives as rejected sides only when no
  earlier positive of that prompt exists: otherwise those negatives were paired already, in
  their own window or by an export between (the same two rules applied then), so no pair is
  written twice.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime

from sqlalchemy import Engine, select

from brightrun.registry.models import LexybrainRequest
from tasks.feedback.read import log_query, read_rows, tolerant_text
from tasks.feedback.select import (
    Example,
    PreferencePairs,
    Rating,
    SelectionOptions,
    build_example,
    decide,
    group_by_response,
    preference_key,
)

CHUNK = 5000  # prompts per look-back query (one scan of the earlier logs each)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _chunks(values: Sequence[str]) -> Iterator[list[str]]:
    for start in range(0, len(values), CHUNK):
        yield list(values[start : start + CHUNK])


def _ids(request_ids: Iterable[object]) -> list[uuid.UUID]:
    out = []
    for request_id in request_ids:
        try:
            out.append(uuid.UUID(str(request_id)))
        except ValueError:
            continue
    return out


def earlier_pairs(
    engine: Engine, preferences: PreferencePairs, since: datetime, options: SelectionOptions
) -> list[tuple[Example, Example]]:
    """(chosen, rejected) pairs between this window's unpaired prompts and earlier windows."""
    rejected_here, chosen_here = preferences.unmatched()
    wanted = set(rejected_here) | set(chosen_here)
    if not wanted:
        return []
    asked = [e.provenance.get("request_id") for group in rejected_here.values() for e in group]
    asked += list(chosen_here.values())
    requests = LexybrainRequest.__table__
    earlier_positive: dict[bytes, Example] = {}
    earlier_negative: dict[bytes, list[Example]] = {}
    with engine.connect() as conn, tolerant_text(conn):
        request_ids = _ids(asked)
        prompts: set[str] = set()
        for start in range(0, len(request_ids), CHUNK):
            chunk = request_ids[start : start + CHUNK]
            prompts.update(
                p for (p,) in conn.execute(select(requests.c.prompt).where(requests.c.id.in_(chunk))) if p
            )
        for chunk in _chunks(sorted(prompts)):
            query = log_query(EPOCH, since).where(requests.c.prompt.in_(chunk))
            for group in group_by_response(read_rows(conn, since, since, query=query)):
                decision = decide(group, options)
                if decision.rating not in (Rating.positive, Rating.negative) or decision.skip is not None:
                    continue
                built = build_example(decision, options)
                if built.example is None:
                    continue
                key = preference_key(built.example)
                if key not in wanted:
                    continue
                if decision.rating is Rating.positive:
                    earlier_positive.setdefault(key, built.example)
                else:
                    earlier_negative.setdefault(key, []).append(built.example)
    pairs: list[tuple[Example, Example]] = []
    for key, rejected in rejected_here.items():
        if key in earlier_positive:
            chosen = earlier_positive[key]
            pairs.extend((chosen, r) for r in rejected if r.target != chosen.target)
    for key in chosen_here:
        if key not in earlier_positive and key in earlier_negative:
            chosen = preferences.chosen_example(key)
            pairs.extend((chosen, r) for r in earlier_negative[key] if r.target != chosen.target)
    return sorted(pairs, key=lambda cr: str(cr[1].provenance["response_id"]))
