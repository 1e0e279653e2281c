"""Select: which rated logs become training examples, and as what (pure logic).

Input is a stream of joined log rows (one per feedback) ordered by response id, then
feedback time; `decide` folds each response's ratings into one decision, `wanted` says
whether it makes an example, `build_example` turns a selected log into a scrubbed
training example (`scrub`), and `PreferencePairs` pairs negative-rated answers with a
positive one to the same prompt.
"""

from __future__ import annotations

import functools
import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

import orjson
from pydantic import BaseModel, Field, field_validator

from tasks.feedback.dedup import digest, exact_key, normalize_text
from tasks.feedback.pii import pii_analyzer
from tasks.feedback.read import LogRow
from tasks.feedback.scrub import Pseudonyms, Scrubber
from tasks.feedback.shape import ExportShape

DEFAULT_SYSTEM_PROMPT = (
    "You are LexyBrain, an assistant that produces structured insights. "
    "Answer with a single JSON value and nothing else."
)


class Rating(StrEnum):
    positive = "positive"
    negative = "negative"
    neutral = "neutral"


class Skip(StrEnum):
    """Why a rated response did not become a training example (keys of the report)."""

    response_missing = "response_missing"
    request_missing = "request_missing"
    response_failed = "response_failed"
    null_prompt = "null_prompt"
    prompt_too_long = "prompt_too_long"
    invalid_output_json = "invalid_output_json"
    no_output_text = "no_output_text"
    empty_output = "empty_output"
    invalid_context_json = "invalid_context_json"
    invalid_text = "invalid_text"
    unknown_rating = "unknown_rating"
    rated_negative = "rated_negative"
    rated_neutral = "rated_neutral"
    conflicting_ratings = "conflicting_ratings"


class SelectionOptions(BaseModel):
    """How rated logs become training examples. Validated once at the flow boundary."""

    include_neutral_with_notes: bool = Field(
        default=False, description="Also export responses rated neutral when the rater left notes"
    )
    latest_feedback_wins: bool = Field(
        default=True,
        description="A response rated several times takes its latest rating; otherwise the net vote decides",
    )
    one_vote_per_user: bool = Field(
        default=True, description="Only each user's latest rating of a response counts"
    )
    max_prompt_chars: int = Field(default=8000, gt=0, description="Longer user turns are skipped")
    system_prompts: dict[str, str] = Field(default_factory=dict, description="System prompt per insight type")
    default_system_prompt: str = DEFAULT_SYSTEM_PROMPT
    pii_spacy_model: str | None = Field(
        default=None,
        description="spaCy pipeline for names and places (None: BRIGHTRUN_PII_SPACY_MODEL)",
    )
    positive_quality_score: float = 5.0
    neutral_quality_score: float = 4.0

    @field_validator("system_prompts")
    @classmethod
    def _no_empty_prompts(cls, value: dict[str, str]) -> dict[str, str]:
        empty = [k for k, v in value.items() if not v.strip()]
        if empty:
            raise ValueError(f"system_prompts: empty prompt for insight type(s) {', '.join(empty)}")
        return value

    def system_prompt(self, insight_type: str | None) -> str:
        return self.system_prompts.get(insight_type or "", self.default_system_prompt)


@dataclass
class Decision:
    """A response's ratings folded into one verdict."""

    row: LogRow  # the deciding feedback (its id goes into the provenance)
    rating: Rating | None
    skip: Skip | None = None
    votes: int = 1


def canonical_json(value: Any) -> str:
    """One rendering per value: sorted keys, compact separators, real UTF-8. (NaN cannot
    occur: `_parse_json` rejects it, so values reaching here are plain JSON.)"""
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    except TypeError:
        # orjson refuses integers beyond 64 bits; the standard library does not.
        return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _has_lone_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _parse_json(text: str | None) -> tuple[bool, Any]:
    if text is None:
        return True, None
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        # orjson rejects what the standard library reads too (huge integers): try it once more.
        try:
            value = json.loads(text, parse_constant=_reject_constant)
        except (ValueError, RecursionError):
            return False, None
    # A JSON string holding JSON is a double-encoded value, a common logging slip.
    if isinstance(value, str):
        stripped = value.strip()
        if stripped[:1] in ("{", "["):
            try:
                return True, json.loads(stripped, parse_constant=_reject_constant)
            except (ValueError, RecursionError):
                return False, None
    return True, value


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _vote(rating: Rating) -> int:
    return {Rating.positive: 1, Rating.negative: -1, Rating.neutral: 0}[rating]


