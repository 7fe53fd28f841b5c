"""Case-control fits (issue 23): a table larger than ``max_rows`` is fitted on all observed rows plus
a uniform sample of the unobserved ones, corrected exactly, and every exposure is scored streamed."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from cli import app
from feedback_etl.io import read_feedback, write_feedback
from propensity import read_metrics, read_scores
from feedback_etl.sizes import parse_memory
from propensity.models.casecontrol import keep_mask, plan_rows, sample_rates
from propensity.models.fit import PropensityConfig, fit_propensity
from propensity.models.score import load_fold_models, score_frame
from schemas.errors import ConfigError

runner = CliRunner()
# About 1,600 observed and 6,400 unobserved exposures: a budget of 3,500 rows keeps every observed
# row and about 30% of the others.
MAX_ROWS = 3_500


@pytest.fixture(scope="module")
def full_and_sampled(warehouse: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two copies of the 8,000-exposure warehouse: one fitted whole, one fitted on a case-control
    sample of MAX_ROWS rows and scored in batches of 97 rows (many batches, a ragged last one)."""
    root = tmp_path_factory.mktemp("casecontrol")
    full, sampled = root / "full", root / "sampled"
    shutil.copytree(warehouse, full)
    shutil.copytree(warehouse, sampled)
    fit_propensity(full, PropensityConfig(n_jobs=1))
    fit_propensity(sampled, PropensityConfig(n_jobs=1, max_rows=MAX_ROWS, batch_rows=97))
    return full, sampled


def test_metrics_record_the_sampling(full_and_sampled: tuple[Path, Path]) -> None:
    full, sampled = full_and_sampled
    whole = read_metrics(full, "vote")["sampling"]
    assert whole["sampled"] is False and whole["n_rows"] == 8_000 and whole["max_rows"] >= 8_000
    sampling = read_metrics(sampled, "vote")["sampling"]
    assert sampling["sampled"] is True and sampling["max_rows"] == MAX_ROWS and sampling["n_rows"] == 8_000
    n_observed = int(read_feedback(sampled)["observed"].sum())
    assert sampling["rate_observed"] == 1.0 and sampling["n_sample_observed"] == n_observed
    assert sampling["rate_unobserved"] == pytest.approx((MAX_ROWS - n_observed) / (8_000 - n_observed))
    assert sampling["logit_shift"] == pytest.approx(math.log(sampling["rate_unobserved"]))
    # The sample's size is Binomial(n_unobserved, s0) + n_observed: within 4 sd of MAX_ROWS.
    n0, s0 = 8_000 - n_observed, sampling["rate_unobserved"]
    assert abs(sampling["n_sample"] - MAX_ROWS) <= 4 * math.sqrt(n0 * s0 * (1 - s0))
    assert sum(f["n_sample"] for f in sampling["per_fold"]) == sampling["n_sample"]
    spec = json.loads((sampled / "propensity" / "models" / "vote" / "config.json").read_text())
    assert spec["logit_shift"] == sampling["logit_shift"] and spec["numeric_dtype"] == "float32"
    # Diagnostics cover every exposure; the balance table says it used a uniform sample.
    metrics = read_metrics(sampled, "vote")
    assert metrics["n_exposures"] == 8_000 and metrics["clipping"]["n_exposures"] == 8_000
    assert metrics["balance"]["sample"]["n"] < 8_000 and "uniform sample" in metrics["balance"]["sample"]["note"]


def test_streamed_scores_equal_in_memory_scores_row_for_row(full_and_sampled: tuple[Path, Path]) -> None:
    full, sampled = full_and_sampled
    streamed = read_scores(sampled, "vote")
    assert streamed.height == 8_000 and streamed["exposure_id"].n_unique() == 8_000
    # Cross-fitting keeps its meaning: the streamed fit's folds are the in-memory fit's user folds.
    assert streamed["fold"].to_list() == read_scores(full, "vote")["fold"].to_list()
    feedback = read_feedback(sampled)
    spec, models, calibrators = load_fold_models(sampled, "vote")
    folds = feedback.select("exposure_id").join(streamed, on="exposure_id", how="left", maintain_order="left")["fold"].to_numpy()
    in_memory = score_frame(feedback, spec, models, calibrators, folds=folds).sort("exposure_id")
    assert in_memory["exposure_id"].to_list() == streamed["exposure_id"].to_list()
    np.testing.assert_array_equal(in_memory["propensity"].to_numpy(), streamed["propensity"].to_numpy())
    np.testing.assert_array_equal(in_memory["propensity_raw"].to_numpy(), streamed["propensity_raw"].to_numpy())


