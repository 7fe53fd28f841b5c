"""Full fine-tuning path on a tiny randomly initialised BERT: frozen backbone untouched, export loads
with AutoModelForSequenceClassification and scores, the Trainer subclass applies the CausalRM loss."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from rm_train.config import FinetuneConfig
from rm_train.hf_trainer import CausalRMTrainer, RewardCollator, causalrm_loss, finetune, has_accelerate
from rm_train.losses import pointwise_objective
from rm_train.predict import predict
from schemas.errors import ConfigError


@pytest.fixture(scope="module")
def small_dataset(weighted_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hf") / "dataset"
    root.mkdir()
    pl.read_parquet(weighted_dataset / "data.parquet").head(240).write_parquet(root / "data.parquet")
    return root


def _cfg(backbone: Path, **overrides) -> FinetuneConfig:
    values = {"model": str(backbone), "loss": "causalrm-ips", "epochs": 1, "batch_size": 16, "lr": 1e-3,
              "device": "cpu", "max_length": 64}
    return FinetuneConfig(**{**values, **overrides})


def test_frozen_backbone_is_untouched_and_export_scores(small_dataset: Path, tiny_backbone: Path, tmp_path: Path) -> None:
    from transformers import AutoModel, AutoModelForSequenceClassification

    metrics = finetune(small_dataset, _cfg(tiny_backbone, freeze_backbone=True), tmp_path / "rm", engine="torch")
    assert metrics["n_train_rows"] > 0 and np.isfinite(metrics["train_loss"])
    initial = AutoModel.from_pretrained(tiny_backbone).state_dict()
    tuned = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm")
    assert tuned.config.num_labels == 1
    for name, tensor in tuned.base_model.state_dict().items():
        assert torch.equal(tensor, initial[name]), name
    torch.manual_seed(0)  # finetune seeds before creating the score head: this is its initial state
    fresh = AutoModelForSequenceClassification.from_pretrained(tiny_backbone, num_labels=1)
    for trained, initial_head in zip(tuned.classifier.parameters(), fresh.classifier.parameters()):
        assert not torch.equal(trained, initial_head)
    # Scores through `causalrm predict` (dispatches on the HF config) are probabilities.
    predict(tmp_path / "rm", small_dataset, tmp_path / "preds.parquet", device="cpu")
    preds = pl.read_parquet(tmp_path / "preds.parquet")
    assert preds.height == 240 and preds["reward"].is_between(0, 1).all() and preds["reward"].n_unique() > 1


def test_dr_finetune_updates_the_backbone(small_dataset: Path, tiny_backbone: Path, tmp_path: Path) -> None:
    from transformers import AutoModel, AutoModelForSequenceClassification

    frame = pl.read_parquet(small_dataset / "data.parquet")
    imputed = tmp_path / "imputed.parquet"
    pl.DataFrame({"exposure_id": frame["exposure_id"], "reward": np.linspace(0.2, 0.8, frame.height)}).write_parquet(imputed)
    finetune(small_dataset, _cfg(tiny_backbone, loss="causalrm-dr", imputed=str(imputed)), tmp_path / "rm", engine="torch")
    initial = AutoModel.from_pretrained(tiny_backbone).state_dict()
    tuned = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").base_model.state_dict()
    changed = [name for name, tensor in tuned.items() if name in initial and not torch.equal(tensor, initial[name])]
    assert len(changed) > len(tuned) // 2


def test_trainer_compute_loss_is_the_causalrm_loss(tiny_backbone: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_backbone)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_backbone, num_labels=1).eval()
    rows = [dict(tokenizer(text), crm_label=label, crm_observed=obs, crm_weight=w, crm_rho01=0.2, crm_rho10=0.1)
            for text, label, obs, w in [("good answer", 1.0, 1.0, 2.0), ("bad answer", 0.0, 1.0, 4.0), ("unseen", 0.0, 0.0, 0.0)]]
    batch = RewardCollator(tokenizer)(rows)
    # The Trainer needs accelerate to be constructed; its compute_loss only reads the two loss settings.
    trainer = CausalRMTrainer.__new__(CausalRMTrainer)
    trainer.loss_name, trainer.base_loss = "causalrm-ips", "mse"
    with torch.no_grad():
        loss = trainer.compute_loss(model, dict(batch))
        logit = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                      token_type_ids=batch["token_type_ids"]).logits.squeeze(-1)
    targets = {k[4:]: v for k, v in batch.items() if k.startswith("crm_")}
    assert float(loss) == pytest.approx(float(pointwise_objective("causalrm-ips", logit, targets)), rel=1e-6)
    assert "crm_label" in batch  # compute_loss worked on a copy: the batch itself is intact
    with torch.no_grad():
        assert float(causalrm_loss(model, batch, "naive", "mse")[0]) >= 0


def test_finetune_errors(small_dataset: Path, tiny_backbone: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs imputed labels"):
        _cfg(tiny_backbone, loss="causalrm-dr")
    with pytest.raises(ConfigError, match="unknown engine"):
        finetune(small_dataset, _cfg(tiny_backbone), tmp_path / "x", engine="jax")
    if not has_accelerate():
        with pytest.raises(ConfigError, match="needs the accelerate package"):
            finetune(small_dataset, _cfg(tiny_backbone), tmp_path / "x", engine="trainer")


def test_transformers_trainer_engine_trains_and_exports(small_dataset: Path, tiny_backbone: Path, tmp_path: Path) -> None:
    """The real transformers.Trainer subclass (accelerate is a dependency) runs the CausalRM loss."""
    from transformers import AutoModel, AutoModelForSequenceClassification

    assert has_accelerate()
    metrics = finetune(small_dataset, _cfg(tiny_backbone), tmp_path / "rm", engine="trainer")
    assert np.isfinite(metrics["train_loss"])
    initial = AutoModel.from_pretrained(tiny_backbone).state_dict()
    tuned = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm")
    changed = [n for n, t in tuned.base_model.state_dict().items() if n in initial and not torch.equal(t, initial[n])]
    assert changed
    predict(tmp_path / "rm", small_dataset, tmp_path / "preds.parquet", device="cpu")
    assert pl.read_parquet(tmp_path / "preds.parquet")["reward"].is_between(0, 1).all()
