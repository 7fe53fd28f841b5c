"""Reproduce the CausalRM semi-synthetic study end to end through the `causalrm` CLI (issue 7).

    make bench                                   # the committed configuration
    .venv/bin/python benchmarks/paper_repro/run.py --quick   # one source, one seed, smaller N

For every (text source, noise scenario, alpha, seed): simulate raw logs with the paper's protocol
-> ingest -> embed -> propensity fit -> noise estimate -> weights export -> train each loss ->
predict -> evaluate on the clean, fully observed test split. Propensities and flip rates are the
*estimated* ones; the oracle row trains on the clean labels of every exposure (the ceiling).

The CLI runs in-process (the same typer app `causalrm` runs) so torch loads once; each step is the
command a user would type, printed as it runs. Embeddings are cached per text source across runs
(`causalrm embed --cache`), since runs of one source share its texts.
"""

from __future__ import annotations

import os

# Torch's and LightGBM's OpenMP pools share this process; busy-waiting threads of one starve the
# other (a 20 s propensity fit took 150 s in-process). Passive waiting removes the contention.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import csv
import json
import shlex
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

METHODS: dict[str, list[str]] = {
    "naive": ["--loss", "naive"],
    "ips": ["--loss", "ips"],
    "dr-debias-only": ["--loss", "dr-debias-only"],
    "noise": ["--loss", "noise"],
    "causalrm-ips": ["--loss", "causalrm-ips"],
    "causalrm-dr": ["--loss", "causalrm-dr"],
}
SCENARIOS: dict[str, tuple[float, float]] = {"rho01=0.2,rho10=0.1": (0.2, 0.1), "rho01=0.1,rho10=0.2": (0.1, 0.2)}
STEP_SECONDS: dict[str, float] = {}  # wall time per CLI command, summed over the benchmark
METRICS = ("r2_y_true", "mse_y_true", "mae_y_true", "auc_y_true", "r2_y_expected", "mse_y_expected",
           "r2_r_star", "mse_r_star", "mae_r_star")
# The noise-aware losses trained a second time with flip rates from a small gold audit instead of
# anchor points: how a team that labels a few hundred answers would run them.
AUDITED = ("noise", "causalrm-ips", "causalrm-dr")
AUDIT_SIZE = 500
CEILINGS = ("clean-observed",)  # see ceiling_args


@dataclass(frozen=True)
class Run:
    source: str
    scenario: str
    alpha: float
    seed: int

    @property
    def tag(self) -> str:
        rho01, rho10 = SCENARIOS[self.scenario]
        return f"{self.source}_r{rho01}-{rho10}_a{self.alpha}_s{self.seed}"


def causalrm(*argv: str) -> None:
    """Run one `causalrm` command in-process, exactly as typed on a shell."""
    from typer.main import get_command

    from cli import app

    print("$ causalrm " + " ".join(shlex.quote(a) for a in argv), flush=True)
    started = time.perf_counter()
    code = get_command(app).main(args=list(argv), prog_name="causalrm", standalone_mode=False)
    STEP_SECONDS[argv[0]] = STEP_SECONDS.get(argv[0], 0.0) + time.perf_counter() - started
    if code not in (None, 0):
        raise SystemExit(f"causalrm {argv[0]} failed with exit code {code}")


def causalrm_ok(*argv: str) -> bool:
    """Like :func:`causalrm`, but report failure instead of stopping the benchmark."""
    try:
        causalrm(*argv)
    except SystemExit as exc:
        print(f"   -> {exc}", flush=True)
        return False
    return True


def ceiling_args(method: str, truth: str) -> list[str]:
    """``clean-observed``: the clean labels of the observed rows only, IPS-weighted with the
    estimated propensities: what a perfect denoiser could reach from the feedback that was given.
    The gap between it and ``oracle`` (clean labels of every exposure, five times as many rows) is
    sample size, which no reweighting of the observed rows can close."""
    assert method == "clean-observed"
    return ["--loss", "ips", "--label-column", "y_true", "--truth", truth]


def train_and_evaluate(d: Path, ds: Path, method: str, args: list[str], epochs: int, seed: int, truth: str) -> dict:
    model, preds = d / "models" / method, d / "preds" / f"{method}.parquet"
    causalrm("train", str(ds), *args, "--epochs", str(epochs), "--seed", str(seed), "--out", str(model))
    causalrm("predict", str(model), str(ds), "--out", str(preds))
    metrics_path = d / "preds" / f"{method}.metrics.json"
    causalrm("evaluate", str(preds), "--truth", truth, "--split", "test", "--out", str(metrics_path))
    metrics = json.loads(metrics_path.read_text())
    return {k: metrics[k] for k in METRICS}


