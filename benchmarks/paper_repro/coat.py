"""Real-data check on Coat (issue 7, item 5): weighted matrix factorisation on self-selected (MNAR)
ratings, evaluated on randomly assigned (MAR) test ratings.

    .venv/bin/python benchmarks/paper_repro/coat.py          # about 3 minutes on 2 cores

Steps: `causalrm ingest train.ascii --source ratings` (exposure universe: all 87,000 user-item
cells, observed = rated, label = rating >= 4) -> propensities of being rated from the user and item
features (`propensity.slice.coat.fit_coat_propensities`: cross-fitted LightGBM on the one-hot features
plus cross-fitted item popularity, isotonic calibration, floor 0.01; the warehouse's own context
columns carry nothing for ratings data, so the features come from Coat's feature files and are
written into the warehouse's `propensity/` contract) -> `causalrm weights export --no-noise` ->
`causalrm train --id-features user_id,response_id --hidden ''` (weighted MF) for naive, ips and
causalrm-dr (noise rates 0: Coat has no flip model) -> `causalrm predict` on the test universe ->
metrics against the MAR test ratings: MSE / MAE of the predicted P(rating >= 4) against the binary
label and AUC, 3 seeds.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import numpy as np
import polars as pl

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from benchmarks.paper_repro.run import causalrm  # noqa: E402

LOSSES = ("naive", "ips", "causalrm-dr")


def main() -> None:
    from propensity.slice.coat import CoatCheckConfig, fit_coat_propensities, find_coat, load_coat

    coat_dir = find_coat()
    coat = load_coat()
    work = HERE / "_work" / "coat"
    wh = work / "wh"
    if not (wh / "feedback").is_dir():
        causalrm("ingest", str(coat_dir / "train.ascii"), "--source", "ratings", "--warehouse", str(wh))
        causalrm("ingest", str(coat_dir / "test.ascii"), "--source", "ratings", "--warehouse", str(work / "wh_test"))
    users, items = np.meshgrid(np.arange(coat.train.shape[0]), np.arange(coat.train.shape[1]), indexing="ij")
    ids = [f"train:u{u}:i{i}" for u, i in zip(users.ravel(), items.ravel())]
    truth_ids = [f"test:u{u}:i{i}" for u, i in zip(users.ravel(), items.ravel())]
    rated = coat.test.ravel() > 0
    truth = pl.DataFrame({"exposure_id": truth_ids, "rating": coat.test.ravel()}).filter(pl.Series(rated)).with_columns(
        y_true=(pl.col("rating") >= 4).cast(pl.Int8), r_star=(pl.col("rating") - 1) / 4.0)
    truth.write_parquet(work / "truth_mar.parquet")

    rows = []
    for seed in range(3):
        fitted = fit_coat_propensities(coat, CoatCheckConfig(seed=seed, clip=0.01))
        scores = pl.DataFrame({
            "exposure_id": ids, "channel": "vote", "propensity": fitted["propensity"].ravel(),
            "propensity_raw": fitted["propensity_raw"].ravel(), "fold": np.repeat(fitted["folds"], coat.train.shape[1]),
        })
        (wh / "propensity").mkdir(parents=True, exist_ok=True)
        scores.write_parquet(wh / "propensity" / "scores.parquet")
        (wh / "propensity" / "metrics.json").write_text(json.dumps({"vote": {
            "channel": "vote", "auc": fitted["auc"], "config": {"model": "lightgbm (Coat user/item features)", "clip": 0.01, "seed": seed},
            "clipping": fitted["clip"]}}, indent=2))
        dataset = work / f"dataset_s{seed}"
        causalrm("weights", "export", str(wh), "--out", str(dataset), "--no-noise")
        for loss in LOSSES:
            model, preds = work / f"model_{loss}_s{seed}", work / f"preds_{loss}_s{seed}.parquet"
            causalrm("train", str(dataset), "--loss", loss, "--id-features", "user_id,response_id", "--hidden", "",
                     "--epochs", "40", "--patience", "5", "--seed", str(seed), "--out", str(model))
            causalrm("predict", str(model), str(work / "wh_test"), "--out", str(preds))
            metrics_path = work / f"metrics_{loss}_s{seed}.json"
            causalrm("evaluate", str(preds), "--truth", str(work / "truth_mar.parquet"), "--out", str(metrics_path))
            m = json.loads(metrics_path.read_text())
            rows.append({"loss": loss, "seed": seed, "mse": m["mse_y_true"], "mae": m["mae_y_true"], "auc": m["auc_y_true"], "n": m["n"]})
    table = ["| method | MSE vs 1[rating >= 4] | MAE | AUC |", "| --- | ---: | ---: | ---: |"]
    for loss in LOSSES:
        sel = [r for r in rows if r["loss"] == loss]
        cell = lambda k: f"{statistics.fmean(r[k] for r in sel):.4f} +- {statistics.stdev(r[k] for r in sel):.4f}"  # noqa: E731
        table.append(f"| {loss} | {cell('mse')} | {cell('mae')} | {cell('auc')} |")
    base = float(truth["y_true"].mean())
    table.append(f"| constant (MAR base rate {base:.3f}) | {base * (1 - base):.4f} | {2 * base * (1 - base):.4f} | 0.5 |")
    (HERE / "coat_results.json").write_text(json.dumps(rows, indent=2))
    (HERE / "coat_results.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main()
