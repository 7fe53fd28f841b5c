"""The propensity estimators honour the scikit-learn contract and save/load without pickle."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.utils.estimator_checks import parametrize_with_checks

from propensity.models.estimators import (
    LightGBMPropensity,
    LogisticPropensity,
    MLPPropensity,
    OneClassError,
    make_estimator,
)
from schemas.errors import ConfigError, EstimationError

# Small settings: the checks fit on tiny arrays many times (the whole file stays a few seconds).
# min_child_samples=2 lets LightGBM split the checks' 20-150-row data sets.
SMALL = [
    LightGBMPropensity(n_estimators=20, min_child_samples=2, n_jobs=1),
    LogisticPropensity(),
    MLPPropensity(hidden_sizes=(16,), max_epochs=10, batch_size=64, learning_rate=1e-2, device="cpu"),
]


def _expected_failed_checks(estimator) -> dict[str, str]:
    # None expected today: the estimators are binary-only (multi_class tag off, so the multiclass
    # checks instead verify the "Only binary classification is supported." error), accept NaN
    # (allow_nan tag), and raise a ValueError mentioning "class" on one-class targets.
    return {}


@parametrize_with_checks(SMALL, expected_failed_checks=_expected_failed_checks)
def test_sklearn_estimator_checks(estimator, check) -> None:
    import torch

    torch.set_num_threads(1)
    check(estimator)


def _binary_data(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4))
    p = 1 / (1 + np.exp(-(X[:, 0] - 0.5 * X[:, 1])))
    return X, (rng.random(n) < p).astype(int)


@pytest.mark.parametrize("estimator", SMALL, ids=lambda e: type(e).__name__)
def test_save_load_round_trip_without_pickle(estimator, tmp_path) -> None:
    X, y = _binary_data()
    X[::17, 2] = np.nan
    fitted = clone(estimator).fit(X, y)
    files = fitted.save(tmp_path, "fold_0")
    assert all(f.suffix in {".txt", ".json", ".safetensors"} for f in files)
    assert not list(tmp_path.glob("*.pkl")) and not list(tmp_path.glob("*.pickle"))
    loaded = type(estimator).load(tmp_path, "fold_0")
    np.testing.assert_allclose(loaded.predict_proba(X), fitted.predict_proba(X), rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(loaded.classes_, fitted.classes_)


def test_lightgbm_native_categoricals(tmp_path) -> None:
    rng = np.random.default_rng(1)
    n = 2_000
    platform = pd.Categorical(rng.choice(["web", "ios", "android"], n), categories=["android", "ios", "web"])
    x = rng.normal(size=n)
    p = np.where(platform == "web", 0.5, 0.1)
    y = (rng.random(n) < p).astype(int)
    X = pd.DataFrame({"platform": platform, "x": x})
    model = LightGBMPropensity(n_estimators=30, n_jobs=1).fit(X, y)
    assert model.categorical_features_ == ["platform"]
    proba = model.predict_propensity(X)
    # The categorical split recovers the two rates (each has ~650+ rows: SE < 0.02).
    assert abs(proba[platform == "web"].mean() - 0.5) < 0.06
    assert abs(proba[platform == "ios"].mean() - 0.1) < 0.06
    model.save(tmp_path)
    np.testing.assert_allclose(LightGBMPropensity.load(tmp_path).predict_propensity(X), proba)
    with pytest.raises(ValueError, match="columns seen in fit"):
        model.predict_proba(X[["x", "platform"]])


@pytest.mark.parametrize("estimator", SMALL, ids=lambda e: type(e).__name__)
def test_predict_before_fit_raises(estimator) -> None:
    with pytest.raises(NotFittedError):
        clone(estimator).predict_proba(np.zeros((2, 4)))


@pytest.mark.parametrize("estimator", SMALL, ids=lambda e: type(e).__name__)
def test_one_class_is_an_estimation_error(estimator) -> None:
    with pytest.raises(OneClassError, match="one class") as info:
        clone(estimator).fit(np.zeros((10, 2)), np.ones(10))
    assert isinstance(info.value, EstimationError) and isinstance(info.value, ValueError)


def test_mlp_is_reproducible_and_keeps_global_rng() -> None:
    import torch

    X, y = _binary_data(300)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = MLPPropensity(hidden_sizes=(8,), max_epochs=3, device="cpu", random_state=4).fit(X, y).predict_proba(X)
    after = torch.rand(1)
    b = MLPPropensity(hidden_sizes=(8,), max_epochs=3, device="cpu", random_state=4).fit(X, y).predict_proba(X)
    np.testing.assert_array_equal(a, b)
    assert torch.equal(before, after)  # fitting did not consume the caller's torch RNG


def test_heavy_tailed_feature_is_winsorised() -> None:
    # A held-out row far beyond the training range must not get an extreme score.
    X, y = _binary_data(500)
    model = LogisticPropensity().fit(X, y)
    far = X[:1].copy()
    far[0, 0] = 1e6
    edge = X[:1].copy()
    edge[0, 0] = model.standardization_["hi"][0]
    np.testing.assert_allclose(model.predict_proba(far), model.predict_proba(edge))


@pytest.mark.parametrize(
    ("model", "params", "message"),
    [
        ("forest", {}, "unknown propensity model"),
        ("lightgbm", {"depth": 3}, "unknown lightgbm parameter"),
        ("mlp", {"n_estimators": 3}, "unknown mlp parameter"),
    ],
)
def test_make_estimator_errors(model, params, message) -> None:
    with pytest.raises(ConfigError, match=message):
        make_estimator(model, **params)


def test_lightgbm_row_cap_samples_uniformly() -> None:
    X, y = _binary_data(3_000)
    capped = LightGBMPropensity(n_estimators=20, max_train_rows=1_000, n_jobs=1).fit(X, y)
    full = LightGBMPropensity(n_estimators=20, n_jobs=1).fit(X, y)
    assert capped.n_train_rows_ == 1_000 and full.n_train_rows_ == 3_000
    # Uniform sampling keeps the feedback rate: the mean score stays near the base rate
    # (binomial SE of a 1,000-row rate is about 0.016).
    assert abs(capped.predict_propensity(X).mean() - y.mean()) < 0.05
