"""Benchmark: `causalrm propensity fit` end to end (read the warehouse, fit, score every exposure,
write) at 1M, 10M and 30M simulated exposures, whole-table vs case-control fits (issue 23).

Warehouses: ``make`` simulates N exposures (``causalrm simulate``, seed 3) and ingests them the
real way (``causalrm ingest``); a larger warehouse is K copies of that feedback table with fresh
exposure, user and session ids (so users stay users of one copy), each copy's ``observed`` redrawn
from the simulator's true propensity (so copies are independent draws of the same selection model,
not duplicated labels), committed with ``feedback_etl.warehouse.write_table`` one copy at a time.

``run`` times ``causalrm propensity fit WH --no-embeddings`` in a fresh process under
``/usr/bin/time -v`` (wall time and peak RSS of that process) and, where the warehouse has the
simulator's truth beside it, compares the propensities with the true ones (Spearman, ECE, mean
absolute error).

    .venv/bin/python benchmarks/propensity/fit_scale.py make --n 1000000 --out /tmp/pbench/wh1m
    .venv/bin/python benchmarks/propensity/fit_scale.py replicate --base /tmp/pbench/wh1m --copies 10 --out /tmp/pbench/wh10m
    nice -n 10 .venv/bin/python benchmarks/propensity/fit_scale.py run --label 1M-full /tmp/pbench/wh1m
    nice -n 10 .venv/bin/python benchmarks/propensity/fit_scale.py run --label 1M-sampled /tmp/pbench/wh1m --fit-args='--max-rows 400000'

Appends to benchmarks/propensity/results_scale.json and prints a Markdown row.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))
CLI = [sys.executable, str(ROOT / "cli.py")]


def make(n: int, out: Path, seed: int = 3) -> None:
    logs = out.parent / f"{out.name}-logs"
    subprocess.run([*CLI, "simulate", "--out", str(logs), "--n-exposures", str(n), "--seed", str(seed)], check=True)
    subprocess.run([*CLI, "ingest", str(logs / "events"), "--warehouse", str(out)], check=True)
    shutil.copy(logs / "truth.parquet", out.parent / f"{out.name}-truth.parquet")


def replicate(base: Path, copies: int, out: Path) -> None:
    import polars as pl

    from feedback_etl.io import read_feedback, to_arrow
    from feedback_etl.warehouse import write_table

    feedback = read_feedback(base, validate=False)
    truth = pl.read_parquet(base.parent / f"{base.name}-truth.parquet").select("exposure_id", "propensity", "y_true", vote="label")
    feedback = feedback.join(truth, on="exposure_id", how="left", maintain_order="left")
    true_p = feedback["propensity"].to_numpy()

    def tables():
        for j in range(copies):
            rng = np.random.default_rng(1000 + j)
            observed = rng.random(len(true_p)) < true_p if j else feedback["observed"].to_numpy()
            suffix = f"-r{j:02d}"
            copy = feedback.with_columns(
                exposure_id=pl.col("exposure_id") + suffix, user_id=pl.col("user_id") + suffix,
                session_id=pl.col("session_id") + suffix, observed=pl.Series(observed),
            ).with_columns(
                label=pl.when(pl.col("observed")).then(pl.coalesce("label", "vote", "y_true").cast(pl.Int8)).otherwise(None)
            ).drop("propensity", "y_true", "vote")
            yield to_arrow(copy)
            print(f"copy {j + 1}/{copies} written", file=sys.stderr)

    out.mkdir(parents=True, exist_ok=True)
    write_table(out, "feedback", tables(), mode="overwrite", run_id=f"bench-replicate-{copies}")


def _time_v(stderr: str) -> tuple[float, float, float]:
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", stderr).group(1)
    parts = [float(x) for x in wall.split(":")]
    seconds = sum(p * 60**i for i, p in enumerate(reversed(parts)))
    rss_kb = float(re.search(r"Maximum resident set size \(kbytes\): (\d+)", stderr).group(1))
    cpu = sum(float(re.search(rf"{kind} time \(seconds\): (\S+)", stderr).group(1)) for kind in ("User", "System"))
    return seconds, rss_kb / 1024, cpu


def run(warehouse: Path, label: str, extra: list[str], threads: int) -> dict:
    import polars as pl
    from scipy.stats import spearmanr

    from propensity.io import read_metrics, read_scores

    work = warehouse.parent / f"{warehouse.name}-run"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(warehouse, work, ignore=shutil.ignore_patterns("propensity"))
    cmd = ["/usr/bin/time", "-v", *CLI, "propensity", "fit", str(work), "--no-embeddings", "--threads", str(threads), *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**__import__("os").environ, "OMP_WAIT_POLICY": "PASSIVE"})
    if done.returncode:
        sys.exit(done.stdout + done.stderr)
    wall_s, peak_mb, cpu_s = _time_v(done.stderr)
    metrics = read_metrics(work, "vote")
    row = {
        "label": label, "n_exposures": metrics["n_exposures"], "args": extra, "threads": threads, "wall_s": round(wall_s, 1), "cpu_s": round(cpu_s, 1),
        "peak_rss_mb": round(peak_mb), "fit_duration_s": metrics["duration_s"], "auc": round(metrics["auc"], 4),
        "ece": round(metrics["ece"], 4), "sampling": {k: v for k, v in metrics["sampling"].items() if k != "per_fold"},
    }
    truth_path = warehouse.parent / f"{warehouse.name}-truth.parquet"
    if truth_path.is_file():
        truth = pl.read_parquet(truth_path).select("exposure_id", true_p="propensity")
        joined = read_scores(work, "vote").join(truth, on="exposure_id", how="inner")
        p, true_p = joined["propensity"].to_numpy(), joined["true_p"].to_numpy()
        # Calibration against the truth: over 10 quantile bins of p, the row-weighted mean of
        # |mean true p - mean p| (the ECE with the true propensity in place of the 0/1 outcome).
        edges = np.quantile(p, np.linspace(0, 1, 11)[1:-1])
        bins = np.searchsorted(edges, p, side="right")
        gaps = [abs(true_p[bins == k].mean() - p[bins == k].mean()) * (bins == k).sum() for k in np.unique(bins)]
        row.update({
            "n_with_truth": joined.height,
            "spearman_true_p": round(float(spearmanr(p, true_p).statistic), 4),
            "mae_true_p": round(float(np.abs(p - true_p).mean()), 4),
            "calibration_error_true_p": round(float(sum(gaps) / len(p)), 4),
            "mean_p": round(float(p.mean()), 4), "mean_true_p": round(float(true_p.mean()), 4),
        })
        np.save(work.parent / f"{label}-propensity.npy", p)
    shutil.rmtree(work, ignore_errors=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("make")
    m.add_argument("--n", type=int, required=True)
    m.add_argument("--out", type=Path, required=True)
    r = sub.add_parser("replicate")
    r.add_argument("--base", type=Path, required=True)
    r.add_argument("--copies", type=int, required=True)
    r.add_argument("--out", type=Path, required=True)
    b = sub.add_parser("run")
    b.add_argument("warehouse", type=Path)
    b.add_argument("--label", required=True)
    b.add_argument("--threads", type=int, default=2)
    b.add_argument("--results", type=Path, default=HERE / "results_scale.json")
    b.add_argument("--fit-args", default="", help="options passed to `propensity fit`, e.g. '--max-rows 400000'")
    args = parser.parse_args()
    if args.command == "make":
        make(args.n, args.out)
    elif args.command == "replicate":
        replicate(args.base, args.copies, args.out)
    else:
        row = run(args.warehouse, args.label, args.fit_args.split(), args.threads)
        results = json.loads(args.results.read_text()) if args.results.is_file() else {"meta": {}, "results": []}
        results["meta"] = {"python": platform.python_version(), "machine": platform.machine(),
                           "cpus": len(__import__("os").sched_getaffinity(0)), "date": time.strftime("%Y-%m-%d")}
        results["results"] = [x for x in results["results"] if x["label"] != row["label"]] + [row]
        args.results.write_text(json.dumps(results, indent=2) + "\n")
        print(json.dumps(row))


if __name__ == "__main__":
    main()
