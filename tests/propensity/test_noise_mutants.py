"""Noise-estimate outputs that mutation testing found unguarded (issue 22, benchmarks/mutation/).

Direct calls on small frames (fast); each test names the mutants it kills, each seen red with
that mutant applied.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from propensity.noise.estimate import NoiseConfig, _distance, _finish, estimate_noise_frame, proxy_scores
from tests.propensity.test_noise_accuracy import _three_blocks

CONFIG = NoiseConfig(quantile=0.7, min_quantile=0.7, min_anchors=1, bootstrap=20, proxy="lightgbm", text_features=False)


def test_proxy_auc_is_weighted_by_the_inverse_propensities() -> None:
    """auc_observed is the 1/p-weighted AUC of the held-out proxy scores (mutant proxy_scores__mutmut_77
    dropped the weights); on the three blocks the weighted and plain AUCs differ."""
    frame, propensity = _three_blocks()
    weight = 1 / propensity
    score, info = proxy_scores(frame, CONFIG, weight=weight)
    label = frame["label"].to_numpy()
    weighted = roc_auc_score(label, score, sample_weight=weight)
    assert abs(weighted - roc_auc_score(label, score)) > 0.01
    assert info["auc_observed"] == pytest.approx(weighted, abs=1e-12)


def test_estimate_records_when_it_was_made() -> None:
    """The result carries created_at, an ISO time in UTC (mutant estimate_noise_frame__mutmut_68, the key misspelt)."""
    frame, propensity = _three_blocks()
    out = estimate_noise_frame(frame, CONFIG, propensity=propensity)
    created = datetime.fromisoformat(out["created_at"])
    assert created.tzinfo is not None and abs(created - datetime.now(timezone.utc)) < timedelta(minutes=10)


def test_distance_between_anchor_and_audit_says_whether_the_intervals_overlap() -> None:
    """Mutant _distance__mutmut_35 (the intervals_overlap key misspelt)."""
    anchor = {"rho01": 0.10, "rho10": 0.20, "rho01_ci": [0.05, 0.15], "rho10_ci": [0.15, 0.25]}
    near = {"rho01": 0.12, "rho10": 0.22, "rho01_ci": [0.08, 0.16], "rho10_ci": [0.18, 0.26]}
    far = {"rho01": 0.30, "rho10": 0.20, "rho01_ci": [0.25, 0.35], "rho10_ci": [0.15, 0.25]}
    assert _distance(anchor, near) == {"rho01": pytest.approx(-0.02), "rho10": pytest.approx(-0.02), "max_abs": pytest.approx(0.02),
                                       "intervals_overlap": True}
    assert _distance(anchor, far)["intervals_overlap"] is False and _distance(anchor, far)["max_abs"] == pytest.approx(0.2)


def test_finish_records_the_memory_plan_without_the_byte_limit(tmp_path: Path) -> None:
    """noise.json states the memory plan it ran under (mutant _finish__mutmut_11 wrote null)."""
    plan = {"memory_limit_bytes": 1 << 30, "max_rows": 5_000_000, "streamed": False}
    result = {"channel": "vote", "method": "anchor", "warnings": []}
    out = _finish(tmp_path, NoiseConfig(), result, "propensity/scores.parquet", False, plan)
    assert out["memory"] == {"max_rows": 5_000_000, "streamed": False}
    written = json.loads((tmp_path / "noise.json").read_text())
    assert written["memory"] == out["memory"] and written["propensity_source"] == "propensity/scores.parquet"


def test_logistic_proxy_refit_keeps_the_inverse_propensity_weights() -> None:
    """The logistic proxy picks C on held-out users, then refits on all rows *with* the 1/p weights
    (mutant _proxy._fit_logistic__mutmut_28 refitted unweighted). Half the labels are 1 and carry
    weight 4, so the weighted P(r=1) is 0.8 where the unweighted one is 0.5."""
    from propensity.noise._proxy import _fit_logistic

    rng = np.random.default_rng(3)
    n = 2_000
    x = rng.normal(size=(n, 2))
    y = np.r_[np.ones(n // 2), np.zeros(n // 2)].astype(np.int64)
    w = np.where(y == 1, 4.0, 1.0)
    half = slice(0, n, 2), slice(1, n, 2)
    model = _fit_logistic(x[half[0]], y[half[0]], w[half[0]], x[half[1]], y[half[1]], w[half[1]], x, y, w)
    assert model.predict_proba(x)[:, 1].mean() == pytest.approx(0.8, abs=0.02)


def test_weighted_log_loss_closed_form() -> None:
    """The inner validation loss that picks the logistic proxy's C: -sum w (y log p + (1-y) log(1-p)) / sum w,
    finite at p = 1 (mutants _proxy._weighted_log_loss__mutmut_9, _15, _21)."""
    from propensity.noise._proxy import _weighted_log_loss

    y, p, w = np.array([1, 0, 0]), np.array([0.8, 0.3, 0.6]), np.array([1.0, 3.0, 2.0])
    expected = -(np.log(0.8) + 3 * np.log(0.7) + 2 * np.log(0.4)) / 6
    assert _weighted_log_loss(y, p, w) == pytest.approx(expected, rel=1e-12)
    assert _weighted_log_loss(np.array([0]), np.array([1.0]), np.array([1.0])) == pytest.approx(-np.log(1e-6), rel=1e-6)


def test_proxy_featurizer_one_hot_covers_every_level_of_a_later_batch() -> None:
    """A batch transformed with the levels fitted on all rows: the first level is one-hot encoded
    too (mutant ProxyFeaturizer.transform__mutmut_44 dropped level 0) and the block keeps every
    level's column even when the batch lacks the last ones (mutant _49 let the shape shrink)."""
    import polars as pl

    from propensity.noise._proxy import ProxyFeaturizer

    frame = pl.DataFrame({"exposure_id": ["a", "b", "c"], "platform": ["android", "ios", "web"]})
    featurizer = ProxyFeaturizer.fit(frame, text=False)
    platform = [i for i, name in enumerate(featurizer.names) if name.startswith("platform=")]
    assert len(platform) == 3
    batch = featurizer.transform(frame.head(1)).toarray()
    assert batch.shape == (1, len(featurizer.names))
    np.testing.assert_array_equal(batch[0, platform], [1.0, 0.0, 0.0])


