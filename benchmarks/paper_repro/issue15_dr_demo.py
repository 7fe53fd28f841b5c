"""Issue 15: why the demo's causalrm-dr fell from R2 0.395 to 0.370 (vs y_true), by controlled runs.

Session 3 changed two things in the mse DR path of ``rm_train/train.py`` / ``rm_train/losses.py``
(the demo's weighted dataset is byte-identical before and after: same propensities, weights, flip
rates, split):

* cross-fitting: the imputation head g became two heads cross-fitted by user fold (each trained on
  half the users, imputing the other half) instead of one head that takes its step on the batch it
  imputes; the trainer now uses 5 folds (``--imputation-folds``) (each imputation rests on 80% of the
  users), chosen from these runs;
* variance: the DR imputed error adds y_hat (1 - y_hat) (the DR *value*; the gradient is the same),
  which changes the validation loss and so the early-stopping epoch.

This trains causalrm-dr on one dataset (the demo's: ``examples/demo.sh DIR`` or ``make demo``) with
each variant monkeypatched into the trainer, over several training seeds, and reports test R2 vs
y_true and vs r*, the stopping epoch, the imputation's own test R2 vs r* (the y_hat the DR loss
imputes), and the reward head's test R2 after every epoch (to separate the training path from the
epoch early stopping picks). At seed 0, "2 folds + variance" reproduces session 3's demo (0.370)
and "shared, no variance" the pre-issue-15 demo (0.395), bit for bit.

    .venv/bin/python benchmarks/paper_repro/issue15_dr_demo.py DEMO_DIR [--seeds 0 1 2] [--variants ...] [--out FILE.json]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import contextlib
import dataclasses
import json
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

#: name: (user folds of the imputation, 1 = one shared head; Bernoulli-variance term in the DR value;
#: candidate changes that were tried and are not in the trainer)
VARIANTS = {
    "5 folds + variance (current)": (5, True, ()),
    "2 folds + variance (session 3)": (2, True, ()),
    "2 folds, no variance": (2, False, ()),
    "shared + variance": (1, True, ()),
    "shared, no variance (pre-issue-15)": (1, False, ()),
    "2 folds + variance + eval-mode y_hat": (2, True, ("eval_imputation",)),
    "2 folds + variance + held-out mean": (2, True, ("heldout_mean",)),
    "naive (reference)": (0, False, ()),  # 0: --loss naive, no imputation
}


def _shared_imputer_class():
    """The pre-issue-15 imputation: one head, trained on and imputing the same rows (its logit
    repeated in the (K, n) shape the trainer expects, so every row trains it once)."""
    import torch

    import rm_train.train as trainer

    class Shared(torch.nn.Module):
        def __init__(self, spec, cfg) -> None:
            super().__init__()
            self.folds = cfg.imputation_folds
            self.heads = torch.nn.ModuleList([trainer._new_head(spec, cfg)])

        def forward(self, batch):
            return self.heads[0](batch).expand(self.folds, -1)

    return Shared


@contextlib.contextmanager
def _variant(folds: int, variance: bool, candidates: tuple[str, ...] = ()):
    """Patch the trainer for a variant (the fold count itself is ``TrainConfig.imputation_folds``)."""
    import torch

    import rm_train.losses as losses
    import rm_train.train as trainer

    saved = trainer._CrossFitImputer, losses.imputed_loss, trainer._Objective.imputation_step, trainer._prepare_rows
    if folds == 1:
        trainer._CrossFitImputer = _shared_imputer_class()
    if not variance:
        def imputed_loss(logit, y_hat, kind="mse"):
            return losses.base_loss(logit, y_hat.detach(), kind)

        losses.imputed_loss = imputed_loss
    if "eval_imputation" in candidates:
        # y_hat for f's step from the imputer in eval mode (no dropout sample), before g's step.
        original_step = saved[2]

        def imputation_step(self, imputer, optimizer, batch, device, *args, **kwargs):
            imputer.eval()
            with torch.no_grad():
                y_hat = torch.sigmoid(trainer._imputed_logit(imputer(batch).float(), batch))
            imputer.train()
            loss, _ = original_step(self, imputer, optimizer, batch, device, *args, **kwargs)
            return loss, y_hat

        trainer._Objective.imputation_step = imputation_step
    if "heldout_mean" in candidates:
        # Validation users are in no training fold: impute them with the mean of all heads' probabilities
        # (marked by fold = -1, which the forward maps to the mean in every row).
        original_prepare, base = saved[3], trainer._CrossFitImputer

        def prepare_rows(frame, cfg, *args, **kwargs):
            prepared = original_prepare(frame, cfg, *args, **kwargs)
            if prepared.get("val") is not None and "imputation_fold" in prepared["val"].tensors:
                prepared["val"].tensors["imputation_fold"].fill_(-1.0)
            return prepared

        class HeldOut(base):
            def forward(self, batch):
                logits = super().forward(batch)
                held_out = batch["imputation_fold"] < 0
                mean = torch.logit(torch.sigmoid(logits).mean(0), eps=1e-6)
                return torch.where(held_out, mean, logits)

        trainer._prepare_rows, trainer._CrossFitImputer = prepare_rows, HeldOut
    try:
        yield
    finally:
        trainer._CrossFitImputer, losses.imputed_loss, trainer._Objective.imputation_step, trainer._prepare_rows = saved


@contextlib.contextmanager
def _per_epoch_r2(frame, dataset: Path, cfg, y_true, history: list[float]):
    """Record the reward head's test R2 vs y_true after every epoch (hooked on the validation pass),
    so the training path can be compared apart from the epoch early stopping picks."""
    import torch

    import rm_train.train as trainer

    # loss "ips" keeps every test row (naive would keep the observed ones); the features are the same
    rows = trainer._prepare_rows(frame, dataclasses.replace(cfg, val_split="test", loss="ips"), dataset=dataset)["val"]
    batch = rows[slice(0, len(rows))]
    original = trainer._Objective.split_loss

    def split_loss(self, model, imputer, *args, **kwargs):
        value = original(self, model, imputer, *args, **kwargs)
        model.eval()
        with torch.no_grad():
            reward = torch.sigmoid(model(batch)).numpy()
        model.train()
        history.append(float(1 - ((reward - y_true) ** 2).sum() / ((y_true - y_true.mean()) ** 2).sum()))
        return value

    trainer._Objective.split_loss = split_loss
    try:
        yield
    finally:
        trainer._Objective.split_loss = original


def _imputation_r2(model_dir: Path, dataset: Path, truth: Path, cfg) -> float:
    """Test-split R2 of the saved imputation head's y_hat (the cross-fitted one) against r*."""
    import numpy as np
    import polars as pl
    import torch
    from safetensors.torch import load_file

    import rm_train.train as trainer
    from rm_train.data import load_weighted_dataset

    frame = load_weighted_dataset(dataset)
    prepared = trainer._prepare_rows(frame, dataclasses.replace(cfg, val_split="test"), dataset=dataset)
    imputer = trainer._CrossFitImputer(prepared["spec"], cfg)  # the variant's (patched in by _variant)
    imputer.load_state_dict(load_file(str(model_dir / "imputation.safetensors")))
    imputer.eval()
    rows = prepared["val"]
    with torch.no_grad():
        batch = rows[slice(0, len(rows))]
        y_hat = torch.sigmoid(trainer._imputed_logit(imputer(batch), batch)).numpy()
    test = frame.filter(pl.col("split") == "test").select("exposure_id")
    r_star = test.join(pl.read_parquet(truth).select("exposure_id", "r_star"), on="exposure_id", how="left")["r_star"].to_numpy()
    return float(1 - ((y_hat - r_star) ** 2).sum() / ((r_star - r_star.mean()) ** 2).sum()) if np.isfinite(r_star).all() else float("nan")


