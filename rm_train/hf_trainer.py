"""Full fine-tuning of a transformers backbone as a reward model, with the CausalRM losses.

:class:`CausalRMTrainer` is a ``transformers.Trainer`` whose ``compute_loss`` applies the same
losses as the head trainer (``rm_train.losses``), fed per row by the weighted dataset's columns
(observed, label, weight = o/p, rho01, rho10, and y_hat for DR). The model is an
``AutoModelForSequenceClassification`` with ``num_labels=1``; its logit f(x) is the reward score and
sigmoid(f(x)) the predicted P(r* = 1 | x). The exported folder loads with
``AutoModelForSequenceClassification.from_pretrained`` so RLHF frameworks (TRL, OpenRLHF, verl) can
use it as their reward model.

DR with a full backbone: a second backbone as imputation head would double memory and compute, so
y_hat comes from a file (``imputed``: a preds.parquet, e.g. a causalrm-ips head's predictions on the
same exposures). e_i = l(f(x_i), y_hat_i) still depends on the fine-tuned f, so DR does not collapse
into IPS.

Engine: ``transformers.Trainer`` (``accelerate``, which it needs, is a hard dependency), with its
DDP / FSDP / DeepSpeed integrations under ``torchrun`` / ``accelerate launch``.

Text: ``feedback_etl.embed.TEXT_TEMPLATE`` (prompt, blank line, response), truncated from the left.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from transformers import Trainer

from feedback_etl.embed import TEXT_TEMPLATE
from feedback_etl.outputs import build_aside
from rm_train.config import FinetuneConfig
from rm_train.data import load_weighted_dataset
from rm_train.losses import DOUBLY_ROBUST, OBSERVED_ONLY, pointwise_objective, pointwise_terms
from schemas.errors import ConfigError, EstimationError, InputFileError

log = logging.getLogger(__name__)

#: Loss inputs travel in the batch under these keys (prefixed so no model argument is shadowed).
_PREFIX = "crm_"


class CausalRMTrainer(Trainer):
    """``transformers.Trainer`` with a CausalRM loss on a ``num_labels=1`` sequence classifier.

    Parameters
    ----------
    loss : one of ``rm_train.losses.POINTWISE_LOSSES``.
    base_loss : ``mse`` (bounded, default) or ``bce`` (guarded).
    Other arguments go to ``transformers.Trainer``. Batches must carry ``crm_label``,
    ``crm_observed``, ``crm_weight``, ``crm_rho01``, ``crm_rho10`` (and ``crm_y_hat`` for DR), each
    of shape (batch,), as :class:`RewardCollator` produces.
    """

    def __init__(self, *args: Any, loss: str = "causalrm-ips", base_loss: str = "mse", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.loss_name = loss
        self.base_loss = base_loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = causalrm_loss(model, inputs, self.loss_name, self.base_loss)
        return (loss, outputs) if return_outputs else loss


#: Losses whose every term is w * (...) with w = o / p, so an unobserved row (w = 0) adds exactly 0 to the
#: loss and to every gradient, while the batch mean still counts it (rows = 1). naive and noise drop
#: unobserved rows before batching; the DR losses need every row (the imputed term).
ZERO_WEIGHT_SKIPPABLE: frozenset[str] = frozenset({"ips", "causalrm-ips"})


def causalrm_loss(model, inputs: dict[str, torch.Tensor], loss: str, base_loss: str, *, skip_zero_weight: bool | None = None):
    """(loss, model outputs) of a sequence classifier on a batch carrying the ``crm_*`` loss columns.

    For the IPS losses (:data:`ZERO_WEIGHT_SKIPPABLE`) rows of weight 0 carry no loss and no gradient,
    so in training (``skip_zero_weight`` defaults to ``model.training``) only the other rows go through
    the model, with padding columns no kept row uses trimmed, and the sum is still divided by the full
    batch's row count: the same loss value and gradient as the full forward, at a fraction of its cost
    (issue 19: at a 21% observed rate, 79% of the passes were for nothing). The outputs returned then
    cover the kept rows only; evaluation (``model.eval()``) keeps every row.
    """
    inputs = dict(inputs)
    targets = {key[len(_PREFIX):]: inputs.pop(key).float() for key in list(inputs) if key.startswith(_PREFIX)}
    if skip_zero_weight is None:
        skip_zero_weight = model.training
    if skip_zero_weight and loss in ZERO_WEIGHT_SKIPPABLE:
        keep = targets["weight"] != 0
        n_rows = keep.numel()
        if not bool(keep.any()):
            # No row carries loss: zero gradients (not None), so the optimiser steps exactly as on the full batch.
            zero = sum(p.sum() for p in model.parameters() if p.requires_grad) * 0.0
            return zero, None
        if not bool(keep.all()):
            targets = {name: values[keep] for name, values in targets.items()}
            inputs = _kept_rows(inputs, keep)
        outputs = model(**inputs)
        logit = outputs.logits.squeeze(-1).float()
        terms, _ = pointwise_terms(loss, logit, targets, base=base_loss)
        return terms.sum() / n_rows, outputs
    outputs = model(**inputs)
    logit = outputs.logits.squeeze(-1).float()
    return pointwise_objective(loss, logit, targets, base=base_loss, y_hat=targets.get("y_hat")), outputs


def _kept_rows(inputs: dict[str, torch.Tensor], keep: torch.Tensor) -> dict[str, torch.Tensor]:
    """The token tensors of the kept rows, without the padding columns none of them uses (what
    ``tokenizer.pad`` would have produced for these rows alone, left or right padding)."""
    kept = {name: tensor[keep] for name, tensor in inputs.items()}
    mask = kept.get("attention_mask")
    if mask is not None and mask.dim() == 2:
        used = mask.bool().any(dim=0)
        if not bool(used.all()):
            kept = {name: tensor[:, used] if tensor.dim() == 2 and tensor.shape[1] == used.numel() else tensor
                    for name, tensor in kept.items()}
    return kept


class RewardCollator:
    """Pads token ids with the tokenizer and stacks the loss columns into float tensors."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        token_keys = [k for k in rows[0] if not k.startswith(_PREFIX)]
        batch = self.tokenizer.pad([{k: row[k] for k in token_keys} for row in rows], return_tensors="pt")
        for key in rows[0]:
            if key.startswith(_PREFIX):
                batch[key] = torch.tensor([row[key] for row in rows], dtype=torch.float32)
        return dict(batch)


