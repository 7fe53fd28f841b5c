"""Cross-fitting guards that mutation testing found unguarded on a fresh sample (issue 22, benchmarks/mutation/)."""

from __future__ import annotations

import numpy as np

from propensity.models.crossfit import cross_fit
from propensity.models.estimators import LogisticPropensity


def test_a_training_split_with_a_single_positive_is_fitted_not_refused() -> None:
    """Only a one-class training split is refused: one positive is two classes (mutant
    cross_fit__mutmut_14, `n_pos == 1`, refused it)."""
    folds = np.repeat([0, 1], 50)
    y = np.zeros(100)
    y[[0, 1, 2, 60]] = 1  # fold 0 trains on fold 1's rows (one positive), fold 1 on fold 0's (three)
    result = cross_fit(LogisticPropensity(), np.random.default_rng(0).normal(size=(100, 2)), y, folds)
    assert result.oof.shape == (100,) and np.isfinite(result.oof).all()
