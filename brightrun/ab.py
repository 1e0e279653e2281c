"""A/B by users' thumbs: the rule, the statistics and the decision (issue 24). Pure.

Each arm is one served name on the endpoint: production and a candidate. The unit of the
test is a rating (`lexybrain_feedback` row): a success is a positive one; negative and
neutral ones are not (the positive rate `feedback-stats` reports). The minimum sample is
counted in rated responses per arm.

The decision, in order:

1. Early stop: once both arms hold `early_stop_min_rated` rated responses, a candidate
   significantly *worse* than production at `early_stop_alpha` (one-sided) is rolled back.
   It is checked at every run, long before the minimum, so its level is stricter than the
   promotion's (repeated looks at the data).
2. Below `min_rated_per_arm` in either arm: continue.
3. A candidate significantly *better* (one-sided): promote. `two_proportion`: the pooled
   two-proportion z-test, p-value under `alpha`. `bayesian`: with uniform Beta(1, 1) priors,
   the posterior probability that the candidate's positive rate is higher, at least
   `probability_level` (computed exactly; see `probability_better`).
4. Both arms at `max_rated_per_arm` (when set) and still not better: roll back, since a
   candidate that many ratings cannot tell apart is not worth the switch.
5. Otherwise: continue.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Action(StrEnum):
    promote = "promote"
    roll_back = "roll_back"
    keep_going = "continue"


class ABRule(BaseModel):
    """When the thumbs decide an A/B test. Every field is a `decide_ab` parameter."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_rated_per_arm: int = Field(200, ge=1, description="rated responses each arm needs before a promotion")
    method: Literal["two_proportion", "bayesian"] = Field(
        "two_proportion", description="pooled two-proportion z-test, or the Beta-Binomial posterior"
    )
    alpha: float = Field(0.05, gt=0, lt=0.5, description="two_proportion: one-sided level to promote")
    probability_level: float = Field(
        0.95, gt=0.5, lt=1, description="bayesian: P(candidate better) needed to promote"
    )
    early_stop_alpha: float = Field(
        0.01, gt=0, lt=0.5, description="roll back early when the candidate is worse at this level"
    )
    early_stop_min_rated: int = Field(
        50, ge=1, description="rated responses each arm needs for an early stop"
    )
    max_rated_per_arm: int | None = Field(
        None, ge=1, description="roll back when both arms have this many and the candidate is not better"
    )
    # The direction of the test is fixed: promotion needs the candidate to be better (H1:
    # p_candidate > p_production); a two-sided test would promote on no evidence of gain.
    direction: Literal["candidate_better"] = "candidate_better"

    @model_validator(mode="after")
    def _consistent(self) -> ABRule:
        if self.early_stop_min_rated > self.min_rated_per_arm:
            raise ValueError(
                f"early_stop_min_rated ({self.early_stop_min_rated}) must be at most "
                f"min_rated_per_arm ({self.min_rated_per_arm}): the early stop comes first"
            )
        if self.max_rated_per_arm is not None and self.max_rated_per_arm < self.min_rated_per_arm:
            raise ValueError(
                f"max_rated_per_arm ({self.max_rated_per_arm}) must be at least "
                f"min_rated_per_arm ({self.min_rated_per_arm})"
            )
        return self

    @property
    def worse_probability_level(self) -> float:
        """bayesian: the posterior P(candidate worse) that stops early."""
        return 1 - self.early_stop_alpha

    def describe(self) -> str:
        if self.method == "two_proportion":
            test = f"one-sided pooled two-proportion z-test, promote at p < {self.alpha:g}"
            stop = f"p < {self.early_stop_alpha:g}"
        else:
            test = f"Beta(1,1) posterior, promote at P(candidate better) ≥ {self.probability_level:g}"
            stop = f"P(candidate worse) ≥ {self.worse_probability_level:g}"
        cap = f", roll back at {self.max_rated_per_arm} per arm" if self.max_rated_per_arm else ""
        return (
            f"{test}; at least {self.min_rated_per_arm} rated responses per arm; early stop when "
            f"worse at {stop} from {self.early_stop_min_rated} per arm{cap}"
        )


@dataclass(frozen=True)
class ArmCounts:
    """One arm's thumbs in the window."""

    served_name: str
    rated_responses: int = 0
    positive: int = 0
    negative: int = 0
    neutral: int = 0

    def __post_init__(self) -> None:
        for name in ("rated_responses", "positive", "negative", "neutral"):
            if getattr(self, name) < 0:
                raise ValueError(f"{self.served_name}: {name} is negative ({getattr(self, name)})")

    @property
    def ratings(self) -> int:
        return self.positive + self.negative + self.neutral

    @property
    def positive_rate(self) -> float | None:
        return self.positive / self.ratings if self.ratings else None