def decide(rows: list[LogRow], options: SelectionOptions) -> Decision:
    """Fold all feedback on one response (rows in feedback-time order) into a decision."""
    valid: list[tuple[LogRow, Rating]] = []
    for row in rows:
        try:
            valid.append((row, Rating(str(row.rating).strip().lower())))
        except ValueError:
            continue
    if not valid:
        return Decision(row=rows[-1], rating=None, skip=Skip.unknown_rating, votes=len(rows))
    if options.one_vote_per_user:
        latest: dict[str, tuple[LogRow, Rating]] = {}
        anonymous: list[tuple[LogRow, Rating]] = []
        for row, rating in valid:
            if row.feedback_user_id is None:
                anonymous.append((row, rating))
            else:
                latest.pop(row.feedback_user_id, None)  # re-insert keeps time order
                latest[row.feedback_user_id] = (row, rating)
        valid = sorted([*latest.values(), *anonymous], key=lambda rv: _order_key(rv[0]))
    if options.latest_feedback_wins:
        row, rating = valid[-1]
        return Decision(row=row, rating=rating, votes=len(valid))
    net = sum(_vote(r) for _, r in valid)
    if net == 0 and any(r is not Rating.neutral for _, r in valid):
        return Decision(row=valid[-1][0], rating=None, skip=Skip.conflicting_ratings, votes=len(valid))
    rating = Rating.positive if net > 0 else Rating.negative if net < 0 else Rating.neutral
    row = next(row for row, r in reversed(valid) if r is rating)
    return Decision(row=row, rating=rating, votes=len(valid))


def _order_key(row: LogRow) -> tuple[str, str]:
    return (row.feedback_at.isoformat() if row.feedback_at else "", row.feedback_id)


def group_by_response(rows: Iterable[LogRow]) -> Iterator[list[LogRow]]:
    """Consecutive rows of one response (the reader orders by response id). Feedback whose
    response id is null stands alone."""
    group: list[LogRow] = []
    for row in rows:
        if group and (row.response_id is None or row.response_id != group[0].response_id):
            yield group
            group = []
        group.append(row)
    if group:
        yield group


@dataclass
class Example:
    """One exported training example (already scrubbed)."""

    system_prompt: str
    user: str
    target: str
    insight_type: str
    rating: Rating
    quality_score: float
    provenance: dict[str, Any]
    # Chat shape: the conversation this turn belongs to (None: it stands alone), and when
    # it was asked (orders the turns).
    conversation: str | None = None
    asked_at: datetime | None = None

    @property
    def example_id(self) -> str:
        return f"fb-{self.provenance['response_id']}"

    @functools.cached_property
    def normalized_user(self) -> str:
        return normalize_text(self.user)

    @functools.cached_property
    def exact(self) -> bytes:
        return exact_key(self.user, self.target)

    @functools.cached_property
    def near(self) -> bytes:
        return digest("near", self.normalized_user, normalize_text(self.target))

    @functools.cached_property
    def prompt(self) -> bytes:
        return digest("prompt", self.normalized_user)


@dataclass
class Built:
    example: Example | None
    skip: Skip | None = None
    scrubbed: Counter[str] = field(default_factory=Counter)


def user_turn(prompt: str, context: Any) -> str:
    """The request's prompt, then its context (canonical JSON) when there is any."""
    text = prompt.strip()
    if context in (None, "", {}, []):
        return text
    rendered = context if isinstance(context, str) else canonical_json(context)
    return f"{text}\n\nContext:\n{rendered}"


