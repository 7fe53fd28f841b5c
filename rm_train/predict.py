"""Scoring with a trained reward head: ``causalrm predict MODEL_DIR DATA --out preds.parquet``."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from safetensors.torch import load_file

from rm_train.data import FeatureSpec, feature_tensors, load_scoring_frame
from rm_train.heads import RewardHead
from rm_train.train import MODEL_FORMAT, resolve_device
from schemas.errors import InputFileError

log = logging.getLogger(__name__)


class RewardModel:
    """A trained reward head with its feature spec; ``predict`` gives P(r* = 1 | x) per row.

    Load with :meth:`load`; the head is in eval mode and never trained further here.
    """

    def __init__(self, head: RewardHead, spec: FeatureSpec, config: dict[str, Any]) -> None:
        self.head = head.eval()
        self.spec = spec
        self.config = config

    @classmethod
    def load(cls, model_dir: str | Path, *, device: str = "cpu") -> "RewardModel":
        root = Path(model_dir)
        config_path, weights = root / "config.json", root / "model.safetensors"
        if not config_path.is_file() or not weights.is_file():
            raise InputFileError("not a reward model folder (config.json or model.safetensors missing)", where=str(root),
                                 fix="pass the --out folder of `causalrm train`")
        try:
            config = json.loads(config_path.read_text())
        except json.JSONDecodeError as exc:
            raise InputFileError(f"config.json is not valid JSON: {exc}", where=str(config_path)) from exc
        if config.get("format") != MODEL_FORMAT:
            raise InputFileError(f"config.json is not a {MODEL_FORMAT} config (format {config.get('format')!r})",
                                 where=str(config_path),
                                 fix="fine-tuned backbones load with transformers' AutoModelForSequenceClassification")
        head = RewardHead.from_architecture(config["architecture"])
        head.load_state_dict(load_file(str(weights)))
        model = cls(head.to(resolve_device(device)), FeatureSpec.from_dict(config["features"]), config)
        return model

    @torch.no_grad()
    def predict(self, frame: pl.DataFrame, *, batch_size: int = 65_536) -> np.ndarray:
        """Predicted reward sigmoid(f(x)) of every row, array of shape (frame.height,)."""
        device = next(self.head.parameters()).device
        result = np.empty(frame.height, dtype=np.float64)
        for start in range(0, frame.height, batch_size):
            chunk = frame.slice(start, batch_size)
            batch = {k: v.to(device) for k, v in feature_tensors(chunk, self.spec).items()}
            result[start:start + chunk.height] = torch.sigmoid(self.head(batch).float()).cpu().numpy()
        return result


def is_sequence_classifier(model_dir: str | Path) -> bool:
    """True when ``model_dir/config.json`` is a transformers sequence-classification config (a
    fine-tuned backbone from ``causalrm train --finetune``)."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        return False
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError:
        return False
    return any(a.endswith("ForSequenceClassification") for a in config.get("architectures") or [])


def predict(model_dir: str | Path, data: str | Path, out: str | Path, *, device: str = "auto") -> dict[str, Any]:
    """Score every exposure of a dataset or warehouse with a reward head or a fine-tuned backbone;
    write ``out`` (exposure_id, reward[, split]).

    Returns a summary (rows, out path, mean reward).
    """
    frame = load_scoring_frame(data)
    if is_sequence_classifier(model_dir):
        from rm_train.hf_trainer import score_texts

        reward = score_texts(model_dir, frame, device=str(resolve_device(device)))
    else:
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
