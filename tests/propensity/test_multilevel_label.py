"""fit-label-aware with a multi-level label (issue 17): ``--label-column rating`` on a ratings
warehouse, whose feedback table keeps the raw rating beside the binary vote."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from feedback_etl.ingest import IngestConfig, ingest
from propensity.models.fit import PropensityConfig, fit_propensity
from propensity.slice.label_aware import LabelAwareConfig, fit_label_aware, read_label_aware_scores
from propensity.slice.multilevel import label_codes
from propensity.weights.export import ExportConfig, export_weighted_dataset
from schemas.errors import ConfigError, InputFileError

SHARES = np.array([0.3, 0.25, 0.2, 0.15, 0.1])  # P(r), r = 1..5: true mean 2.5
BETA = 0.5  # P(rated | r) proportional to exp(BETA * (r - 1)): users rate what they like


@pytest.fixture(scope="module")
def rated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pl.DataFrame]:
    """A ratings warehouse whose selection depends on the rating only, its context fit, and every
    exposure's true rating (observed or not)."""
    root = tmp_path_factory.mktemp("multilevel")
    rng = np.random.default_rng(7)
    users, items = 100, 60
    user, item = np.divmod(np.arange(users * items), items)
    rating = rng.choice(np.arange(1, 6), size=len(user), p=SHARES)
    observed = rng.random(len(user)) < 0.04 * np.exp(BETA * (rating - 1))
    triples = pl.DataFrame({"user_id": [f"u{u}" for u in user], "item_id": [f"i{i}" for i in item], "rating": rating})
    # Every user and item appears rated at least once, so the universe is all users x all items.
    assert triples.filter(pl.Series(observed))["user_id"].n_unique() == users
    triples.filter(pl.Series(observed)).write_csv(root / "ratings.csv")
    wh = root / "wh"
    ingest(IngestConfig(inputs=(str(root / "ratings.csv"),), warehouse=str(wh), source="ratings"))
    fit_propensity(wh, PropensityConfig(folds=3, n_jobs=1, model_params={"n_estimators": 20}))
    truth = triples.select(exposure_id=pl.format("ratings:{}:{}", "user_id", "item_id"), rating=pl.col("rating").cast(pl.Float64))
    return wh, truth


def _slice(truth: pl.DataFrame, path: Path, size: int, seed: int = 0) -> pl.DataFrame:
    chosen = truth.sample(size, seed=seed)
    chosen.with_columns(label=(pl.col("rating") >= 4).cast(pl.Int8)).write_csv(path)
    return chosen


def test_rating_tilt_recovers_the_mean_rating(rated: tuple[Path, pl.DataFrame], tmp_path: Path) -> None:
    wh, truth = rated
    _slice(truth, tmp_path / "slice.csv", 800)
    result = fit_label_aware(wh, LabelAwareConfig(slice=str(tmp_path / "slice.csv"), label_column="rating", label_model="none",
                                                  bootstrap=40, clip=0.01, n_jobs=1))
    e = result.report["estimates"]
    true_mean = float(truth["rating"].mean())
    # Naive mean of the rated: E[r | o] = sum r P(r) e^{beta(r-1)} / sum P(r) e^{beta(r-1)} = 3.44, about 0.9 above.
    assert e["naive"]["estimate"] - true_mean > 0.7
    # The tilt is estimated from 800 slice ratings (sd 1.3): standard error about 0.05; 4 of them.
    assert abs(e["label_aware_snips"]["estimate"] - true_mean) < 4 * 1.3 / np.sqrt(800)
    assert result.report["label_values"]["values"] == [1.0, 2.0, 3.0, 4.0, 5.0]
    # The factor of rating r relative to rating 1 estimates e^{beta (r - 1)}: e^2 = 7.4 for a 5.
    factors = np.array(result.report["label_values"]["relative_propensity"][0])
    assert factors[0] == pytest.approx(1.0) and 4.0 < factors[4] < 12.0 and np.all(np.diff(factors) > 0)