def test_embeddings_are_joined_in_batches(warehouse: Path, tmp_path: Path) -> None:
    """Embeddings reach the sampled fit and the streamed scoring through an out-of-core join; the
    streamed scores equal in-memory scoring with the whole embedding table."""
    wh = tmp_path / "wh"
    shutil.copytree(warehouse, wh)
    feedback = read_feedback(wh)
    vectors = np.random.default_rng(0).normal(size=(feedback.height, 4)).astype(np.float32)
    embeddings = pl.DataFrame({"exposure_id": feedback["exposure_id"], "embedding": vectors.tolist()})
    (wh / "embeddings").mkdir()
    embeddings[:5_000].write_parquet(wh / "embeddings" / "part-0.parquet")
    embeddings[5_000:].write_parquet(wh / "embeddings" / "part-1.parquet")
    result = fit_propensity(wh, PropensityConfig(n_jobs=1, max_rows=MAX_ROWS, batch_rows=1_000))
    assert result.metrics["embedding_dim"] == 4 and result.metrics["sampling"]["sampled"] is True
    streamed = read_scores(wh, "vote")
    spec, models, calibrators = load_fold_models(wh, "vote")
    folds = feedback.select("exposure_id").join(streamed, on="exposure_id", how="left", maintain_order="left")["fold"].to_numpy()
    in_memory = score_frame(feedback, spec, models, calibrators, embeddings, folds=folds).sort("exposure_id")
    np.testing.assert_array_equal(in_memory["propensity"].to_numpy(), streamed["propensity"].to_numpy())


def test_sampled_fit_matches_full_fit_within_sampling_noise(full_and_sampled: tuple[Path, Path]) -> None:
    """Monte Carlo check of the correction on simulated logs (8,000 exposures, seed 5).

    Tolerances, from the sample sizes (p = the feedback rate, n = 8,000, B = 10 reliability bins,
    s0 = the unobserved rows' keep rate):

    * mean propensity vs feedback rate: E[P(o=1|x)] = P(o=1), so an unbiased fit's mean is off by
      the rate's own binomial noise, sd sqrt(p(1-p)/n); tolerance 3 sd. Without the correction the
      mean would be about p / (p + s0 (1-p)), near 0.45 here.
    * ECE: a perfectly calibrated score still shows, per bin of n/B rows, |rate - mean| of about
      sqrt(2/pi) sqrt(p(1-p) B / n) from binomial noise; tolerance 3 times that.
    * mean |sampled - full|: the sample drops a share 1 - s0 of the negatives. At the resolution of
      half a reliability bin (m = n / 2B rows) the delta method gives the extra sd of a rate
      estimated from the sample, p(1-p) sqrt(1/(m(1-p)s0) - 1/(m(1-p))); the mean absolute value
      of a normal is 0.8 sd; tolerance 4 times that.
    """
    full, sampled = full_and_sampled
    p_full = read_scores(full, "vote")["propensity"].to_numpy()
    p_sampled = read_scores(sampled, "vote")["propensity"].to_numpy()
    metrics = read_metrics(sampled, "vote")
    n, rate, s0, bins = 8_000, metrics["observed_rate"], metrics["sampling"]["rate_unobserved"], 10
    mean_tol = 3 * math.sqrt(rate * (1 - rate) / n)
    ece_tol = 3 * math.sqrt(2 / math.pi) * math.sqrt(rate * (1 - rate) * bins / n)
    m = n / (2 * bins)
    mad_tol = 4 * 0.8 * rate * (1 - rate) * math.sqrt(1 / (m * (1 - rate) * s0) - 1 / (m * (1 - rate)))
    assert abs(p_sampled.mean() - rate) <= mean_tol, (p_sampled.mean(), rate, mean_tol)
    assert metrics["ece"] <= ece_tol, (metrics["ece"], ece_tol)
    assert read_metrics(full, "vote")["ece"] <= ece_tol
    assert np.abs(p_sampled - p_full).mean() <= mad_tol, (np.abs(p_sampled - p_full).mean(), mad_tol)


def test_solicited_rows_are_left_out_as_in_the_full_fit(warehouse: Path, tmp_path: Path) -> None:
    """Solicited (randomized-slice) rows: not sampled, scored with the slice's response rate, out of
    the diagnostics, exactly as the in-memory fit treats them."""
    full, sampled = tmp_path / "full", tmp_path / "sampled"
    shutil.copytree(warehouse, full)
    feedback = read_feedback(full).with_columns(solicited=pl.col("exposure_id").hash(seed=1) % 10 == 0)
    write_feedback(feedback, full / "feedback")
    shutil.copytree(full, sampled)
    whole = fit_propensity(full, PropensityConfig(n_jobs=1)).metrics
    part = fit_propensity(sampled, PropensityConfig(n_jobs=1, max_rows=MAX_ROWS, batch_rows=500)).metrics
    solicited = feedback.sort("exposure_id")["solicited"].to_numpy()
    rate = float(feedback.filter(pl.col("solicited"))["observed"].mean())
    assert part["sampling"]["sampled"] and part["solicited_excluded"] and part["n_solicited"] == int(solicited.sum())
    for key in ("n_exposures", "n_observed", "n_solicited", "solicited_response_rate", "observed_rate"):
        assert part[key] == whole[key], key
    assert part["solicited_response_rate"] == pytest.approx(rate)
    scores = read_scores(sampled, "vote")["propensity"].to_numpy()
    np.testing.assert_allclose(scores[solicited], max(rate, 0.05))
    assert part["sampling"]["n_sample_observed"] == whole["n_observed"]
    assert whole["solicited_excluded"] and whole["n_solicited"] == part["n_solicited"]
    # The organic rows' propensities agree with the in-memory fit's within the sampling noise of
    # test_sampled_fit_matches_full_fit_within_sampling_noise (same derivation, organic rows only).
    organic = ~solicited
    full_scores = read_scores(full, "vote")["propensity"].to_numpy()
    p, s0, n = part["observed_rate"], part["sampling"]["rate_unobserved"], int(organic.sum())
    m = n / 20
    mad_tol = 4 * 0.8 * p * (1 - p) * math.sqrt(1 / (m * (1 - p) * s0) - 1 / (m * (1 - p)))
    assert np.abs(scores[organic] - full_scores[organic]).mean() <= mad_tol
    # Both are models of organic feedback: their mean is the organic feedback rate, not the mixed one.
    assert abs(scores[organic].mean() - p) <= 3 * math.sqrt(p * (1 - p) / n)


