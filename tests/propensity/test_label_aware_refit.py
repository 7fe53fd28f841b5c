"""The label-aware fit's context refit (issues 17 and 23): it refits with the context fit's own
inputs (side-feature files, out-of-fold id encodings), and above the memory budget it is a
case-control propensity fit instead of a refusal.

Inputs: the ``mnar`` warehouse of test_label_aware.py (12,000 simulated exposures, 8% randomized
slice, ``propensity fit`` done), copied per test; ``refit_context="always"`` forces the refit (a
current ``propensity fit`` leaves solicited rows out, so ``auto`` would reuse it).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from feedback_etl.io import read_feedback
from propensity.io import read_metrics, read_scores
from propensity.models.fit import PropensityConfig, fit_propensity
from propensity.slice.label_aware import LabelAwareConfig, fit_label_aware, read_label_aware_scores
from schemas.errors import ConfigError
from tests.propensity.test_label_aware import mnar  # noqa: F401  (the shared simulated warehouse)


def _copy(mnar: dict, path: Path) -> Path:  # noqa: F811
    shutil.copytree(mnar["wh"], path)
    return path


def _cfg(mnar: dict, **options) -> LabelAwareConfig:  # noqa: F811
    return LabelAwareConfig(slice=str(mnar["root"] / "logs" / "slice.parquet"), refit_context="always", bootstrap=40, n_jobs=1, **options)


def test_streamed_refit_is_a_case_control_fit_close_to_the_in_memory_refit(mnar: dict, tmp_path: Path) -> None:  # noqa: F811
    """Above the budget (6,000 of 12,000 rows) the refit samples: every organic vote (~2,200) and a
    uniform share of the unobserved rows, corrected back. Its calibrated context propensities and the
    label-aware estimate stay within sampling noise of the in-memory refit's; the context fit's
    own files are untouched and the refit leaves nothing behind."""
    whole_wh, streamed_wh = _copy(mnar, tmp_path / "whole"), _copy(mnar, tmp_path / "streamed")
    before = {p.name: p.read_bytes() for p in (streamed_wh / "propensity").glob("*") if p.is_file()}
    whole = fit_label_aware(whole_wh, _cfg(mnar))
    streamed = fit_label_aware(streamed_wh, _cfg(mnar, max_rows=6_000, batch_rows=997))
    assert whole.report["memory"]["streamed"] is False and streamed.report["memory"]["streamed"] is True
    context = streamed.report["context"]
    assert context["refit"] is True and context["n_organic"] == whole.report["context"]["n_organic"]
    sampling = context["sampling"]
    # what is sampled, recorded: all organic votes at this budget, ~43% of the unobserved rows
    assert sampling["rate_observed"] == 1.0 and 0 < sampling["rate_unobserved"] < 1
    assert sampling["logit_shift"] == pytest.approx(np.log(sampling["rate_unobserved"]))
    assert abs(sampling["n_sample"] - 6_000) < 5 * np.sqrt(6_000)
    # the refit read the context fit's features
    assert context["features"] == read_metrics(whole_wh, "vote")["features"] == whole.report["context"]["features"]

    a, b = read_label_aware_scores(whole_wh), read_label_aware_scores(streamed_wh)
    organic = ~a["solicited"].to_numpy()
    pa, pb = a["propensity_context"].to_numpy()[organic], b["propensity_context"].to_numpy()[organic]
    # Both are calibrated to the organic vote rate (~0.2): their means differ by the calibration's
    # sampling error, sd ~ sqrt(0.2 * 0.8 / 6,000) = 0.005; per row they are two fits of one model.
    assert abs(pa.mean() - pb.mean()) < 0.015
    assert np.mean(np.abs(pa - pb)) < 0.05
    # The label-aware estimate moves by far less than its own interval's half-width (~1.96 sd).
    ci = whole.report["estimates"]["label_aware_snips"]["ci"]
    est_a = whole.report["estimates"]["label_aware_snips"]["estimate"]
    assert abs(streamed.report["estimates"]["label_aware_snips"]["estimate"] - est_a) < (ci[1] - ci[0]) / 2

    after = {p.name: p.read_bytes() for p in (streamed_wh / "propensity").glob("*") if p.is_file()}
    assert after["scores.parquet"] == before["scores.parquet"] and after["metrics.json"] == before["metrics.json"]
    assert not list((streamed_wh / "propensity").glob(".*")), "the refit's temporary folder was left behind"


def test_refit_uses_the_context_fits_side_files_and_id_encodings(mnar: dict, tmp_path: Path) -> None:  # noqa: F811
    """A context fit with ``--user-features`` and ``--id-encodings``: the in-memory refit's feature
    list is the fit's (side columns included) and it encodes the same ids; above the budget the
    case-control refit joins the side files too, and refuses the id encodings with one line."""
    wh = _copy(mnar, tmp_path / "wh")
    users = read_feedback(wh)["user_id"].unique().sort()
    rng = np.random.default_rng(4)
    side = tmp_path / "users.csv"
    pl.DataFrame({"user_id": users, "user_tenure": rng.exponential(10.0, users.len()),
                  "user_tier": rng.choice(["free", "plus", "pro"], users.len())}).write_csv(side)
    context_fit = {"folds": 3, "n_jobs": 1, "model_params": {"n_estimators": 30}, "user_features": str(side)}
    fit_propensity(wh, PropensityConfig(**context_fit, id_encodings=("response_id",)))
    metrics = read_metrics(wh, "vote")
    assert {"user_tenure", "user_tier"} <= set(metrics["features"])

    result = fit_label_aware(wh, _cfg(mnar))
    context = result.report["context"]
    assert context["refit"] is True
    assert context["features"] == metrics["features"]
    assert context["id_encodings"] == metrics["id_encodings"] == ["response_id"]
    assert context["side_feature_files"] == [str(side)]
    # The context fit itself was fitted on the organic rows with these inputs and folds: a refit with
    # the same inputs (encodings fitted inside the same folds) reproduces its propensities.
    refit = read_label_aware_scores(wh).join(read_scores(wh).select("exposure_id", fit=pl.col("propensity")), on="exposure_id")
    organic = refit.filter(~pl.col("solicited"))
    np.testing.assert_allclose(organic["propensity_context"].to_numpy(), organic["fit"].to_numpy(), rtol=1e-9)

    with pytest.raises(ConfigError, match="cannot encode ids out of fold"):
        fit_label_aware(wh, _cfg(mnar, max_rows=6_000, batch_rows=997))
    # a context fit without the id encoding: the streamed refit joins the side file's columns as well
    fit_propensity(wh, PropensityConfig(**context_fit))
    streamed = fit_label_aware(wh, _cfg(mnar, max_rows=6_000, batch_rows=997))
    assert streamed.report["context"]["features"] == metrics["features"]


def test_outcome_model_reads_the_context_fits_side_columns_streamed_as_in_memory(mnar: dict, tmp_path: Path) -> None:  # noqa: F811
    """A context fit whose ``--features`` names side-file columns (``--user-features``): the label-aware
    outcome model joins the same files (it used to fail in ``select_features``), and a streamed fit
    (DuckDB joins the file) gives the in-memory fit's scores and estimates to 1e-12. A file that is
    gone since the context fit is one clear error."""
    from polars.testing import assert_frame_equal

    from schemas.errors import InputFileError
    from tests.propensity.test_streamed_chain import _close

    wh = _copy(mnar, tmp_path / "whole")
    users = read_feedback(wh)["user_id"].unique().sort()
    rng = np.random.default_rng(7)
    # 4 users left out of the file: their side features are null (a warning, in both fits alike).
    side = tmp_path / "users.csv"
    pl.DataFrame({"user_id": users[4:], "user_tenure": rng.exponential(10.0, users.len() - 4),
                  "user_tier": rng.choice(["free", "plus", "pro"], users.len() - 4)}).write_csv(side)
    fit_propensity(wh, PropensityConfig(folds=3, n_jobs=1, model_params={"n_estimators": 30}, user_features=str(side),
                                        features=("platform", "user_tier", "user_tenure")))
    streamed_wh = _copy({"wh": wh}, tmp_path / "streamed")
    options = {"slice": str(mnar["root"] / "logs" / "slice.parquet"), "bootstrap": 40, "n_jobs": 1}
    whole = fit_label_aware(wh, LabelAwareConfig(**options))
    streamed = fit_label_aware(streamed_wh, LabelAwareConfig(**options, max_rows=1, batch_rows=997))
    assert whole.report["memory"]["streamed"] is False and streamed.report["memory"]["streamed"] is True
    assert whole.report["outcome_model"]["side_feature_files"] == [str(side)]
    assert_frame_equal(read_label_aware_scores(wh), read_label_aware_scores(streamed_wh), check_exact=False, rel_tol=1e-12,
                       abs_tol=1e-15)
    for key in ("label_factors", "estimates", "outcome_model", "weights", "clipping"):
        assert _close(streamed.report[key], whole.report[key]), key
    # The side columns reach the outcome model: without them (contract platform only) its scores change.
    fit_propensity(wh, PropensityConfig(folds=3, n_jobs=1, model_params={"n_estimators": 30}, features=("platform",)))
    platform_only = fit_label_aware(wh, LabelAwareConfig(**options))
    assert platform_only.report["outcome_model"]["auc_organic_votes"] != whole.report["outcome_model"]["auc_organic_votes"]

    side.unlink()
    for streamed_options in ({}, {"max_rows": 1, "batch_rows": 997}):
        with pytest.raises(InputFileError, match="side-feature file the context fit") as info:
            fit_label_aware(streamed_wh, LabelAwareConfig(**options, **streamed_options))
        assert "\n" not in info.value.one_line() and str(side) in info.value.one_line()


def test_streamed_passes_leave_duckdb_what_the_process_leaves_of_the_budget() -> None:
    """The scoring pass's DuckDB share is half of what this process leaves of the budget (at most half
    the budget, 64 MB at least): the 1.53M-exposure refit ran 0.26 GB over a 1GB budget when DuckDB got half
    the budget on top of what the refit had left resident."""
    from propensity.models.casecontrol import process_rss_bytes, release_unused_memory
    from propensity.slice.label_aware import _duckdb_share

    release_unused_memory()
    held = process_rss_bytes()
    assert held is not None and 20 * 2**20 < held < 64 * 2**30  # this interpreter, with numpy and polars loaded
    huge = 1024 * 2**30
    assert abs(_duckdb_share(huge) - (huge - held) // 2) < 50 * 2**20
    budget = held + 400 * 2**20
    assert abs(_duckdb_share(budget) - 200 * 2**20) < 50 * 2**20  # RSS moves a little between the two reads
    assert _duckdb_share(held // 2) == 64 * 2**20
