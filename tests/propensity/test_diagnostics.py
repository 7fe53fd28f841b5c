"""Diagnostics against closed forms on hand-built arrays."""

from __future__ import annotations

import numpy as np
import pytest

from propensity.diagnostics import (
    balance_summary,
    classification_metrics,
    expected_calibration_error,
    kish_ess,
    propensity_diagnostics,
    reliability_table,
    standardized_mean_differences,
    weight_summary,
)


def test_kish_ess_closed_form() -> None:
    assert kish_ess(np.ones(10)) == pytest.approx(10)
    # (1 + 1 + 4)^2 / (1 + 1 + 16) = 2
    assert kish_ess(np.array([1.0, 1.0, 4.0])) == pytest.approx(2.0)


def test_weight_summary() -> None:
    observed = np.array([True, True, False, True])
    p = np.array([0.5, 0.25, 0.1, 1.0])
    s = weight_summary(observed, p)  # weights 2, 4, 1
    assert s["n_observed"] == 3 and s["max"] == 4.0 and s["mean"] == pytest.approx(7 / 3)
    assert s["ess"] == pytest.approx(49 / 21) and s["ess_ratio"] == pytest.approx(49 / 63)
    assert s["sum_over_n_exposures"] == pytest.approx(7 / 4)
    assert s["quantiles"]["p50"] == pytest.approx(2.0)


def test_reliability_and_ece_closed_form() -> None:
    p = np.array([0.1, 0.1, 0.1, 0.1, 0.6, 0.6, 0.6, 0.6])
    o = np.array([0, 0, 0, 1, 1, 1, 0, 0])
    table = reliability_table(o, p, n_bins=2, strategy="uniform")
    assert [(r["n"], r["mean_propensity"], r["observed_rate"]) for r in table] == [(4, 0.1, 0.25), (4, 0.6, 0.5)]
    # ECE = 0.5 * |0.25 - 0.1| + 0.5 * |0.5 - 0.6| = 0.125
    assert expected_calibration_error(table) == pytest.approx(0.125)
    quantile = reliability_table(o, p, n_bins=2)
    assert sum(r["n"] for r in quantile) == 8


def test_classification_metrics() -> None:
    o = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.4, 0.35, 0.8])
    m = classification_metrics(o, p)
    assert m["auc"] == pytest.approx(0.75)
    assert m["brier"] == pytest.approx(np.mean((p - o) ** 2))
    assert m["log_loss"] == pytest.approx(-np.mean(o * np.log(p) + (1 - o) * np.log(1 - p)))
    assert classification_metrics(np.ones(3), np.full(3, 0.5))["auc"] is None


def test_smd_before_and_after_weighting() -> None:
    # x = 1 on half the exposures; those are observed with p = 0.5, the rest with p = 0.25.
    rng = np.random.default_rng(0)
    n = 40_000
    x = (np.arange(n) % 2).astype(float)
    p = np.where(x == 1, 0.5, 0.25)
    observed = rng.random(n) < p
    rows = standardized_mean_differences(x.reshape(-1, 1), ["x"], observed, p)
    row = rows[0]
    # before: observed mean = 0.5 / 0.75 = 2/3 vs 1/2; after: weighting by 1/p restores 1/2
    assert row["mean_observed"] == pytest.approx(2 / 3, abs=0.01)
    assert row["before"] == pytest.approx((2 / 3 - 0.5) / np.sqrt((0.25 + 2 / 9) / 2), abs=0.03)
    assert abs(row["after"]) < 0.03  # ~3 standard errors of a 15,000-row mean
    summary = balance_summary(rows)
    assert summary["max_abs_after"] < summary["max_abs_before"]


def test_smd_skips_missing_and_constant_columns() -> None:
    X = np.array([[1.0, np.nan, 5.0], [2.0, 1.0, 5.0], [3.0, 2.0, 5.0], [4.0, np.nan, 5.0]])
    observed = np.array([True, True, False, False])
    rows = standardized_mean_differences(X, ["a", "b", "c"], observed, np.full(4, 0.5))
    assert rows[2]["before"] is None  # constant
    assert rows[1]["mean_all"] == pytest.approx(1.5) and rows[1]["mean_observed"] == pytest.approx(1.0)


def test_propensity_diagnostics_keys() -> None:
    rng = np.random.default_rng(1)
    n = 1_000
    p = rng.uniform(0.1, 0.5, n)
    o = rng.random(n) < p
    X = np.column_stack([p, rng.normal(size=(n, 3))])
    d = propensity_diagnostics(o, p, propensity_raw=p, folds=np.arange(n) % 3, X=X, feature_names=["p", "emb_000", "emb_001", "z"])
    for key in ["auc", "log_loss", "brier", "ece", "reliability", "raw", "folds", "weights", "histogram", "balance"]:
        assert key in d
    assert [r["feature"] for r in d["balance"]["smd"]] == ["p", "z"]
    assert d["balance"]["embeddings"]["n_features"] == 2
    assert len(d["folds"]) == 3
    assert sum(d["histogram"]["observed"]) == int(o.sum())
