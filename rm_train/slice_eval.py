"""Unbiased evaluation on the randomized slice (issue 11): ``causalrm evaluate PREDS --slice WH``.

Organic votes are a selected sample: a test set made of them rewards a model for fitting the
people who chose to react. The slice's labels were solicited at random, so averages over the slice
are unbiased for the whole exposure population (assumption A2 of ``propensity.slice.label_aware``: the
solicited label is the same kind of label as a vote). Metrics of the predicted probability q =
``reward`` against the solicited label r:

* ``mse_label``, ``mae_label``, ``log_loss_label``, ``auc_label``, and calibration in the large
  (``mean_reward`` vs ``mean_label``);
* ``mse_true_label_noise_corrected``: the expected squared error against the clean label r* (y_true in the simulator), from
  the noisy r with the flip rates of ``WH/noise.json`` (Natarajan et al., 2013)::

      l~(q, r=1) = ((1 - rho10) (q - 1)^2 - rho01 q^2) / (1 - rho01 - rho10)
      l~(q, r=0) = ((1 - rho01) q^2 - rho10 (q - 1)^2) / (1 - rho01 - rho10)

  whose mean is unbiased for mean (q - r*)^2 when flips depend on r* only;
* against ``true_label`` (gold) where the registered slice carries it: ``mse_true_label``, ``auc_true_label``.

Every metric overall and per split. Slice rows of the ``train`` split were, if the dataset was
exported with them, seen in training (their votes are observed rows): score ``--split test`` (or
val) for a held-out number. Early stopping on the slice is not wired into ``causalrm train``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from schemas.errors import EstimationError, InputFileError, WarehouseError

log = logging.getLogger(__name__)

_EPS = 1e-7


def noise_corrected_squared_error(q: np.ndarray, r: np.ndarray, rho01: float, rho10: float) -> np.ndarray:
    """Per-row unbiased estimate of (q - r*)^2 from the noisy label r (formula in the module docstring)."""
    denom = 1.0 - rho01 - rho10
    loss1, loss0 = (q - 1.0) ** 2, q**2
    return np.where(r == 1, ((1 - rho10) * loss1 - rho01 * loss0), ((1 - rho01) * loss0 - rho10 * loss1)) / denom


def _binary_metrics(q: np.ndarray, y: np.ndarray, suffix: str) -> dict[str, float | None]:
    from sklearn.metrics import roc_auc_score

    clipped = np.clip(q, _EPS, 1 - _EPS)
    return {
        f"mse_{suffix}": float(np.mean((q - y) ** 2)),
        f"mae_{suffix}": float(np.mean(np.abs(q - y))),
        f"log_loss_{suffix}": float(-np.mean(y * np.log(clipped) + (1 - y) * np.log(1 - clipped))),
        f"auc_{suffix}": float(roc_auc_score(y, q)) if 0 < y.sum() < len(y) else None,
    }


def slice_metrics(q: np.ndarray, label: np.ndarray, true_label: np.ndarray | None = None,
                  rho01: float | None = None, rho10: float | None = None) -> dict[str, Any]:
    """Metrics of predictions ``q`` (n,) against the solicited labels (n,) and, where given, gold labels.

    ``true_label`` may hold NaN for rows without a gold label.
    """
    q = np.asarray(q, dtype=np.float64)
    r = np.asarray(label, dtype=np.float64)
    out: dict[str, Any] = {"n": int(len(q)), "mean_reward": float(q.mean()), "mean_label": float(r.mean())}
    out.update(_binary_metrics(q, r, "label"))
    if rho01 is not None and rho10 is not None and rho01 + rho10 < 1:
        out["mse_true_label_noise_corrected"] = float(noise_corrected_squared_error(q, r, rho01, rho10).mean())
    if true_label is not None:
        gold = np.asarray(true_label, dtype=np.float64)
        has = ~np.isnan(gold)
        if has.any():
            out["n_true_label"] = int(has.sum())
            out.update(_binary_metrics(q[has], gold[has], "true_label"))
    return out


def evaluate_slice(preds: str | Path, warehouse: str | Path, *, split: str | None = None) -> dict[str, Any]:
    """Score ``preds`` (exposure_id, reward[, split]) on the warehouse's randomized slice.

    Returns
    -------
    dict: the metrics of :func:`slice_metrics` over the slice rows (of ``split`` when given), plus
    ``by_split`` (the same per split), ``rho01`` / ``rho10`` used, ``n_unscored`` (slice rows without
    a prediction) and ``warnings``.

    Raises
    ------
    WarehouseError : the warehouse has no slice.
    EstimationError : no slice row has a prediction.
    """
    from feedback_etl.io import read_feedback
    from propensity.slice.label_aware import read_slice

    path = Path(preds)
    if not path.is_file():
        raise InputFileError("predictions not found", where=str(path), fix="pass the --out file of `causalrm predict`")
    scores = pl.read_parquet(path, glob=False)
    if not {"exposure_id", "reward"} <= set(scores.columns):
        raise InputFileError(f"predictions lack exposure_id / reward (have {scores.columns})", where=str(path),
                             fix="pass the --out file of `causalrm predict`")
    slice_frame = read_slice(warehouse).filter(pl.col("label").is_not_null())
    if slice_frame.is_empty():
        raise WarehouseError("the warehouse's slice has no answered solicitation", where=str(warehouse),
                             fix="log votes on solicited exposures, or register a slice file")
    splits = read_feedback(warehouse).select("exposure_id", pl.col("split").alias("_wh_split"))
    joined = slice_frame.join(scores.select(["exposure_id", "reward"] + (["split"] if "split" in scores.columns else [])),
                              on="exposure_id", how="left").join(splits, on="exposure_id", how="left")
    if "split" not in joined.columns:
        joined = joined.with_columns(split=pl.col("_wh_split"))
    joined = joined.with_columns(pl.col("split").fill_null(pl.col("_wh_split")))
    n_unscored = int(joined["reward"].null_count())
    joined = joined.filter(pl.col("reward").is_not_null())
    noise = _noise(warehouse)
    rho01, rho10 = (noise["rho01"], noise["rho10"]) if noise else (None, None)
    warnings = []
    if n_unscored:
        warnings.append(f"{n_unscored:,} slice exposures have no prediction; scored without them")

    def metrics_of(frame: pl.DataFrame) -> dict[str, Any]:
        gold = frame["true_label"].cast(pl.Float64).fill_null(math.nan).to_numpy() if "true_label" in frame.columns else None
        return slice_metrics(frame["reward"].to_numpy(), frame["label"].to_numpy(), gold, rho01, rho10)

    by_split = {s: metrics_of(part) for (s,), part in joined.group_by("split", maintain_order=True) if s is not None and part.height}
    selected = joined if split is None else joined.filter(pl.col("split") == split)
    if selected.is_empty():
        raise EstimationError("no slice exposure has a prediction" + (f" in split {split!r}" if split else ""), where=str(path),
                              fix="predict on the warehouse (or a dataset of it) whose slice you evaluate on")
    train_rows = int((selected["split"] == "train").sum())
    if train_rows:
        warnings.append(f"{train_rows:,} slice exposures are in the train split: a model trained on an export holding them saw "
                        "their votes; use --split test for a held-out score")
    result = {
        **metrics_of(selected),
        "split": split,
        "by_split": dict(sorted(by_split.items())),
        "rho01": rho01,
        "rho10": rho10,
        "noise_source": noise.get("method") if noise else None,
        "n_unscored": n_unscored,
        "warnings": warnings,
    }
    for message in warnings:
        log.warning("slice evaluation: %s", message)
    return result


def _noise(warehouse: str | Path) -> dict[str, Any] | None:
    from propensity.noise.estimate import read_noise

    try:
        noise = read_noise(warehouse, "vote")
    except WarehouseError:
        return None
    ok = all(isinstance(noise.get(k), (int, float)) for k in ("rho01", "rho10")) and noise["rho01"] + noise["rho10"] < 1
    return noise if ok else None
