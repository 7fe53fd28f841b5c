"""noise estimate above its memory budget (issue 23): the proxy trains on the observed rows, every
exposure is scored in batches into compact arrays, and the estimate equals the in-memory one.

Inputs: the session ``warehouse`` fixture (8,000 simulated exposures) with truth-based scores
(test_export.py's ``prepare``), estimated whole and with ``max_rows=1`` and batches of 997 rows.
The feature map is fitted on the whole table's statistics and the fold proxies on the same votes,
so the rates, intervals and segments agree to floating-point rounding.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from feedback_etl.io import read_feedback
from propensity.io import read_scores, write_scores
from propensity.models.crossfit import group_folds
from propensity.noise.estimate import NoiseConfig, estimate_noise
from tests.propensity.test_export import prepare
from tests.propensity.test_streamed_chain import _close

STREAMED = {"max_rows": 1, "batch_rows": 997}
VOLATILE = {"created_at", "config", "memory", "warehouse"}


@pytest.mark.parametrize("options", [
    {"segment_by": "platform"},
    # the logistic proxy with standardised features, no weights and user-grouped folds: 35 s on 2 busy cores
    pytest.param({"proxy": "logistic", "use_weights": False, "bootstrap": 20}, marks=pytest.mark.slow),
])
def test_streamed_noise_estimate_equals_the_in_memory_one(warehouse: Path, tmp_path: Path, options: dict) -> None:
    wh = prepare(warehouse, tmp_path, noise=None)
    # user-grouped folds, as a propensity fit writes them (prepare's scores all carry fold 0)
    users = read_feedback(wh).select("exposure_id", "user_id")
    scores = read_scores(wh).drop("fold").join(users, on="exposure_id")
    write_scores(wh, "vote", scores.with_columns(fold=pl.Series(group_folds(scores["user_id"].to_numpy(), 3, 0))).drop("user_id"))
    base = {"bootstrap": 40, "min_anchors": 100, **options}
    whole = estimate_noise(wh, NoiseConfig(**base))
    streamed = estimate_noise(wh, NoiseConfig(**base, **STREAMED))
    assert whole["memory"]["streamed"] is False and streamed["memory"]["streamed"] is True
    assert whole.keys() == streamed.keys()
    for key in whole.keys() - VOLATILE:
        assert _close(streamed[key], whole[key]), key
    assert streamed["rho01"] is not None and (streamed["segments"] or not options.get("segment_by"))
