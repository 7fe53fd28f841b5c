"""Real-data check on Coat: the loader matches the data README's facts, and our cross-fitted
propensities, learned from user and item features alone, remove more than half of the naive
estimate's selection bias in the mean rating (issue 4's goal)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from propensity.slice.coat import CoatCheckConfig, coat_check, load_coat, mean_rating_estimates
from schemas.errors import InputFileError


@pytest.fixture(scope="module")
def coat(shared_dataset):
    return load_coat(shared_dataset("coat").parent)


def test_loader_matches_readme_facts(coat) -> None:
    assert coat.train.shape == coat.test.shape == coat.propensities.shape == (290, 300)
    assert coat.user_features.shape == (290, 14) and coat.item_features.shape == (300, 33)
    assert int((coat.train > 0).sum()) == 6_960 and int((coat.test > 0).sum()) == 4_640
    assert np.all((coat.train > 0).sum(axis=1) == 24)  # 24 self-selected ratings per user
    assert coat.train[coat.train > 0].mean() == pytest.approx(2.611, abs=5e-4)
    assert coat.test[coat.test > 0].mean() == pytest.approx(2.229, abs=5e-4)
    shipped = mean_rating_estimates(coat.train, coat.observed, coat.propensities)
    assert shipped["snips"] == pytest.approx(2.331, abs=5e-4)
    assert coat.user_feature_names[0] == "gender:men" and len(coat.item_feature_names) == 33


def test_snips_with_our_propensities_halves_the_naive_error(shared_data: Path, coat) -> None:
    result = coat_check(shared_data, CoatCheckConfig())
    errors = result["errors"]
    # The goal: SNIPS error below 50% of the naive error (0.382). Measured 0.37 at seed 0
    # (0.35-0.38 over seeds 0-3), so the bound is not tuned to the edge.
    assert errors["ours"]["naive"] == pytest.approx(0.382, abs=1e-3)
    assert result["snips_error_ratio"] < 0.5
    assert result["estimates"]["ours"]["snips"] < result["estimates"]["ours"]["naive"]
    # Sanity of the propensities: they rank rated pairs above unrated ones and are not all clipped.
    assert result["auc"] > 0.7
    assert result["clip"]["share_clipped"] < 0.05
    assert result["shipped_snips_error_ratio"] == pytest.approx(0.266, abs=2e-3)


def test_missing_coat_folder_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="Coat data not found"):
        load_coat(tmp_path)
