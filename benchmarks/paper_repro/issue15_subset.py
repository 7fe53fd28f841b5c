"""Issue 15's affected subset of the paper benchmark, before and after, from the same run.

One source (synthetic), one seed, one scenario (rho01 = 0.2, rho10 = 0.1, alpha 0.5), N exposures
(default 8,000, the full benchmark uses 16,000), the same CLI steps as ``run.py`` (simulate --teacher
embedding -> ingest -> embed -> propensity fit -> noise estimate -> weights export), then only the
losses issue 15 changed: the DR losses with the mse base (DR value: Bernoulli-variance term, which
moves early stopping) and the denoised / DR losses with the bce base (the per-row clamp replaced by
the batch-level non-negative risk). Each is trained twice on the same dataset and seed:

* ``before``: the pre-issue-15 loss module (git 0525566^:rm_train/losses.py, stored next to this
  script as ``_losses_before_issue15.py``) swapped into the trainer: per-row clamp at 0 with bce,
  e = l(f, y_hat) with mse;
* ``after``: the current code.

Metrics from ``causalrm evaluate`` on the clean, fully observed test split, plus the share of test
predictions above 0.8 (and of r* above 0.8) that the issue quoted.

    .venv/bin/python benchmarks/paper_repro/issue15_subset.py [--n-exposures 8000] [--epochs 10]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE))

CONFIGS = [("causalrm-dr", "mse"), ("dr-debias-only", "mse"), ("causalrm-ips", "bce"), ("noise", "bce"),
           ("causalrm-dr", "bce"), ("dr-debias-only", "bce")]


def _before_module():
    spec = importlib.util.spec_from_file_location("_losses_before_issue15", HERE / "_losses_before_issue15.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Swap:
    """Swap the pre-issue-15 losses into rm_train.train (per-row clamp: one non-negative part)."""

    def __enter__(self):
        import torch

        import rm_train.train as trainer

        old = _before_module()
        self.saved = {name: getattr(trainer, name) for name in ("pointwise_terms", "bce_parts", "imputation_loss")}

        def bce_parts(loss, logit, batch, *, y_hat=None):
            terms, rows = old.pointwise_terms(loss, logit, batch, base="bce", y_hat=y_hat)
            return terms, torch.zeros_like(terms), rows  # clamped terms >= 0: the nn branch never fires

        trainer.pointwise_terms, trainer.bce_parts, trainer.imputation_loss = old.pointwise_terms, bce_parts, old.imputation_loss
        return self

    def __exit__(self, *exc):
        import rm_train.train as trainer

        for name, value in self.saved.items():
            setattr(trainer, name, value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-exposures", type=int, default=8_000)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=HERE / "issue15_subset.json")
    args = parser.parse_args()

    import polars as pl

    from run import METRICS, causalrm

    work = HERE / "_work" / f"issue15_n{args.n_exposures}_s{args.seed}"
    logs, wh, ds, cache = work / "logs", work / "wh", work / "dataset", HERE / "_work" / "embedding_cache"
    started = time.perf_counter()
    if not (ds / "manifest.json").is_file():
        causalrm("simulate", "--out", str(logs), "--n-exposures", str(args.n_exposures), "--texts", "synthetic", "--alpha", "0.5",
                 "--obs-rate", "0.2", "--rho01", "0.2", "--rho10", "0.1", "--messiness", "0.1", "--seed", str(args.seed),
                 "--teacher", "embedding", "--teacher-cache", str(cache))
        causalrm("ingest", str(logs / "events"), "--warehouse", str(wh))
        causalrm("embed", str(wh), "--cache", str(cache), "--max-length", "128")
        causalrm("propensity", "fit", str(wh), "--seed", str(args.seed))
        causalrm("noise", "estimate", str(wh), "--seed", str(args.seed))
        causalrm("weights", "export", str(wh), "--out", str(ds))
    truth = str(logs / "truth.parquet")
    r_star = pl.read_parquet(truth).select("exposure_id", "r_star")
    rows = []
    for loss, base in CONFIGS:
        for version in ("before", "after"):
            name = f"{loss}-{base}-{version}"
            model, preds, metrics_path = work / "models" / name, work / "preds" / f"{name}.parquet", work / "preds" / f"{name}.metrics.json"
            argv = ("train", str(ds), "--loss", loss, "--base-loss", base, "--epochs", str(args.epochs), "--seed", str(args.seed), "--out", str(model))
            if version == "before":
                with _Swap():
                    causalrm(*argv)
            else:
                causalrm(*argv)
            causalrm("predict", str(model), str(ds), "--out", str(preds))
            causalrm("evaluate", str(preds), "--truth", truth, "--split", "test", "--out", str(metrics_path))
            metrics = json.loads(metrics_path.read_text())
            trained = json.loads((model / "metrics.json").read_text())
            test = pl.read_parquet(preds).filter(pl.col("split") == "test").join(r_star, on="exposure_id")
            rows.append({"loss": loss, "base_loss": base, "version": version, **{k: metrics[k] for k in METRICS},
                         "best_epoch": trained["best_epoch"], "best_val_loss": trained["best_val_loss"],
                         "share_pred_above_0.8": float((test["reward"] > 0.8).mean()),
                         "share_r_star_above_0.8": float((test["r_star"] > 0.8).mean())})
            print(json.dumps(rows[-1]), flush=True)
    noise = json.loads((wh / "noise.json").read_text())
    args.out.write_text(json.dumps({"n_exposures": args.n_exposures, "epochs": args.epochs, "seed": args.seed,
                                    "rho01_hat": noise["rho01"], "rho10_hat": noise["rho10"], "rows": rows,
                                    "seconds": round(time.perf_counter() - started, 1)}, indent=2) + "\n")


if __name__ == "__main__":
    main()
