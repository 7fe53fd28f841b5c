"""Training a reward head on a weighted dataset with the CausalRM losses.

Loop: AdamW over mini-batches of the training split (all exposures for the IPS / DR losses, observed
rows only for naive / noise); after each epoch the *same* estimator is computed on the validation
split (clean labels do not exist in production, so early stopping must use the debiased loss), the
best epoch's weights are checkpointed to ``MODEL_DIR/model.safetensors`` and restored at the end.

Doubly robust training (causalrm-dr, dr-debias-only): an imputation head g of the same architecture
predicts y_hat = sigmoid(g(x)) ~ E[r* | x]. Each mini-batch does two steps, alternating as in joint
learning for DR (Wang et al., ICML 2019, "Doubly Robust Joint Learning for Recommendation on Data
Missing Not at Random"):

1. g: one AdamW step on its own objective, the CausalRM-IPS loss with the bounded MSE base
   (``losses.imputation_loss``, dr-debias-only: plain IPS) on the batch, so y_hat targets E[r* | x]
   over all exposures;
2. f: one AdamW step on the DR loss with e_i = E_{y ~ Bernoulli(y_hat_i)} l(f(x_i), y), y_hat detached.

g is cross-fitted by user fold (issue 15, :class:`_CrossFitImputer`): K = ``imputation_folds`` (default 5)
heads; head k trains on the rows of the other K - 1 user folds and imputes fold k, so y_hat_i never
comes from a head that took a step on row i's label, and every imputation still rests on 80% of the
users (with 2 folds each half-data head fitted r* worse, test R2 0.64 vs 0.77, and the demo's
causalrm-dr lost about 0.01 of R2: benchmarks/paper_repro/issue15_dr_demo.md).

Why alternate rather than minimise one joint sum: the DR objective is small when y_hat agrees with f,
so letting its gradient reach g would pull the imputation towards the reward model instead of towards
the labels, and the error-imputation term would stop carrying information from unobserved rows. The
imputation head is saved next to the model (``imputation.safetensors``).

GPU: ``device="auto"`` picks CUDA when visible; the forward runs under bf16 autocast (losses in
fp32); batches come from pinned memory.

Several processes (``torchrun``, WORLD_SIZE = W > 1; NCCL on GPUs, gloo on CPUs) train the SAME model
as one process would, up to floating-point summation order (issue 8; the 2-rank gloo test checks
validation losses and saved weights against a single process):

* ``batch_size`` B is the global batch: each rank takes B / W rows per step (B must be a multiple of
  W). Every rank draws the single process's per-epoch permutation and takes the interleaved share
  ``batch[rank::W]`` of each global batch (:class:`rm_train.data.ShuffledBatches`), so the ranks'
  step-t batches together are exactly the single process's step-t batch.
* Normalisation: DistributedDataParallel averages gradients over ranks, so a rank's loss is
  ``sum(its terms) * W / G_t`` with G_t the global normaliser of the step: the all-reduced sum of the
  loss's row counts (the batch's rows; the pair weights for self-normalised pairwise IPS). The
  average of the ranks' gradients is then the gradient of ``sum(all terms) / G_t``, the single
  process's loss. The imputation head's objective is a plain mean, so its normaliser is the global
  batch's row count, known without communication.
* Dropout: a rank drawing its own (B / W, h) masks would see different noise and leave the generator
  in a different state than one process drawing (B, h). Every rank seeds identically, draws the mask
  of the whole global batch exactly as ``nn.Dropout`` would (``_GlobalBatchDropout``) and keeps its
  rows, so masks and generator stay in lockstep with the single process.
* Validation: each rank scores a contiguous share of the validation split; the loss's term and row
  sums are all-reduced, so every rank gets the single process's validation loss and early stopping
  agrees across ranks. Training-loss metrics are all-reduced the same way. Rank 0 writes the files.

Limits: with bf16 autocast on GPUs the forward rounds differently at another batch shape, so
agreement there is to bf16 precision. With ``pairs`` the head's output bias gets a zero gradient in
exact arithmetic (Bradley-Terry ignores a constant shift); AdamW normalises its rounding noise into
steps, so that bias drifts differently in W and 1 processes and scores agree up to a constant.
Without WORLD_SIZE the single-process path is unchanged (same ops, same results bit for bit).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from safetensors.torch import save_file

from feedback_etl.outputs import build_aside
from rm_train.config import TrainConfig
from rm_train.data import (
    FeatureSpec,
    ShuffledBatches,
    TensorRows,
    feature_tensors,
    fit_feature_spec,
    load_pairs,
    load_weighted_dataset,
    read_manifest,
    target_tensors,
)
from rm_train.heads import RewardHead
from rm_train.losses import OBSERVED_ONLY, bce_parts, nonnegative_objective, pairwise_terms, pointwise_terms
from schemas.errors import ConfigError, EstimationError

log = logging.getLogger(__name__)

MODEL_FORMAT = "causalrm-reward-head"
MODEL_VERSION = 1


@dataclass(frozen=True)
class _Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialised_here: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum of ``tensor`` over ranks (a new tensor on every rank; the tensor itself with one process)."""
        if self.world_size == 1:
            return tensor
        import torch.distributed as torch_distributed

        total = tensor.detach().clone()
        torch_distributed.all_reduce(total, op=torch_distributed.ReduceOp.SUM)
        return total