def test_custom_feature_columns_are_used_as_in_the_full_fit(warehouse: Path, tmp_path: Path) -> None:
    full, sampled = tmp_path / "full", tmp_path / "sampled"
    shutil.copytree(warehouse, full)
    feedback = read_feedback(full).with_columns(
        plan_tier=pl.when(pl.col("exposure_id").hash(seed=2) % 3 == 0).then(pl.lit("pro")).otherwise(pl.lit("free")),
        turn=(pl.col("exposure_id").hash(seed=3) % 7).cast(pl.Int64),
    )
    write_feedback(feedback, full / "feedback")
    shutil.copytree(full, sampled)
    whole = fit_propensity(full, PropensityConfig(n_jobs=1)).metrics
    part = fit_propensity(sampled, PropensityConfig(n_jobs=1, max_rows=MAX_ROWS)).metrics
    assert part["sampling"]["sampled"] and "plan_tier" in part["features"] and "turn" in part["features"]
    assert part["features"] == whole["features"] and part["categorical_features"] == whole["categorical_features"]
    spec = json.loads((sampled / "propensity" / "models" / "vote" / "config.json").read_text())
    assert spec["categorical_levels"]["plan_tier"] == ["free", "pro"]


def test_cli_options_reach_the_fit(warehouse: Path, tmp_path: Path) -> None:
    wh = tmp_path / "wh"
    shutil.copytree(warehouse, wh)
    result = runner.invoke(app, ["propensity", "fit", str(wh), "--threads", "1", "--max-rows", "4000", "--memory-limit", "2GB"])
    assert result.exit_code == 0, result.output
    assert "fitted on a case-control sample of" in result.output.replace("\n", " ")
    sampling = read_metrics(wh, "vote")["sampling"]
    assert sampling["sampled"] is True and sampling["max_rows"] == 4_000 and sampling["memory_limit"] == "2GB"


def test_row_plan_and_rates() -> None:
    assert parse_memory("4GB") == 4 * 2**30 and parse_memory("512 MiB") == 512 * 2**20
    plan = plan_rows(1_000_000, max_rows=None, memory_limit="4GB")
    assert not plan.sampled and plan.max_rows >= 1_000_000
    plan = plan_rows(10_000_000, max_rows=None, memory_limit="4GB")
    assert plan.sampled and 1_000_000 < plan.max_rows < 10_000_000
    assert plan_rows(10_000_000, max_rows=200_000, memory_limit="4GB").max_rows == 200_000
    rates = sample_rates(n_observed=100, n_unobserved=9_900, max_rows=1_000)
    assert rates.observed == 1.0 and rates.unobserved == pytest.approx(900 / 9_900)
    rates = sample_rates(n_observed=5_000, n_unobserved=5_000, max_rows=1_000)  # observed rows alone too many
    assert rates.observed == pytest.approx(0.1) and rates.unobserved == pytest.approx(0.1) and rates.logit_shift == pytest.approx(0.0)
    ids = pl.Series([f"e{i}" for i in range(20_000)])
    keep = keep_mask(ids, np.zeros(20_000, dtype=bool), sample_rates(0, 20_000, 5_000), seed=0)
    # Bernoulli(0.25) over 20,000 rows: within 4 sd; and the same rows whatever their order.
    assert abs(keep.sum() - 5_000) <= 4 * math.sqrt(20_000 * 0.25 * 0.75)
    order = np.random.default_rng(0).permutation(20_000)
    assert np.array_equal(keep_mask(ids[order], np.zeros(20_000, dtype=bool), sample_rates(0, 20_000, 5_000), seed=0), keep[order])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"memory_limit": "lots"}, "memory limit 'lots' is not a size"),
        ({"max_rows": 10}, "max_rows must be >= 1000"),
        ({"batch_rows": 0}, "batch_rows must be >= 1"),
    ],
)
def test_bad_options_fail_cleanly(options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        PropensityConfig(**options)
