"""Scoring a dataset or warehouse: ``causalrm predict MODEL_DIR DATA --out preds.parquet``.

Every model kind is scored by :class:`rm_train.reward_model.RewardModel` (re-exported here).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import polars as pl

from rm_train.data import load_scoring_frame
from rm_train.reward_model import RewardModel, is_sequence_classifier

log = logging.getLogger(__name__)


def predict(model_dir: str | Path, data: str | Path, out: str | Path, *, device: str = "auto") -> dict[str, Any]:
    """Score every exposure of a dataset or warehouse with any model kind (:class:`RewardModel`);
    write ``out`` (exposure_id, reward[, split]).

    Returns a summary (rows, out path, mean reward).
    """
    frame = load_scoring_frame(data)
    # One scoring path (issue 21): the server, the RL reward functions and this give the same numbers.
    reward = RewardModel.load(model_dir, device=device).predict(frame)
    columns = {"exposure_id": frame["exposure_id"], "reward": reward}
    if "split" in frame.columns:
        # Not part of the preds contract, but lets `causalrm evaluate --split test` work on its own.
        columns["split"] = frame["split"]
    preds = pl.DataFrame(columns)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    preds.write_parquet(out)
    return {"rows": preds.height, "out": str(out), "mean_reward": float(reward.mean()) if len(reward) else None}


__all__ = ["RewardModel", "is_sequence_classifier", "predict"]
