"""What an export did: its counts, its outcome and the markdown report of both."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from tasks.feedback.dedup import EarlierCorpus


class ExportStatus(StrEnum):
    exported = "exported"
    already_exported = "already_exported"  # a rerun of a window: same bytes, same row
    empty = "empty"  # no ratings in the window
    no_examples = "no_examples"  # ratings, but none became a new example
    dry_run = "dry_run"


@dataclass
class ExportStats:
    rows_read: int = 0
    responses: int = 0
    selected: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    deduped: Counter[str] = field(default_factory=Counter)
    scrubbed: Counter[str] = field(default_factory=Counter)
    ratings: Counter[str] = field(default_factory=Counter)
    preference_pairs: int = 0
    read_attempts: int = 0
    corrections: int = 0  # examples whose target is a reviewer's correction (issue 19)
    held_out_for_exam: int = 0  # in a registered evaluation set: never written (issue 25)
    context_only_conversations: int = 0  # chat shape: no turn to train on, not written


@dataclass
class ExportResult:
    since: datetime
    until: datetime
    stats: ExportStats
    dry_run: bool
    status: ExportStatus
    message: str
    training_file_id: str | None = None
    training_file_uri: str | None = None
    sha256: str | None = None
    examples: int = 0
    files: dict[str, str] = field(default_factory=dict)
    review_status: str | None = None  # issue 19: pending or approved when registered
    earlier: EarlierCorpus = field(default_factory=EarlierCorpus)
    report: str = ""

    def summary(self) -> dict[str, Any]:
        """JSON-able, for the flow's return value."""
        out = asdict(self)
        out["status"] = self.status.value
        out["since"], out["until"] = self.since.isoformat(), self.until.isoformat()
        out.pop("report")
        return out


def _table(counter: Counter[str]) -> list[str]:
    if not counter:
        return ["| (none) | 0 |"]
    return [f"| {k} | {v} |" for k, v in sorted(counter.items())]


def render_report(result: ExportResult) -> str:
    s = result.stats
    lines = [
        f"# Feedback export {result.since.isoformat()} → {result.until.isoformat()}",
        "",
        f"**{result.status.value}**: {result.message}",
        "",
        "| measure | count |",
        "|---|---|",
        f"| rows read | {s.rows_read} |",
        f"| rated responses | {s.responses} |",
        f"| selected (exported examples) | {s.selected} |",
        f"| skipped | {sum(s.skipped.values())} |",
        f"| deduped | {sum(s.deduped.values())} |",
        f"| held out for the exam | {s.held_out_for_exam} |",
        f"| conversations with no turn to train on | {s.context_only_conversations} |",
        f"| personal data replaced | {sum(s.scrubbed.values())} |",
        f"| preference pairs | {s.preference_pairs} |",
        f"| read attempts | {s.read_attempts} |",
        "",
        "## Skipped by reason",
        "",
        "| reason | responses |",
        "|---|---|",
        *_table(s.skipped),
        "",
        "## Deduped",
        "",
        "| against | examples |",
        "|---|---|",
        *_table(s.deduped),
        "",
        "## Personal data replaced",
        "",
        "| kind | replacements |",
        "|---|---|",
        *_table(s.scrubbed),
        "",
    ]
    if result.sha256:
        lines += [f"Training file sha256: `{result.sha256}`", ""]
    for kind, uri in sorted(result.files.items()):
        lines.append(f"- {kind}: `{uri}`")
    e = result.earlier
    if e.files:
        lines += [
            "",
            f"Dedup corpus: {e.files} earlier training file(s), {e.pairs} pairs "
            f"({e.validation_pairs} validation).",
        ]
        if e.unsplit_files:
            lines.append(
                f"{e.unsplit_files} of them were registered without their train/validation split: "
                "all their conversations were held out."
            )
    return "\n".join(lines) + "\n"
