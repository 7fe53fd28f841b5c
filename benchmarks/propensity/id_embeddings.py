"""Learned id embeddings for the MLP propensity (issue 17): AUC with and without them.

Two simulated worlds, each fitted by ``propensity fit --model mlp`` (5 user-grouped folds, default
MLP settings, no text embeddings) with and without ``--id-embeddings``, and with ``--id-encodings``
and LightGBM for reference:

* ``simulator``: ``causalrm simulate`` logs as they are; selection depends on the answer's true
  reward r* (alpha = 0.5), on context, and on nothing an id adds beyond r*.
* ``item-driven``: the same warehouse with feedback redrawn from the response shown (``--items``
  responses with logit effects N(0, 1.5^2), none carried by the contract's features): the world where
  an id embedding is what the model needs.

    .venv/bin/python benchmarks/propensity/id_embeddings.py --exposures 6000 --folds 3 \
        --runs "mlp;mlp --id-embeddings prompt_id,response_id;mlp --id-encodings prompt_id,response_id" \
        --out benchmarks/propensity/results_id_embeddings.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

from feedback_etl.ingest import IngestConfig, ingest
from feedback_etl.io import read_feedback, write_feedback
from feedback_etl.simulator import SimulationConfig, simulate
from propensity.models.fit import PropensityConfig, fit_propensity

RUNS: dict[str, dict] = {
    "mlp": {"model": "mlp"},
    "mlp --id-embeddings prompt_id,response_id": {"model": "mlp", "id_embeddings": ("prompt_id", "response_id")},
    "mlp --id-encodings prompt_id,response_id": {"model": "mlp", "id_encodings": ("prompt_id", "response_id")},
    "lightgbm": {"model": "lightgbm"},
    "lightgbm --id-encodings prompt_id,response_id": {"model": "lightgbm", "id_encodings": ("prompt_id", "response_id")},
}


def item_driven(warehouse: Path, items: int, seed: int) -> None:
    """Redraw ``observed`` (and ``label`` on observed rows) from a per-response logit effect."""
    rng = np.random.default_rng(seed)
    effect = rng.normal(0.0, 1.5, items)
    feedback = read_feedback(warehouse).sort("exposure_id")
    item = (feedback["exposure_id"].hash(seed=9) % items).to_numpy().astype(int)
    observed = rng.random(feedback.height) < 1.0 / (1.0 + np.exp(-(-1.7 + effect[item])))
    label = rng.random(feedback.height) < 0.6
    write_feedback(feedback.with_columns(
        response_id=pl.Series([f"resp-{i:03d}" for i in item]),
        prompt_id=pl.Series([f"prompt-{i:03d}" for i in item]),
        observed=pl.Series(observed),
        label=pl.when(pl.Series(observed)).then(pl.Series(label).cast(pl.Int8)).otherwise(None),
    ), warehouse / "feedback")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exposures", type=int, default=10_000)
    parser.add_argument("--items", type=int, default=100)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--runs", default=";".join(RUNS), help="semicolon-separated names of RUNS")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="causalrm-idemb-") as tmp:
        root = Path(tmp)
        simulate(SimulationConfig(out=str(root / "logs"), n_exposures=args.exposures, seed=args.seed))
        ingest(IngestConfig(inputs=(str(root / "logs" / "events"),), warehouse=str(root / "simulator")))
        shutil.copytree(root / "simulator", root / "item-driven")
        item_driven(root / "item-driven", args.items, args.seed)
        for world in ("simulator", "item-driven"):
            for name in args.runs.split(";"):
                options = RUNS[name]
                started = time.perf_counter()
                metrics = fit_propensity(root / world, PropensityConfig(device="cpu", seed=args.seed, folds=args.folds, **options)).metrics
                results[f"{world}: {name}"] = {"auc": round(metrics["auc"], 4), "ece": round(metrics["ece"], 4),
                                               "seconds": round(time.perf_counter() - started, 1)}
                print(f"{world:12s} {name:45s} AUC {metrics['auc']:.4f}  ECE {metrics['ece']:.4f}", flush=True)
    if args.out:
        args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results}, indent=2))


if __name__ == "__main__":
    main()
