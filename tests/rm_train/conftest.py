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
