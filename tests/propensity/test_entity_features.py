"""Entity side-feature files and out-of-fold id encodings (issue 17)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from feedback_etl.ingest import IngestConfig, ingest
from feedback_etl.io import read_feedback
from feedback_etl.simulator import SimulationConfig, simulate
from propensity.io import read_scores
from propensity.models.entity_features import (
    ENCODING_SUFFIX,
    SMOOTHING,
    join_entity_features,
    oof_encoder,
    read_entity_features,
)
from propensity.models.fit import PropensityConfig, fit_propensity
from propensity.models.score import score_propensity
from schemas.errors import ConfigError, InputFileError

N = 4_000


def test_a_rows_own_label_never_reaches_its_own_encoding():
    rng = np.random.default_rng(0)
    n = 600
    ids = {"user_id": rng.integers(0, 40, n).astype(str)}
    y = rng.random(n) < 0.3
    folds = rng.integers(0, 3, n)
    for k in range(3):
        train, test = np.flatnonzero(folds != k), np.flatnonzero(folds == k)
        base_train, base_test = oof_encoder(ids, y, folds)(k, train, test)
        for row in (test[0], train[0], train[-1]):
            flipped = y.copy()
            flipped[row] = ~flipped[row]
            new_train, new_test = oof_encoder(ids, flipped, folds)(k, train, test)
            column = "user_id" + ENCODING_SUFFIX
            if row in test:
                # No held-out row's encoding moves: fold k's labels never reach fold k's columns.
                np.testing.assert_array_equal(new_test[column], base_test[column])
            else:
                position = int(np.flatnonzero(train == row)[0])
                assert new_train[column][position] == base_train[column][position]
    # And the encoding is the smoothed rate it claims to be, for a held-out row.
    train, test = np.flatnonzero(folds != 0), np.flatnonzero(folds == 0)
    _, enc_test = oof_encoder(ids, y, folds)(0, train, test)
    user = ids["user_id"][test[0]]
    same = train[ids["user_id"][train] == user]
    prior = y[train].mean()
    assert enc_test["user_id" + ENCODING_SUFFIX][0] == pytest.approx((y[same].sum() + SMOOTHING * prior) / (len(same) + SMOOTHING))


@pytest.fixture(scope="module")
def plain_warehouse(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Context-driven logs ingested *without* their extra columns, and a user file holding them."""
    root = tmp_path_factory.mktemp("entity")
    simulate(SimulationConfig(out=str(root / "logs"), n_exposures=N, n_users=1_000, seed=4, extra_context=True))
    ingest(IngestConfig(inputs=(str(root / "logs" / "events"),), warehouse=str(root / "wh")))
    events = pl.read_parquet(root / "logs" / "events" / "*.parquet").filter(pl.col("event_type") == "impression")
    users = events.group_by("user_id").agg(pl.col("plan_tier").first(), pl.col("app_version").first()).sort("user_id")
    users.write_csv(root / "users.csv")
    return root / "wh", root / "users.csv"


def _fit(wh: Path, **kw):
    return fit_propensity(wh, PropensityConfig(folds=3, n_jobs=1, model_params={"n_estimators": 100}, **kw))


@pytest.mark.slow
def test_user_feature_file_raises_the_auc_and_scoring_joins_it_again(plain_warehouse):
    wh, users = plain_warehouse
    without = _fit(wh).metrics
    with_file = _fit(wh, user_features=str(users)).metrics
    assert {"plan_tier", "app_version"} <= set(with_file["features"])
    n_pos = with_file["n_observed"]
    se = math.sqrt(0.25 * (1 / n_pos + 1 / (N - n_pos)))  # AUC standard error bound (Hanley-McNeil at 0.5)
    assert with_file["auc"] - without["auc"] > 3 * se
    fitted = read_scores(wh, "vote")
    result = score_propensity(wh, "vote")
    scored = read_scores(wh, "vote")
    assert result.n_exposures == N and scored.height == fitted.height
    assert scored.join(fitted, on="exposure_id")["propensity"].equals(scored.join(fitted, on="exposure_id")["propensity_right"], check_names=False)


def test_id_encodings_fit_and_score(plain_warehouse):
    wh, _ = plain_warehouse
    result = _fit(wh, id_encodings=("user_id", "response_id"))
    assert result.metrics["id_encodings"] == ["user_id", "response_id"]
    assert 0.5 < result.metrics["auc"] < 1.0
    assert score_propensity(wh, "vote").n_exposures == N
    with pytest.raises(ConfigError, match="cannot be id-encoded"):
        PropensityConfig(id_encodings=("session_id",))


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ({"user_id": ["u1", "u1"], "tier": ["a", "b"]}, "appear more than once"),
        ({"account": ["u1"], "tier": ["a"]}, "no key column"),
        ({"user_id": ["u1"]}, "holds only its key column"),
    ],
)
def test_bad_side_feature_files_are_one_clear_error(tmp_path, rows, message):
    path = tmp_path / "users.csv"
    pl.DataFrame(rows).write_csv(path)
    with pytest.raises(InputFileError, match=message) as info:
        read_entity_features(path, keys=("user_id",), option="--user-features")
    assert str(path) in str(info.value)


def test_keys_matching_nothing_and_name_clashes(plain_warehouse, tmp_path):
    wh, _ = plain_warehouse
    feedback = read_feedback(wh)
    path = tmp_path / "users.csv"
    pl.DataFrame({"user_id": ["nobody"], "tier": ["a"]}).write_csv(path)
    with pytest.raises(InputFileError, match="no user_id of the file matches an exposure"):
        join_entity_features(feedback, [read_entity_features(path, keys=("user_id",), option="--user-features")])
    pl.DataFrame({"user_id": feedback["user_id"].unique().to_list(), "platform": "x"}).write_csv(path)
    with pytest.raises(ConfigError, match=r"\['platform'\] already exist"):
        join_entity_features(feedback, [read_entity_features(path, keys=("user_id",), option="--user-features")])


def test_a_case_control_fit_joins_the_side_file_too(plain_warehouse, tmp_path):
    """A table over --max-rows (case-control fit, streamed scoring) uses the user file as the
    in-memory fit does: same feature list, and the AUC gain of the selection-driving columns."""
    wh, users = plain_warehouse
    sampled = tmp_path / "wh"
    import shutil

    shutil.copytree(wh, sampled)
    whole = _fit(wh, user_features=str(users)).metrics
    without = _fit(sampled, max_rows=2_500).metrics
    part = _fit(sampled, user_features=str(users), max_rows=2_500, batch_rows=700).metrics
    assert part["sampling"]["sampled"] and part["features"] == whole["features"]
    assert part["categorical_features"] == whole["categorical_features"]
    n_pos = part["n_observed"]
    se = math.sqrt(0.25 * (1 / n_pos + 1 / (N - n_pos)))  # AUC standard error bound (Hanley-McNeil at 0.5)
    assert part["auc"] - without["auc"] > 3 * se, (without["auc"], part["auc"], se)
    # Every exposure is scored, and `propensity score` joins the file again for new exposures.
    assert read_scores(sampled, "vote").height == N
    assert score_propensity(sampled, "vote").n_exposures == N
