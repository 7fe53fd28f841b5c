"""Randomized-slice benchmark on Coat (issue 11): mean-rating estimation error with context-only
and label-aware propensities, part of the random-assignment test set used as the slice.

    .venv/bin/python benchmarks/slice/run.py            # estimates over 20 slice draws + the weighted-model MSE (a few minutes)
    .venv/bin/python benchmarks/slice/run.py --no-model # estimates only (under a minute)

Coat (Schnabel et al., 2016): 290 users x 300 jackets = 87,000 exposures; ``train.ascii`` holds
6,960 self-selected ratings (1-5, missing not at random), ``test.ascii`` 4,640 ratings of 16 items
per user assigned at random. A slice of 5% of the test ratings (232; drawn at random, seeded) plays
the randomized slice; the other 95% are the evaluation set, whose mean rating is the truth.

* context propensities: ``propensity.slice.coat.fit_coat_propensities`` (cross-fitted, isotonic-calibrated
  LightGBM on the one-hot user and item features, floor 0.01);
* label-aware: ``propensity.slice.label_aware.estimate_label_aware`` with the 5 rating values as labels,
  (a) with a cross-fitted multiclass LightGBM outcome model m_r(x) = P(r | x, o=1) on the same
  features and folds (the default ``label_model="lightgbm"`` of ``fit-label-aware``), and (b) with
  ``label_model="none"`` (m constant: the factor P(r | o=1) / P(r | slice) on top of p(x));
* weighted model (``--model``): ``causalrm train`` (rm_train, loss ``ips``, MSE base loss, ID
  features user_id and item id = weighted matrix factorisation) on the binary label rating >= 4
  with context vs label-aware (binary) propensities, MSE of the predicted P(rating >= 4) against the
  held-out random-assignment ratings.

Writes ``benchmarks/slice/results.json`` and prints the README tables.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from propensity.slice.coat import CoatCheckConfig, coat_design, fit_coat_propensities, load_coat  # noqa: E402
from propensity.slice.label_aware import estimate_label_aware, snips  # noqa: E402

log = logging.getLogger("benchmarks.slice")
HERE = Path(__file__).resolve().parent


def split_test(test: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices of the test ratings: a random ``fraction`` as the slice, the rest for evaluation."""
    rated = np.flatnonzero(test.reshape(-1) > 0)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(rated, int(round(fraction * len(rated))), replace=False)
    return np.sort(chosen), np.setdiff1d(rated, chosen)


def outcome_model(X: np.ndarray, codes: np.ndarray, observed: np.ndarray, folds: np.ndarray, n_labels: int, seed: int = 0) -> np.ndarray:
    """Cross-fitted m_r(x) = P(r | x, o=1), array (n, n_labels): fold k scored by a LightGBM trained on the
    ratings of the other folds' users (the context model's folds)."""
    import lightgbm as lgb

    m = np.zeros((len(codes), n_labels))
    for k in np.unique(folds):
        train = observed & (folds != k)
        model = lgb.LGBMClassifier(n_estimators=200, num_leaves=15, min_child_samples=20, learning_rate=0.05, n_jobs=1,
                                   random_state=seed, verbose=-1).fit(X[train], codes[train])
        m[folds == k] = model.predict_proba(X[folds == k])
    return m


def label_aware_propensity(context: np.ndarray, observed: np.ndarray, codes: np.ndarray, slice_rows: np.ndarray,
                           slice_codes: np.ndarray, n_labels: int, *, floor: float, seed: int, bootstrap: int = 200,
                           outcome: np.ndarray | None = None):
    """``estimate_label_aware``; ``outcome`` None = the naive-Bayes outcome model (the organic label shares)."""
    if outcome is None:
        shares = np.bincount(codes[observed], minlength=n_labels) / observed.sum()
        outcome = np.tile(shares, (len(context), 1))
    n = len(context)
    return estimate_label_aware(
        context=context, outcome=outcome, organic=np.ones(n, bool), observed=observed, label=codes, slice_rows=slice_rows,
        slice_label=slice_codes, strata=np.zeros(n, dtype=np.int64), n_strata=1, label_values=np.arange(1, n_labels + 1) if n_labels == 5 else None,
        floor=floor, bootstrap=bootstrap, seed=seed,
    )


