"""Custom context columns (issue 17): does declaring them raise the context AUC and the debiasing gain?

Simulated logs whose selection depends on three columns outside the canonical contract (plan tier,
app version, turn: ``causalrm simulate --extra-context``) are ingested with ``--keep-extra-columns``
and fitted twice: without the three columns (``--exclude-features``) and with them (the default).
For each fit: the context AUC, and the error of the SNIPS-weighted mean observed label against the
mean clean label of *all* exposures (truth.parquet; the population quantity a debiased reward
targets), next to the naive mean's error. Several seeds, so the spread is visible.

    .venv/bin/python benchmarks/features/run.py --n-exposures 20000 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import polars as pl

from feedback_etl.ingest import IngestConfig, ingest
from feedback_etl.simulator import SimulationConfig, simulate
from propensity.models.fit import PropensityConfig, fit_propensity

CUSTOM = ("plan_tier", "app_version", "turn")


def snips_error(truth: pl.DataFrame, scores: pl.DataFrame) -> tuple[float, float]:
    """(|SNIPS mean label - true mean|, |naive mean label - true mean|) on the vote channel."""
    # truth.parquet holds the true propensity too: the fitted one is renamed before the join.
    frame = truth.drop("propensity").join(scores.select("exposure_id", "propensity"), on="exposure_id")
    o = frame["observed"].to_numpy().astype(bool)
    label = frame["label"].fill_null(0).to_numpy().astype(float)
    w = 1.0 / frame["propensity"].to_numpy()
    target = float(frame["y_true"].mean())
    snips = float((w[o] * label[o]).sum() / w[o].sum())
    return abs(snips - target), abs(float(label[o].mean()) - target)


def run(n_exposures: int, seeds: list[int], out: Path) -> dict:
    rows = []
    for seed in seeds:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            simulate(SimulationConfig(out=str(root / "logs"), n_exposures=n_exposures, n_users=n_exposures // 4, seed=seed,
                                      extra_context=True, rho01=0.0, rho10=0.0, alpha=1.0))
            ingest(IngestConfig(inputs=(str(root / "logs" / "events"),), warehouse=str(root / "wh"), keep_extra_columns=True))
            truth = pl.read_parquet(root / "logs" / "truth.parquet")
            for name, exclude in (("without", CUSTOM), ("with", ())):
                result = fit_propensity(root / "wh", PropensityConfig(exclude_features=exclude))
                error, naive = snips_error(truth, result.scores)
                rows.append({"seed": seed, "columns": name, "auc": result.metrics["auc"], "snips_abs_error": error,
                             "naive_abs_error": naive, "floor": result.clip.floor,
                             "share_clipped_observed": result.clip.share_clipped_observed})
                print(rows[-1], flush=True)
    summary = {}
    for name in ("without", "with"):
        part = [r for r in rows if r["columns"] == name]
        summary[name] = {k: float(np.mean([r[k] for r in part])) for k in ("auc", "snips_abs_error", "naive_abs_error")}
    report = {"n_exposures": n_exposures, "seeds": seeds, "rows": rows, "mean": summary,
              "note": "noise-free labels (rho01 = rho10 = 0) and no selection on r* (alpha = 1): the error is the "
                      "selection bias the context columns cause (the plan tier drives votes and shifts labels)"}
    out.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-exposures", type=int, default=20_000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results.json"))
    args = parser.parse_args()
    print(json.dumps(run(args.n_exposures, args.seeds, args.out)["mean"], indent=2))
