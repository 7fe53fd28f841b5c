"""The expected-label metrics equal the realised ones on average over label draws, with less spread."""

from __future__ import annotations

import numpy as np

from rm_train.evaluate import expected_label_metrics, regression_metrics


def test_expected_label_mse_is_the_mean_over_label_draws() -> None:
    rng = np.random.default_rng(0)
    r_star = rng.beta(0.7, 0.7, 2_000)
    prediction = np.clip(r_star + rng.normal(0, 0.15, r_star.size), 0, 1)
    expected = expected_label_metrics(prediction, r_star)
    draws = [regression_metrics(prediction, (rng.random(r_star.size) < r_star).astype(float)) for _ in range(2_000)]
    mse = np.array([d["mse"] for d in draws])
    r2 = np.array([d["r2"] for d in draws])
    # Unbiased for the MSE (exact in expectation): within 4 Monte Carlo standard errors.
    assert abs(mse.mean() - expected["mse"]) < 4 * mse.std() / np.sqrt(mse.size)
    # R2 divides by the realised variance: equal to first order, well inside one draw's spread.
    assert abs(r2.mean() - expected["r2"]) < 0.2 * r2.std()
    assert r2.std() > 0.005  # the noise the expected metric removes is real at n = 2,000


def test_perfect_prediction_scores_the_bayes_limit() -> None:
    r_star = np.array([0.1, 0.5, 0.9, 0.3])
    m = r_star.mean()
    expected = expected_label_metrics(r_star, r_star)
    assert np.isclose(expected["mse"], np.mean(r_star * (1 - r_star)))
    assert np.isclose(expected["r2"], 1 - np.mean(r_star * (1 - r_star)) / (m * (1 - m)))