def mean_rating_runs(seeds: list[int], fraction: float) -> dict:
    coat = load_coat()
    cfg = CoatCheckConfig()
    fitted = fit_coat_propensities(coat, cfg)
    context = fitted["propensity"].reshape(-1)
    observed = coat.observed.reshape(-1)
    ratings = coat.train.reshape(-1).astype(np.int64)
    test = coat.test.reshape(-1).astype(np.int64)
    codes = np.where(observed, ratings - 1, 0)
    shipped = coat.propensities.reshape(-1)
    X, user, _, _ = coat_design(coat)
    m = outcome_model(X, codes, observed, fitted["folds"][user], 5)
    runs = []
    for seed in seeds:
        slice_rows, eval_rows = split_test(coat.test, fraction, seed)
        truth = float(test[eval_rows].mean())
        est = label_aware_propensity(context, observed, codes, slice_rows, test[slice_rows] - 1, 5, floor=cfg.clip, seed=seed, outcome=m)
        nb = label_aware_propensity(context, observed, codes, slice_rows, test[slice_rows] - 1, 5, floor=cfg.clip, seed=seed, bootstrap=20)
        e = est.estimates
        row = {
            "seed": seed, "truth": truth, "n_slice": int(len(slice_rows)), "n_eval": int(len(eval_rows)),
            "naive": e["naive"]["estimate"], "context_snips": e["context_snips"]["estimate"],
            "label_aware_snips": e["label_aware_snips"]["estimate"], "label_aware_ci": e["label_aware_snips"]["ci"],
            "label_aware_nb_snips": nb.estimates["label_aware_snips"]["estimate"],
            "slice_mean": e["slice"]["estimate"],
            "shipped_snips": snips(ratings, observed, shipped),
            "relative_propensity": est.tilt.relative_propensity[0].tolist(),
        }
        for key in ("naive", "context_snips", "label_aware_snips", "label_aware_nb_snips", "slice_mean", "shipped_snips"):
            row[f"error_{key}"] = abs(row[key] - truth)
        row["covered"] = row["label_aware_ci"][0] <= truth <= row["label_aware_ci"][1]
        runs.append(row)
        log.info("seed %d: truth %.3f naive %.3f context %.3f label-aware %.3f slice %.3f", seed, truth, row["naive"],
                 row["context_snips"], row["label_aware_snips"], row["slice_mean"])
    summary = {
        key: {"mean_abs_error": float(np.mean([r[f"error_{key}"] for r in runs])), "max_abs_error": float(np.max([r[f"error_{key}"] for r in runs]))}
        for key in ("naive", "context_snips", "label_aware_snips", "label_aware_nb_snips", "slice_mean", "shipped_snips")
    }
    summary["label_aware_coverage"] = float(np.mean([r["covered"] for r in runs]))
    return {"context_auc": fitted["auc"], "clip": cfg.clip, "fraction": fraction, "runs": runs, "summary": summary}


def _dataset(out: Path, coat, propensity: np.ndarray, seed: int) -> Path:
    """A WeightedDataset of the 87,000 Coat pairs: observed = rated in train, label = rating >= 4."""
    from propensity.weights.export import compute_weights, validate_weighted_dataset

    n_users, n_items = coat.train.shape
    user = np.repeat(np.arange(n_users), n_items)
    item = np.tile(np.arange(n_items), n_users)
    observed = coat.observed.reshape(-1)
    label = np.where(observed, (coat.train.reshape(-1) >= 4).astype(np.int8), -1)
    rng = np.random.default_rng(seed)
    split = np.where(rng.random(len(user)) < 0.9, "train", "val")
    frame = pl.DataFrame({
        "exposure_id": [f"u{u}-i{i}" for u, i in zip(user, item)],
        "user_id": [f"u{u}" for u in user],
        "prompt_id": [f"u{u}" for u in user],
        "response_id": [f"i{i}" for i in item],
        "prompt_text": pl.Series([None] * len(user), dtype=pl.Utf8),
        "response_text": pl.Series([None] * len(user), dtype=pl.Utf8),
        "channel": "vote",
        "observed": observed,
        "label": pl.Series(label, dtype=pl.Int8),
        "propensity": propensity,
        "weight": compute_weights(propensity, observed, split, scheme="ips"),
        "split": split,
        "rho01": 0.0,
        "rho10": 0.0,
    }).with_columns(label=pl.when(pl.col("observed")).then(pl.col("label")))
    out.mkdir(parents=True, exist_ok=True)
    validate_weighted_dataset(frame).write_parquet(out / "data.parquet")
    (out / "manifest.json").write_text(json.dumps({"schema_version": 1, "note": "Coat benchmark (benchmarks/slice/run.py)"}))
    return out


