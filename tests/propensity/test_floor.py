"""The default propensity floor is derived from the data and never above the observed rate (issue 17)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from feedback_etl.ingest import IngestConfig, ingest
from feedback_etl.simulator import SimulationConfig, simulate
from propensity.models.calibration import MAX_DEFAULT_FLOOR, default_floor
from propensity.models.fit import OBSERVED_CLIP_WARNING, PropensityConfig, fit_propensity


@pytest.mark.parametrize(
    ("rate", "low", "expected"),
    [
        (0.3, 0.10, MAX_DEFAULT_FLOOR),   # common rate, good overlap: the former fixed default
        (0.024, 0.02, 0.012),             # the ratings rate: half the rate, not 0.05
        (0.3, 0.01, None),                # weak overlap: the 1% quantile of observed rows' propensities
    ],
)
def test_default_floor_rule(rate, low, expected):
    rng = np.random.default_rng(1)
    n = 20_000
    observed = np.zeros(n, dtype=bool)
    observed[: int(rate * n)] = True
    propensity = np.where(observed, rng.uniform(low, 1.0, n), rng.uniform(0.0, 1.0, n))
    floor = default_floor(propensity, observed)
    assert floor <= observed.mean() / 2
    if expected is None:
        assert floor == pytest.approx(np.quantile(propensity[observed], 0.01))
        assert (propensity[observed] < floor).mean() <= 0.011
    else:
        assert floor == pytest.approx(expected)


def test_a_zero_plateau_is_floored_at_a_hundredth_of_the_rate():
    observed = np.arange(1_000) < 300
    propensity = np.where(np.arange(1_000) < 20, 0.0, 0.4)  # isotonic calibration can give exact zeros
    assert default_floor(propensity, observed) == pytest.approx(0.003)


@pytest.fixture(scope="module")
def low_rate_warehouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("low_rate")
    simulate(SimulationConfig(out=str(root / "logs"), n_exposures=6_000, obs_rate=0.04, seed=2))
    ingest(IngestConfig(inputs=(str(root / "logs" / "events"),), warehouse=str(root / "wh")))
    return root / "wh"


def test_a_low_rate_fit_gets_a_floor_below_its_rate_and_reports_clipping(low_rate_warehouse):
    metrics = fit_propensity(low_rate_warehouse, PropensityConfig(folds=3, n_jobs=1, model_params={"n_estimators": 60})).metrics
    rate = metrics["observed_rate"]
    assert metrics["clipping"]["floor_source"] == "data"
    assert metrics["config"]["clip"] == metrics["clipping"]["floor"] <= rate / 2
    assert {"n_clipped", "n_clipped_observed", "share_clipped_observed"} <= set(metrics["clipping"])
    # A fixed floor above the rate clips most observed rows: a loud warning with the fix.
    fixed = fit_propensity(low_rate_warehouse, PropensityConfig(folds=3, n_jobs=1, clip=0.05, model_params={"n_estimators": 60})).metrics
    assert fixed["clipping"]["share_clipped_observed"] > OBSERVED_CLIP_WARNING
    assert any("observed rows" in w and "carry capped weights" in w and "--clip" in w for w in fixed["warnings"])