def _weighted_matters_world() -> tuple:
    """Rows where the 1/p weights change the fit: a rare region (x0 > 1, weight 25) whose labels
    follow x1 and x2 sharply, the rest (weight 1) nearly label noise; 300 users, 2 outer folds."""
    import scipy.sparse as sp

    from propensity.models.crossfit import group_folds

    rng = np.random.default_rng(3)
    n = 1_200
    user = rng.integers(0, 300, n)
    x = rng.normal(size=(n, 6))
    heavy = x[:, 0] > 1.0
    logit = np.where(heavy, 3 * x[:, 1] + 2 * x[:, 2], 0.3 * x[:, 1])
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    weight = np.where(heavy, 25.0, 1.0)
    fold = group_folds(user, 2, 0)
    return sp.csr_matrix(x), y, weight, user, fold


def _inner_split(user: np.ndarray, fold: np.ndarray, k: int, seed: int, groups: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """The documented inner split of outer fold k: 1 in ``groups`` (5) of the training users held out."""
    from propensity.models.crossfit import group_folds

    train = fold != k
    inner = np.zeros_like(train)
    inner[train] = group_folds(user[train], groups, seed + k) == 0
    return train & ~inner, train & inner


def test_logistic_proxy_picks_c_from_weighted_inner_fits_on_one_fifth_of_the_users() -> None:
    """The logistic proxy's C is the grid value whose 1/p-weighted inner fit has the smallest weighted
    loss on the held-out fifth of the training users. In this world the weighted choice (0.1) and the
    unweighted one (1.0) differ, so an unweighted inner fit (mutant _proxy.fit_proxy_models__mutmut_85)
    picks the wrong C."""
    from sklearn.linear_model import LogisticRegression

    from propensity.noise._proxy import _LOGISTIC_C, _weighted_log_loss, fit_proxy_models

    X, y, weight, user, fold = _weighted_matters_world()
    fit, val = _inner_split(user, fold, 0, seed=0)
    w = weight / weight[fold != 0].mean()

    def choice(sample_weight: np.ndarray | None) -> float:
        losses = [
            _weighted_log_loss(y[val], LogisticRegression(C=c, max_iter=2000).fit(X[fit], y[fit], sample_weight=sample_weight)
                               .predict_proba(X[val])[:, 1], w[val])
            for c in _LOGISTIC_C
        ]
        return _LOGISTIC_C[int(np.argmin(losses))]

    weighted, unweighted = choice(w[fit]), choice(None)
    assert weighted != unweighted  # the world separates the two choices
    models = fit_proxy_models(X, np.ones(len(y), bool), y, weight, fold, user, np.array([0]), kind="logistic", seed=0)
    assert models[0].C == weighted


def test_lightgbm_proxy_early_stops_a_weighted_inner_fit_on_one_fifth_of_the_users() -> None:
    """The LightGBM proxy's stopping round comes from a 1/p-weighted fit on four fifths of the fold's
    training users, early-stopped on the other fifth: the round equals that fit's, and differs from an
    unweighted fit's (mutant _proxy.fit_proxy_models__mutmut_67) and from a 1-in-6 split's (mutant _30)."""
    from propensity.noise._proxy import _fit_lightgbm, fit_proxy_models

    X, y, weight, user, fold = _weighted_matters_world()
    w = weight / weight[fold != 0].mean()
    fit, val = _inner_split(user, fold, 0, seed=0)
    rounds = {
        "fifth": _fit_lightgbm(X[fit], y[fit], w[fit], X[val], y[val], w[val], 0).best_iteration_,
        "unweighted": _fit_lightgbm(X[fit], y[fit], None, X[val], y[val], w[val], 0).best_iteration_,
    }
    fit, val = _inner_split(user, fold, 0, seed=0, groups=6)
    rounds["sixth"] = _fit_lightgbm(X[fit], y[fit], w[fit], X[val], y[val], w[val], 0).best_iteration_
    assert rounds["fifth"] != rounds["unweighted"] and rounds["fifth"] != rounds["sixth"]  # the world separates them
    models = fit_proxy_models(X, np.ones(len(y), bool), y, weight, fold, user, np.array([0]), kind="lightgbm", seed=0)
    assert models[0].best_iteration_ == rounds["fifth"]
