"""Evaluation on the randomized slice (issue 11): the noise-corrected squared error's closed form,
and `causalrm evaluate --slice WH` against the slice's solicited and gold labels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from rm_train.slice_eval import noise_corrected_squared_error, slice_metrics


def test_noise_corrected_squared_error_is_unbiased_for_the_clean_label() -> None:
    """E[l~(q, r) | r*] = (q - r*)^2 exactly, for both r*: average l~ over the flip distribution."""
    q, rho01, rho10 = np.array([0.1, 0.5, 0.93]), 0.2, 0.1
    up = (1 - rho01) * noise_corrected_squared_error(q, np.ones(3), rho01, rho10) + rho01 * noise_corrected_squared_error(q, np.zeros(3), rho01, rho10)
    down = rho10 * noise_corrected_squared_error(q, np.ones(3), rho01, rho10) + (1 - rho10) * noise_corrected_squared_error(q, np.zeros(3), rho01, rho10)
    np.testing.assert_allclose(up, (q - 1) ** 2, rtol=1e-12)
    np.testing.assert_allclose(down, q**2, rtol=1e-12)


def test_slice_metrics_on_a_hand_built_batch() -> None:
    m = slice_metrics(np.array([0.8, 0.2, 0.6, 0.4]), np.array([1, 0, 0, 1]), np.array([1, 0, np.nan, 1]))
    assert m["n"] == 4 and m["mse_label"] == pytest.approx((0.04 + 0.04 + 0.36 + 0.36) / 4)
    assert m["auc_label"] == pytest.approx(0.75) and m["n_true_label"] == 3 and m["auc_true_label"] == 1.0
    assert "mse_true_label_noise_corrected" not in m  # no flip rates given


@pytest.fixture(scope="module")
def sliced(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """3,000 simulated exposures with a 20% slice, ingested, the slice (with gold labels) registered."""
    from feedback_etl.ingest import IngestConfig, ingest
    from feedback_etl.simulator import SimulationConfig, simulate

    root = tmp_path_factory.mktemp("sliced")
    simulate(SimulationConfig(out=str(root / "logs"), n_exposures=3_000, seed=8, randomized_slice=0.2, rho01=0.2, rho10=0.1))
    wh = root / "wh"
    ingest(IngestConfig(inputs=(str(root / "logs" / "events"),), warehouse=str(wh), threads=1))
    truth = pl.read_parquet(root / "logs" / "truth.parquet")
    # The oracle's predictions (r*) and the true flip rates, so the numbers have known targets.
    truth.select("exposure_id", reward="r_star").write_parquet(root / "preds.parquet")
    (wh / "noise.json").write_text(json.dumps({"channel": "vote", "method": "audit", "rho01": 0.2, "rho10": 0.1}))
    # Register the slice with its gold labels as `propensity fit-label-aware --slice` does (WH/propensity/slice.parquet).
    from propensity.slice.label_aware import slice_path

    slice_path(wh).parent.mkdir(parents=True, exist_ok=True)
    pl.read_parquet(root / "logs" / "slice.parquet").with_columns(source=pl.lit("flag")).write_parquet(slice_path(wh))
    return {"root": root, "wh": wh, "truth": truth}


def test_cli_evaluate_on_the_slice(sliced: dict) -> None:
    from cli import app

    root, wh, truth = sliced["root"], sliced["wh"], sliced["truth"]
    result = CliRunner().invoke(app, ["evaluate", str(root / "preds.parquet"), "--slice", str(wh), "--out", str(root / "m.json")])
    assert result.exit_code == 0, result.output
    assert "on the randomized slice" in result.output and "noise-corrected MSE vs r*" in result.output
    m = json.loads((root / "m.json").read_text())["slice"]
    sliced_truth = truth.filter(pl.col("solicited"))
    assert m["n"] == sliced_truth.height and set(m["by_split"]) == {"train", "val", "test"}
    assert sum(part["n"] for part in m["by_split"].values()) == m["n"]
    # The solicited votes are unbiased but noisy: the raw MSE overstates the oracle's error; corrected, it
    # matches the oracle's MSE against y_true over the slice within sampling error.
    q, y, r = (sliced_truth[c].cast(pl.Float64).to_numpy() for c in ("r_star", "y_true", "label"))
    clean_mse = float(((q - y) ** 2).mean())
    assert m["mse_label"] > clean_mse + 0.03
    assert m["mse_true_label"] == pytest.approx(clean_mse)  # the simulator's slice file carries y_true as gold
    # Paired: the corrected loss minus the clean one has mean 0; allow 4 standard errors of that difference.
    diff = noise_corrected_squared_error(q, r, 0.2, 0.1) - (q - y) ** 2
    assert m["mse_true_label_noise_corrected"] == pytest.approx(clean_mse, abs=4 * diff.std() / np.sqrt(len(diff)))


def test_cli_evaluate_needs_truth_or_slice(sliced: dict, warehouse: Path) -> None:
    from cli import app

    runner = CliRunner()
    none = runner.invoke(app, ["evaluate", str(sliced["root"] / "preds.parquet")])
    assert none.exit_code == 1 and "nothing to evaluate against" in none.output and "Traceback" not in none.output
    no_slice = runner.invoke(app, ["evaluate", str(sliced["root"] / "preds.parquet"), "--slice", str(warehouse)])
    assert no_slice.exit_code == 1 and "no randomized slice" in no_slice.output
