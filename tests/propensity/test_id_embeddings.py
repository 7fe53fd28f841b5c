"""Learned id embeddings for the MLP propensity (issue 17): hashed buckets, learned inside the
cross-fitting folds, used again by scoring, and never fed a row's own label."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from sklearn.metrics import roc_auc_score

from feedback_etl.io import read_feedback, write_feedback
from propensity.io import read_scores
from propensity.models.crossfit import cross_fit
from propensity.models.entity_features import bucket_columns, id_buckets
from propensity.models.estimators import MLPPropensity
from propensity.models.fit import PropensityConfig, fit_propensity
from propensity.models.score import load_fold_models, score_frame, score_propensity
from schemas.errors import ConfigError

N_ITEMS = 40
# Small and quick: the tests are about where the labels go, not about a well-tuned network (a larger
# embedding step than the default makes 6 epochs enough).
FAST = {"hidden_sizes": (16,), "max_epochs": 6, "batch_size": 256, "id_buckets": 4096, "id_learning_rate_factor": 10.0}


def test_buckets_are_stable_and_nulls_are_unknown() -> None:
    values = pl.Series(["a", "b", None, "a", "c"])
    buckets = id_buckets(values, 1_000, column="response_id")
    assert buckets[0] == buckets[3] and buckets[2] == 1_000 and ((0 <= buckets) & (buckets <= 1_000)).all()
    # Keyed BLAKE2b, not a per-process or per-version hash: saved models score with the same buckets
    # in any later run (these values were computed once and must never change).
    assert id_buckets(pl.Series(["a", "user-42"]), 2**16, column="response_id").tolist() == [4585, 54324]
    assert id_buckets(pl.Series(["a"]), 2**16, column="user_id")[0] != id_buckets(pl.Series(["a"]), 2**16, column="response_id")[0]
    assert bucket_columns(pl.DataFrame({"user_id": ["x"], "prompt_id": ["y"]}), ["user_id", "prompt_id"], 10).shape == (1, 2)


def _item_world(n: int = 2_400, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(X with one id-bucket column first, y, folds, true p): feedback driven by the item only."""
    rng = np.random.default_rng(seed)
    item = rng.integers(0, N_ITEMS, n)
    effect = rng.normal(0.0, 1.5, N_ITEMS)
    p = 1.0 / (1.0 + np.exp(-(-1.2 + effect[item])))
    y = (rng.random(n) < p).astype(int)
    ids = bucket_columns(pl.DataFrame({"response_id": [f"r{i}" for i in item]}), ["response_id"], FAST["id_buckets"])
    X = np.hstack([ids, rng.normal(size=(n, 2))])
    folds = rng.integers(0, 3, n)
    return X, y, folds, p


def test_a_rows_own_label_never_reaches_its_own_score() -> None:
    """Flip every label of fold 0: fold 0's out-of-fold scores do not move (its model saw none of
    them, embeddings included), while the other folds' scores do (the flip is not a no-op)."""
    X, y, folds, _ = _item_world(n=900)
    estimator = MLPPropensity(n_id_columns=1, device="cpu", **{**FAST, "max_epochs": 3})
    base = cross_fit(estimator, X, y, folds)
    flipped = y.copy()
    flipped[folds == 0] = 1 - flipped[folds == 0]
    again = cross_fit(estimator, X, flipped, folds)
    np.testing.assert_array_equal(again.oof[folds == 0], base.oof[folds == 0])
    assert np.abs(again.oof[folds != 0] - base.oof[folds != 0]).max() > 0.01


def test_embeddings_learn_the_item_and_unseen_ids_get_the_unknown_vector(tmp_path: Path) -> None:
    X, y, folds, p = _item_world()
    train, test = folds != 0, folds == 0
    model = MLPPropensity(n_id_columns=1, device="cpu", **FAST).fit(X[train], y[train])
    plain = MLPPropensity(device="cpu", **FAST).fit(X[train][:, 1:], y[train])
    score = model.predict_propensity(X[test])
    # Selection depends on the item only: with the id embedding the held-out AUC must beat the
    # network that sees the noise columns only by 3 standard errors (Hanley-McNeil bound at 0.5).
    n_pos, n_test = int(y[test].sum()), int(test.sum())
    se = math.sqrt(0.25 * (1 / n_pos + 1 / (n_test - n_pos)))
    gain = roc_auc_score(y[test], score) - roc_auc_score(y[test], plain.predict_propensity(X[test][:, 1:]))
    assert gain > 3 * se, (gain, se)
    # A bucket no training row used is read as unknown: every unseen id gets one and the same score.
    unseen = np.repeat(X[test][:1], 2, axis=0)
    unseen[:, 0] = np.setdiff1d(np.arange(FAST["id_buckets"]), X[train][:, 0])[:2]
    assert len(set(model.predict_propensity(unseen).round(12))) == 1
    # Saved and loaded (safetensors), the model predicts the same.
    model.save(tmp_path, "m")
    np.testing.assert_array_equal(MLPPropensity.load(tmp_path, "m").predict_propensity(X[test]), score)
    with pytest.raises(ValueError, match="not an integer in"):
        model.predict_proba(np.hstack([np.full((1, 1), 0.5), X[test][:1, 1:]]))


