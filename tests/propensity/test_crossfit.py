"""Cross-fitting never scores a row with a model that saw it; folds group users; calibration is
cross-fitted; clipping counts are exact."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin

from propensity.models.calibration import IsotonicCalibrator, PlattCalibrator, clip_propensity, cross_calibrate
from propensity.models.crossfit import cross_fit, group_folds
from propensity.models.estimators import LogisticPropensity
from schemas.errors import ConfigError, EstimationError


class _MemorisingSpy(ClassifierMixin, BaseEstimator):
    """Column 0 holds the row id. Scores 1.0 for any row id it was trained on, else 0.0."""

    def fit(self, X, y):
        self.seen_ = set(np.asarray(X)[:, 0].astype(int).tolist())
        self.classes_ = np.array([0, 1])
        return self

    def predict_proba(self, X):
        seen = np.array([int(i) in self.seen_ for i in np.asarray(X)[:, 0]], dtype=float)
        return np.column_stack([1 - seen, seen])


def _users(n: int, n_users: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # Heavy-tailed activity, as in production logs.
    activity = rng.pareto(1.5, n_users) + 1
    return np.array([f"u{u:05d}" for u in rng.choice(n_users, n, p=activity / activity.sum())])


def test_no_row_is_scored_by_a_model_that_saw_it() -> None:
    n = 3_000
    users = _users(n, 150)
    folds = group_folds(users, 5, seed=3)
    y = (np.arange(n) % 7 == 0).astype(int)
    X = np.column_stack([np.arange(n), np.zeros(n)])
    result = cross_fit(_MemorisingSpy(), X, y, folds)
    assert np.all(result.oof == 0.0), "some row was scored by a model trained on it"
    # and the spy does remember: each fold model saw exactly the rows outside its fold
    for k, model in enumerate(result.models):
        assert model.seen_ == set(np.flatnonzero(folds != k).tolist())


def test_augment_hook_gets_disjoint_rows() -> None:
    n = 600
    folds = group_folds(_users(n, 40), 4, seed=0)
    y = (np.arange(n) % 5 == 0).astype(int)
    X = pd.DataFrame({"row": np.arange(n, dtype=float)})
    calls = []

    def augment(k, train_rows, test_rows):
        calls.append(k)
        assert set(train_rows).isdisjoint(test_rows)
        assert np.all(folds[test_rows] == k) and np.all(folds[train_rows] != k)
        return np.ones((len(train_rows), 1)), np.ones((len(test_rows), 1))

    result = cross_fit(LogisticPropensity(), X, y, folds, augment=augment)
    assert calls == [0, 1, 2, 3]
    assert np.isfinite(result.oof).all()


def test_group_folds_keep_users_together_and_balance() -> None:
    users = _users(20_000, 800, seed=1)
    folds = group_folds(users, 5, seed=0)
    frame = pd.DataFrame({"user": users, "fold": folds})
    assert frame.groupby("user")["fold"].nunique().max() == 1
    sizes = np.bincount(folds, minlength=5)
    # Greedy placement of the largest users first: folds within 10% of n/K.
    assert sizes.min() > 0.9 * len(users) / 5 and sizes.max() < 1.1 * len(users) / 5
    # Deterministic, and independent of row order.
    order = np.random.default_rng(2).permutation(len(users))
    np.testing.assert_array_equal(group_folds(users[order], 5, seed=0), folds[order])
    assert not np.array_equal(group_folds(users, 5, seed=1), folds)


@pytest.mark.parametrize(
    ("users", "k", "error", "message"),
    [
        (np.array(["a", "b", "c"]), 5, EstimationError, "3 distinct user"),
        (np.array(["a", "b", "c"]), 1, ConfigError, "folds must be >= 2"),
    ],
)
def test_group_folds_errors(users, k, error, message) -> None:
    with pytest.raises(error, match=message):
        group_folds(users, k)


def test_cross_fit_rejects_one_class_training_split() -> None:
    folds = np.repeat([0, 1], 50)
    y = np.r_[np.zeros(50), np.r_[np.ones(1), np.zeros(49)]]  # fold 0's training rows (fold 1) have 1 positive; fold 1's have none
    with pytest.raises(EstimationError, match="one class only"):
        cross_fit(LogisticPropensity(), np.random.default_rng(0).normal(size=(100, 2)), y, folds)


@pytest.mark.parametrize("method", ["isotonic", "platt"])
def test_calibration_is_cross_fitted(method) -> None:
    rng = np.random.default_rng(0)
    n = 4_000
    folds = rng.integers(0, 4, n)
    true_p = rng.uniform(0.02, 0.6, n)
    y = (rng.random(n) < true_p).astype(int)
    raw = true_p**2  # a monotone but miscalibrated score
    calibrated, calibrators = cross_calibrate(raw, y, folds, method)
    cls = IsotonicCalibrator if method == "isotonic" else PlattCalibrator
    for k, cal in enumerate(calibrators):
        # fold k's map is the one fitted on the other folds' scores and labels only
        reference = cls().fit(raw[folds != k], y[folds != k])
        np.testing.assert_allclose(calibrated[folds == k], np.clip(reference.predict(raw[folds == k]), 0, 1))
        np.testing.assert_allclose(cal.predict(raw[:50]), reference.predict(raw[:50]))
    # and it calibrates: the mean is right within 4 binomial standard errors
    assert abs(calibrated.mean() - y.mean()) < 4 * np.sqrt(y.mean() * (1 - y.mean()) / n)


def test_calibration_rejects_unknown_method() -> None:
    with pytest.raises(ConfigError, match="unknown calibration"):
        cross_calibrate(np.ones(4), np.array([0, 1, 0, 1]), np.array([0, 0, 1, 1]), "beta")


def test_clipping_counts_are_exact() -> None:
    p = np.array([0.0, 0.01, 0.049, 0.05, 0.2, 0.9, 1.0])
    observed = np.array([True, False, True, True, False, True, False])
    clipped, report = clip_propensity(p, 0.05, observed=observed)
    np.testing.assert_array_equal(clipped, [0.05, 0.05, 0.05, 0.05, 0.2, 0.9, 1.0])
    assert report.n_clipped_low == 3 and report.n_clipped_high == 0 and report.n_clipped == 3
    assert report.share_clipped == pytest.approx(3 / 7)
    assert report.n_clipped_observed == 2 and report.share_clipped_observed == pytest.approx(2 / 4)
    _, high = clip_propensity(np.array([0.5, 0.95, 0.99]), 0.1, 0.9)
    assert high.n_clipped_high == 2 and high.n_clipped_low == 0


@pytest.mark.parametrize(("floor", "ceiling"), [(0.0, 1.0), (-0.1, 1.0), (0.5, 0.4), (0.1, 1.5)])
def test_clipping_rejects_bad_bounds(floor, ceiling) -> None:
    with pytest.raises(ConfigError, match="clip floor"):
        clip_propensity(np.array([0.5]), floor, ceiling)


def test_lightgbm_shared_bins_fast_path_is_out_of_fold(monkeypatch) -> None:
    """The LightGBM path bins once for all folds; it must still never score a training row. On pure
    noise labels with a row-id feature, a deep model memorises its training rows (in-sample AUC
    near 1), so any leak would show as an out-of-fold AUC above chance (SE about 0.02 here)."""
    from sklearn.metrics import roc_auc_score

    from propensity.models.estimators import LightGBMPropensity

    rng = np.random.default_rng(0)
    n = 1_000
    X = np.column_stack([np.arange(n, dtype=float), rng.normal(size=n)])
    y = (rng.random(n) < 0.3).astype(int)
    folds = group_folds(np.arange(n) // 4, 5, seed=0)
    deep = LightGBMPropensity(n_estimators=60, num_leaves=64, min_child_samples=1, learning_rate=0.3, subsample=1.0, max_bin=1023, n_jobs=1)
    calls = []
    original = LightGBMPropensity._cross_fit_shared_bins
    monkeypatch.setattr(LightGBMPropensity, "_cross_fit_shared_bins", lambda self, *a: calls.append(1) or original(self, *a))
    result = cross_fit(deep, X, y, folds)
    assert calls == [1]
    in_sample = result.models[0].predict_propensity(X[folds != 0])
    assert roc_auc_score(y[folds != 0], in_sample) > 0.8
    assert roc_auc_score(y, result.oof) < 0.5 + 4 * 0.02


# ---------------------------------------------------------------- found by mutation testing (issue 22)


def test_augment_columns_reach_the_model_and_progress_and_folds_are_reported() -> None:
    """The augment hook's columns are appended to the features the fold models see (a model on
    them alone separates the classes), on_fold_done gets every fold index, and the result keeps
    the folds. Mutation testing found these three unguarded."""
    n = 600
    folds = group_folds(_users(n, 40), 4, seed=0)
    y = (np.arange(n) % 2 == 0).astype(int)
    X = pd.DataFrame({"noise": np.zeros(n)})
    signal = np.where(y == 1, 3.0, -3.0)

    def augment(k, train_rows, test_rows):
        return signal[train_rows, None], signal[test_rows, None]

    done: list[int] = []
    result = cross_fit(LogisticPropensity(), X, y, folds, augment=augment, on_fold_done=done.append)
    assert done == [0, 1, 2, 3]
    np.testing.assert_array_equal(result.folds, folds)
    assert result.oof[y == 1].min() > 0.9 and result.oof[y == 0].max() < 0.1  # the extra column was used
    # ndarray features take the same path
    result = cross_fit(LogisticPropensity(), np.zeros((n, 1)), y, folds, augment=augment)
    assert result.oof[y == 1].min() > 0.9


def test_group_folds_accepts_two_folds_and_column_vectors() -> None:
    users = _users(400, 30)
    two = group_folds(users, 2, seed=1)
    assert set(two.tolist()) == {0, 1}
    column = group_folds(users.reshape(-1, 1), 5, seed=1)
    assert column.shape == (400,)
    np.testing.assert_array_equal(column, group_folds(users, 5, seed=1))


def test_group_folds_beyond_the_greedy_head_assigns_every_user() -> None:
    """Past the 20,000 largest users folds are drawn at random (mutation testing found that branch
    unexercised): all users of a 25,000-user log get a valid fold, and the folds stay balanced."""
    users = np.array([f"u{i:06d}" for i in range(25_000)])
    folds = group_folds(users, 5, seed=2)
    assert folds.min() == 0 and folds.max() == 4
    sizes = np.bincount(folds, minlength=5)
    assert sizes.min() > 0.9 * 5_000 and sizes.max() < 1.1 * 5_000


@pytest.mark.parametrize("method", ["isotonic", "platt", "none"])
def test_calibrators_round_trip_through_their_saved_dict(method) -> None:
    """`propensity score` rebuilds the fit's calibrators from calibration.json: the dict of a fitted
    calibrator must give the same predictions (mutation testing found the platt keys and the
    identity calibrator unguarded). Scores of exactly 0 and 1 stay finite (the logit is clipped)."""
    import json

    from propensity.models.calibration import calibrator_from_dict, make_calibrator

    rng = np.random.default_rng(4)
    scores = np.r_[0.0, 1.0, rng.uniform(0, 1, 500)]
    y = (rng.random(scores.size) < scores * 0.5).astype(int)
    fitted = make_calibrator(method).fit(scores, y)
    rebuilt = calibrator_from_dict(json.loads(json.dumps(fitted.to_dict())))
    predicted = fitted.predict(scores)
    assert np.isfinite(predicted).all()
    np.testing.assert_allclose(rebuilt.predict(scores), predicted)
    if method == "none":
        np.testing.assert_array_equal(predicted, scores)
    else:
        assert abs(predicted.mean() - y.mean()) < 0.02  # calibrated to the observed rate
