"""Fixtures for the trainer: a weighted dataset built from the `warehouse` fixture plus its truth.

STOPGAP until `causalrm weights export` is wired into tests: `make_weighted_dataset` writes
DATASET/data.parquet + manifest.json conforming to schemas/weighted_dataset.py with the TRUE
propensities and flip rates, and a cheap deterministic text embedding (hashed bag of words) so that
tests need no backbone.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

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


@pytest.fixture(scope="session")
def weighted_dataset(warehouse: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """READ-ONLY weighted dataset (8,000 exposures, 32-dim hashed text embeddings)."""
    return make_weighted_dataset(warehouse, tmp_path_factory.mktemp("weighted") / "dataset")


@pytest.fixture(scope="session")
def truth_path(warehouse: Path) -> Path:
    return warehouse.parent / "truth.parquet"


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised 2-layer BERT (hidden 32) with the MiniLM tokenizer: no downloaded weights."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from feedback_etl.embed import default_model_path

    out = tmp_path_factory.mktemp("tiny_backbone")
    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