def weighted_model_runs(seeds: list[int], fraction: float, work: Path) -> dict:
    """MAR-test MSE of an IPS-weighted MF model with context vs label-aware (binary) propensities."""
    from rm_train.config import TrainConfig
    from rm_train.predict import RewardModel
    from rm_train.train import train

    coat = load_coat()
    cfg = CoatCheckConfig()
    fitted = fit_coat_propensities(coat, cfg)
    context = fitted["propensity"].reshape(-1)
    observed = coat.observed.reshape(-1)
    binary = (coat.train.reshape(-1) >= 4).astype(np.int64)
    test = coat.test.reshape(-1)
    X, user, _, _ = coat_design(coat)
    m = outcome_model(X, np.where(observed, binary, 0), observed, fitted["folds"][user], 2)
    runs = []
    for seed in seeds:
        slice_rows, eval_rows = split_test(coat.test, fraction, seed)
        est = label_aware_propensity(context, observed, np.where(observed, binary, 0), slice_rows,
                                     (test[slice_rows] >= 4).astype(np.int64), 2, floor=cfg.clip, seed=seed, bootstrap=20, outcome=m)
        own = est.propensity_by_label[np.arange(len(context)), np.where(observed, binary, 0)]
        label_aware = np.where(observed, own, np.clip(context, cfg.clip, 1))
        y_eval = (test[eval_rows] >= 4).astype(np.float64)
        slice_rate = float((test[slice_rows] >= 4).mean())
        # Reference: a constant prediction, the slice's positive share (what the slice alone gives a model).
        row = {"seed": seed, "n_eval": int(len(eval_rows)), "mar_positive_rate": float(y_eval.mean()),
               "mse_constant_slice_rate": float(np.mean((slice_rate - y_eval) ** 2))}
        for kind, p in (("naive", np.ones_like(context)), ("context", np.clip(context, cfg.clip, 1)), ("label_aware", label_aware)):
            data = _dataset(work / f"{kind}-{seed}", coat, p, seed)
            loss = "naive" if kind == "naive" else "ips"
            train_cfg = TrainConfig(loss=loss, base_loss="mse", epochs=30, lr=3e-3, batch_size=1024, seed=seed, device="cpu",
                                    hidden=(), embedding=False, id_features=("user_id", "response_id"), patience=4)
            started = time.perf_counter()
            train(data, train_cfg, work / f"model-{kind}-{seed}")
            model = RewardModel.load(work / f"model-{kind}-{seed}")
            frame = pl.read_parquet(data / "data.parquet")
            q = model.predict(frame)[eval_rows]
            row[f"mse_{kind}"] = float(np.mean((q - y_eval) ** 2))
            row[f"mean_pred_{kind}"] = float(q.mean())
            row[f"seconds_{kind}"] = round(time.perf_counter() - started, 1)
            log.info("seed %d %s: MAR MSE %.4f (mean prediction %.3f vs MAR rate %.3f)", seed, kind, row[f"mse_{kind}"], q.mean(), y_eval.mean())
        runs.append(row)
    summary = {kind: float(np.mean([r[f"mse_{kind}"] for r in runs])) for kind in ("naive", "context", "label_aware", "constant_slice_rate")}
    summary.update({f"mean_pred_{kind}": float(np.mean([r[f"mean_pred_{kind}"] for r in runs])) for kind in ("naive", "context", "label_aware")})
    summary["mar_positive_rate"] = float(np.mean([r["mar_positive_rate"] for r in runs]))
    return {"runs": runs, "mean_mse": summary}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=20, help="slice draws for the mean-rating estimates")
    parser.add_argument("--model-seeds", type=int, default=3, help="slice draws for the weighted-model MSE")
    parser.add_argument("--fraction", type=float, default=0.05, help="share of the test ratings used as the slice")
    parser.add_argument("--no-model", action="store_true", help="skip the weighted-model MSE")
    parser.add_argument("--work", type=Path, default=Path("/tmp/causalrm-slice-bench"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("lightgbm").setLevel(logging.WARNING)
    started = time.perf_counter()
    results = {"estimates": mean_rating_runs(list(range(args.seeds)), args.fraction)}
    if not args.no_model:
        results["weighted_model"] = weighted_model_runs(list(range(args.model_seeds)), args.fraction, args.work)
    results["seconds"] = round(time.perf_counter() - started, 1)
    (HERE / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    s = results["estimates"]["summary"]
    print("| estimator | mean abs error | max abs error |\n| --- | ---: | ---: |")
    for key, name in (("naive", "naive"), ("context_snips", "SNIPS, context propensities"), ("label_aware_snips", "SNIPS, label-aware (outcome model)"),
                      ("label_aware_nb_snips", "SNIPS, label-aware (label model none)"), ("slice_mean", "slice mean alone"),
                      ("shipped_snips", "SNIPS, shipped propensities")):
        print(f"| {name} | {s[key]['mean_abs_error']:.3f} | {s[key]['max_abs_error']:.3f} |")
    print(f"label-aware 95% interval coverage: {s['label_aware_coverage']:.0%}")
    if "weighted_model" in results:
        print("| weights | MAR-test MSE |\n| --- | ---: |")
        for kind, value in results["weighted_model"]["mean_mse"].items():
            print(f"| {kind} | {value:.4f} |")
    print(f"{results['seconds']} s")


if __name__ == "__main__":
    main()
