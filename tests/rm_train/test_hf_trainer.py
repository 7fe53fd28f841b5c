"""Full fine-tuning path on a tiny randomly initialised BERT: frozen backbone untouched, export loads
with AutoModelForSequenceClassification and scores, the Trainer subclass applies the CausalRM loss."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from rm_train.config import FinetuneConfig
from rm_train.hf_trainer import CausalRMTrainer, RewardCollator, causalrm_loss, finetune
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

    metrics = finetune(small_dataset, _cfg(tiny_backbone, freeze_backbone=True), tmp_path / "rm")
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
    finetune(small_dataset, _cfg(tiny_backbone, loss="causalrm-dr", imputed=str(imputed)), tmp_path / "rm")
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
        naive = float(causalrm_loss(model, batch, "naive", "mse")[0])
    # Closed form (issue 22: this was `>= 0`): the naive loss averages (sigmoid(f) - r)^2 over the
    # two observed rows only; the unobserved third row carries none.
    expected = float(((torch.sigmoid(logit[:2]) - torch.tensor([1.0, 0.0])) ** 2).mean())
    assert naive == pytest.approx(expected, rel=1e-6)


def test_finetune_errors(small_dataset: Path, tiny_backbone: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs imputed labels"):
        _cfg(tiny_backbone, loss="causalrm-dr")


def test_transformers_trainer_engine_trains_and_exports(small_dataset: Path, tiny_backbone: Path, tmp_path: Path) -> None:
    """The real transformers.Trainer subclass (accelerate is a dependency) runs the CausalRM loss."""
    from transformers import AutoModel, AutoModelForSequenceClassification

    metrics = finetune(small_dataset, _cfg(tiny_backbone), tmp_path / "rm")
    assert np.isfinite(metrics["train_loss"])
    initial = AutoModel.from_pretrained(tiny_backbone).state_dict()
    tuned = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm")
    changed = [n for n, t in tuned.base_model.state_dict().items() if n in initial and not torch.equal(t, initial[n])]
    assert changed
    predict(tmp_path / "rm", small_dataset, tmp_path / "preds.parquet", device="cpu")
    assert pl.read_parquet(tmp_path / "preds.parquet")["reward"].is_between(0, 1).all()


def test_trainer_export_holds_no_pickle_and_a_failed_run_keeps_it(small_dataset: Path, tiny_backbone: Path, tmp_path: Path) -> None:
    """Issue 16: the Trainer's arguments are JSON (no training_args.bin); a failing fine-tune leaves the
    previous export byte-identical and no building folder behind."""
    import json

    out = tmp_path / "rm"
    finetune(small_dataset, _cfg(tiny_backbone), out)
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    pickles = [f for f in files if f.endswith((".bin", ".pkl", ".pickle", ".pt", ".pth"))]
    assert pickles == [] and "model.safetensors" in files
    args = json.loads((out / "training_args.json").read_text())
    assert args["per_device_train_batch_size"] == 16 and args["seed"] == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(Exception, match="cannot load backbone"):
        finetune(small_dataset, _cfg(tmp_path / "no-such-backbone"), out)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rm"]


@pytest.mark.parametrize("loss", ["ips", "causalrm-ips"])
def test_zero_weight_rows_skipped_with_the_same_loss_and_gradients(tiny_backbone: Path, loss: str) -> None:
    """Issue 19: the IPS losses run only the weighted rows through the model, and the loss value and
    every parameter's gradient equal the full forward's (a wrong denominator, or rows mis-aligned with
    their targets after the selection, changes both)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_backbone)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_backbone, num_labels=1).eval()
    texts = ["a short one", "a much longer answer that sets the padding width of the whole batch", "mid length answer",
             "no", "unseen but long enough to matter for padding if it were kept", "good"]
    weights = [2.0, 0.0, 4.0, 1.5, 0.0, 0.0]
    rows = [dict(tokenizer(text), crm_label=float(i % 2), crm_observed=float(w > 0), crm_weight=w, crm_rho01=0.2, crm_rho10=0.1)
            for i, (text, w) in enumerate(zip(texts, weights))]
    batch = RewardCollator(tokenizer)(rows)

    def loss_and_grads(skip: bool) -> tuple[float, list[torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        value, _ = causalrm_loss(model, batch, loss, "mse", skip_zero_weight=skip)
        value.backward()
        return float(value.detach()), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    full, full_grads = loss_and_grads(False)
    skipped, skipped_grads = loss_and_grads(True)
    assert skipped == pytest.approx(full, rel=1e-6, abs=1e-9)
    assert len(skipped_grads) == len(full_grads) > 0
    for a, b in zip(skipped_grads, full_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_all_zero_weight_batch_gives_zero_gradients_not_none(tiny_backbone: Path) -> None:
    """An all-unobserved batch still steps the optimiser as before (zero gradients, so AdamW's moments
    and weight decay advance exactly as on the full forward)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_backbone)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_backbone, num_labels=1).train()
    rows = [dict(tokenizer(t), crm_label=0.0, crm_observed=0.0, crm_weight=0.0, crm_rho01=0.2, crm_rho10=0.1) for t in ["x", "y z"]]
    value, outputs = causalrm_loss(model, RewardCollator(tokenizer)(rows), "causalrm-ips", "mse")
    value.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert float(value) == 0.0 and outputs is None
    assert all(g is not None and float(g.abs().sum()) == 0.0 for g in grads)
