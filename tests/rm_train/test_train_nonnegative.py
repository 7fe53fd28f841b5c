"""Issue 15 in the trainer: bce trains with the batch-level non-negative risk; a small validation
split is flagged."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from rm_train.config import TrainConfig
from rm_train.train import MIN_VALIDATION_ROWS, train


def _cfg(**overrides) -> TrainConfig:
    values = {"epochs": 2, "batch_size": 512, "device": "cpu", "hidden": (16,), "seed": 0, "lr": 3e-3}
    return TrainConfig(**{**values, **overrides})


def test_bce_dr_trains_with_the_nonnegative_risk(weighted_dataset: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    metrics = train(weighted_dataset, _cfg(loss="causalrm-dr", base_loss="bce"), tmp_path / "model")
    losses = [epoch["val_loss"] for epoch in metrics["epochs"]]
    # The reported value is max(R+, 0) + max(R-, 0): finite and never negative.
    assert all(math.isfinite(v) and v >= 0 for v in losses)
    assert (tmp_path / "model" / "imputation.safetensors").is_file()


def test_small_validation_split_is_flagged(weighted_dataset: Path, tmp_path: Path) -> None:
    metrics = train(weighted_dataset, _cfg(loss="ips", epochs=1), tmp_path / "model")
    # The 8,000-exposure fixture's val split holds ~10% of users at a ~20% vote rate: < 300 votes.
    flagged = [w for w in metrics["warnings"] if "validation split" in w]
    assert flagged and f"(< {MIN_VALIDATION_ROWS})" in flagged[0], metrics["warnings"]
