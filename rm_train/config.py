"""Trainer configs: frozen dataclasses validated on construction; ``causalrm train`` options and a
TOML table (``[train]``) map onto them one to one."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from rm_train.losses import BASE_LOSSES, DOUBLY_ROBUST, POINTWISE_LOSSES
from schemas.errors import ConfigError

DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")


def _check_common(cfg: Any) -> None:
    if cfg.loss not in POINTWISE_LOSSES:
        raise ConfigError(f"unknown loss {cfg.loss!r}", fix=f"use one of {', '.join(POINTWISE_LOSSES)}")
    if cfg.base_loss not in BASE_LOSSES:
        raise ConfigError(f"unknown base loss {cfg.base_loss!r}", fix=f"use one of {', '.join(BASE_LOSSES)}")
    if cfg.device not in DEVICES:
        raise ConfigError(f"unknown device {cfg.device!r}", fix=f"use one of {', '.join(DEVICES)}")
    for name in ("epochs", "batch_size"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"{name} must be >= 1, got {getattr(cfg, name)}", fix=f"pass a positive --{name.replace('_', '-')}")
    if not cfg.lr > 0:
        raise ConfigError(f"lr must be > 0, got {cfg.lr}", fix="pass a positive --lr")
    if cfg.weight_decay < 0:
        raise ConfigError(f"weight_decay must be >= 0, got {cfg.weight_decay}")
    if cfg.all_observed and cfg.label_column == "label":
        raise ConfigError("--all-observed needs labels for every exposure, but `label` exists only on observed rows",
                          fix="add --label-column y_true --truth truth.parquet (the oracle run)")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """How to train a reward head over a weighted dataset.

    Labels: by default ``label`` (r) on observed rows, with the dataset's weights and flip rates. An
    oracle run (the benchmark's ceiling) reads another column, e.g. ``label_column="y_true"`` joined
    from ``truth`` on ``exposure_id``; such a column counts as clean (rho01 = rho10 = 0), and with
    ``all_observed`` every exposure becomes observed with weight 1 (p = 1).

    Features: the ``embedding`` column (or ``DATASET/embeddings/``) when present and ``embedding`` is
    not false, standardized ``numeric_features``, learned embeddings of ``categorical_features``, and
    ``id_features`` (e.g. user_id, response_id) whose embeddings also interact pairwise
    (factorisation machine; two ID columns alone = weighted matrix factorisation).
    """

    loss: str = "causalrm-dr"
    base_loss: str = "mse"
    pairs: bool = False
    epochs: int = 20
    lr: float = 1e-3
    weight_decay: float = 1e-2
    batch_size: int = 512
    seed: int = 0
    device: str = "auto"
    hidden: tuple[int, ...] = (256, 64)
    dropout: float = 0.1
    patience: int = 3
    # DR losses: user folds of the cross-fitted imputation heads (issue 15); each imputation comes
    # from the head trained on the other K - 1 folds. 2 is twice as fast per batch, on half the users.
    imputation_folds: int = 5
    embedding: bool | None = None
    numeric_features: tuple[str, ...] = ()
    categorical_features: tuple[str, ...] = ()
    id_features: tuple[str, ...] = ()
    # L2 weight of the ID factors and biases (standard MF, rm_train.heads.RewardHead.id_penalty); several
    # values: one model each, the lowest debiased validation loss wins (issue 17). Empty: no penalty.
    id_l2: tuple[float, ...] = ()
    # Validate on a seeded random share of all exposures instead of the dataset's user splits: MF
    # learns nothing for a user it never trains on, so its validation rows are held-out ratings.
    val_fraction: float | None = None
    categorical_dim: int = 8
    id_dim: int = 16
    label_column: str = "label"
    truth: str | None = None
    all_observed: bool = False
    train_split: str = "train"
    val_split: str = "val"
    num_workers: int = 0

    def __post_init__(self) -> None:
        _check_common(self)
        if self.pairs and self.loss not in ("naive", "ips", "noise", "causalrm-ips"):
            raise ConfigError(f"loss {self.loss!r} has no pairwise form",
                              fix="with --pairs use naive, ips, noise or causalrm-ips")
        if any(h < 1 for h in self.hidden):
            raise ConfigError(f"hidden sizes must be >= 1, got {self.hidden}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.patience < 1:
            raise ConfigError(f"patience must be >= 1, got {self.patience}")
        if self.imputation_folds < 2:
            raise ConfigError(f"imputation_folds must be >= 2, got {self.imputation_folds}", where="--imputation-folds",
                              fix="use 5 (the default) or 2 (faster; each imputation rests on half the users)")
        if self.embedding is False and not (self.numeric_features or self.categorical_features or self.id_features):
            raise ConfigError("no features: --no-embeddings and no numeric, categorical or ID features",
                              fix="keep the embedding or name feature columns")
        if self.train_split == self.val_split:
            raise ConfigError("train_split and val_split must differ")
        if self.val_fraction is not None and not 0 < self.val_fraction < 1:
            raise ConfigError(f"val_fraction must be in (0, 1), got {self.val_fraction}", where="--val-fraction", fix="e.g. --val-fraction 0.1")
        if self.val_fraction is not None and self.pairs:
            raise ConfigError("--val-fraction splits exposures, not pairs", where="--val-fraction", fix="drop --pairs or --val-fraction")
        object.__setattr__(self, "id_l2", tuple(float(v) for v in self.id_l2))
        if any(not v >= 0 for v in self.id_l2):
            raise ConfigError(f"id_l2 values must be >= 0, got {list(self.id_l2)}", where="--id-l2", fix="pass e.g. 0.01 or 0.001,0.01,0.1")
        if self.id_l2 and not self.id_features:
            raise ConfigError("--id-l2 regularises ID factors, but no --id-features are given", where="--id-l2",
                              fix="add --id-features user_id,response_id, or drop --id-l2")
        if self.id_l2 and self.pairs:
            raise ConfigError("--id-l2 is applied to pointwise training only", where="--id-l2", fix="drop --pairs or --id-l2")

    @property
    def doubly_robust(self) -> bool:
        return self.loss in DOUBLY_ROBUST

    @classmethod
    def from_mapping(cls, mapping: dict[str, Any]) -> "TrainConfig":
        """Build from a TOML table; unknown keys are an error (typos must not pass silently)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(mapping) - known)
        if unknown:
            raise ConfigError(f"unknown train option(s) {unknown}", fix=f"use only {sorted(known)}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in mapping.items()}
        return cls(**values)


@dataclass(frozen=True, kw_only=True)
class FinetuneConfig:
    """Full fine-tuning of a transformers backbone with ``num_labels=1`` (``causalrm train --finetune``).

    ``imputed`` (a preds.parquet with exposure_id, reward, e.g. from a causalrm-ips head) supplies
    y_hat for the DR losses: a second backbone as imputation model would double the cost.
    """

    model: str
    loss: str = "causalrm-ips"
    base_loss: str = "mse"
    epochs: int = 1
    lr: float = 2e-5
    weight_decay: float = 0.0
    batch_size: int = 16
    max_length: int = 256
    seed: int = 0
    device: str = "auto"
    freeze_backbone: bool = False
    imputed: str | None = None
    label_column: str = "label"
    truth: str | None = None
    all_observed: bool = False
    train_split: str = "train"

    def __post_init__(self) -> None:
        _check_common(self)
        if self.max_length < 8:
            raise ConfigError(f"max_length must be >= 8, got {self.max_length}")
        if self.loss in DOUBLY_ROBUST and not self.imputed:
            raise ConfigError(f"{self.loss} fine-tuning needs imputed labels y_hat",
                              fix="train a causalrm-ips head, `causalrm predict` it, and pass --imputed preds.parquet")