def test_weights_use_each_rated_exposures_own_rating(rated: tuple[Path, pl.DataFrame], tmp_path: Path) -> None:
    wh, truth = rated
    _slice(truth, tmp_path / "slice.csv", 400, seed=1)
    result = fit_label_aware(wh, LabelAwareConfig(slice=str(tmp_path / "slice.csv"), label_column="rating", label_model="none",
                                                  bootstrap=20, clip=0.01, n_jobs=1))
    scores = result.scores
    export_weighted_dataset(ExportConfig(warehouse=str(wh), out=str(tmp_path / "ds"), propensity="label-aware", no_noise=True))
    data = pl.read_parquet(tmp_path / "ds" / "data.parquet").join(scores.select("exposure_id", own=pl.col("propensity")), on="exposure_id")
    observed = data.filter(pl.col("observed"))
    assert np.allclose(observed["weight"].to_numpy(), 1.0 / observed["own"].to_numpy())
    # Higher ratings are rated more often, so their rows get smaller weights.
    by_rating = observed.join(truth, on="exposure_id").group_by("rating").agg(pl.col("weight").mean()).sort("rating")
    assert np.all(np.diff(by_rating["weight"].to_numpy()) < 0)


def test_label_codes_and_bad_slices(rated: tuple[Path, pl.DataFrame], tmp_path: Path) -> None:
    values, codes, slice_codes = label_codes(np.array([3.0, np.nan, 1.0, 5.0]), np.array([True, False, True, True]),
                                             np.array([5.0, 1.0]), column="rating")
    assert values.tolist() == [1.0, 3.0, 5.0] and codes.tolist() == [1, 0, 0, 2] and slice_codes.tolist() == [2, 0]
    with pytest.raises(InputFileError, match="never occur among the organic labels"):
        label_codes(np.array([1.0, 2.0]), np.array([True, True]), np.array([4.0]), column="rating")
    wh, truth = rated
    _slice(truth, tmp_path / "slice.csv", 100).select("exposure_id", label=(pl.col("rating") >= 4).cast(pl.Int8)).write_csv(
        tmp_path / "no_rating.csv")
    with pytest.raises(InputFileError, match="lacks column 'rating'"):
        fit_label_aware(wh, LabelAwareConfig(slice=str(tmp_path / "no_rating.csv"), label_column="rating", label_model="none"))
    with pytest.raises(ConfigError, match="needs a --slice file"):
        LabelAwareConfig(label_column="rating", label_model="none")
    with pytest.raises(ConfigError, match="outcome column"):
        LabelAwareConfig(label_column="platform")


def test_streamed_rating_fit_equals_the_in_memory_fit(rated: tuple[Path, pl.DataFrame], tmp_path: Path) -> None:
    """Above the memory budget (``max_rows=1``: every one of the 6,000 rows is streamed in batches of 997)
    the multi-level fit trains the same multiclass fold models on the same rated rows and scores every
    exposure batch by batch: scores and report equal the in-memory fit's to floating-point rounding."""
    from polars.testing import assert_frame_equal

    from tests.propensity.test_streamed_chain import _close

    wh, truth = rated
    _slice(truth, tmp_path / "slice.csv", 400, seed=2)
    fits = {}
    for name, options in (("whole", {}), ("streamed", {"max_rows": 1, "batch_rows": 997})):
        copy = tmp_path / name
        shutil.copytree(wh, copy)
        cfg = LabelAwareConfig(slice=str(tmp_path / "slice.csv"), label_column="rating", bootstrap=20, clip=0.01, n_jobs=1, **options)
        fits[name] = (fit_label_aware(copy, cfg).report, read_label_aware_scores(copy))
    (whole, a), (streamed, b) = fits["whole"], fits["streamed"]
    assert whole["memory"]["streamed"] is False and streamed["memory"]["streamed"] is True
    assert streamed["memory"]["core_rows"] < 0.5 * a.height  # the rated rows and the slice, not every exposure
    assert streamed["outcome_model"]["n_labels"] == 5 and len(streamed["outcome_model"]["mean"]) == 5  # the multiclass LightGBM
    assert_frame_equal(a, b, check_exact=False, rel_tol=1e-12, abs_tol=1e-15)
    for key in ("estimates", "label_factors", "label_values", "weights", "clipping", "outcome_model", "context"):
        assert _close(streamed[key], whole[key]), key