def _setup_distributed(device_kind: str, batch_size: int = 1) -> _Distributed:
    """Join the torchrun process group when WORLD_SIZE > 1 (NCCL on CUDA, gloo on CPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return _Distributed()
    if batch_size % world_size:
        # Refused before joining the group: every rank fails the same way, none waits on the others.
        raise ConfigError(f"--batch-size {batch_size} is not divisible by the world size {world_size}",
                          where="WORLD_SIZE (torchrun)",
                          fix=f"pass a multiple of {world_size}: --batch-size is the global batch, split evenly over ranks")
    import torch.distributed as dist

    initialised_here = False
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_kind == "cuda":
        torch.cuda.set_device(local_rank)  # else every rank's NCCL communicator lands on GPU 0
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")
        initialised_here = True
    return _Distributed(rank=dist.get_rank(), world_size=dist.get_world_size(),
                        local_rank=local_rank, initialised_here=initialised_here)


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> the local CUDA device when visible, else CPU."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda asked for but no CUDA device is visible", fix="use --device cpu or auto")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def _autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def _to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    if device.type == "cpu":
        return batch
    return {name: tensor.to(device, non_blocking=True) for name, tensor in batch.items()}


def _loader(rows: TensorRows, cfg: TrainConfig, device: torch.device, dist: _Distributed):
    """Batches of this rank's share of each global batch, and the sampler (``set_epoch``, ``global_rows``)."""
    sampler = ShuffledBatches(len(rows), cfg.batch_size, cfg.seed, rank=dist.rank, world_size=dist.world_size)
    # The choice must not depend on the world size: a DataLoader iterator draws its base seed from the
    # global generator each epoch, and the ranks' generator must follow the single process's (dropout).
    if device.type == "cpu" and cfg.num_workers == 0:
        # Nothing to pin or prefetch: gathering each index batch directly saves the loader's per-step work.
        return _DirectBatches(rows, sampler), sampler
    # batch_size=None: the sampler yields whole index batches and TensorRows gathers them in one go.
    loader = torch.utils.data.DataLoader(rows, sampler=sampler, batch_size=None, num_workers=cfg.num_workers,
                                         pin_memory=device.type == "cuda")
    return loader, sampler