@dataclass(frozen=True)
class TwoProportionTest:
    z: float
    p_value_better: float  # H1: candidate > production
    p_value_worse: float  # H1: candidate < production


def two_proportion_test(prod_up: int, prod_n: int, cand_up: int, cand_n: int) -> TwoProportionTest:
    """Pooled two-proportion z-test, candidate minus production (statsmodels'
    `proportions_ztest` with the pooled variance). Equal proportions, or an arm without
    ratings, give z = 0 and both p-values 0.5: nothing is shown either way."""
    if prod_n <= 0 or cand_n <= 0:
        return TwoProportionTest(0.0, 0.5, 0.5)
    pooled = (prod_up + cand_up) / (prod_n + cand_n)
    se = math.sqrt(pooled * (1 - pooled) * (1 / prod_n + 1 / cand_n))
    if se == 0:  # both arms all up, or all not up: the same proportion
        return TwoProportionTest(0.0, 0.5, 0.5)
    z = (cand_up / cand_n - prod_up / prod_n) / se
    return TwoProportionTest(z, normal_sf(z), normal_sf(-z))


def probability_better(a_up: int, a_n: int, b_up: int, b_n: int) -> float:
    """P(p_b > p_a) for p_a ~ Beta(1 + a_up, 1 + a_n - a_up), p_b likewise: exact.

    With integer parameters (uniform priors) the probability is the finite sum
    Σ_{i<α_b} B(α_a+i, β_a+β_b) / ((β_b+i) B(1+i, β_b) B(α_a, β_a)) (Evan Miller, "Formulas
    for Bayesian A/B testing"), summed with plain floats; it has α_b terms, so the sum runs over
    the arm with fewer successes (using P(p_b > p_a) = 1 − P(p_a > p_b): ties have measure 0).
    """
    alpha_a, beta_a = 1 + a_up, 1 + a_n - a_up
    alpha_b, beta_b = 1 + b_up, 1 + b_n - b_up
    if min(beta_a, beta_b) < 1:
        raise ValueError("positive ratings cannot exceed ratings")
    if alpha_b > alpha_a:
        return 1.0 - _sum_better(alpha_b, beta_b, alpha_a, beta_a)
    return _sum_better(alpha_a, beta_a, alpha_b, beta_b)


def _sum_better(alpha_a: int, beta_a: int, alpha_b: int, beta_b: int) -> float:
    """P(p_b > p_a): the sum's terms t_i, each from the one before by the ratio
    t_{i+1}/t_i = (α_a+i)(β_b+i) / ((α_a+β_a+β_b+i)(1+i)), from t_0 = B(α_a, β_a+β_b)/B(α_a, β_a);
    plain floats, the largest term factored out so that none underflows."""
    log_t = _log_beta(alpha_a, beta_a + beta_b) - _log_beta(alpha_a, beta_a)
    logs = [log_t]
    for i in range(alpha_b - 1):
        log_t += math.log((alpha_a + i) * (beta_b + i)) - math.log((alpha_a + beta_a + beta_b + i) * (1 + i))
        logs.append(log_t)
    top = max(logs)
    total = math.fsum(math.exp(x - top) for x in logs)
    return min(1.0, max(0.0, math.exp(top + math.log(total))))


def _log_beta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def normal_sf(z: float) -> float:
    """P(Z > z) for a standard normal Z (no scipy on the orchestrator side)."""
    return 0.5 * math.erfc(z / math.sqrt(2))


@dataclass(frozen=True)
class ABDecision:
    action: Action
    reason: str  # one sentence for the operator
    production: ArmCounts
    candidate: ArmCounts
    rule: ABRule
    z: float | None = None
    p_value_better: float | None = None
    p_value_worse: float | None = None
    probability_better: float | None = None

    def as_dict(self) -> dict[str, Any]:
        def arm(a: ArmCounts) -> dict[str, Any]:
            return {
                "served_name": a.served_name,
                "rated_responses": a.rated_responses,
                "ratings": a.ratings,
                "positive": a.positive,
                "negative": a.negative,
                "neutral": a.neutral,
                "positive_rate": a.positive_rate,
            }

        return {
            "action": self.action.value,
            "reason": self.reason,
            "production": arm(self.production),
            "candidate": arm(self.candidate),
            "method": self.rule.method,
            "rule": self.rule.model_dump(),
            "z": self.z,
            "p_value_better": self.p_value_better,
            "p_value_worse": self.p_value_worse,
            "probability_better": self.probability_better,
        }


