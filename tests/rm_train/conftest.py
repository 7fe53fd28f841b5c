"""Fixtures for the trainer: a weighted dataset built from the `warehouse` fixture plus its truth.

STOPGAP until `causalrm weights export` is wired into tests: `make_weighted_dataset` writes
DATASET/data.parquet + manifest.json conforming to schemas/weighted_dataset.py with the TRUE
propensities and flip rates, and a cheap deterministic text embedding (hashed bag of words) so that
tests need no backbone.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from rm_factory import make_weighted_dataset


@pytest.fixture(scope="session")
def weighted_dataset(warehouse: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """READ-ONLY weighted dataset (8,000 exposures, 32-dim hashed text embeddings)."""
    return make_weighted_dataset(warehouse, tmp_path_factory.mktemp("weighted") / "dataset")


@pytest.fixture(scope="session")
def truth_path(warehouse: Path) -> Path:
    return warehouse.parent / "truth.parquet"


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """The CI box has 2 cores shared by 2 pytest workers: one intra-op thread each avoids oversubscription."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def text_head_model(weighted_dataset: Path, tiny_backbone: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """READ-ONLY (model folder, dataset) of an MLP head trained on real embeddings of the tiny BERT
    (mean pooling, L2-normalised, `causalrm embed` on the dataset): the model kind RL tools score
    from raw text (issue 21). 300 exposures, 2 epochs."""
    import shutil

    import polars as pl

    from feedback_etl.embed import EmbedConfig, embed
    from rm_train.config import TrainConfig
    from rm_train.train import train

    root = tmp_path_factory.mktemp("text_head")
    dataset = root / "dataset"
    dataset.mkdir()
    pl.read_parquet(weighted_dataset / "data.parquet").drop("embedding").head(300).write_parquet(dataset / "data.parquet")
    shutil.copy(weighted_dataset / "manifest.json", dataset / "manifest.json")
    embed(dataset, EmbedConfig(model=str(tiny_backbone), normalize=True, max_length=64, device="cpu", batch_size=32))
    train(dataset, TrainConfig(loss="causalrm-ips", epochs=2, hidden=(16,), batch_size=64, device="cpu", patience=5),
          root / "model")
    return root / "model", dataset
