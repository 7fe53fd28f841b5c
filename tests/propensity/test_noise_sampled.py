"""noise estimate with the proxies trained on a sample of the observed rows (issue 23): above its
budget a streamed estimate cannot hold the features of every vote (30M exposures, 6M votes: twice
the 4GB budget), so the fold proxies train on a seeded uniform sample of them, while every
exposure is still scored and every observed label still counts in the anchors.

Inputs: the session ``warehouse`` fixture (8,000 simulated exposures, about 1,700 votes) with
truth-based scores and user-grouped folds, streamed with ``max_rows=1`` and batches of 997 rows;
``proxy_rows`` forces the sample where a small table would never need one. Accuracy: simulated
exposure frames (``exposure_frame``) with their realised flip rates.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

import propensity.noise._proxy as proxy
import propensity.noise._streamed as streamed
from feedback_etl.io import read_feedback
from feedback_etl.simulator import SimulationConfig, exposure_frame
from propensity.io import read_scores, write_scores
from propensity.models.crossfit import group_folds
from propensity.noise.estimate import NoiseConfig, estimate_noise, estimate_noise_frame
from schemas.errors import ConfigError
from tests.propensity.test_export import prepare
from tests.propensity.test_streamed_chain import _close

STREAMED = {"max_rows": 1, "batch_rows": 997}
VOLATILE = {"created_at", "config", "memory", "warehouse"}
PROXY_ROWS = 700


@pytest.fixture(scope="module")
def wh(warehouse: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    wh = prepare(warehouse, tmp_path_factory.mktemp("noise_sampled"), noise=None)
    users = read_feedback(wh).select("exposure_id", "user_id")
    scores = read_scores(wh).drop("fold").join(users, on="exposure_id")
    write_scores(wh, "vote", scores.with_columns(fold=pl.Series(group_folds(scores["user_id"].to_numpy(), 3, 0))).drop("user_id"))
    return wh


def _recording_fits(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the rows each fold's LightGBM proxy trains on (fit plus early-stopping rows)."""
    rows: list[int] = []
    fit = proxy._fit_lightgbm_rows

    def recorded(features, fit_rows, val_rows, label, w, seed):
        rows.append(int(fit_rows.sum() + val_rows.sum()))
        return fit(features, fit_rows, val_rows, label, w, seed)

    monkeypatch.setattr(proxy, "_fit_lightgbm_rows", recorded)
    return rows


