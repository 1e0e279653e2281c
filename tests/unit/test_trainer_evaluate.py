"""The one perplexity of a loss, shared by the trainer's report and inference's scores."""

from __future__ import annotations

import math

import pytest

from trainer import evaluate, inference


def test_perplexity_of_a_finite_loss_is_its_exponential() -> None:
    assert evaluate.perplexity(2.5) == pytest.approx(math.exp(2.5))
    assert evaluate.perplexity(0.0) == 1.0


def test_a_huge_finite_loss_is_capped_instead_of_overflowing() -> None:
    assert evaluate.perplexity(1e9) == math.exp(50.0)


def test_an_infinite_loss_is_infinite_and_nan_stays_nan() -> None:
    assert evaluate.perplexity(math.inf) == math.inf
    assert math.isnan(evaluate.perplexity(math.nan))


def test_inference_reports_the_same_perplexity() -> None:
    assert inference.perplexity is evaluate.perplexity
