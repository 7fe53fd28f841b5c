"""Scoring predictions against the simulator's truth: ``causalrm evaluate preds.parquet --truth truth.parquet``.

Metrics of the predicted probability q = reward: MSE, MAE and R2 against the clean label ``y_true``
(the paper's target: the noise model flips y_true) and against the true reward ``r_star``; AUC
against ``y_true``.

The clean label is a coin flip, y_true ~ Bernoulli(r*), so on a test split of a couple of thousand
exposures the realised R2(y_true) carries sampling noise of about 0.01, more than separates good
methods. ``mse_y_expected`` / ``r2_y_expected`` average over that coin: E[(q - y)^2 | r*] =
r*(1 - r*) + (q - r*)^2, and Var(y) = m(1 - m) with m the mean of r*. Same quantity in expectation,
without the label draw's noise (a Rao-Blackwellised R2 against the clean label).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from schemas.errors import EstimationError, InputFileError

METRIC_NAMES: tuple[str, ...] = (
    "mse_y_true", "mae_y_true", "r2_y_true", "auc_y_true", "mse_y_expected", "r2_y_expected",
    "mse_r_star", "mae_r_star", "r2_r_star",
)


def _read(path: str | Path, columns: list[str], what: str, fix: str) -> pl.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"{what} not found", where=str(path), fix=fix)
    try:
        frame = pl.read_parquet(path, glob=False)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise InputFileError(f"cannot read {what}: {str(exc).splitlines()[0]}", where=str(path), fix=fix) from exc
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise InputFileError(f"{what} lacks column(s) {missing}", where=str(path), fix=fix)
    return frame


def regression_metrics(prediction: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """MSE, MAE and R2 = 1 - SSE / SST of ``prediction`` against ``target`` (both shape (n,))."""
    error = prediction - target
    sst = float(((target - target.mean()) ** 2).sum())
    return {
        "mse": float(np.mean(error**2)),
        "mae": float(np.mean(np.abs(error))),
        "r2": 1.0 - float((error**2).sum()) / sst if sst > 0 else float("nan"),
    }


def evaluate(preds: str | Path, truth: str | Path, *, split: str | None = None) -> dict[str, Any]:
    """Metrics of ``preds`` (exposure_id, reward[, split]) against ``truth`` (exposure_id, y_true, r_star).

    Returns a flat dict: n, split, and ``METRIC_NAMES``.
    """
    from sklearn.metrics import roc_auc_score

    scores = _read(preds, ["exposure_id", "reward"], "predictions", "pass the --out file of `causalrm predict`")
    table = _read(truth, ["exposure_id", "y_true", "r_star"], "truth table", "pass the simulator's truth.parquet")
    if split is not None:
        if "split" not in scores.columns:
            raise InputFileError("predictions have no split column", where=str(preds),
                                 fix="predict on a dataset or warehouse that has splits, or drop --split")
        scores = scores.filter(pl.col("split") == split)
    joined = scores.select("exposure_id", "reward").join(table.select("exposure_id", "y_true", "r_star"), on="exposure_id", how="inner")
    if joined.height == 0:
        raise EstimationError("no predictions match the truth table" + (f" in split {split!r}" if split else ""),
                              where=str(preds), fix="check that both come from the same simulation (and the split name)")
    q = joined["reward"].to_numpy().astype(np.float64)
    y = joined["y_true"].cast(pl.Float64).to_numpy()
    r_star = joined["r_star"].cast(pl.Float64).to_numpy()
    versus_y, versus_r = regression_metrics(q, y), regression_metrics(q, r_star)
    auc = float(roc_auc_score(y, q)) if len(np.unique(y)) == 2 else float("nan")
    expected = expected_label_metrics(q, r_star)
    return {
        "n": joined.height, "n_unmatched": scores.height - joined.height, "split": split,
        "mse_y_true": versus_y["mse"], "mae_y_true": versus_y["mae"], "r2_y_true": versus_y["r2"], "auc_y_true": auc,
        "mse_y_expected": expected["mse"], "r2_y_expected": expected["r2"],
        "mse_r_star": versus_r["mse"], "mae_r_star": versus_r["mae"], "r2_r_star": versus_r["r2"],
    }


def expected_label_metrics(prediction: np.ndarray, r_star: np.ndarray) -> dict[str, float]:
    """MSE and R2 against y ~ Bernoulli(r_star), averaged over the label draw (module docstring)."""
    mse = float(np.mean(r_star * (1.0 - r_star) + (prediction - r_star) ** 2))
    m = float(r_star.mean())
    variance = m * (1.0 - m)
    return {"mse": mse, "r2": 1.0 - mse / variance if variance > 0 else float("nan")}


def write_metrics(metrics: dict[str, Any], out: str | Path) -> None:
    Path(out).write_text(json.dumps(metrics, indent=2))