def test_sampled_proxy_rows_are_recorded_bounded_and_the_same_streamed_and_in_memory(wh: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A streamed and an in-memory estimate with ``proxy_rows`` draw the same sample (positions among
    the observed rows, from the seed and the counts alone, not the batches): same rates, intervals
    and proxy to floating-point rounding. The sample is recorded, each fold's proxy trains on at
    most ``proxy_rows`` rows, and together the folds use exactly the sampled rows (each in the
    models of the two folds it is not in); the estimate without a sample differs (the sample bites)."""
    n_observed = int(read_feedback(wh)["observed"].sum())
    assert n_observed > 2 * PROXY_ROWS
    base = {"bootstrap": 40, "min_anchors": 100, "segment_by": "platform"}
    full = estimate_noise(wh, NoiseConfig(**base))
    fold_rows = _recording_fits(monkeypatch)
    whole = estimate_noise(wh, NoiseConfig(**base, proxy_rows=PROXY_ROWS))
    whole_rows, fold_rows[:] = list(fold_rows), []
    sampled = estimate_noise(wh, NoiseConfig(**base, proxy_rows=PROXY_ROWS, **STREAMED))
    expected = {"observed": n_observed, "used": PROXY_ROWS, "rate": PROXY_ROWS / n_observed, "sampled": True, "seed": 0}
    assert whole["proxy"]["training_rows"] == expected and sampled["proxy"]["training_rows"] == expected
    assert full["proxy"]["training_rows"] == {**expected, "used": n_observed, "rate": 1.0, "sampled": False}
    assert sampled["memory"]["streamed"] and sampled["memory"]["proxy"]["max_rows_option"] == PROXY_ROWS
    for rows in (whole_rows, fold_rows):
        assert len(rows) == 3 and max(rows) <= PROXY_ROWS and sum(rows) == 2 * PROXY_ROWS, rows
    for key in whole.keys() - VOLATILE:
        assert _close(sampled[key], whole[key]), key
    assert sampled["proxy"]["auc_observed"] != full["proxy"]["auc_observed"]


def test_the_memory_budget_caps_the_streamed_proxy_rows(wh: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without ``proxy_rows`` the cap is what the budget allows (``proxy_row_budget``, replaced
    here by a small one: a real budget holds at least 10,000 rows, more than this table's votes)."""
    budget = streamed.proxy_row_budget

    def small(memory_limit_bytes: int, nonzeros_per_row: float) -> dict:
        return {**budget(memory_limit_bytes, nonzeros_per_row), "max_rows": 500}

    monkeypatch.setattr(streamed, "proxy_row_budget", small)
    fold_rows = _recording_fits(monkeypatch)
    out = estimate_noise(wh, NoiseConfig(bootstrap=20, min_anchors=100, **STREAMED))
    assert out["proxy"]["training_rows"]["used"] == 500 and out["proxy"]["training_rows"]["sampled"]
    assert out["memory"]["proxy"]["max_rows"] == 500 and max(fold_rows) <= 500 and sum(fold_rows) == 2 * 500
    # the budget's own estimate: this table's rows have a few dozen non-zeros, a row costs a few hundred bytes
    plan = budget(4 * 2**30, out["memory"]["proxy"]["nonzeros_per_row"])
    assert 5 < plan["nonzeros_per_row"] < 200 and plan["max_rows"] * plan["bytes_per_row_estimate"] <= plan["budget_bytes"]


def test_the_budget_grows_with_the_limit_and_shrinks_with_the_features() -> None:
    small, large = streamed.proxy_row_budget(2 * 2**30, 27.0), streamed.proxy_row_budget(8 * 2**30, 27.0)
    wide = streamed.proxy_row_budget(8 * 2**30, 270.0)
    assert small["max_rows"] < large["max_rows"] and wide["max_rows"] < large["max_rows"]
    assert streamed.proxy_row_budget(2**20, 27.0)["max_rows"] == 10_000  # the floor
    with pytest.raises(ConfigError, match="proxy_rows"):
        NoiseConfig(proxy_rows=10)


def test_the_sample_is_uniform_exact_in_size_and_seeded() -> None:
    """``proxy_sample``: exactly ``cap`` distinct sorted positions, the same for the same seed, and
    every observed row equally likely: over 4,000 seeds each of 50 positions is drawn about
    4,000 * 10 / 50 = 800 times (binomial sd sqrt(4000 * 0.2 * 0.8) = 25.3); all within 5 sd."""
    assert proxy.proxy_sample(50, 50, 0) is None and proxy.proxy_sample(50, None, 0) is None
    first = proxy.proxy_sample(50, 10, 3)
    assert first.size == 10 and np.all(np.diff(first) > 0) and np.array_equal(first, proxy.proxy_sample(50, 10, 3))
    counts = np.zeros(50)
    for seed in range(4_000):
        counts[proxy.proxy_sample(50, 10, seed)] += 1
    sd = np.sqrt(4_000 * 0.2 * 0.8)
    assert np.abs(counts - 800).max() <= 5 * sd, counts


TOLERANCE_PAIRED = 0.04
TOLERANCE_WORSE = 0.01


def test_sampled_proxy_estimates_stay_close_to_the_unsampled_and_the_true_rates() -> None:
    """Monte Carlo over three simulated tables (60,000 exposures, about 12,000 votes, true
    propensities): the proxies trained on a third of the votes (4,000) against all of them.

    Sampling changes only the proxy's ranking; the anchor means use the same observed labels. The
    anchor means' binomial standard errors here are about sqrt(0.2 * 0.8 / 450) = 0.019 (top,
    about 450 anchors) and sqrt(0.1 * 0.9 / 300) = 0.017 (bottom, 300): each replicate's sampled
    rate stays within 0.04 (about two of them) of the unsampled one, and over the replicates the
    sampled rates are not further from the realised flip rates than the unsampled ones by more
    than 0.01 on average. Catches a broken sampled proxy (labels misaligned with their rows, a
    fold's own labels in its proxy, too few rows to rank) only when the damage exceeds those bounds."""
    paired, error = [], {"sampled": [], "full": []}
    for seed in (1, 2, 3):
        frame = exposure_frame(SimulationConfig(out="unused", n_exposures=60_000, seed=seed))
        votes = frame.filter(pl.col("observed"))
        truth = np.array([votes.filter(pl.col("y_true") == y)["flipped"].mean() for y in (1, 0)])
        rates = {}
        for name, rows in (("full", None), ("sampled", 4_000)):
            out = estimate_noise_frame(frame, NoiseConfig(bootstrap=20, seed=1, proxy_rows=rows), propensity=frame["propensity"].to_numpy())
            assert out["proxy"]["training_rows"]["sampled"] is (rows is not None)
            rates[name] = np.array([out["rho01"], out["rho10"]])
            error[name].append(np.abs(rates[name] - truth))
        paired.append(np.abs(rates["sampled"] - rates["full"]))
    assert np.max(paired) <= TOLERANCE_PAIRED, paired
    assert np.mean(error["sampled"]) <= np.mean(error["full"]) + TOLERANCE_WORSE, error


def test_fold_fit_from_row_masks_equals_the_lgbmclassifier_fit_bit_for_bit() -> None:
    """The fold proxies are fitted from the rows of the held matrix, each LightGBM Dataset freeing
    its copy once binned (``_fit_lightgbm_rows``): the same stopping round and the same scores, bit
    for bit, as ``LGBMClassifier.fit`` on copies of the rows (``_fit_lightgbm``)."""
    import scipy.sparse as sp

    rng = np.random.default_rng(0)
    n = 6_000
    X = sp.hstack([sp.csr_matrix(rng.normal(size=(n, 3))),
                   sp.random(n, 200, density=0.05, format="csr", random_state=1, data_rvs=np.ones)], format="csr")
    y = (rng.random(n) < 1 / (1 + np.exp(-(X[:, 0].toarray().ravel() + 2 * X[:, 5].toarray().ravel())))).astype(np.int64)
    w = rng.uniform(0.5, 3, n)
    fit = rng.random(n) < 0.6
    val = ~fit & (rng.random(n) < 0.5)
    reference = proxy._fit_lightgbm(X[fit], y[fit], w[fit], X[val], y[val], w[val], 3)
    rows = proxy._fit_lightgbm_rows(X, fit, val, y, w, 3)
    assert 10 < rows.best_iteration_ == reference.best_iteration_ < 2000
    np.testing.assert_array_equal(rows.predict_proba(X), reference.predict_proba(X))


def test_cli_proxy_rows_option_samples_and_says_so(wh: Path) -> None:
    from typer.testing import CliRunner

    from cli import app
    from propensity.noise.estimate import read_noise

    run = CliRunner().invoke(app, ["noise", "estimate", str(wh), "--proxy-rows", str(PROXY_ROWS), "--bootstrap", "20", "--min-anchors", "100"])
    assert run.exit_code == 0, run.output
    assert f"uniform sample of {PROXY_ROWS:,} of" in run.output.replace("\n", " ")
    recorded = read_noise(wh)["proxy"]["training_rows"]
    assert recorded["used"] == PROXY_ROWS and recorded["sampled"] is True
    refused = CliRunner().invoke(app, ["noise", "estimate", str(wh), "--proxy-rows", "10"])
    assert refused.exit_code != 0 and "--proxy-rows" in refused.output