def _pct(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:.1%}"


def decide(production: ArmCounts, candidate: ArmCounts, rule: ABRule) -> ABDecision:
    """promote | roll_back | continue, with the figures and why (order in the module docstring)."""
    test = two_proportion_test(production.positive, production.ratings, candidate.positive, candidate.ratings)
    p_better: float | None = None
    if rule.method == "bayesian":
        p_better = probability_better(
            production.positive, production.ratings, candidate.positive, candidate.ratings
        )
    rates = (
        f"{candidate.served_name} {_pct(candidate.positive_rate)} positive of {candidate.ratings} ratings "
        f"vs {production.served_name} {_pct(production.positive_rate)} of {production.ratings}"
    )
    if rule.method == "two_proportion":
        evidence_better = f"one-sided p = {test.p_value_better:.4g}"
        evidence_worse = f"one-sided p = {test.p_value_worse:.4g}"
        better = test.p_value_better < rule.alpha
        worse = test.p_value_worse < rule.early_stop_alpha
    else:
        assert p_better is not None
        evidence_better = f"P(candidate better) = {p_better:.4f}"
        evidence_worse = f"P(candidate worse) = {1 - p_better:.4f}"
        better = p_better >= rule.probability_level
        worse = 1 - p_better >= rule.worse_probability_level
    fewest = min(production.rated_responses, candidate.rated_responses)

    def made(action: Action, reason: str) -> ABDecision:
        return ABDecision(
            action,
            reason,
            production,
            candidate,
            rule,
            test.z,
            test.p_value_better,
            test.p_value_worse,
            p_better,
        )

    if fewest >= rule.early_stop_min_rated and worse:
        return made(
            Action.roll_back,
            f"Roll back: the candidate is significantly worse ({rates}; {evidence_worse}), stopped early.",
        )
    if fewest < rule.min_rated_per_arm:
        return made(
            Action.keep_going,
            f"Continue: {fewest} rated responses in the smaller arm, {rule.min_rated_per_arm} needed "
            f"({rates}).",
        )
    if better:
        return made(
            Action.promote, f"Promote: the candidate is significantly better ({rates}; {evidence_better})."
        )
    if rule.max_rated_per_arm is not None and fewest >= rule.max_rated_per_arm:
        return made(
            Action.roll_back,
            f"Roll back: {fewest} rated responses per arm and the candidate is still not better "
            f"({rates}; {evidence_better}).",
        )
    return made(Action.keep_going, f"Continue: no significant difference yet ({rates}; {evidence_better}).")


# ---------------------------------------------------------------- the app's sticky split
# The app picks `model` per user from the view `serving_routes_live`: a user's bucket (0-99)
# from a hash of their id, against the routes' cumulative shares (largest share first, then
# by served name). The same user keeps the same arm while the split stands. The SQL below and
# the TypeScript in the README compute exactly `sticky_bucket` / `pick_served_name`.

PICK_MODEL_SQL = """
SELECT served_name FROM (
    SELECT served_name,
           sum(share_percent) OVER (ORDER BY share_percent DESC, served_name) AS upto
    FROM serving_routes_live WHERE endpoint_id = :endpoint_id
) AS routes
WHERE upto > ('x' || substr(encode(sha256(convert_to(:user_id, 'UTF8')), 'hex'), 1, 7))::bit(28)::int % 100
ORDER BY upto LIMIT 1
"""


def sticky_bucket(user_id: str) -> int:
    """0-99: the first 7 hex digits of sha256(user id) mod 100."""
    import hashlib

    return int(hashlib.sha256(user_id.encode()).hexdigest()[:7], 16) % 100


def pick_served_name(user_id: str, shares: Sequence[tuple[str, int]]) -> str:
    """The served name a user is routed to, from (served name, share percent) routes."""
    total = sum(share for _, share in shares)
    if total != 100:
        raise ValueError(f"the shares {list(shares)} add up to {total}, not 100")
    upto = 0
    bucket = sticky_bucket(user_id)
    for name, share in sorted(shares, key=lambda r: (-r[1], r[0])):
        upto += share
        if bucket < upto:
            return name
    raise AssertionError("unreachable: the shares add up to 100")
