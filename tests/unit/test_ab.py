"""The A/B rule, its statistics and the decision (brightrun/ab.py), against hand calculations,
a numerical integral, a seeded Monte Carlo and the edge cases (no ratings, all up, equal)."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from brightrun.ab import (
    ABRule,
    Action,
    ArmCounts,
    decide,
    normal_sf,
    probability_better,
    two_proportion_test,
)


def arm(name: str, up: int, down: int, neutral: int = 0) -> ArmCounts:
    return ArmCounts(name, rated_responses=up + down + neutral, positive=up, negative=down, neutral=neutral)


def test_two_proportion_z_matches_the_pooled_hand_calculation() -> None:
    # 40/100 vs 55/100: pooled 0.475, se = sqrt(0.475 * 0.525 * (1/100 + 1/100)) = 0.0706222
    test = two_proportion_test(40, 100, 55, 100)
    assert test.z == pytest.approx(0.15 / math.sqrt(0.475 * 0.525 * 0.02), rel=1e-12)
    assert test.z == pytest.approx(2.1239770, abs=1e-6)
    assert test.p_value_better == pytest.approx(0.0168360, abs=1e-6)  # 1 - Φ(2.124)
    assert test.p_value_better + test.p_value_worse == pytest.approx(1.0)
    swapped = two_proportion_test(55, 100, 40, 100)
    assert swapped.z == pytest.approx(-test.z) and swapped.p_value_worse == pytest.approx(test.p_value_better)


def test_two_proportion_unequal_arms() -> None:
    # 90/1000 vs 30/200: pooled 120/1200 = 0.1, se = sqrt(0.09 * (1/1000 + 1/200)) = 0.0232379
    test = two_proportion_test(90, 1000, 30, 200)
    assert test.z == pytest.approx(0.06 / math.sqrt(0.09 * 0.006), rel=1e-12)
    assert test.p_value_better == pytest.approx(normal_sf(2.5819889), rel=1e-6)


@pytest.mark.parametrize(
    ("prod", "cand"),
    [((0, 0), (0, 0)), ((0, 0), (5, 10)), ((10, 10), (20, 20)), ((0, 10), (0, 30)), ((7, 10), (7, 10))],
)
def test_no_evidence_gives_z_zero(prod: tuple[int, int], cand: tuple[int, int]) -> None:
    test = two_proportion_test(prod[0], prod[1], cand[0], cand[1])
    assert (test.z, test.p_value_better, test.p_value_worse) == (0.0, 0.5, 0.5)


def test_normal_tail() -> None:
    assert normal_sf(0) == 0.5
    assert normal_sf(1.959963985) == pytest.approx(0.025, abs=1e-9)
    assert normal_sf(-1.644853627) == pytest.approx(0.95, abs=1e-9)


def _integral(a_up: int, a_n: int, b_up: int, b_n: int, steps: int = 20000) -> float:
    """P(p_b > p_a) = ∫ f_b(x) F_a(x) dx, by the midpoint rule (F_a by a running sum)."""

    def density(x: float, up: int, n: int) -> float:
        log_b = math.lgamma(up + 1) + math.lgamma(n - up + 1) - math.lgamma(n + 2)
        return math.exp(up * math.log(x) + (n - up) * math.log(1 - x) - log_b)

    h = 1 / steps
    cdf_a, total = 0.0, 0.0
    for k in range(steps):
        x = (k + 0.5) * h
        fa = density(x, a_up, a_n) * h
        total += density(x, b_up, b_n) * h * (cdf_a + fa / 2)
        cdf_a += fa
    return total


@pytest.mark.parametrize(
    "counts", [(40, 100, 55, 100), (55, 100, 40, 100), (3, 10, 8, 12), (0, 5, 5, 5), (120, 400, 130, 400)]
)
def test_probability_better_matches_a_numerical_integral(counts: tuple[int, int, int, int]) -> None:
    assert probability_better(*counts) == pytest.approx(_integral(*counts), abs=1e-5)


def test_probability_better_known_values_and_a_seeded_monte_carlo() -> None:
    assert probability_better(0, 0, 0, 0) == pytest.approx(0.5)  # two uniforms
    assert probability_better(0, 0, 1, 1) == pytest.approx(2 / 3)  # Beta(2,1) vs U: E[X] = 2/3
    assert probability_better(7, 10, 7, 10) == pytest.approx(0.5)  # the same posterior
    np = pytest.importorskip("numpy")
    rng = np.random.default_rng(24)
    a = rng.beta(1 + 40, 1 + 60, 400_000)
    b = rng.beta(1 + 55, 1 + 45, 400_000)
    assert probability_better(40, 100, 55, 100) == pytest.approx(float((b > a).mean()), abs=2e-3)
    # symmetric, and large counts stay finite (the normal approximation gives z = 4.36)
    assert probability_better(55, 100, 40, 100) == pytest.approx(1 - probability_better(40, 100, 55, 100))
    big = probability_better(350_000, 500_000, 352_000, 500_000)
    assert 1 - big == pytest.approx(normal_sf(0.004 / math.sqrt(2 * 0.21 / 500_000)), rel=0.1)


def test_probability_better_refuses_impossible_counts() -> None:
    with pytest.raises(ValueError, match="cannot exceed"):
        probability_better(11, 10, 0, 0)
    with pytest.raises(ValueError, match="negative"):
        ArmCounts("x", positive=-1)


RULE = ABRule(min_rated_per_arm=200, alpha=0.05, early_stop_alpha=0.01, early_stop_min_rated=50)


def test_a_better_candidate_is_promoted_once_both_arms_have_the_minimum() -> None:
    prod, better = arm("prod", 120, 80), arm("cand", 150, 50)  # 60% vs 75%
    decision = decide(prod, better, RULE)
    assert decision.action is Action.promote
    assert decision.p_value_better is not None and decision.p_value_better < 0.05
    assert decision.reason.startswith("Promote: the candidate is significantly better")
    assert "cand 75.0% positive of 200 ratings vs prod 60.0% of 200" in decision.reason
    # the same rates one rating short of the minimum: keep going
    short = decide(prod, arm("cand", 149, 50), RULE)
    assert (
        short.action is Action.keep_going
        and "199 rated responses in the smaller arm, 200 needed" in short.reason
    )


def test_a_worse_candidate_is_stopped_early() -> None:
    decision = decide(arm("prod", 42, 18), arm("cand", 20, 40), RULE)  # 70% vs 33%, 60 each
    assert decision.action is Action.roll_back and "stopped early" in decision.reason
    assert decision.p_value_worse is not None and decision.p_value_worse < 0.01
    # below early_stop_min_rated nothing stops, however bad it looks
    assert decide(arm("prod", 30, 0), arm("cand", 0, 30), RULE).action is Action.keep_going


def test_neutral_ratings_count_as_not_positive() -> None:
    prod = arm("prod", 120, 80)
    assert decide(prod, arm("cand", 150, 0, neutral=50), RULE).action is Action.promote
    assert decide(prod, arm("cand", 120, 0, neutral=80), RULE).action is Action.keep_going


@pytest.mark.parametrize("method", ["two_proportion", "bayesian"])
def test_edge_cases(method: str) -> None:
    rule = RULE.model_copy(update={"method": method})
    none = decide(arm("prod", 0, 0), arm("cand", 0, 0), rule)
    assert none.action is Action.keep_going and "0 rated responses" in none.reason
    assert "- positive of 0 ratings" in none.reason
    all_up = decide(arm("prod", 300, 0), arm("cand", 300, 0), rule)
    assert all_up.action is Action.keep_going and all_up.z == 0.0
    equal = decide(arm("prod", 150, 150), arm("cand", 150, 150), rule)
    assert equal.action is Action.keep_going and "no significant difference" in equal.reason


def test_bayesian_rule() -> None:
    rule = RULE.model_copy(update={"method": "bayesian", "probability_level": 0.95})
    decision = decide(arm("prod", 120, 80), arm("cand", 140, 60), rule)  # 60% vs 70%
    assert decision.probability_better == pytest.approx(probability_better(120, 200, 140, 200))
    assert decision.probability_better is not None and decision.probability_better > 0.95
    assert decision.action is Action.promote and "P(candidate better) = 0.98" in decision.reason
    worse = decide(arm("prod", 42, 18), arm("cand", 20, 40), rule)
    assert worse.action is Action.roll_back and "P(candidate worse)" in worse.reason


def test_max_rated_rolls_back_an_indistinguishable_candidate() -> None:
    rule = RULE.model_copy(update={"max_rated_per_arm": 1000})
    assert decide(arm("prod", 600, 400), arm("cand", 601, 399), rule).action is Action.roll_back
    assert decide(arm("prod", 600, 399), arm("cand", 601, 399), rule).action is Action.keep_going


def test_the_rule_is_checked() -> None:
    with pytest.raises(ValidationError, match="early_stop_min_rated"):
        ABRule(min_rated_per_arm=10, early_stop_min_rated=20)
    with pytest.raises(ValidationError, match="max_rated_per_arm"):
        ABRule(min_rated_per_arm=100, max_rated_per_arm=10)
    with pytest.raises(ValidationError, match="alpha"):
        ABRule(alpha=0.7)
    with pytest.raises(ValidationError, match="extra"):
        ABRule(min_rated=3)  # type: ignore[call-arg]
    assert "at least 200 rated responses per arm" in RULE.describe()