def build_example(
    decision: Decision,
    options: SelectionOptions,
    shape: ExportShape | None = None,
    names: Callable[[str | None], Pseudonyms] | None = None,
) -> Built:
    """Validate one decided log and render it as a scrubbed example (or say why not).

    `names` gives the pseudonyms of a conversation (by its id; None: a lone request), so a
    person keeps one pseudonym across the turns of a chat."""
    shape = shape or _JSON_SHAPE
    row = decision.row
    if not row.response_found:
        return Built(None, Skip.response_missing)
    if not row.request_found:
        return Built(None, Skip.request_missing)
    if row.success is False:
        return Built(None, Skip.response_failed)
    if row.prompt is None or not row.prompt.strip():
        return Built(None, Skip.null_prompt)
    texts = [row.prompt, row.output_text or "", row.context_text or "", row.insight_type or ""]
    if any(_has_lone_surrogate(t) or "\x00" in t for t in texts):
        return Built(None, Skip.invalid_text)
    ok, output = _parse_json(row.output_text)
    if not ok:
        return Built(None, Skip.invalid_output_json)
    if output in (None, "", {}, []) or (isinstance(output, str) and not output.strip()):
        return Built(None, Skip.empty_output)
    if shape.free_text:
        output = shape.output_text(output)
        if output is None:
            return Built(None, Skip.no_output_text)
    elif not isinstance(output, dict | list):
        # A bare string or number is not the structured output an insight must be.
        return Built(None, Skip.invalid_output_json)
    ok, context = _parse_json(row.context_text)
    if not ok:
        return Built(None, Skip.invalid_context_json)
    conversation = shape.conversation_id(context)
    system_prompt = shape.context_system_prompt(context)
    context = shape.rendered_context(context)
    scrubber = Scrubber(
        [u for u in (row.request_user_id, row.feedback_user_id) if u],
        pii_analyzer(options.pii_spacy_model),
        names(conversation) if names is not None else None,
    )
    try:
        if scrubber.needed(row.prompt, row.context_text, row.output_text) and scrubber.finds_any(
            row.prompt, context, output, system_prompt
        ):
            # The prompt and each context value are scrubbed on their own (as the output's
            # values are), not the rendered turn once more: that third pass ran every
            # recognizer over the whole prompt again and found nothing new.
            user = user_turn(scrubber.text(row.prompt), scrubber.value(context))
            target = scrubber.text(output) if shape.free_text else canonical_json(scrubber.value(output))
            if system_prompt is not None:
                system_prompt = scrubber.text(system_prompt)
        else:
            user = user_turn(row.prompt, context)
            target = output if shape.free_text else canonical_json(output)
    except ValueError:
        return Built(None, Skip.invalid_output_json)
    if len(user) > options.max_prompt_chars:
        return Built(None, Skip.prompt_too_long)
    rating = decision.rating or Rating.neutral
    quality = options.positive_quality_score if rating is Rating.positive else options.neutral_quality_score
    insight = row.insight_type or "default"
    example = Example(
        system_prompt=system_prompt or options.system_prompt(row.insight_type),
        user=user,
        target=target,
        insight_type=insight,
        rating=rating,
        quality_score=quality,
        provenance={
            "request_id": row.request_id,
            "response_id": row.response_id,
            "feedback_id": row.feedback_id,
            "model_name": row.model_name,
            "model_version": row.model_version,
            "rating": rating.value,
            "votes": decision.votes,
        },
        conversation=conversation,
        asked_at=row.requested_at,
    )
    return Built(example, None, scrubber.counts)


_JSON_SHAPE = ExportShape()


def wanted(decision: Decision, options: SelectionOptions) -> Skip | None:
    """None when the decision makes a training example, else the skip reason."""
    if decision.skip is not None:
        return decision.skip
    if decision.rating is Rating.positive:
        return None
    if decision.rating is Rating.neutral:
        notes = (decision.row.notes or "").strip()
        return None if options.include_neutral_with_notes and notes else Skip.rated_neutral
    return Skip.rated_negative


def preference_key(example: Example) -> bytes:
    return digest("pref", example.insight_type, example.normalized_user)


class PreferencePairs:
    """Negative-rated responses paired with a positive response to the same prompt.

    Every positive example is a candidate until the stream ends (ratings arrive ordered by
    response, not by prompt), so candidates are kept packed: one short tuple of strings
    each instead of an Example with its provenance dict (a 100k-rating window would hold
    ~200 MB more otherwise)."""

    def __init__(self) -> None:
        self._chosen: dict[bytes, tuple[str, str, str, str, float, tuple[tuple[str, Any], ...]]] = {}
        self._rejected: dict[bytes, list[Example]] = {}

    def chosen(self, example: Example) -> None:
        key = preference_key(example)
        if key not in self._chosen:
            self._chosen[key] = (
                example.system_prompt,
                example.user,
                example.target,
                example.insight_type,
                example.quality_score,
                # Not orjson.dumps: its bytes keep a 4 KB buffer each.
                tuple(example.provenance.items()),
            )

    def rejected(self, example: Example) -> None:
        self._rejected.setdefault(preference_key(example), []).append(example)

    def unmatched(self) -> tuple[dict[bytes, list[Example]], dict[bytes, Any]]:
        """Prompts with only negatives (their examples), and prompts with only a positive
        (their request ids; `chosen_example` unpacks one), in this window: what
        `cross_window.earlier_pairs` looks for in earlier windows (issue 25)."""
        rejected = {k: v for k, v in self._rejected.items() if k not in self._chosen}
        chosen = {
            k: dict(packed[5]).get("request_id")
            for k, packed in self._chosen.items()
            if k not in self._rejected
        }
        return rejected, chosen

    def chosen_example(self, key: bytes) -> Example:
        system, user, target, insight, quality, provenance = self._chosen[key]
        return Example(
            system_prompt=system,
            user=user,
            target=target,
            insight_type=insight,
            rating=Rating.positive,
            quality_score=quality,
            provenance=dict(provenance),
        )

    def pairs(self) -> list[tuple[Example, Example]]:
        out = []
        for key, rejected in self._rejected.items():
            packed = self._chosen.get(key)
            if packed is None:
                continue
            system, user, target, insight, quality, provenance = packed
            chosen = Example(
                system_prompt=system,
                user=user,
                target=target,
                insight_type=insight,
                rating=Rating.positive,
                quality_score=quality,
                provenance=dict(provenance),
            )
            out.extend((chosen, r) for r in rejected if r.target != chosen.target)
        return sorted(out, key=lambda cr: str(cr[1].provenance["response_id"]))
