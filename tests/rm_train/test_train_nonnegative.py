"""Issue 15 in the trainer: bce trains with the batch-level non-negative risk; a small validation
split is flagged."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from rm_train.config import TrainConfig
from rm_train.train import IMPUTATION_FOLDS, MIN_VALIDATION_ROWS, train


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


def test_cross_fitted_imputation_never_sees_the_rows_it_imputes() -> None:
    """Issue 15.6: the DR imputation head is cross-fitted by user fold. Train the imputer on a batch
    whose fold-0 labels are one draw, then (same seed) on the same batch with every fold-0 label
    flipped: the y_hat of fold-0 rows is identical (it comes from the head trained on fold 1 only),
    while fold-1 rows' y_hat moves. A single head taking its step on the batch it imputes (the old
    trainer) fails the first assertion: with ID features it can memorise the rows' own labels."""
    from rm_train.data import FeatureSpec
    from rm_train.train import _CrossFitImputer, _Objective

    n = 256
    generator = torch.Generator().manual_seed(0)
    fold = (torch.arange(n) % 2).float()
    labels = (torch.rand(n, generator=generator) < 0.5).float()
    spec = FeatureSpec(embedding_dim=0, ids=["user_id"], vocab={"user_id": [str(i) for i in range(n)]})
    cfg = _cfg(loss="causalrm-dr", hidden=(), id_features=("user_id",))

    def imputed_after_training(label: torch.Tensor) -> torch.Tensor:
        torch.manual_seed(0)
        imputer = _CrossFitImputer(spec, cfg)
        optimizer = torch.optim.AdamW(imputer.parameters(), lr=0.05)
        batch = {"ids": torch.arange(1, n + 1).reshape(n, 1), "label": label, "observed": torch.ones(n), "weight": torch.ones(n),
                 "rho01": torch.zeros(n), "rho10": torch.zeros(n), "imputation_fold": fold}
        for _ in range(30):
            _, y_hat = _Objective(cfg, None, torch.device("cpu")).imputation_step(imputer, optimizer, batch, torch.device("cpu"))
        return y_hat

    flipped = torch.where(fold == 0, 1 - labels, labels)
    before, after = imputed_after_training(labels), imputed_after_training(flipped)
    assert torch.equal(before[fold == 0], after[fold == 0])
    assert not torch.equal(before[fold == 1], after[fold == 1])


@pytest.mark.parametrize("folds", [IMPUTATION_FOLDS, 3])
def test_each_imputation_rests_on_every_other_fold(folds: int) -> None:
    """Issue 15 (demo regression, benchmarks/paper_repro/issue15_dr_demo.md): K user folds (default
    5); the head that imputes fold k trains on all the other folds. Flip fold 2's labels: fold 2's
    y_hat is unchanged (its head never saw them) and every other fold's y_hat moves (their heads all
    trained on fold 2). With two halves (fold > 0 as one half) folds 1, 3 and 4 were imputed by a head
    trained on fold 0 alone, half the users or fewer behind each imputation."""
    from rm_train.data import FeatureSpec
    from rm_train.train import _CrossFitImputer, _imputed_logit, _Objective

    n = 64 * folds
    generator = torch.Generator().manual_seed(1)
    fold = (torch.arange(n) % folds).float()
    labels = (torch.rand(n, generator=generator) < 0.5).float()
    spec = FeatureSpec(embedding_dim=0, ids=["user_id"], vocab={"user_id": [str(i) for i in range(n)]})
    cfg = _cfg(loss="causalrm-dr", hidden=(8,), dropout=0.0, id_features=("user_id",), imputation_folds=folds)

    def imputed_after_training(label: torch.Tensor) -> torch.Tensor:
        torch.manual_seed(0)
        imputer = _CrossFitImputer(spec, cfg)
        optimizer = torch.optim.AdamW(imputer.parameters(), lr=0.05)
        batch = {"ids": torch.arange(1, n + 1).reshape(n, 1), "label": label, "observed": torch.ones(n), "weight": torch.ones(n),
                 "rho01": torch.zeros(n), "rho10": torch.zeros(n), "imputation_fold": fold}
        for _ in range(10):
            _, y_hat = _Objective(cfg, None, torch.device("cpu")).imputation_step(imputer, optimizer, batch, torch.device("cpu"))
        assert y_hat.shape == (n,)
        with torch.no_grad():  # the step returns y_hat from before its update; this is after training
            return torch.sigmoid(_imputed_logit(imputer(batch), batch))

    flipped = torch.where(fold == 2, 1 - labels, labels)
    before, after = imputed_after_training(labels), imputed_after_training(flipped)
    assert torch.equal(before[fold == 2], after[fold == 2])
    for k in range(folds):
        if k != 2:
            assert (before[fold == k] - after[fold == k]).abs().max() > 1e-4, k