class _Rows(torch.utils.data.Dataset):
    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.rows[index]


def _load_tokenizer(model: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.truncation_side = "left"
    return tokenizer


def _texts(frame: pl.DataFrame) -> list[str]:
    return [TEXT_TEMPLATE.format(prompt=p or "", response=r or "")
            for p, r in zip(frame["prompt_text"].to_list(), frame["response_text"].to_list())]


def _join_imputed(frame: pl.DataFrame, imputed: str) -> pl.DataFrame:
    path = Path(imputed)
    if not path.is_file():
        raise InputFileError("imputed predictions not found", where=str(path), fix="pass the --out file of `causalrm predict`")
    preds = pl.read_parquet(path, glob=False)
    if not {"exposure_id", "reward"} <= set(preds.columns):
        raise InputFileError("imputed predictions lack exposure_id or reward", where=str(path))
    joined = frame.join(preds.select("exposure_id", pl.col("reward").alias("y_hat")), on="exposure_id", how="left")
    missing = joined["y_hat"].null_count()
    if missing:
        raise InputFileError(f"{missing} training exposures have no imputed reward", where=str(path),
                             fix="predict on the same dataset you fine-tune on")
    return joined


def finetune(dataset: str | Path, cfg: FinetuneConfig, out: str | Path, *, progress: bool = False) -> dict[str, Any]:
    """Fine-tune ``cfg.model`` on the dataset's training split; export to ``out``.

    ``out`` is built in a hidden sibling folder and replaces an existing one only when fine-tuning
    succeeds (issue 16). It holds no pickle: weights as safetensors, the Trainer's arguments as
    ``training_args.json`` (not the Trainer's ``training_args.bin``).

    Returns the metrics written to ``out/metrics.json`` (train loss, runtime, tokens/s).
    """
    with build_aside(Path(out)) as work:
        return _finetune(dataset, cfg, work, progress=progress)


def _finetune(dataset: str | Path, cfg: FinetuneConfig, out: Path, *, progress: bool) -> dict[str, Any]:
    """:func:`finetune`, writing into the building folder ``out``."""
    from transformers import AutoModelForSequenceClassification, TrainingArguments


    out = Path(out)
    started = time.perf_counter()
    frame = load_weighted_dataset(dataset, label_column=cfg.label_column, truth=cfg.truth, all_observed=cfg.all_observed)
    frame = frame.filter(pl.col("split") == cfg.train_split)
    if cfg.loss in OBSERVED_ONLY:
        frame = frame.filter(pl.col("observed"))
    if frame.height == 0 or not frame["observed"].any():
        raise EstimationError(f"no observed rows in split {cfg.train_split!r}", where=str(dataset))
    if cfg.loss in DOUBLY_ROBUST:
        frame = _join_imputed(frame, cfg.imputed)
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda asked for but no CUDA device is visible", fix="use --device cpu or auto")
    use_cuda = cfg.device != "cpu" and torch.cuda.is_available()

    torch.manual_seed(cfg.seed)  # the new score head's initialisation is part of the run's reproducibility
    try:
        tokenizer = _load_tokenizer(cfg.model)
        model = AutoModelForSequenceClassification.from_pretrained(cfg.model, num_labels=1)
    except (OSError, ValueError) as exc:
        raise InputFileError(f"cannot load backbone: {str(exc).splitlines()[0]}", where=cfg.model,
                             fix="pass a local model folder or a hub id reachable from here") from exc
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    model.config.id2label, model.config.label2id = {0: "reward"}, {"reward": 0}
    if cfg.freeze_backbone:
        model.base_model.requires_grad_(False)

    limits = [cfg.max_length, getattr(model.config, "max_position_embeddings", None), getattr(tokenizer, "model_max_length", None)]
    max_length = min(v for v in limits if isinstance(v, int) and v > 0)
    tokens = tokenizer(_texts(frame), truncation=True, max_length=max_length)
    targets = frame.select(
        label=pl.col("label").cast(pl.Float32).fill_null(0.0), observed=pl.col("observed").cast(pl.Float32),
        weight=pl.col("weight").cast(pl.Float32), rho01=pl.col("rho01").cast(pl.Float32), rho10=pl.col("rho10").cast(pl.Float32),
        **({"y_hat": pl.col("y_hat").cast(pl.Float32)} if "y_hat" in frame.columns else {}),
    ).to_dict(as_series=False)
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in tokens]
    rows = [{**{k: tokens[k][i] for k in keys}, **{_PREFIX + name: values[i] for name, values in targets.items()}}
            for i in range(frame.height)]
    n_tokens = int(sum(len(ids) for ids in tokens["input_ids"]))

    collator = RewardCollator(tokenizer)
    out.mkdir(parents=True, exist_ok=True)
    loop_start = time.perf_counter()
    args = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=cfg.batch_size, num_train_epochs=cfg.epochs,
        learning_rate=cfg.lr, weight_decay=cfg.weight_decay, seed=cfg.seed, data_seed=cfg.seed,
        report_to="none", save_strategy="no", logging_strategy="epoch", remove_unused_columns=False,
        use_cpu=not use_cuda, bf16=use_cuda and torch.cuda.is_bf16_supported(), dataloader_pin_memory=use_cuda,
        disable_tqdm=not progress,
    )
    trainer = CausalRMTrainer(model=model, args=args, train_dataset=_Rows(rows), data_collator=collator,
                              loss=cfg.loss, base_loss=cfg.base_loss)
    result = trainer.train()
    # Not trainer.save_model: it also pickles the arguments (torch.save -> training_args.bin).
    trainer.model.save_pretrained(str(out), safe_serialization=True)
    (out / "training_args.json").write_text(args.to_json_string())
    train_loss, history = float(result.training_loss), trainer.state.log_history
    tokenizer.save_pretrained(str(out))
    runtime = time.perf_counter() - loop_start
    metrics = {
        "loss": cfg.loss, "base_loss": cfg.base_loss, "train_loss": train_loss, "engine": "trainer",
        "n_train_rows": frame.height, "epochs": cfg.epochs, "train_runtime_s": round(runtime, 3),
        "train_samples_per_s": round(frame.height * cfg.epochs / runtime, 2) if runtime else None,
        "train_tokens_per_s": round(n_tokens * cfg.epochs / runtime, 1) if runtime else None,
        "log_history": history, "device": "cuda" if use_cuda else "cpu", "seconds": round(time.perf_counter() - started, 3),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    (out / "causalrm_train.json").write_text(json.dumps({"finetune": asdict(cfg), "dataset": str(dataset),
                                                          "text_template": TEXT_TEMPLATE}, indent=2))
    return metrics


def score_texts(model_dir: str | Path, frame: pl.DataFrame, *, batch_size: int = 64, device: str = "cpu") -> np.ndarray:
    """sigmoid(f(x)) of a fine-tuned reward model for each row's (prompt, response); shape (n,).

    Scores through :class:`rm_train.reward_model.RewardModel`, the one scoring path (issue 21), with
    the template and token limit recorded in ``causalrm_train.json``.
    """
    from rm_train.reward_model import RewardModel

    return RewardModel.load(model_dir, device=device, batch_size=batch_size).predict(frame)


__all__ = ["CausalRMTrainer", "RewardCollator", "causalrm_loss", "finetune", "score_texts"]