def run_one(run: Run, work: Path, n_exposures: int, epochs: int, max_length: int, teacher: str, cache: Path) -> list[dict]:
    rho01, rho10 = SCENARIOS[run.scenario]
    d = work / run.tag
    logs, wh, ds = d / "logs", d / "wh", d / "dataset"
    methods = dict(METHODS)
    truth = str(logs / "truth.parquet")
    methods["oracle"] = ["--loss", "naive", "--label-column", "y_true", "--truth", truth, "--all-observed"]
    done = d / "run.json"
    if done.is_file():  # resume: a finished run is read back, not redone (methods added since are filled in)
        rows = json.loads(done.read_text())
        missing = [m for m in CEILINGS if m not in {r["method"] for r in rows}]
        for method in missing:
            started = time.perf_counter()
            metrics = train_and_evaluate(d, ds, method, ceiling_args(method, truth), epochs, run.seed, truth)
            extra = {k: v for k, v in rows[0].items() if k not in (*METRICS, "method", "seconds")}
            rows.append({**extra, "method": method, **metrics, "seconds": rows[0]["seconds"] + time.perf_counter() - started})
        if missing:
            done.write_text(json.dumps(rows))
        return rows
    started = time.perf_counter()
    causalrm("simulate", "--out", str(logs), "--n-exposures", str(n_exposures), "--texts", run.source,
             "--alpha", str(run.alpha), "--obs-rate", "0.2", "--rho01", str(rho01), "--rho10", str(rho10),
             "--messiness", "0.1", "--seed", str(run.seed), "--teacher", teacher,
             "--teacher-cache", str(cache))
    causalrm("ingest", str(logs / "events"), "--warehouse", str(wh))
    causalrm("embed", str(wh), "--cache", str(cache), "--max-length", str(max_length))
    causalrm("propensity", "fit", str(wh), "--seed", str(run.seed))
    # The identifiability guard may refuse (rho01 + rho10 reaching 1): a user then exports without
    # noise correction, so the noise-aware losses fall back to rho = 0 and the run records it.
    identified = causalrm_ok("noise", "estimate", str(wh), "--seed", str(run.seed))
    causalrm("weights", "export", str(wh), "--out", str(ds), *([] if identified else ["--no-noise"]))
    rows = []
    for method in [*methods, *CEILINGS]:
        args = methods[method] if method in methods else ceiling_args(method, truth)
        metrics = train_and_evaluate(d, ds, method, args, epochs, run.seed, truth)
        rows.append({"source": run.source, "scenario": run.scenario, "alpha": run.alpha, "seed": run.seed,
                     "method": method, **metrics})
    noise = json.loads((wh / "noise.json").read_text()) if identified else {"rho01": float("nan"), "rho10": float("nan")}
    # A gold audit: AUDIT_SIZE observed answers re-labelled carefully (the clean label y_true).
    import polars as pl

    audit = d / "audit.parquet"
    (pl.read_parquet(truth).filter(pl.col("observed")).sample(AUDIT_SIZE, seed=run.seed)
     .select("exposure_id", pl.col("y_true").alias("true_label")).write_parquet(audit))
    causalrm("noise", "estimate", str(wh), "--method", "audit", "--audit", str(audit))
    audited = json.loads((wh / "noise.json").read_text())
    ds_audit = d / "dataset_audit"
    causalrm("weights", "export", str(wh), "--out", str(ds_audit))
    for method in AUDITED:
        name, model, preds = f"{method} (audit)", d / "models" / f"{method}-audit", d / "preds" / f"{method}-audit.parquet"
        causalrm("train", str(ds_audit), *METHODS[method], "--epochs", str(epochs), "--seed", str(run.seed), "--out", str(model))
        causalrm("predict", str(model), str(ds_audit), "--out", str(preds))
        metrics_path = d / "preds" / f"{method}-audit.metrics.json"
        causalrm("evaluate", str(preds), "--truth", truth, "--split", "test", "--out", str(metrics_path))
        metrics = json.loads(metrics_path.read_text())
        rows.append({"source": run.source, "scenario": run.scenario, "alpha": run.alpha, "seed": run.seed,
                     "method": name, **{k: metrics[k] for k in METRICS}})
    simulation = json.loads((logs / "simulation.json").read_text())
    teacher_auc = (simulation.get("teacher") or {}).get("cv_auc_vs_human_labels")
    for row in rows:
        row.update(teacher=teacher, teacher_cv_auc=teacher_auc, noise_identified=identified, rho01_hat=noise["rho01"], rho10_hat=noise["rho10"],
                   rho01_audit=audited["rho01"], rho10_audit=audited["rho10"],
                   rho01_realised=simulation["realised"]["rho01"], rho10_realised=simulation["realised"]["rho10"],
                   seconds=time.perf_counter() - started)
    done.write_text(json.dumps(rows))
    return rows


