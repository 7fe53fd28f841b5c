"""Weighted matrix factorisation as standard MF (issue 17): user and item biases, an L2 penalty on
the factors and biases of each batch's rows (``--id-l2``), and a grid tuned on the debiased
validation loss."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from rm_train.config import TrainConfig
from rm_train.heads import RewardHead
from rm_train.train import train
from schemas.errors import ConfigError

from test_train import _ratings_dataset


def _mf(**overrides) -> TrainConfig:
    values = {"loss": "ips", "id_features": ("user_id", "response_id"), "hidden": (), "id_dim": 3, "epochs": 6, "lr": 0.03,
              "weight_decay": 0.0, "batch_size": 256, "device": "cpu", "patience": 6, "seed": 0}
    return TrainConfig(**{**values, **overrides})


def test_id_penalty_is_the_squared_norm_of_the_looked_up_rows() -> None:
    head = RewardHead(id_cardinalities=(4, 3), id_dim=2, hidden=())
    ids = torch.tensor([[0, 1], [3, 1], [3, 2]])
    expected = np.mean([
        sum(float(head.id_factors[j].weight.detach()[ids[k, j]].square().sum() + head.id_bias[j].weight.detach()[ids[k, j]].square().sum()) for j in range(2))
        for k in range(3)
    ])
    assert float(head.id_penalty({"ids": ids}).detach()) == pytest.approx(expected, rel=1e-6)
    weights = torch.tensor([1.0, 0.0, 0.0])  # only the first row counts
    assert float(head.id_penalty({"ids": ids}, weights).detach()) == pytest.approx(
        sum(float(head.id_factors[j].weight.detach()[ids[0, j]].square().sum() + head.id_bias[j].weight.detach()[ids[0, j]].square()) for j in range(2)), rel=1e-6)
    assert float(RewardHead(n_numeric=2, hidden=()).id_penalty({"numeric": torch.zeros(3, 2)})) == 0.0


def _id_norm(model: Path) -> float:
    state = load_file(str(model / "model.safetensors"))
    return float(sum(t.square().sum() for name, t in state.items() if name.startswith(("id_factors", "id_bias"))))


def test_l2_shrinks_the_factors_and_biases(tmp_path: Path) -> None:
    dataset, _ = _ratings_dataset(tmp_path / "ratings", n_users=60, n_items=40)
    train(dataset, _mf(), tmp_path / "free")
    train(dataset, _mf(id_l2=(1.0,)), tmp_path / "shrunk")
    # Same seed, same batches: the penalty alone makes the difference; a strong one pulls the
    # looked-up rows towards 0, so the ID parameters' total squared norm must drop a lot.
    assert _id_norm(tmp_path / "shrunk") < 0.5 * _id_norm(tmp_path / "free")
    config = json.loads((tmp_path / "shrunk" / "config.json").read_text())
    assert config["train"]["id_l2"] == [1.0]


def test_grid_keeps_the_lowest_debiased_validation_loss(tmp_path: Path) -> None:
    dataset, _ = _ratings_dataset(tmp_path / "ratings", n_users=60, n_items=40)
    metrics = train(dataset, _mf(id_l2=(0.0, 1e4)), tmp_path / "grid")
    search = metrics["id_l2_search"]
    assert [row["id_l2"] for row in search] == [0.0, 1e4]
    best = min(search, key=lambda row: row["best_val_loss"])
    assert metrics["id_l2"] == best["id_l2"] and metrics["best_val_loss"] == best["best_val_loss"]
    saved = json.loads((tmp_path / "grid" / "metrics.json").read_text())
    assert saved["id_l2_search"] == search
    assert sorted(p.name for p in (tmp_path / "grid").iterdir()) == ["config.json", "metrics.json", "model.safetensors"]
    assert json.loads((tmp_path / "grid" / "config.json").read_text())["train"]["id_l2"] == [best["id_l2"]]


@pytest.mark.parametrize(("overrides", "message"), [
    ({"id_l2": (-0.1,)}, "must be >= 0"),
    ({"id_l2": (0.1,), "id_features": ()}, "no --id-features"),
])
def test_id_l2_config_errors(overrides: dict, message: str) -> None:
    values = {"loss": "ips", "id_features": ("user_id", "response_id"), "hidden": (), **overrides}
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**values)