@pytest.fixture(scope="module")
def item_warehouse(warehouse: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 8,000-exposure warehouse with feedback redrawn to depend on the response shown: 40
    responses with logit effects N(0, 1.5^2), none of which the contract's features carry."""
    wh = tmp_path_factory.mktemp("id_embeddings") / "wh"
    shutil.copytree(warehouse, wh)
    rng = np.random.default_rng(3)
    effect = rng.normal(0.0, 1.5, N_ITEMS)
    feedback = read_feedback(wh).sort("exposure_id")
    item = (feedback["exposure_id"].hash(seed=9) % N_ITEMS).to_numpy().astype(int)
    p = 1.0 / (1.0 + np.exp(-(-1.7 + effect[item])))
    observed = rng.random(feedback.height) < p
    label = rng.random(feedback.height) < 0.6
    feedback = feedback.with_columns(
        response_id=pl.Series([f"resp-{i:02d}" for i in item]),
        observed=pl.Series(observed),
        label=pl.when(pl.Series(observed)).then(pl.Series(label).cast(pl.Int8)).otherwise(None),
    )
    write_feedback(feedback, wh / "feedback")
    return wh


def _fit(wh: Path, epochs: int = 4, **kw):
    params = {**FAST, "max_epochs": epochs}
    return fit_propensity(wh, PropensityConfig(model="mlp", folds=3, device="cpu", n_jobs=1, model_params=params, **kw))


@pytest.mark.slow
def test_id_embeddings_raise_the_auc_and_scoring_rebuilds_them(item_warehouse: Path) -> None:
    without = _fit(item_warehouse).metrics
    with_ids = _fit(item_warehouse, id_embeddings=("response_id",)).metrics
    assert with_ids["id_embeddings"] == ["response_id"]
    n_pos, n = with_ids["n_observed"], with_ids["n_exposures"]
    se = math.sqrt(0.25 * (1 / n_pos + 1 / (n - n_pos)))  # AUC standard error bound (Hanley-McNeil at 0.5)
    assert with_ids["auc"] - without["auc"] > 3 * se, (without["auc"], with_ids["auc"], se)
    spec = json.loads((item_warehouse / "propensity" / "models" / "vote" / "config.json").read_text())
    assert spec["id_embeddings"] == {"columns": ["response_id"], "buckets": FAST["id_buckets"], "dim": 8}
    # Scoring hashes the same buckets: fold k's saved model gives every fitted row its fit-time score.
    fitted = read_scores(item_warehouse, "vote")
    spec, models, calibrators = load_fold_models(item_warehouse, "vote")
    feedback = read_feedback(item_warehouse).sort("exposure_id")
    rescored = score_frame(feedback, spec, models, calibrators, folds=fitted.sort("exposure_id")["fold"].to_numpy())
    np.testing.assert_allclose(rescored["propensity_raw"].to_numpy(), fitted.sort("exposure_id")["propensity_raw"].to_numpy(), rtol=1e-6)
    assert score_propensity(item_warehouse, "vote").n_exposures == n


@pytest.mark.slow
def test_a_sampled_fit_uses_the_embeddings_too(item_warehouse: Path, tmp_path: Path) -> None:
    wh = tmp_path / "wh"
    shutil.copytree(item_warehouse, wh)
    metrics = _fit(wh, epochs=3, id_embeddings=("response_id",), max_rows=4_000, batch_rows=1_500).metrics
    assert metrics["sampling"]["sampled"] and metrics["auc"] > 0.6
    spec = json.loads((wh / "propensity" / "models" / "vote" / "config.json").read_text())
    assert spec["id_embeddings"]["columns"] == ["response_id"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"id_embeddings": ("response_id",)}, "learned id embeddings need the mlp model"),
        ({"model": "mlp", "id_embeddings": ("session_id",)}, "cannot be embedded"),
    ],
)
def test_bad_id_embedding_options_fail_cleanly(options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        PropensityConfig(**options)


def test_label_aware_context_refit_rebuilds_the_id_buckets() -> None:
    """fit-label-aware refits the context model with the fit's saved config: after an
    ``--id-embeddings`` fit that MLP reads its first input columns as id buckets, so the refit must
    put them back (before the fix it read a feature column as buckets and crashed). Selection
    here depends on the response only: the refit's context propensities must rank the organic
    votes better than chance by 3 standard errors (Hanley-McNeil bound at 0.5)."""
    from propensity.slice.label_aware import LabelAwareConfig, _organic_context

    n, rng = 2_000, np.random.default_rng(1)
    item = rng.integers(0, N_ITEMS, n)
    effect = rng.normal(0.0, 1.5, N_ITEMS)
    y = (rng.random(n) < 1.0 / (1.0 + np.exp(-(-1.2 + effect[item])))).astype(int)
    folds = rng.integers(0, 3, n)
    feedback = pl.DataFrame({"response_id": [f"r{i}" for i in item], "observed": y.astype(bool)})
    scores = pl.DataFrame({"propensity": np.full(len(y), 0.3), "fold": folds.astype(np.int32)})
    X_design = rng.normal(size=(len(y), 2))
    metrics = {"config": {"model": "mlp", "device": "cpu", "folds": 3, "id_embeddings": ["response_id"],
                          "model_params": FAST}}
    organic = np.ones(len(y), dtype=bool)
    context, info = _organic_context(feedback, scores, metrics, organic, LabelAwareConfig(refit_context="always"), None, X_design)
    assert info["refit"] and info["id_embeddings"] == ["response_id"]
    n_pos = int(y.sum())
    se = math.sqrt(0.25 * (1 / n_pos + 1 / (len(y) - n_pos)))
    assert roc_auc_score(y, context) - 0.5 > 3 * se