class _DirectBatches:
    def __init__(self, rows: TensorRows, sampler: ShuffledBatches) -> None:
        self.rows, self.sampler = rows, sampler

    def __iter__(self):
        return (self.rows[index] for index in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


class _BatchShard:
    """Where this rank's forward rows sit in the single process's forward batch of the current step."""

    def __init__(self, rank: int, world_size: int) -> None:
        self.rank, self.world_size = rank, world_size
        self.forward_rows = 0
        self.positions = torch.zeros(0, dtype=torch.int64)

    def set_batch(self, global_rows: int, device: torch.device, copies: int = 1) -> None:
        """``global_rows`` rows in the global batch; ``copies`` = 2 when the forward stacks [chosen; rejected]."""
        own = torch.arange(self.rank, global_rows, self.world_size, device=device)
        self.positions = torch.cat([own + copy * global_rows for copy in range(copies)])
        self.forward_rows = global_rows * copies


class _GlobalBatchDropout(torch.nn.Module):
    """Dropout whose mask is this rank's rows of the single process's mask for the whole global batch.

    On CPU ``nn.Dropout`` computes ``x * bernoulli_(1 - p) / (1 - p)`` over x's shape; drawing that over
    the global shape and keeping this rank's rows gives the same noise per row and advances the
    generator exactly as the single process does (tested). On CUDA ``nn.Dropout`` runs the fused kernel;
    calling it (``torch.native_dropout``) on the global shape and dtype should draw the same mask, but
    no GPU check of that is in the suite: on GPUs the masks are valid dropout either way.
    """

    def __init__(self, p: float, shard: _BatchShard) -> None:
        super().__init__()
        self.p, self.shard = p, shard

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x  # nn.Dropout draws nothing here either
        shape = (self.shard.forward_rows, *x.shape[1:])
        if x.shape[0] != len(self.shard.positions):
            raise RuntimeError(f"dropout input has {x.shape[0]} rows, the batch shard {len(self.shard.positions)}")
        if x.is_cuda:
            _, keep = torch.native_dropout(x.new_ones(shape), self.p, True)
            return ((x * keep[self.shard.positions]).float() * (1.0 / (1.0 - self.p))).to(x.dtype)
        noise = x.new_empty(shape).bernoulli_(1 - self.p).div_(1 - self.p)
        return x * noise[self.shard.positions]


def _shard_dropout(head: torch.nn.Module, shard: _BatchShard) -> None:
    """Swap every ``nn.Dropout`` of ``head`` for :class:`_GlobalBatchDropout` (no parameters: the state dict is unchanged)."""
    replace = [(parent, name, child) for parent in head.modules() for name, child in parent.named_children()
               if type(child) is torch.nn.Dropout]
    for parent, name, child in replace:
        setattr(parent, name, _GlobalBatchDropout(child.p, shard))


def _ess(weight: np.ndarray) -> float:
    positive = weight[weight > 0]
    return float(positive.sum() ** 2 / (positive**2).sum()) if len(positive) else 0.0


class _Objective:
    """Computes the configured loss for the reward head (and the imputation head's step for DR)."""

    def __init__(self, cfg: TrainConfig, features: dict[str, torch.Tensor] | None, device: torch.device) -> None:
        self.cfg = cfg
        # bce, pointwise: the batch-level non-negative risk (losses.nonnegative_objective, issue 15).
        self.nonnegative = cfg.base_loss == "bce" and not cfg.pairs
        # Pairs mode: batches hold row indices into these per-exposure feature tensors (kept on the device).
        self.features = {k: v.to(device) for k, v in features.items()} if features else None

    def terms(self, model, batch: dict[str, torch.Tensor], device: torch.device, y_hat: torch.Tensor | None = None):
        cfg = self.cfg
        if cfg.pairs:
            both = torch.cat([batch["chosen"], batch["rejected"]])
            inputs = {k: v[both] for k, v in self.features.items()}
            with _autocast(device):
                scores = model(inputs).float()
            chosen, rejected = scores.split(batch["chosen"].shape[0])
            return pairwise_terms(cfg.loss, chosen, rejected, batch["weight"], batch["flip"], base=cfg.base_loss)
        with _autocast(device):
            logit = model(batch).float()
        return pointwise_terms(cfg.loss, logit, batch, base=cfg.base_loss, y_hat=y_hat)

    def parts(self, model, batch: dict[str, torch.Tensor], device: torch.device, y_hat: torch.Tensor | None = None):
        """bce, pointwise: (positive-part terms, negative-part terms, rows) of ``losses.bce_parts``."""
        with _autocast(device):
            logit = model(batch).float()
        return bce_parts(self.cfg.loss, logit, batch, y_hat=y_hat)

    def imputation_step(self, imputer, optimizer, batch: dict[str, torch.Tensor], device: torch.device,
                        global_rows: int | None = None, world_size: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """One step of g on its own objective; returns (its loss, y_hat detached) for the batch.

        Every head k takes its step on the batch's rows outside fold k (``losses.imputation_loss`` as
        per-row terms: causalrm-ips, ips for dr-debias-only, with the MSE base); the loss is
        ``sum(terms of the training heads) * world_size / (global_rows * (K - 1))``, the mean of the
        heads' batch means. Under DDP (``world_size`` > 1) the batch is this rank's share of a global
        batch of ``global_rows`` rows, so the rank-averaged gradient is the single process's.
        """
        with _autocast(device):
            logits = imputer(batch).float()  # (K, n): every fold's head
        fold = batch["imputation_fold"].long()
        trains = torch.ones_like(logits)
        trains[fold, torch.arange(fold.shape[0], device=fold.device)] = 0.0  # head k never steps on fold k
        loss_name = "causalrm-ips" if self.cfg.loss == "causalrm-dr" else "ips"
        terms = torch.stack([pointwise_terms(loss_name, logit, batch, base="mse")[0] for logit in logits])
        rows = fold.shape[0] if global_rows is None else global_rows
        loss = (terms * trains).sum() * (world_size / (rows * (logits.shape[0] - 1)))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach(), torch.sigmoid(_imputed_logit(logits.detach(), batch))

    @torch.no_grad()
    def split_loss(self, model, imputer, rows: TensorRows, device: torch.device, batch_size: int = 8192,
                   dist: _Distributed | None = None) -> float:
        """The same estimator over a whole split: sum of terms / sum of rows over all batches.

        Under DDP each rank scores a contiguous share of the rows and the two sums are all-reduced:
        every rank returns the loss over the whole split.
        """
        dist = dist or _Distributed()
        model.eval()
        if imputer is not None:
            imputer.eval()
        total, count = torch.zeros((), device=device), torch.zeros((), device=device)
        negative_total = torch.zeros((), device=device)
        first, last = len(rows) * dist.rank // dist.world_size, len(rows) * (dist.rank + 1) // dist.world_size
        for start in range(first, last, batch_size):
            batch = _to_device(rows[slice(start, min(start + batch_size, last))], device)
            y_hat = None
            if imputer is not None:
                with _autocast(device):
                    y_hat = torch.sigmoid(_imputed_logit(imputer(batch).float(), batch))  # cross-fitted
            if self.nonnegative:
                positive, negative, weight = self.parts(model, batch, device, y_hat)
                total += positive.sum()
                negative_total += negative.sum()
            else:
                terms, weight = self.terms(model, batch, device, y_hat)
                total += terms.sum()
            count += weight.sum()
        model.train()
        if imputer is not None:
            imputer.train()
        if dist.world_size > 1:
            total, count, negative_total = dist.all_sum(torch.stack([total, count, negative_total]))
        if self.nonnegative:  # the non-negative risk over the whole split: max(R+, 0) + max(R-, 0)
            total = total.clamp(min=0.0) + negative_total.clamp(min=0.0)
        return float(total / count.clamp(min=1e-12))


def _prepare_rows(frame: pl.DataFrame, cfg: TrainConfig, spec: FeatureSpec | None = None,
                  dataset: str | Path | None = None) -> dict[str, Any]:
    """Split the dataset into training and validation tensors for the configured loss."""
    if cfg.val_fraction is not None:  # every exposure in play: a seeded random share validates (MF practice)
        held = np.random.default_rng([cfg.seed, 17]).random(frame.height) < cfg.val_fraction
        frame = frame.with_columns(split=pl.Series(np.where(held, cfg.val_split, cfg.train_split)))
    train = frame.filter(pl.col("split") == cfg.train_split)
    val = frame.filter(pl.col("split") == cfg.val_split)
    if train.height == 0:
        raise EstimationError(f"no rows in split {cfg.train_split!r}", where=str(dataset),
                              fix="export the dataset with a train split (or pass --train-split)")
    if not train["observed"].any():
        raise EstimationError(f"no observed rows in split {cfg.train_split!r}: nothing to learn from", where=str(dataset),
                              fix="check the feedback channel and the export")
    spec = spec or fit_feature_spec(train, embedding=cfg.embedding, numeric=cfg.numeric_features,
                                    categorical=cfg.categorical_features, ids=cfg.id_features)
    prepared: dict[str, Any] = {"spec": spec, "n_train_exposures": train.height, "n_val_exposures": val.height,
                                "n_observed_train": int(train["observed"].sum()),
                                "n_observed_val": int(val["observed"].sum()) if val.height else 0,
                                "ess_train": _ess(train["weight"].to_numpy())}
    if cfg.pairs:
        features = feature_tensors(frame, spec)
        index = pl.DataFrame({"exposure_id": frame["exposure_id"], "_row": np.arange(frame.height)})
        pairs = load_pairs(dataset)
        pairs = (pairs.join(index.rename({"exposure_id": "chosen_exposure_id", "_row": "chosen"}), on="chosen_exposure_id", how="inner")
                      .join(index.rename({"exposure_id": "rejected_exposure_id", "_row": "rejected"}), on="rejected_exposure_id", how="inner"))

        def pair_rows(split: str) -> TensorRows | None:
            part = pairs.filter(pl.col("split") == split)
            if part.height == 0:
                return None
            return TensorRows({
                "chosen": torch.from_numpy(part["chosen"].to_numpy().astype(np.int64)),
                "rejected": torch.from_numpy(part["rejected"].to_numpy().astype(np.int64)),
                "weight": torch.from_numpy(part["weight"].to_numpy().astype(np.float32)),
                "flip": torch.from_numpy(part["flip_probability"].to_numpy().astype(np.float32)),
            })

        prepared.update(features=features, train=pair_rows(cfg.train_split), val=pair_rows(cfg.val_split))
        if prepared["train"] is None:
            raise EstimationError(f"pairs.parquet has no pairs in split {cfg.train_split!r}", where=str(dataset),
                                  fix="export more data or train pointwise (without --pairs)")
        return prepared
    if cfg.loss in OBSERVED_ONLY:
        train, val = train.filter(pl.col("observed")), val.filter(pl.col("observed"))

    def folds(part: pl.DataFrame) -> dict[str, torch.Tensor]:
        return _imputation_folds(part, cfg.imputation_folds) if cfg.doubly_robust else {}

    prepared["train"] = TensorRows({**feature_tensors(train, spec), **target_tensors(train), **folds(train)})
    prepared["val"] = TensorRows({**feature_tensors(val, spec), **target_tensors(val), **folds(val)}) if val.height else None
    return prepared


#: Fewer observed validation rows (or pairs) than this make early stopping noisy (issue 15).
MIN_VALIDATION_ROWS = 300


def _small_validation_warning(cfg: TrainConfig, prepared: dict[str, Any], val_pairs: int) -> str | None:
    """A warning when the validation split holds fewer than MIN_VALIDATION_ROWS observed rows (pairs)."""
    count, unit = (val_pairs, "pairs") if cfg.pairs else (prepared["n_observed_val"], "observed rows")
    if count >= MIN_VALIDATION_ROWS:
        return None
    return (f"validation split {cfg.val_split!r} holds only {count:,} {unit} (< {MIN_VALIDATION_ROWS}): early stopping "
            f"and best_val_loss rest on few labels and may pick an arbitrary epoch; export more data or train fewer epochs")


#: Default user folds of the cross-fitted DR imputation (``TrainConfig.imputation_folds``, the usual
#: K = 5 of cross-fitting, as DoubleML's default): each imputation rests on (K - 1) / K of the users;
#: K = 2 leaves half, and on the demo the half-data heads imputed r* visibly worse (issue 15,
#: benchmarks/paper_repro/issue15_dr_demo.md).
IMPUTATION_FOLDS = TrainConfig.imputation_folds


def _imputation_folds(frame: pl.DataFrame, folds: int = IMPUTATION_FOLDS) -> dict[str, torch.Tensor]:
    """``imputation_fold`` (float32 in {0, ..., folds - 1}, shape (n,)): the user's fold for the
    cross-fitted imputation heads, from a seeded hash of user_id (a user's rows share a fold)."""
    fold = (frame["user_id"].cast(pl.Utf8).hash(seed=15) % folds).cast(pl.Float32)
    return {"imputation_fold": torch.from_numpy(fold.to_numpy().copy())}


def _imputed_logit(logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The cross-fitted imputation, shape (n,): row i's logit from head ``imputation_fold[i]`` of the
    (K, n) output of :class:`_CrossFitImputer`."""
    return logits.gather(0, batch["imputation_fold"].long().unsqueeze(0))[0]


class _CrossFitImputer(torch.nn.Module):
    """The DR imputation head g, cross-fitted by user fold (issue 15): ``cfg.imputation_folds`` heads; head
    k trains on the rows of the other folds and imputes the rows of fold k, so no row's y_hat comes
    from a head that took a step on that row's label (a high-capacity head, e.g. with ID features,
    could otherwise memorise the observed labels, and y_hat would then depend on the row's own r and
    o, which breaks the DR argument).

    ``forward`` returns every head's logit, shape (K, n) (:func:`_imputed_logit` picks the
    imputation). One module, so DDP, dropout sharding and the optimiser treat it as one head.
    """

    def __init__(self, spec: FeatureSpec, cfg: TrainConfig, folds: int | None = None) -> None:
        super().__init__()
        self.heads = torch.nn.ModuleList([_new_head(spec, cfg) for _ in range(folds or cfg.imputation_folds)])

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.stack([head(batch) for head in self.heads])


def _new_head(spec: FeatureSpec, cfg: TrainConfig) -> RewardHead:
    return RewardHead(
        embedding_dim=spec.embedding_dim, n_numeric=len(spec.numeric),
        categorical_cardinalities=tuple(spec.cardinalities(spec.categorical)), categorical_dim=cfg.categorical_dim,
        id_cardinalities=tuple(spec.cardinalities(spec.ids)), id_dim=cfg.id_dim, hidden=cfg.hidden, dropout=cfg.dropout,
    )


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    inner = getattr(module, "module", module)
    return {name: tensor.detach().clone().contiguous().cpu() for name, tensor in inner.state_dict().items()}


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    tmp.replace(path)


def train(dataset: str | Path, cfg: TrainConfig, out: str | Path, *, progress: bool = False) -> dict[str, Any]:
    """Train a reward head on ``DATASET`` and write ``out/`` (model.safetensors, config.json, metrics.json).

    Parameters
    ----------
    dataset : folder with data.parquet (+ manifest.json, embeddings/, pairs.parquet).
    cfg : see :class:`rm_train.config.TrainConfig`.
    out : model folder to create; an existing one is replaced as a whole, and only when training
        succeeds (issue 16: the model is built in a hidden sibling folder and swapped in).
    progress : show a rich progress bar (rank 0 only).

    Returns
    -------
    dict : the metrics written to ``out/metrics.json``.
    """
    out = Path(out)
    if len(cfg.id_l2) > 1:
        return _train_id_l2_grid(dataset, cfg, out, progress=progress)
    if int(os.environ.get("RANK", "0")) != 0:  # torchrun: only rank 0 writes (and swaps) the model
        return _train(dataset, cfg, out, progress=progress)
    with build_aside(out) as work:
        return _train(dataset, cfg, work, progress=progress)


def _train_id_l2_grid(dataset: str | Path, cfg: TrainConfig, out: Path, *, progress: bool) -> dict[str, Any]:
    """One model per ``cfg.id_l2`` value; the one with the lowest validation loss (the debiased loss of
    the configured estimator on the val split, without the penalty) becomes ``out``. Its metrics.json
    records every value's best validation loss under ``id_l2_search``."""
    if int(os.environ.get("RANK", "0")) != 0 or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("an --id-l2 grid runs in one process", where="--id-l2", fix="give one value under torchrun")
    search: list[dict[str, Any]] = []
    with build_aside(out) as work:
        best: tuple[float, Path, dict[str, Any]] | None = None
        for value in cfg.id_l2:
            candidate = work / f"id_l2_{len(search)}"  # inside the building folder: gone with it on an error
            metrics = _train(dataset, replace(cfg, id_l2=(value,)), candidate, progress=progress)
            search.append({"id_l2": value, "best_val_loss": metrics["best_val_loss"], "best_epoch": metrics["best_epoch"]})
            log.info("id_l2 %g: best validation loss %.5f", value, metrics["best_val_loss"])
            if best is None or metrics["best_val_loss"] < best[0]:
                if best is not None:
                    shutil.rmtree(best[1], ignore_errors=True)
                best = (metrics["best_val_loss"], candidate, metrics)
            else:
                shutil.rmtree(candidate, ignore_errors=True)
        assert best is not None
        _, chosen, metrics = best
        metrics = {**metrics, "id_l2": search[[s["best_val_loss"] for s in search].index(best[0])]["id_l2"], "id_l2_search": search}
        for path in chosen.iterdir():
            shutil.move(str(path), work / path.name)
        shutil.rmtree(chosen, ignore_errors=True)
        _write_json(work / "metrics.json", metrics)
    return metrics


def _train(dataset: str | Path, cfg: TrainConfig, out: Path, *, progress: bool) -> dict[str, Any]:
    """:func:`train`, writing into the building folder ``out`` (rank 0 only)."""
    started = time.perf_counter()
    probe = resolve_device(cfg.device)
    dist = _setup_distributed(probe.type, cfg.batch_size)
    device = resolve_device(cfg.device, dist.local_rank)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    out = Path(out)

    frame = load_weighted_dataset(dataset, label_column=cfg.label_column, truth=cfg.truth, all_observed=cfg.all_observed)
    prepared = _prepare_rows(frame, cfg, dataset=dataset)
    spec: FeatureSpec = prepared["spec"]
    train_rows: TensorRows = prepared["train"]
    val_rows: TensorRows | None = prepared["val"]
    objective = _Objective(cfg, prepared.get("features"), device)
    warnings: list[str] = []
    if val_rows is None:
        warnings.append(f"no rows in split {cfg.val_split!r}: early stopping uses the training loss")
    else:
        small = _small_validation_warning(cfg, prepared, len(val_rows))
        if small:
            log.warning(small)
            warnings.append(small)

    model = _new_head(spec, cfg).to(device)
    imputer = _CrossFitImputer(spec, cfg).to(device) if cfg.doubly_robust else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    imputer_optimizer = torch.optim.AdamW(imputer.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay) if imputer else None
    train_model, train_imputer = model, imputer
    shard = _BatchShard(dist.rank, dist.world_size)
    if dist.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        for head in (model, imputer):
            if head is not None:
                _shard_dropout(head, shard)
        ids = [device.index] if device.type == "cuda" else None
        train_model = DistributedDataParallel(model, device_ids=ids)
        train_imputer = DistributedDataParallel(imputer, device_ids=ids) if imputer else None
    loader, sampler = _loader(train_rows, cfg, device, dist)

    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
    history: list[dict[str, Any]] = []
    best = {"val_loss": math.inf, "epoch": -1, "model": _state(model), "imputer": _state(imputer) if imputer else None}
    bad_epochs, train_seconds, train_cpu_seconds, samples = 0, 0.0, 0.0, 0
    bar = _Progress(cfg.epochs * len(loader)) if progress and dist.main else None
    try:
        for epoch in range(cfg.epochs):
            sampler.set_epoch(epoch)
            epoch_start, epoch_cpu_start = time.perf_counter(), time.process_time()
            total, count, imputer_total = torch.zeros((), device=device), torch.zeros((), device=device), torch.zeros((), device=device)
            for step, batch in enumerate(loader):
                batch = _to_device(batch, device)
                global_rows = sampler.global_rows(step)
                if dist.world_size > 1:
                    shard.set_batch(global_rows, device, copies=2 if cfg.pairs else 1)
                y_hat = None
                if train_imputer is not None:
                    imputer_loss, y_hat = objective.imputation_step(train_imputer, imputer_optimizer, batch, device,
                                                                    global_rows, dist.world_size)
                    imputer_total += imputer_loss
                if objective.nonnegative:
                    positive, negative, rows = objective.parts(train_model, batch, device, y_hat)
                    terms = positive + negative
                    sums = torch.stack([positive.sum(), negative.sum(), rows.sum()]).detach()
                    sums = dist.all_sum(sums) if dist.world_size > 1 else sums
                    # DDP averages gradients over ranks: normaliser G_t / W, as for the other losses.
                    loss = nonnegative_objective(positive.sum(), negative.sum(), sums[2].clamp(min=1e-12) / dist.world_size,
                                                 positive_total=sums[0], negative_total=sums[1])
                else:
                    terms, rows = objective.terms(train_model, batch, device, y_hat)
                    if dist.world_size == 1:
                        loss = terms.sum() / rows.sum().clamp(min=1e-12)
                    else:
                        # DDP averages gradients over ranks: scale by W / (global normaliser), see the module docstring.
                        loss = terms.sum() * (dist.world_size / dist.all_sum(rows.sum()).clamp(min=1e-12))
                if cfg.id_l2 and cfg.id_l2[0] > 0:  # standard MF's L2 on the batch's ID factors and biases (issue 17)
                    loss = loss + cfg.id_l2[0] * model.id_penalty(batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += terms.detach().sum()
                count += rows.detach().sum()
                samples += next(iter(batch.values())).shape[0]
                if bar:
                    bar.advance()
            if dist.world_size > 1:
                total, count, imputer_total = dist.all_sum(torch.stack([total, count, imputer_total / dist.world_size]))
            train_loss = float(total / count.clamp(min=1e-12))
            train_seconds += time.perf_counter() - epoch_start
            train_cpu_seconds += time.process_time() - epoch_cpu_start
            val_loss = objective.split_loss(model, imputer, val_rows, device, dist=dist) if val_rows is not None else train_loss
            record = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
                      "seconds": round(time.perf_counter() - epoch_start, 4)}
            if imputer is not None:
                record["imputation_loss"] = float(imputer_total) / max(len(loader), 1)
            history.append(record)
            log.info("epoch %d: train %.5f val %.5f", epoch, train_loss, val_loss)
            if not math.isfinite(val_loss):
                raise EstimationError(f"validation loss is {val_loss} at epoch {epoch}", where=str(dataset),
                                      fix="lower --lr, or use --base-loss mse; check for tiny propensities (huge weights)")
            if val_loss < best["val_loss"]:
                best = {"val_loss": val_loss, "epoch": epoch, "model": _state(model), "imputer": _state(imputer) if imputer else None}
                bad_epochs = 0
                if dist.main:
                    save_file(best["model"], str(out / "model.safetensors"))
            else:
                bad_epochs += 1
                if bad_epochs >= cfg.patience:
                    break
            if bar:
                bar.set_epoch(epoch, train_loss, val_loss)
    finally:
        if bar:
            bar.stop()

    model.load_state_dict(best["model"])
    metrics = {
        "loss": cfg.loss, "base_loss": cfg.base_loss, "pairs": cfg.pairs, "epochs": history,
        "best_epoch": best["epoch"], "best_val_loss": best["val_loss"], "stopped_early": len(history) < cfg.epochs,
        "n_train_rows": len(train_rows), "n_val_rows": len(val_rows) if val_rows is not None else 0,
        "n_train_exposures": prepared["n_train_exposures"], "n_observed_train": prepared["n_observed_train"],
        "ess_train": round(prepared["ess_train"], 2), "device": str(device), "world_size": dist.world_size,
        "train_seconds": round(train_seconds, 3), "train_cpu_seconds": round(train_cpu_seconds, 3),
        "seconds": round(time.perf_counter() - started, 3),
        "train_samples_per_s": round(samples * dist.world_size / train_seconds, 1) if train_seconds else None,
        "warnings": warnings,
    }
    if dist.main:
        save_file(best["model"], str(out / "model.safetensors"))
        if best["imputer"] is not None:
            save_file(best["imputer"], str(out / "imputation.safetensors"))
        _write_json(out / "config.json", _model_config(model, spec, cfg, dataset))
        _write_json(out / "metrics.json", metrics)
    if dist.initialised_here:
        import torch.distributed as torch_distributed

        torch_distributed.barrier()
        torch_distributed.destroy_process_group()
    return metrics


def _embedding_meta(dataset: str | Path, manifest: dict[str, Any], spec: FeatureSpec) -> dict[str, Any] | None:
    """The ``meta.json`` of the embeddings the head was trained on: the dataset's own
    (``causalrm embed DATASET``) or, for embeddings joined in by ``causalrm weights export``, the
    warehouse's. ``RewardModel.score`` re-embeds raw text with these settings (issue 21)."""
    if not spec.embedding_dim:
        return None
    candidates = [Path(dataset) / "embeddings" / "meta.json"]
    warehouse = (manifest.get("input") or {}).get("warehouse")
    if warehouse:
        candidates.append(Path(warehouse) / "embeddings" / "meta.json")
    for path in candidates:
        if path.is_file():
            meta = json.loads(path.read_text())
            if meta.get("dim") in (None, spec.embedding_dim):
                return meta
    return None


def _model_config(model: RewardHead, spec: FeatureSpec, cfg: TrainConfig, dataset: str | Path) -> dict[str, Any]:
    manifest = read_manifest(dataset)
    return {
        "format": MODEL_FORMAT, "version": MODEL_VERSION,
        "reward": "sigmoid(logit): predicted P(r* = 1 | x)" if not cfg.pairs else "sigmoid(Bradley-Terry score)",
        "architecture": model.architecture, "features": spec.to_dict(), "train": asdict(cfg),
        "dataset": str(dataset), "dataset_manifest": manifest,
        "embedding": _embedding_meta(dataset, manifest, spec),
    }


class _Progress:
    def __init__(self, total: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(TextColumn("training {task.fields[status]}"), BarColumn(), MofNCompleteColumn(),
                                 TimeRemainingColumn(), transient=True)
        self.task = self.progress.add_task("train", total=total, status="")
        self.progress.start()

    def advance(self) -> None:
        self.progress.advance(self.task)

    def set_epoch(self, epoch: int, train_loss: float, val_loss: float) -> None:
        self.progress.update(self.task, status=f"epoch {epoch} train {train_loss:.4f} val {val_loss:.4f}")

    def stop(self) -> None:
        self.progress.stop()