def _timing(dataset: Path, repeats: int = 2) -> dict[str, float]:
    """Training samples per CPU-second (one torch thread, 3 epochs, best of ``repeats``): ips and
    causalrm-dr with one shared head, 2 and 5 folds (CPU time: the box is shared, wall time swings)."""
    import torch

    from rm_train.config import TrainConfig
    from rm_train.train import train

    torch.set_num_threads(1)
    rates: dict[str, float] = {}
    for _ in range(repeats):
        for name, folds in (("ips", None), ("causalrm-dr, shared head", 1), ("causalrm-dr, 2 folds", 2), ("causalrm-dr, 5 folds", 5)):
            cfg = TrainConfig(loss="ips" if folds is None else "causalrm-dr", seed=0, device="cpu", epochs=3, patience=10,
                              imputation_folds=folds if folds and folds > 1 else TrainConfig.imputation_folds)
            with tempfile.TemporaryDirectory() as tmp, _variant(folds or 5, True):
                metrics = train(dataset, cfg, Path(tmp) / "model")
            samples = metrics["train_samples_per_s"] * metrics["train_seconds"]
            rates[name] = max(rates.get(name, 0.0), samples / metrics["train_cpu_seconds"])
    for name, rate in rates.items():
        print(f"{name:<28}{rate:>10,.0f} samples / CPU-s  ({rate / rates['ips']:.2f}x ips)")
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("demo_dir", type=Path, help="output folder of examples/demo.sh (dataset/, logs/truth.parquet)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", type=Path, default=HERE / "issue15_dr_demo.json")
    parser.add_argument("--timing", action="store_true", help="only time training (samples per CPU-second) per variant")
    args = parser.parse_args()
    if args.timing:
        _timing(args.demo_dir / "dataset")
        return

    import polars as pl

    from rm_train.config import TrainConfig
    from rm_train.data import load_weighted_dataset
    from rm_train.evaluate import evaluate
    from rm_train.predict import predict
    from rm_train.train import train

    dataset, truth = args.demo_dir / "dataset", args.demo_dir / "logs" / "truth.parquet"
    frame = load_weighted_dataset(dataset)
    y_true = (frame.filter(pl.col("split") == "test").select("exposure_id")
              .join(pl.read_parquet(truth).select("exposure_id", "y_true"), on="exposure_id", how="left")["y_true"].to_numpy())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.variants:
            folds, variance, candidates = VARIANTS[name]
            for seed in args.seeds:
                cfg = TrainConfig(loss="causalrm-dr" if folds else "naive", seed=seed, device="cpu",
                                  imputation_folds=folds if folds > 1 else TrainConfig.imputation_folds)
                model_dir, preds = Path(tmp) / "model", Path(tmp) / "preds.parquet"
                history: list[float] = []
                with _variant(folds, variance, candidates), _per_epoch_r2(frame, dataset, cfg, y_true, history):
                    trained = train(dataset, cfg, model_dir)
                    imputation_r2 = _imputation_r2(model_dir, dataset, truth, cfg) if folds else float("nan")
                predict(model_dir, dataset, preds, device="cpu")
                metrics = evaluate(preds, truth, split="test")
                rows.append({"variant": name, "seed": seed, "r2_y_true": metrics["r2_y_true"], "r2_r_star": metrics["r2_r_star"],
                             "best_epoch": trained["best_epoch"], "epochs_run": len(trained["epochs"]),
                             "best_val_loss": trained["best_val_loss"], "imputation_r2_r_star": imputation_r2,
                             # epochs 4.. (past the warm-up): the training path without the stopping rule
                             "r2_y_true_mean_epochs_4_on": statistics.fmean(history[4:]), "r2_y_true_max_epoch": max(history),
                             "r2_y_true_by_epoch": [round(value, 4) for value in history]})
                print(json.dumps(rows[-1]), flush=True)
    summary = {}
    for name in args.variants:
        part = [row for row in rows if row["variant"] == name]
        summary[name] = {}
        for key in ("r2_y_true", "r2_r_star", "best_epoch", "imputation_r2_r_star", "r2_y_true_mean_epochs_4_on",
                    "r2_y_true_max_epoch"):
            values = [row[key] for row in part if row[key] == row[key]]  # NaN: no imputation (naive)
            summary[name][key] = {"mean": statistics.fmean(values) if values else float("nan"),
                                  "sd": statistics.stdev(values) if len(values) > 1 else 0.0}
    print(f"\n{'variant':<40}{'R2 y_true':>18}{'R2 r*':>18}{'best epoch':>14}{'imput. R2 r*':>18}"
          f"{'R2 y, epochs 4+':>18}{'R2 y, max epoch':>18}")
    for name, stats in summary.items():
        print(f"{name:<40}" + "".join(f"{stats[k]['mean']:>11.3f} ± {stats[k]['sd']:.3f}" if k != "best_epoch"
                                       else f"{stats[k]['mean']:>8.1f} ± {stats[k]['sd']:.1f}"
                                       for k in ("r2_y_true", "r2_r_star", "best_epoch", "imputation_r2_r_star",
                                                 "r2_y_true_mean_epochs_4_on", "r2_y_true_max_epoch")))
    args.out.write_text(json.dumps({"demo_dir": str(args.demo_dir), "seeds": args.seeds, "rows": rows, "summary": summary}, indent=2) + "\n")


if __name__ == "__main__":
    main()