def aggregate(rows: list[dict]) -> dict[tuple, dict[str, tuple[float, float]]]:
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["source"], row["scenario"], row["alpha"], row["method"]), []).append(row)
    summary = {}
    for key, members in groups.items():
        summary[key] = {}
        for metric in METRICS:
            values = [m[metric] for m in members]
            summary[key][metric] = (statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0)
        summary[key]["n"] = (len(members), 0.0)
    return summary


ORDER = [*METHODS, *(f"{m} (audit)" for m in AUDITED), *CEILINGS, "oracle"]


def write_markdown(rows: list[dict], summary: dict, path: Path, meta: dict) -> None:
    lines = [
        "# CausalRM semi-synthetic reproduction: results",
        "",
        f"Generated by `{meta['command']}` on {meta['machine']}: {meta['runs_done']} of {meta['runs_planned']} planned "
        f"runs, {run_minutes(rows):.1f} minutes of run time in all (sum of each run's wall time; this invocation "
        f"{meta['minutes']:.1f} minutes, finished runs are reused). "
        f"{meta['n_exposures']:,} simulated exposures per run (mean observation rate 0.2, messiness 0.1), "
        f"{meta['seeds']} seeds; mean +- standard deviation over seeds. Metrics on the clean, fully observed "
        "test split (users hashed to `test`): R2 / MSE / MAE of the predicted probability against the clean "
        "label `y_true`; `R2 E[y]` is the same R2 averaged over the label draw y ~ Bernoulli(r*) (no label "
        "sampling noise, see rm_train/evaluate.py); R2 against the true reward `r_star`; AUC against `y_true`. "
        f"Rows `(audit)`: flip rates from a gold audit of {AUDIT_SIZE} observed answers instead of anchor points.",
        "",
    ]
    keys = sorted({(k[0], k[1], k[2]) for k in summary})
    for source, scenario, alpha in keys:
        lines += [f"## {source}, {scenario}, alpha = {alpha}", "",
                  "| method | R2 (y_true) | R2 E[y] | MSE (y_true) | MAE (y_true) | AUC | R2 (r*) |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for method in ORDER:
            s = summary.get((source, scenario, alpha, method))
            if s is None:
                continue
            cell = lambda m, p=3: f"{s[m][0]:.{p}f} +- {s[m][1]:.{p}f}"  # noqa: E731
            lines.append(f"| {method} | {cell('r2_y_true')} | {cell('r2_y_expected')} | {cell('mse_y_true', 4)} | "
                         f"{cell('mae_y_true', 4)} | {cell('auc_y_true')} | {cell('r2_r_star')} |")
        rates = [r for r in rows if (r["source"], r["scenario"], r["alpha"]) == (source, scenario, alpha) and r["method"] == "naive"]
        if rates:
            fmt = lambda key: statistics.fmean(float(r[key]) for r in rates)  # noqa: E731
            lines += ["", f"Flip rates (mean over seeds): realised rho01 {fmt('rho01_realised'):.3f}, rho10 "
                      f"{fmt('rho10_realised'):.3f}; anchor estimate {fmt('rho01_hat'):.3f}, {fmt('rho10_hat'):.3f}; "
                      f"audit estimate {fmt('rho01_audit'):.3f}, {fmt('rho10_audit'):.3f}."]
        lines.append("")
    lines += goals(summary)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def run_minutes(rows: list[dict]) -> float:
    """Total wall time of the runs (a run's rows carry its time so far; the largest is its total)."""
    per_run: dict[tuple, float] = {}
    for row in rows:
        key = (row["source"], row["scenario"], row["alpha"], row["seed"])
        per_run[key] = max(per_run.get(key, 0.0), float(row["seconds"]))
    return sum(per_run.values()) / 60


def goals(summary: dict, metric: str = "r2_y_expected") -> list[str]:
    """The issue's goals at alpha = 0.5, per source and scenario: does each CausalRM variant beat
    naive and both single-fix ablations, and how much of naive's gap to the oracle does it close?"""
    lines = ["## Goals at alpha = 0.5 (R2 E[y], mean over seeds)", "",
             "| source, scenario | variant | beats naive | beats ips and dr-debias-only | beats noise | gap to oracle closed | gap to clean-observed closed |",
             "| --- | --- | :---: | :---: | :---: | ---: | ---: |"]
    for source, scenario in sorted({(k[0], k[1]) for k in summary if k[2] == 0.5}):
        get = lambda m: summary.get((source, scenario, 0.5, m), {}).get(metric, (float("nan"), 0.0))[0]  # noqa: E731
        naive, oracle = get("naive"), get("oracle")
        for suffix in ("", " (audit)"):
            for variant in ("causalrm-ips", "causalrm-dr"):
                value = get(variant + suffix)
                if value != value:  # nan: not run
                    continue
                debias = max(get("ips"), get("dr-debias-only"))
                closed = (value - naive) / (oracle - naive) if oracle != naive else float("nan")
                reachable = get("clean-observed")
                closed_reachable = (value - naive) / (reachable - naive) if reachable == reachable and reachable != naive else float("nan")
                mark = lambda ok: "yes" if ok else "no"  # noqa: E731
                lines.append(f"| {source}, {scenario} | {variant + suffix} | {mark(value > naive)} | {mark(value > debias)} | "
                             f"{mark(value > get('noise' + suffix))} | {closed:.0%} | {closed_reachable:.0%} |")
    return [*lines, ""]


def alpha_plot(summary: dict, source: str, scenario: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    alphas = sorted({k[2] for k in summary if k[0] == source and k[1] == scenario})
    if len(alphas) < 2:
        plt.close(fig)
        return
    for method in ORDER:
        pts = [(a, summary[(source, scenario, a, method)]["r2_y_expected"]) for a in alphas if (source, scenario, a, method) in summary]
        if pts:
            ax.errorbar([p[0] for p in pts], [p[1][0] for p in pts], yerr=[p[1][1] for p in pts], marker="o",
                        capsize=3, label=method, linestyle="--" if method == "oracle" else ":" if "audit" in method else "-")
    ax.set_xscale("log")
    ax.set_xticks(alphas, [str(a) for a in alphas])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("alpha (selection strength; smaller = stronger selection)")
    ax.set_ylabel("R2 against the clean label (expected over y ~ Bernoulli(r*))")
    ax.set_title(f"R2 vs selection strength: {source}, {scenario}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sources", nargs="+", default=["synthetic", "hh_rlhf", "finegrained"])
    parser.add_argument("--teacher", default="embedding", choices=["embedding", "ngram"],
                        help="how r* follows the text (feedback_etl/texts.py): embedding = learnable from the MiniLM vectors")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--n-exposures", type=int, default=16_000)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--sweep-source", default="synthetic")
    parser.add_argument("--max-length", type=int, default=128, help="embedding token limit (left truncation keeps the response)")
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.5])
    parser.add_argument("--quick", action="store_true", help="one source, one seed, 4,000 exposures, no sweep")
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()
    if args.quick:
        args.sources, args.seeds, args.n_exposures, args.alphas = ["synthetic"], 1, 4_000, [0.5]
    # One folder per configuration (a finished run is reused on resume); the text cache is shared.
    work = args.out / "_work" / f"n{args.n_exposures}_{args.teacher}_e{args.epochs}_t{args.max_length}"
    cache = args.out / "_work" / "embedding_cache"
    runs = [Run(src, sc, 0.5, seed) for src in args.sources for sc in SCENARIOS for seed in range(args.seeds)]
    if args.sweep_source:
        first = next(iter(SCENARIOS))
        runs += [Run(args.sweep_source, first, a, seed) for a in args.alphas if a != 0.5 for seed in range(args.seeds)]
    started = time.perf_counter()
    rows: list[dict] = []
    for i, run in enumerate(runs, 1):
        print(f"\n=== run {i}/{len(runs)}: {run.tag}", flush=True)
        rows += run_one(run, work, args.n_exposures, args.epochs, args.max_length, args.teacher, cache)
        print("   step seconds so far: " + ", ".join(f"{k} {v:.0f}" for k, v in STEP_SECONDS.items()), flush=True)
        with open(args.out / "results.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        # Tables after every run: a long benchmark stopped early still leaves its results readable.
        summary = aggregate(rows)
        import platform

        meta = {"command": " ".join(["run.py", *sys.argv[1:]]), "machine": f"{platform.machine()}, "
                f"{os.cpu_count()} cores, no GPU", "minutes": (time.perf_counter() - started) / 60,
                "n_exposures": args.n_exposures, "seeds": args.seeds, "runs_done": i, "runs_planned": len(runs)}
        write_markdown(rows, summary, args.out / "results_tables.md", meta)
        alpha_plot(summary, args.sweep_source, next(iter(SCENARIOS)), args.out / "alpha_sweep.png")
    print(f"\nwrote {args.out / 'results.csv'}, {args.out / 'results_tables.md'} in {meta['minutes']:.1f} min")


if __name__ == "__main__":
    main()
