"""Benchmark: 5-fold cross-fitted LightGBM propensities on N exposures with 30 features.

Each size runs in a fresh subprocess so its peak RSS is its own. The feature matrix is
synthesised with numpy (3 categorical + 27 numeric columns, heavy-tailed users, a logistic
selection model with a 20% feedback rate); the timed pipeline is what `causalrm propensity fit`
runs after reading the table: user-grouped folds -> 5 LightGBM fits -> cross-fitted isotonic
calibration -> clipping -> diagnostics (incl. SMD on the one-hot design matrix).

    .venv/bin/python benchmarks/propensity/run.py --sizes 100000 1000000 [--threads 2]

Writes benchmarks/propensity/results.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))


def synthesize(n: int, seed: int = 0):
    import pandas as pd

    rng = np.random.default_rng(seed)
    n_users = max(50, n // 40)
    activity = rng.pareto(1.5, n_users) + 1.0
    users = rng.choice(n_users, n, p=activity / activity.sum())
    columns = {}
    levels = {"model_id": 3, "platform": 3, "locale": 10}
    logit = np.full(n, -1.6)
    for name, k in levels.items():
        codes = rng.integers(0, k, n)
        effect = rng.normal(0, 0.4, k)
        logit += effect[codes]
        columns[name] = pd.Categorical.from_codes(codes, categories=[f"{name}_{j}" for j in range(k)])
    for j in range(27):
        x = rng.normal(size=n) if j % 3 else rng.lognormal(size=n)
        if j < 8:
            logit += 0.3 * (np.log1p(x) if j % 3 == 0 else x)
        if j % 9 == 4:
            x[rng.random(n) < 0.05] = np.nan
        columns[f"x{j:02d}"] = x
    X = pd.DataFrame(columns)
    true_p = 1.0 / (1.0 + np.exp(-logit))
    observed = rng.random(n) < true_p
    return X, observed, users, true_p


def run_one(n: int, threads: int, folds: int, max_bagged_rows: int | None = None, max_train_rows: int | None = None) -> dict:
    from scipy.stats import spearmanr

    from propensity.models.calibration import clip_propensity, cross_calibrate
    from propensity.models.crossfit import cross_fit, group_folds
    from propensity.diagnostics import propensity_diagnostics
    from propensity.models.estimators import LightGBMPropensity
    from propensity.models.features import design_matrix

    t0 = time.perf_counter()
    X, observed, users, true_p = synthesize(n)
    cpu0 = time.process_time()
    t_data = time.perf_counter() - t0
    stages = {}
    t = time.perf_counter()
    fold = group_folds(users, folds, 0)
    stages["folds_s"] = time.perf_counter() - t
    t = time.perf_counter()
    estimator = LightGBMPropensity(n_jobs=threads)
    if max_bagged_rows is not None:
        estimator.set_params(max_bagged_rows=max_bagged_rows or None)
    if max_train_rows is not None:
        estimator.set_params(max_train_rows=max_train_rows or None)
    fitted = cross_fit(estimator, X, observed, fold)
    stages["cross_fit_s"] = time.perf_counter() - t
    t = time.perf_counter()
    calibrated, _ = cross_calibrate(fitted.oof, observed, fold, "isotonic")
    propensity, report = clip_propensity(calibrated, 0.05, observed=observed)
    stages["calibrate_clip_s"] = time.perf_counter() - t
    t = time.perf_counter()
    design, names = design_matrix(X, ["model_id", "platform", "locale"])
    diag = propensity_diagnostics(observed, propensity, propensity_raw=fitted.oof, folds=fold, X=design, feature_names=names)
    stages["diagnostics_s"] = time.perf_counter() - t
    total = sum(stages.values())
    return {
        "n_exposures": n,
        "n_features": X.shape[1],
        "folds": folds,
        "threads": threads,
        "omp_wait_policy": __import__("os").environ.get("OMP_WAIT_POLICY", "default"),
        "max_bagged_rows": estimator.max_bagged_rows,
        "max_train_rows": estimator.max_train_rows,
        **{k: round(v, 2) for k, v in stages.items()},
        "total_s": round(total, 2),
        # CPU seconds of this process for the timed stages: on a shared box, wall time also
        # counts waiting for the cores; CPU time is the work.
        "cpu_s": round(time.process_time() - cpu0, 2),
        "synthesize_s": round(t_data, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "auc": round(diag["auc"], 4),
        "spearman_true_p": round(float(spearmanr(propensity, true_p).statistic), 4),
        "mae_true_p": round(float(np.abs(propensity - true_p).mean()), 4),
        "ece": round(diag["ece"], 4),
        "share_clipped": round(report.share_clipped, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--max-bagged-rows", type=int, default=None, help="override LightGBMPropensity.max_bagged_rows (0 = no cap)")
    parser.add_argument("--max-train-rows", type=int, default=None, help="override LightGBMPropensity.max_train_rows (0 = no cap)")
    parser.add_argument("--single", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=HERE / "results.json")
    args = parser.parse_args()
    if args.single:
        print(json.dumps(run_one(args.single, args.threads, args.folds, args.max_bagged_rows, args.max_train_rows)))
        return
    rows = []
    for n in args.sizes:
        cmd = [sys.executable, __file__, "--single", str(n), "--threads", str(args.threads), "--folds", str(args.folds)]
        if args.max_bagged_rows is not None:
            cmd += ["--max-bagged-rows", str(args.max_bagged_rows)]
        if args.max_train_rows is not None:
            cmd += ["--max-train-rows", str(args.max_train_rows)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"n={n:,}: {rows[-1]}", file=sys.stderr)
    import lightgbm

    meta = {"python": platform.python_version(), "lightgbm": lightgbm.__version__, "machine": platform.machine(),
            "cpus": len(__import__("os").sched_getaffinity(0))}
    args.out.write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
    print("| exposures | threads | cross-fit (s) | calibrate+clip (s) | diagnostics (s) | total wall (s) | CPU (s) | peak RSS (MB) | AUC | Spearman with true p |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['n_exposures']:,} | {r['threads']} | {r['cross_fit_s']} | {r['calibrate_clip_s']} | {r['diagnostics_s']} | "
            f"{r['total_s']} | {r['cpu_s']} | {r['peak_rss_mb']:,} | {r['auc']} | {r['spearman_true_p']} |"
        )


if __name__ == "__main__":
    main()
