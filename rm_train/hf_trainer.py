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

Engines: ``transformers.Trainer`` needs the ``accelerate`` package; where it is missing,
:func:`finetune` runs the same loss in a plain torch loop (AdamW, linear decay to 0 as the Trainer's
default schedule, bf16 autocast on CUDA) and exports the same folder. ``engine="trainer"`` forces the
Trainer (and its DDP / FSDP / DeepSpeed integrations under ``torchrun`` / ``accelerate launch``).

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
from rm_train.config import FinetuneConfig
from rm_train.data import load_weighted_dataset
from rm_train.losses import DOUBLY_ROBUST, OBSERVED_ONLY, pointwise_objective
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


def causalrm_loss(model, inputs: dict[str, torch.Tensor], loss: str, base_loss: str):
    """(loss, model outputs) of a sequence classifier on a batch carrying the ``crm_*`` loss columns."""
    inputs = dict(inputs)
    targets = {key[len(_PREFIX):]: inputs.pop(key).float() for key in list(inputs) if key.startswith(_PREFIX)}
    outputs = model(**inputs)
    logit = outputs.logits.squeeze(-1).float()
    return pointwise_objective(loss, logit, targets, base=base_loss, y_hat=targets.get("y_hat")), outputs


def has_accelerate() -> bool:
    """transformers.Trainer refuses to run without the ``accelerate`` package."""
    import importlib.util

    return importlib.util.find_spec("accelerate") is not None


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
    preds = pl.read_parquet(path)
    if not {"exposure_id", "reward"} <= set(preds.columns):
        raise InputFileError("imputed predictions lack exposure_id or reward", where=str(path))
    joined = frame.join(preds.select("exposure_id", pl.col("reward").alias("y_hat")), on="exposure_id", how="left")
    missing = joined["y_hat"].null_count()
    if missing:
        raise InputFileError(f"{missing} training exposures have no imputed reward", where=str(path),
                             fix="predict on the same dataset you fine-tune on")
    return joined


def _torch_loop(model, rows: list[dict[str, Any]], collator: RewardCollator, cfg: FinetuneConfig, device: torch.device,
                progress: bool) -> tuple[float, list[dict[str, Any]]]:
    """The Trainer's job without accelerate: AdamW, linear decay to 0, bf16 autocast on CUDA."""
    generator = torch.Generator().manual_seed(cfg.seed)
    loader = torch.utils.data.DataLoader(_Rows(rows), batch_size=cfg.batch_size, shuffle=True, generator=generator,
                                         collate_fn=collator, pin_memory=device.type == "cuda")
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=cfg.lr, weight_decay=cfg.weight_decay)
    total_steps = max(1, cfg.epochs * len(loader))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1.0 - step / total_steps))
    model.to(device).train()
    history, losses = [], []
    for epoch in range(cfg.epochs):
        epoch_losses = []
        for batch in loader:
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
                loss, _ = causalrm_loss(model, batch, cfg.loss, cfg.base_loss)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            epoch_losses.append(float(loss.detach()))
        history.append({"epoch": epoch, "loss": float(np.mean(epoch_losses))})
        losses += epoch_losses
        if progress:
            log.info("fine-tune epoch %d: loss %.5f", epoch, history[-1]["loss"])
    return float(np.mean(losses)), history


def finetune(dataset: str | Path, cfg: FinetuneConfig, out: str | Path, *, progress: bool = False,
             engine: str = "auto") -> dict[str, Any]:
    """Fine-tune ``cfg.model`` on the dataset's training split; export to ``out``.

    Parameters
    ----------
    engine : ``trainer`` (transformers.Trainer, needs accelerate), ``torch`` (plain loop, same loss)
        or ``auto`` (the Trainer when accelerate is installed).

    Returns the metrics written to ``out/metrics.json`` (train loss, runtime, tokens/s).
    """
    from transformers import AutoModelForSequenceClassification, TrainingArguments

    if engine not in ("auto", "trainer", "torch"):
        raise ConfigError(f"unknown engine {engine!r}", fix="use auto, trainer or torch")
    if engine == "trainer" and not has_accelerate():
        raise ConfigError("transformers.Trainer needs the accelerate package", fix="pip install 'accelerate>=1.1' or use engine torch")
    use_trainer = engine == "trainer" or (engine == "auto" and has_accelerate())

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
    if use_trainer:
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
        trainer.save_model(str(out))
        train_loss, history = float(result.training_loss), trainer.state.log_history
    else:
        train_loss, history = _torch_loop(model, rows, collator, cfg, torch.device("cuda" if use_cuda else "cpu"), progress)
        model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    runtime = time.perf_counter() - loop_start
    metrics = {
        "loss": cfg.loss, "base_loss": cfg.base_loss, "train_loss": train_loss, "engine": "trainer" if use_trainer else "torch",
        "n_train_rows": frame.height, "epochs": cfg.epochs, "train_runtime_s": round(runtime, 3),
        "train_samples_per_s": round(frame.height * cfg.epochs / runtime, 2) if runtime else None,
        "train_tokens_per_s": round(n_tokens * cfg.epochs / runtime, 1) if runtime else None,
        "log_history": history, "device": "cuda" if use_cuda else "cpu", "seconds": round(time.perf_counter() - started, 3),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    (out / "causalrm_train.json").write_text(json.dumps({"finetune": asdict(cfg), "dataset": str(dataset),
                                                          "text_template": TEXT_TEMPLATE}, indent=2))
    return metrics


@torch.no_grad()
def score_texts(model_dir: str | Path, frame: pl.DataFrame, *, batch_size: int = 64, max_length: int = 256,
                device: str = "cpu") -> np.ndarray:
    """sigmoid(f(x)) of a fine-tuned reward model for each row's (prompt, response); shape (n,)."""
    from transformers import AutoModelForSequenceClassification

    tokenizer = _load_tokenizer(str(model_dir))
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir)).eval().to(device)
    trained = Path(model_dir) / "causalrm_train.json"
    if trained.is_file():  # score with the token limit the model was trained with
        max_length = json.loads(trained.read_text())["finetune"].get("max_length", max_length)
    limits = [max_length, getattr(model.config, "max_position_embeddings", None), getattr(tokenizer, "model_max_length", None)]
    max_length = min(v for v in limits if isinstance(v, int) and v > 0)
    texts = _texts(frame)
    result = np.empty(len(texts), dtype=np.float64)
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(texts[start:start + batch_size], truncation=True, max_length=max_length, padding=True,
                          return_tensors="pt").to(device)
        result[start:start + batch_size] = torch.sigmoid(model(**batch).logits.squeeze(-1).float()).cpu().numpy()
    return result


__all__ = ["CausalRMTrainer", "RewardCollator", "causalrm_loss", "finetune", "has_accelerate", "score_texts"]
