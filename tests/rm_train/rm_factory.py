"""Test factories for the trainer (STOPGAP until `causalrm weights export` is used in tests).

`make_weighted_dataset` writes DATASET/data.parquet + manifest.json conforming to
schemas/weighted_dataset.py from a warehouse and its truth, with the TRUE propensities and flip
rates, and a cheap deterministic text embedding (hashed bag of words) so tests need no backbone.
`make_pairs` writes DATASET/pairs.parquet conforming to schemas/pairs.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl

from schemas.feedback import CONTEXT_CATEGORICAL, CONTEXT_NUMERIC
from schemas.weighted_dataset import SCHEMA_VERSION, WeightedDataset


def hashed_text_embedding(prompts: list[str], responses: list[str], dim: int = 32) -> np.ndarray:
    """Deterministic (n, dim) float32 vectors: hashed word counts of prompt and response, L2-normalised."""
    from sklearn.feature_extraction.text import HashingVectorizer

    vectorizer = HashingVectorizer(n_features=dim, alternate_sign=False, norm="l2")
    return vectorizer.transform([f"{p} {r}" for p, r in zip(prompts, responses)]).toarray().astype(np.float32)


def make_weighted_dataset(warehouse: Path, out: Path, *, embedding_dim: int | None = 32,
                          head: int | None = None) -> Path:
    """Write a weighted dataset for the warehouse's exposures (true propensities, true flip rates)."""
    from feedback_etl.io import read_feedback

    feedback = read_feedback(warehouse)
    if head:
        feedback = feedback.head(head)
    truth = pl.read_parquet(warehouse.parent / "truth.parquet").select("exposure_id", pl.col("propensity").alias("p_true"))
    simulation = json.loads((warehouse.parent / "logs" / "simulation.json").read_text()) if (warehouse.parent / "logs" / "simulation.json").is_file() else {}
    rho01 = simulation.get("config", {}).get("rho01", 0.2)
    rho10 = simulation.get("config", {}).get("rho10", 0.1)
    frame = feedback.join(truth, on="exposure_id", how="left").select(
        "exposure_id", "user_id", "prompt_id", "response_id", "prompt_text", "response_text",
        pl.lit("vote").alias("channel"), "observed", "label",
        pl.col("p_true").alias("propensity"),
        pl.when(pl.col("observed")).then(1.0 / pl.col("p_true")).otherwise(0.0).alias("weight"),
        "split", pl.lit(rho01).alias("rho01"), pl.lit(rho10).alias("rho10"),
        *CONTEXT_CATEGORICAL, *CONTEXT_NUMERIC,
    )
    if embedding_dim:
        vectors = hashed_text_embedding(frame["prompt_text"].fill_null("").to_list(),
                                        frame["response_text"].fill_null("").to_list(), embedding_dim)
        frame = frame.with_columns(embedding=pl.Series("embedding", vectors).cast(pl.List(pl.Float32)))
    frame = WeightedDataset.validate(frame)
    out.mkdir(parents=True, exist_ok=True)
    frame.write_parquet(out / "data.parquet")
    counts = frame.group_by("split").len().sort("split")
    manifest = {
        "schema_version": SCHEMA_VERSION, "source": "tests/rm_train/conftest.py (true propensities)",
        "warehouse": str(warehouse), "scheme": "ips", "clip": None,
        "noise": {"channel": "vote", "rho01": rho01, "rho10": rho10},
        "rows_per_split": dict(zip(counts["split"].to_list(), counts["len"].to_list())),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out


def make_pairs(dataset: Path) -> Path:
    """Write DATASET/pairs.parquet (schemas.pairs.PairsTable) from observed exposures of the same prompt
    with different labels; weight 1 / (p_chosen p_rejected), flip probability from the row flip rates."""
    from schemas.pairs import PairsTable

    frame = pl.read_parquet(dataset / "data.parquet").filter(pl.col("observed"))
    side = ["exposure_id", "response_id", "response_text", "propensity", "rho01", "rho10"]
    chosen = frame.filter(pl.col("label") == 1).select("prompt_id", "split", "channel", "prompt_text", *side)
    rejected = frame.filter(pl.col("label") == 0).select("prompt_id", "split", *side)
    pairs = chosen.join(rejected, on=["prompt_id", "split"], suffix="_r").filter(pl.col("response_id") != pl.col("response_id_r"))
    # P(order reversed) = P(chosen truly 0 and rejected truly 1 | observed labels), symmetric rates approx.
    eps = pl.col("rho10") * pl.col("rho01_r") / (pl.col("rho10") * pl.col("rho01_r") + (1 - pl.col("rho01")) * (1 - pl.col("rho10_r")))
    pairs = pairs.select(
        pl.format("{}|{}", "exposure_id", "exposure_id_r").alias("pair_id"), "prompt_id", "split", "channel",
        pl.col("exposure_id").alias("chosen_exposure_id"), pl.col("exposure_id_r").alias("rejected_exposure_id"),
        pl.col("response_id").alias("chosen_response_id"), pl.col("response_id_r").alias("rejected_response_id"),
        "prompt_text", pl.col("response_text").alias("chosen_text"), pl.col("response_text_r").alias("rejected_text"),
        pl.col("propensity").alias("chosen_propensity"), pl.col("propensity_r").alias("rejected_propensity"),
        (1.0 / (pl.col("propensity") * pl.col("propensity_r"))).alias("weight"), eps.alias("flip_probability"),
    )
    PairsTable.validate(pairs).write_parquet(dataset / "pairs.parquet")
    return dataset / "pairs.parquet"
