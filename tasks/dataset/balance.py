"""Scaffolding balance: counts by persona, emotional arc and topic, a cap on any one arc's share
of the training set, and a validation split stratified by arc.

Pure functions over `ConversationTags` (what a conversation's `scaffolding` says), planned
before the writer streams: the split and the cap need every conversation's arc, and the
writer decides each conversation as it passes. `prepare.py` gathers the tags in a first,
validating scan of the file, plans here, and hands the plan to the writer.

Rules (stated in README "Scaffolding balance"):
- Stratified split: when the validation fraction is above 0, every conversation has an
  `emotional_arc_key`, there are at least two arcs and every arc has at least `MIN_PER_ARC`
  conversations, the validation split takes `round(N * fraction)` conversations, shared out
  among arcs in proportion (largest remainder), each arc keeping at least one conversation
  in training; within an arc the conversations with the smallest seeded split hash are held
  out. Otherwise today's rule (hash below the fraction) decides, and the report says why.
- Arc cap: after the split, no arc holds more than `max_arc_share` of the training
  conversations. The largest per-arc count `c` with `c <= share * sum(min(n_a, c))` is kept of
  each arc (conversations without an arc are never dropped, but count in the total); within an
  arc the conversations with the smallest seeded cap hash stay. Validation is never touched.
  A cap that would keep nothing is refused.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pydantic import BaseModel, Field

from brightrun.errors import InputError
from tasks.dataset.split import SplitName, split_hash

MIN_PER_ARC = 2
NO_KEY = "(none)"


@dataclass(frozen=True)
class ConversationTags:
    conversation_id: str
    persona: str | None
    arc: str | None
    topic: str | None


class ScaffoldingCounts(BaseModel):
    """Conversations per persona, emotional arc and topic (`(none)` where the key is absent)."""

    persona: dict[str, int] = Field(default_factory=dict)
    emotional_arc: dict[str, int] = Field(default_factory=dict)
    topic: dict[str, int] = Field(default_factory=dict)


class BalanceReport(BaseModel):
    """What balancing did, for the dataset report."""

    counts: ScaffoldingCounts = Field(default_factory=ScaffoldingCounts)
    stratified: bool = False
    stratify_note: str = ""
    max_arc_share: float | None = None
    dropped_by_arc: dict[str, int] = Field(default_factory=dict)
    train_by_arc: dict[str, int] = Field(default_factory=dict)
    validation_by_arc: dict[str, int] = Field(default_factory=dict)


@dataclass
class BalancePlan:
    """The writer's instructions: a split for every planned conversation (None: today's
    rule decides) and the training conversations the cap leaves out."""

    splits: dict[str, SplitName] | None
    dropped: frozenset[str]
    report: BalanceReport
    arcs: dict[str, str | None]

    def recount(self, train: Iterable[str], validation: Iterable[str]) -> None:
        """The per-arc split counts as the writer decided them (its small-file fallback may
        have moved one conversation)."""
        self.report.train_by_arc = _sorted_counts(self.arcs.get(c) for c in train)
        self.report.validation_by_arc = _sorted_counts(self.arcs.get(c) for c in validation)


def _sorted_counts(values: Iterable[str | None]) -> dict[str, int]:
    counts = Counter(v if v else NO_KEY for v in values)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def count_scaffolding(tags: Sequence[ConversationTags]) -> ScaffoldingCounts:
    return ScaffoldingCounts(
        persona=_sorted_counts(t.persona for t in tags),
        emotional_arc=_sorted_counts(t.arc for t in tags),
        topic=_sorted_counts(t.topic for t in tags),
    )


def _seeded(salt: str, key: str, seed: int) -> float:
    digest = hashlib.sha256(f"{salt}:{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def stratified_split(
    tags: Sequence[ConversationTags], validation_fraction: float, seed: int
) -> tuple[dict[str, SplitName] | None, str]:
    """Each conversation's split, in proportion by arc; `(None, why)` when the data does not
    allow it (the caller then keeps today's hash rule)."""
    if validation_fraction <= 0:
        return None, "validation_fraction is 0"
    missing = sum(1 for t in tags if not t.arc)
    if missing:
        return None, f"{missing} conversation(s) have no emotional_arc_key"
    by_arc: dict[str, list[str]] = defaultdict(list)
    for t in tags:
        by_arc[t.arc or NO_KEY].append(t.conversation_id)
    if len(by_arc) < 2:
        return None, "a single emotional arc"
    small = sorted(a for a, ids in by_arc.items() if len(ids) < MIN_PER_ARC)
    if small:
        return None, (
            f"arc(s) with fewer than {MIN_PER_ARC} conversations: {', '.join(small[:5])}"
            + (" …" if len(small) > 5 else "")
        )
    total = len(tags)
    # No minimum of one: the writer's small-file fallback holds one out, as for the hash rule.
    wanted = round(total * validation_fraction)
    quotas = {a: wanted * len(ids) / total for a, ids in by_arc.items()}
    held = {a: min(int(q), len(by_arc[a]) - 1) for a, q in quotas.items()}
    # Largest remainder, ties by a seeded hash of the arc name, never an arc's last conversation.
    order = sorted(quotas, key=lambda a: (-(quotas[a] - int(quotas[a])), _seeded("arc", a, seed)))
    for arc in order:
        if sum(held.values()) >= wanted:
            break
        if held[arc] < len(by_arc[arc]) - 1:
            held[arc] += 1
    splits: dict[str, SplitName] = {}
    for arc, ids in by_arc.items():
        ranked = sorted(ids, key=lambda cid: split_hash(cid, seed))
        for i, cid in enumerate(ranked):
            splits[cid] = "validation" if i < held[arc] else "train"
    return splits, f"stratified by emotional arc ({len(by_arc)} arcs)"


def arc_cap_keep(train_by_arc: dict[str, int], unkeyed: int, share: float) -> int:
    """The most training conversations any one arc may keep under `share`: the largest `c`
    with `c <= share * (unkeyed + sum(min(n, c)))`; 0 when no arc can keep one."""
    best = 0
    for c in range(1, max(train_by_arc.values(), default=0) + 1):
        if c <= share * (unkeyed + sum(min(n, c) for n in train_by_arc.values())) + 1e-9:
            best = c
    return best


def cap_arcs(
    train: Sequence[ConversationTags], share: float, seed: int
) -> tuple[frozenset[str], dict[str, int]]:
    """The training conversations to leave out so no arc exceeds `share` of the training set,
    and how many of each arc that drops. Raises InputError when the cap would keep nothing."""
    by_arc: dict[str, list[str]] = defaultdict(list)
    unkeyed = 0
    for t in train:
        if t.arc:
            by_arc[t.arc].append(t.conversation_id)
        else:
            unkeyed += 1
    if not by_arc:
        return frozenset(), {}
    keep = arc_cap_keep({a: len(ids) for a, ids in by_arc.items()}, unkeyed, share)
    if keep == 0:
        raise InputError(
            f"preprocessing.max_arc_share={share:g} cannot hold: the training set has "
            f"{len(by_arc)} emotional arcs (and {unkeyed} conversation(s) without one), so each arc "
            f"may hold at most {share:.0%} of it only if every arc is left empty; raise "
            f"--max-arc-share to at least {1 / (len(by_arc) + unkeyed):.3f} or leave it unset"
        )
    dropped: set[str] = set()
    counts: dict[str, int] = {}
    for arc, ids in sorted(by_arc.items()):
        if len(ids) <= keep:
            continue
        ranked = sorted(ids, key=lambda cid: _seeded("cap", cid, seed))
        dropped.update(ranked[keep:])
        counts[arc] = len(ids) - keep
    return frozenset(dropped), counts


def plan_balance(
    tags: Sequence[ConversationTags],
    validation_fraction: float,
    seed: int,
    max_arc_share: float | None,
) -> BalancePlan:
    """The split and the cap for one training file (the writer's fallback still applies)."""
    splits, note = stratified_split(tags, validation_fraction, seed)
    report = BalanceReport(
        counts=count_scaffolding(tags),
        stratified=splits is not None,
        stratify_note=note,
        max_arc_share=max_arc_share,
    )

    def split_of(cid: str) -> SplitName:
        if splits is not None:
            return splits[cid]
        return "validation" if split_hash(cid, seed) < validation_fraction else "train"

    train = [t for t in tags if split_of(t.conversation_id) == "train"]
    dropped: frozenset[str] = frozenset()
    if max_arc_share is not None:
        dropped, report.dropped_by_arc = cap_arcs(train, max_arc_share, seed)
    report.train_by_arc = _sorted_counts(t.arc for t in train if t.conversation_id not in dropped)
    report.validation_by_arc = _sorted_counts(
        t.arc for t in tags if split_of(t.conversation_id) == "validation"
    )
    arcs = {t.conversation_id: t.arc for t in tags}
    return BalancePlan(splits=splits, dropped=dropped, report=report, arcs=arcs)


def balance_markdown(report: BalanceReport) -> list[str]:
    """The report's balance section (Markdown lines)."""
    c = report.counts
    lines = ["", "## Scaffolding balance", ""]
    split = "stratified by arc" if report.stratified else f"today's hash rule ({report.stratify_note})"
    lines.append(f"Split: {split}.")
    if report.max_arc_share is not None:
        dropped = sum(report.dropped_by_arc.values())
        lines.append(
            f"Arc cap: max_arc_share {report.max_arc_share:g}, {dropped} training conversation(s) left out"
            + (": " + ", ".join(f"{a} {n}" for a, n in report.dropped_by_arc.items()) if dropped else "")
            + "."
        )
    arcs = sorted(
        set(c.emotional_arc) | set(report.train_by_arc) | set(report.validation_by_arc),
        key=lambda a: (-c.emotional_arc.get(a, 0), a),
    )
    lines += [
        "",
        "| emotional arc | conversations | train | validation | dropped by cap |",
        "|---|---:|---:|---:|---:|",
    ]
    for arc in arcs:
        lines.append(
            f"| {arc} | {c.emotional_arc.get(arc, 0)} | {report.train_by_arc.get(arc, 0)} | "
            f"{report.validation_by_arc.get(arc, 0)} | {report.dropped_by_arc.get(arc, 0)} |"
        )
    for title, counts in (("persona", c.persona), ("topic", c.topic)):
        lines += ["", f"| {title} | conversations |", "|---|---:|"]
        lines += [f"| {k} | {n} |" for k, n in counts.items()]
    return lines


def balance_summary(report: BalanceReport) -> list[str]:
    """The balance lines of the CLI's one-screen summary."""
    c = report.counts
    lines = [
        "  split " + ("stratified by arc" if report.stratified else f"by hash ({report.stratify_note})"),
        "  arcs " + ", ".join(f"{a}: {n}" for a, n in c.emotional_arc.items()),
        f"  personas {len(c.persona)}, topics {len(c.topic)}",
    ]
    if report.max_arc_share is not None:
        dropped = ", ".join(f"{a} {n}" for a, n in report.dropped_by_arc.items()) or "none"
        lines.append(f"  arc cap {report.max_arc_share:g}: dropped {dropped}")
    return lines
