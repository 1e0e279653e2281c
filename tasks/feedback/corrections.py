"""Reviewers' corrections in the export (issue 19): a corrected response becomes a training
example whose target is the correction, and a preference pair (the correction chosen, the
original answer rejected).

A correction is carried by the next export that registers a file: when the response was
rated inside the window it replaces the response there; when it was rated in an earlier
window (the usual case: the reviewer corrects what a pending export showed), the export
reads that response's ratings again and adds it. Registering the file marks the corrections
as exported in the same transaction (`feedback_rows.register_export`), so each is carried once.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from sqlalchemy import Connection, Engine

from brightrun.registry.models import LexybrainFeedback
from tasks.feedback.pii import pii_analyzer
from tasks.feedback.read import log_query, read_rows
from tasks.feedback.result import ExportStats
from tasks.feedback.scrub import Scrubber
from tasks.feedback.select import (
    Decision,
    Example,
    Rating,
    SelectionOptions,
    build_example,
    canonical_json,
    decide,
    group_by_response,
)
from tasks.feedback.write import ExportWriter

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Correction:
    """What the export needs of a `feedback_corrections` row."""

    id: str
    response_id: str
    text: str
    reviewer: str
    created_at: str  # ISO 8601


def corrected_target(text: str, original_target: str, scrubber: Scrubber) -> str:
    """The correction as the target: canonical JSON when the original is JSON (LexyBrain's
    insights), else the text; scrubbed like every other exported text."""
    try:
        original_is_json = isinstance(json.loads(original_target), dict | list)
    except ValueError:
        original_is_json = False
    if original_is_json:
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict | list):
            return canonical_json(scrubber.value(parsed))
    return scrubber.text(text.strip())


@dataclass
class CorrectionPass:
    """The corrections an export carries; `take` handles a corrected response's decision."""

    corrections: Mapping[str, Correction]
    options: SelectionOptions
    examples: list[Example] = field(default_factory=list)
    pairs: list[tuple[Example, Example]] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)
    unusable: dict[str, str] = field(default_factory=dict)  # response id -> why

    def reset(self) -> None:
        """Forget what a failed read attempt took (the window is read again from its start)."""
        self.examples, self.pairs, self.seen, self.unusable = [], [], set(), {}

    def wants(self, decision: Decision) -> bool:
        return decision.row.response_id in self.corrections and decision.row.response_id not in self.seen

    def take(self, decision: Decision) -> Example | None:
        """The corrected example for this response (also recorded with its pair), or None
        when its log cannot become an example (the reason is kept in `unusable`)."""
        response_id = str(decision.row.response_id)
        self.seen.add(response_id)
        correction = self.corrections[response_id]
        # The original answer is built as any rated one is (validated, scrubbed).
        built = build_example(replace(decision, rating=decision.rating or Rating.neutral), self.options)
        if built.example is None:
            self.unusable[response_id] = str(built.skip.value if built.skip else "not exportable")
            return None
        original = built.example
        scrubber = Scrubber([], pii_analyzer(self.options.pii_spacy_model))
        corrected = replace(
            original,
            target=corrected_target(correction.text, original.target, scrubber),
            rating=Rating.positive,
            quality_score=self.options.positive_quality_score,
            provenance={
                **original.provenance,
                "correction_id": correction.id,
                "corrected_by": correction.reviewer,
                "corrected_at": correction.created_at,
                "original_rating": original.rating.value,
            },
        )
        self.examples.append(corrected)
        if corrected.target != original.target:
            self.pairs.append((corrected, original))
        return corrected

    def missing(self) -> list[str]:
        """Corrected responses not met in the window (rated in an earlier window)."""
        return sorted(set(self.corrections) - self.seen)

    def exported_response_ids(self) -> list[str]:
        return sorted(str(e.provenance["response_id"]) for e in self.examples)


def load_corrections(engine: Engine) -> dict[str, Correction]:
    """The corrections no registered file carries yet, from the registry."""
    from brightrun.registry.review import corrections_to_export

    return corrections_from_rows(corrections_to_export(engine).values())


def add_earlier_corrections(
    conn: Connection,
    corrections: CorrectionPass,
    since: datetime,
    writer: ExportWriter | None,
    stats: ExportStats,
    batch_size: int,
) -> None:
    """Add the corrected responses rated before the window (not met in it) to this export:
    their ratings are read again, their corrections replace their answers."""
    missing = corrections.missing()
    if not missing:
        return
    feedback = LexybrainFeedback.__table__
    wanted = [uuid.UUID(r) for r in missing]
    query = log_query(EPOCH, since).where(feedback.c.response_id.in_(wanted))
    rows = read_rows(conn, EPOCH, since, batch_size=batch_size, query=query)
    for group in group_by_response(rows):
        decision = decide(group, corrections.options)
        if not corrections.wants(decision):
            continue
        corrected = corrections.take(decision)
        if corrected is not None:
            stats.corrections += 1
            stats.selected += 1
            if writer is not None:
                writer.add(corrected)


def corrections_from_rows(rows: Iterable[object]) -> dict[str, Correction]:
    """`brightrun.registry.review.CorrectionView`s keyed by response id."""
    out: dict[str, Correction] = {}
    for row in rows:
        created = getattr(row, "created_at", None)
        out[str(row.response_id)] = Correction(  # type: ignore[attr-defined]
            id=str(row.id),  # type: ignore[attr-defined]
            response_id=str(row.response_id),  # type: ignore[attr-defined]
            text=str(row.corrected_text),  # type: ignore[attr-defined]
            reviewer=str(row.reviewer),  # type: ignore[attr-defined]
            created_at=created.isoformat() if created is not None else "",
        )
    return out
