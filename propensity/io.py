"""Reading and writing the propensity artifacts in ``WH/propensity/`` (the one place that touches them).

- ``scores.parquet``: exposure_id, channel, propensity (calibrated, clipped), propensity_raw, fold;
  every channel in one file, fitting a channel replaces only that channel's rows.
- ``metrics.json``: ``{channel: diagnostics}`` (see ``propensity.diagnostics``).
- ``models/<channel>/``: the fold models and calibrators (LightGBM text, safetensors, JSON).

Writes go to a temporary name first and are swapped in with ``os.replace`` so a crash never
leaves a half-written file that a reader would trust.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import polars as pl

from schemas.errors import WarehouseError

SCORES_SCHEMA: dict[str, pl.DataType] = {
    "exposure_id": pl.String(),
    "channel": pl.String(),
    "propensity": pl.Float64(),
    "propensity_raw": pl.Float64(),
    "fold": pl.Int32(),
}


def propensity_dir(warehouse: str | Path) -> Path:
    return Path(warehouse) / "propensity"


def scores_path(warehouse: str | Path) -> Path:
    return propensity_dir(warehouse) / "scores.parquet"


def metrics_path(warehouse: str | Path) -> Path:
    return propensity_dir(warehouse) / "metrics.json"


def models_dir(warehouse: str | Path, channel: str) -> Path:
    return propensity_dir(warehouse) / "models" / channel


def _fit_hint(warehouse: str | Path, channel: str) -> str:
    return f"run `causalrm propensity fit {warehouse} --channel {channel}` first"


def read_scores(warehouse: str | Path, channel: str = "vote") -> pl.DataFrame:
    """Out-of-fold propensities of one channel.

    Returns
    -------
    polars frame with one row per exposure: ``exposure_id`` (str), ``propensity`` (float64,
    calibrated and clipped to [floor, 1]), ``propensity_raw`` (float64, the uncalibrated fold-model
    score), ``fold`` (int32), sorted by exposure_id.

    Raises
    ------
    WarehouseError : no scores file, or no rows for ``channel``; the message says which command to run.
    """
    path = scores_path(warehouse)
    if not path.is_file():
        raise WarehouseError("warehouse has no propensity scores", where=str(path), fix=_fit_hint(warehouse, channel))
    scores = pl.read_parquet(path)
    missing = [c for c in SCORES_SCHEMA if c not in scores.columns]
    if missing:
        raise WarehouseError(
            f"propensity scores lack column(s) {missing}", where=str(path), fix=_fit_hint(warehouse, channel)
        )
    rows = scores.filter(pl.col("channel") == channel)
    if rows.is_empty():
        fitted = sorted(scores["channel"].unique().to_list())
        raise WarehouseError(
            f"no propensity scores for channel {channel!r} (fitted: {fitted})", where=str(path), fix=_fit_hint(warehouse, channel)
        )
    return rows.select("exposure_id", "propensity", "propensity_raw", "fold").sort("exposure_id")


def write_scores(warehouse: str | Path, channel: str, scores: pl.DataFrame) -> Path:
    """Replace ``channel``'s rows in ``scores.parquet`` with ``scores`` (other channels are kept)."""
    path = scores_path(warehouse)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = scores.with_columns(channel=pl.lit(channel)).select(
        [pl.col(name).cast(dtype) for name, dtype in SCORES_SCHEMA.items()]
    )
    if path.is_file():
        old = pl.read_parquet(path).filter(pl.col("channel") != channel)
        old = old.select([pl.col(name).cast(dtype) for name, dtype in SCORES_SCHEMA.items()])
        new = pl.concat([old, new])
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    new.sort("channel", "exposure_id").write_parquet(tmp)
    os.replace(tmp, path)
    return path


def read_metrics(warehouse: str | Path, channel: str | None = None) -> dict[str, Any]:
    """``metrics.json`` as a dict keyed by channel, or one channel's diagnostics when ``channel`` is given.

    Raises
    ------
    WarehouseError : no metrics file, or no entry for ``channel``.
    """
    path = metrics_path(warehouse)
    if not path.is_file():
        raise WarehouseError("warehouse has no propensity metrics", where=str(path), fix=_fit_hint(warehouse, channel or "vote"))
    metrics = json.loads(path.read_text())
    if channel is None:
        return metrics
    if channel not in metrics:
        raise WarehouseError(
            f"no propensity metrics for channel {channel!r} (fitted: {sorted(metrics)})", where=str(path), fix=_fit_hint(warehouse, channel)
        )
    return metrics[channel]


def write_metrics(warehouse: str | Path, channel: str, diagnostics: dict[str, Any]) -> Path:
    """Set ``metrics.json[channel]`` (other channels are kept)."""
    path = metrics_path(warehouse)
    path.parent.mkdir(parents=True, exist_ok=True)
    metrics = json.loads(path.read_text()) if path.is_file() else {}
    metrics[channel] = diagnostics
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(metrics, indent=2, sort_keys=False, allow_nan=False) + "\n")
    os.replace(tmp, path)
    return path


def replace_dir(staging: Path, target: Path) -> None:
    """Swap a fully written ``staging`` folder into ``target`` (the old one is removed after)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.{uuid.uuid4().hex}.old")
        os.replace(target, old)
    os.replace(staging, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
