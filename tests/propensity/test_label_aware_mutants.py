"""Label-aware paths that mutation testing found unguarded (issue 22, benchmarks/mutation/).

Array-level and direct calls only (fast); each test names the mutants it kills, each seen red
with that mutant applied.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from propensity.slice.label_aware import LabelAwareConfig, _organic_context, _prepare_rows, estimate_label_aware
from schemas.errors import EstimationError


def _arrays(seed: int = 0, n: int = 3_000) -> dict:
    """Organic rows with a context propensity and an up-vote effect of 2, plus a 400-row slice."""
    rng = np.random.default_rng(seed)
    q1 = rng.uniform(0.3, 0.7, n)
    r = (rng.random(n) < q1).astype(np.int64)
    context = rng.uniform(0.1, 0.4, n)
    organic = np.ones(n, dtype=bool)
    organic[:400] = False
    observed = organic & (rng.random(n) < context * np.where(r == 1, 1.4, 0.7))
    m1 = q1 * 2 / (1 - q1 + 2 * q1)
    return {"context": np.where(organic, context, np.nan), "outcome": np.column_stack([1 - m1, m1]), "organic": organic,
            "observed": observed, "label": r, "slice_rows": np.arange(400), "slice_label": r[:400],
            "strata": np.zeros(n, dtype=np.int64), "n_strata": 1}


def test_bootstrap_intervals_are_reproducible_from_the_seed() -> None:
    """The same seed gives the same bootstrap intervals; another seed others. Mutant
    estimate_label_aware__mutmut_109 (an unseeded generator) made every run differ."""
    arrays = _arrays()
    runs = [estimate_label_aware(**arrays, bootstrap=20, seed=s) for s in (7, 7, 8)]
    for key in ("label_aware_snips", "context_snips"):
        assert runs[0].estimates[key] == runs[1].estimates[key]
    np.testing.assert_array_equal(runs[0].tilt_replicates, runs[1].tilt_replicates)
    np.testing.assert_array_equal(runs[0].interval_by_label, runs[1].interval_by_label)
    assert not np.array_equal(runs[0].tilt_replicates, runs[2].tilt_replicates)


def test_no_organic_vote_at_all_is_one_clear_error(tmp_path: Path) -> None:
    """A feedback table whose only votes are solicited: the one-line EstimationError, not a numpy
    error on an empty array. Mutant _prepare_rows__mutmut_76 (`== 1` for `== 0`)."""
    feedback = pl.DataFrame({"exposure_id": ["a", "b", "c", "d"], "solicited": [True, True, False, False],
                             "observed": [True, True, False, False], "label": [1, 0, None, None]})
    with pytest.raises(EstimationError, match=r"organic votes hold one class only \(0 votes\)"):
        _prepare_rows(feedback, None, LabelAwareConfig(), tmp_path)


def test_organic_context_reuses_the_fit_when_it_left_solicited_rows_out_and_names_a_refit() -> None:
    """`auto`: a fit that excluded the solicited rows is reused as is (mutant _organic_context__mutmut_8,
    a misspelt metrics key, refitted); a refit says so in the report's context source (mutant _84)."""
    rng = np.random.default_rng(5)
    n = 600
    organic = np.ones(n, dtype=bool)
    organic[:100] = False
    x = rng.normal(size=(n, 2))
    observed = rng.random(n) < 1 / (1 + np.exp(-(x[:, 0] - 1)))
    feedback = pl.DataFrame({"observed": observed})
    scores = pl.DataFrame({"propensity": rng.uniform(0.1, 0.9, n), "fold": np.arange(n) % 3})
    metrics = {"solicited_excluded": True, "config": {"model": "logistic", "calibration": "platt", "folds": 3}}
    reused, info = _organic_context(feedback, scores, metrics, organic, LabelAwareConfig(refit_context="auto"), x, x)
    assert info == {"source": "propensity/scores.parquet", "refit": False}
    np.testing.assert_array_equal(reused, scores["propensity"].to_numpy())
    refit, info = _organic_context(feedback, scores, metrics, organic, LabelAwareConfig(refit_context="always"), x, x)
    assert info["refit"] is True and info["source"].startswith("refit on organic exposures") and info["n_organic"] == 500
    assert np.isnan(refit[:100]).all() and np.isfinite(refit[100:]).all()


def test_no_bootstrap_gives_point_estimates_and_no_interval() -> None:
    """`--bootstrap 0` is accepted by the CLI: the point estimates equal a bootstrapped run's, and the
    intervals are NaN (not a crash: np.nanquantile of an empty array is a bare nan that cannot unpack)."""
    arrays = _arrays()
    none, some = estimate_label_aware(**arrays, bootstrap=0), estimate_label_aware(**arrays, bootstrap=20)
    for key in ("naive", "context_snips", "label_aware_snips", "slice"):
        assert none.estimates[key]["estimate"] == some.estimates[key]["estimate"]
        assert all(np.isnan(none.estimates[key]["ci"]))
    assert np.isnan(none.interval_by_label).all()
    np.testing.assert_array_equal(none.propensity_by_label, some.propensity_by_label)
