"""Root fixtures: small seeded logs built with the simulator (shared by every test package)."""

from __future__ import annotations

import os
from collections.abc import Callable
import os
from pathlib import Path

import pytest
from hypothesis import settings

# Hypothesis profiles (issue 22): `ci` is derandomized (the same examples on every run, no example
# database), used when CI=true; `bench` runs many more examples (HYPOTHESIS_PROFILE=bench);
# `dev` (default elsewhere) explores new random examples each run. Tests set no max_examples.
settings.register_profile("ci", derandomize=True, database=None, max_examples=20, deadline=None, print_blob=True)
settings.register_profile("dev", max_examples=20, deadline=None)
settings.register_profile("bench", max_examples=400, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI", "").lower() == "true" else "dev"))

from feedback_etl.simulator import SimulationConfig, simulate
from feedback_etl.texts import find_shared_data


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only shared datasets folder: $CAUSALRM_SHARED_DATA, else ../shared/data.

    Absent on a bare clone: the tests that need it skip with one line saying how to run them
    (CI sets CAUSALRM_SHARED_DATA). Tests reach a dataset through ``shared_dataset(name)``.
    """
    from schemas.errors import InputFileError

    try:
        return find_shared_data()
    except InputFileError:
        pytest.skip("shared data folder not found (../shared/data): set CAUSALRM_SHARED_DATA to the folder "
                    "holding coat/, oasst/, hh_rlhf/, finegrained_rlhf/ to run this test")


@pytest.fixture(scope="session")
def shared_dataset(shared_data: Path) -> Callable[[str], Path]:
    """``shared_dataset("coat")``: that dataset's folder, or a skip naming the missing folder."""

    def dataset(name: str) -> Path:
        folder = shared_data / name
        if not folder.is_dir():
            where = os.environ.get("CAUSALRM_SHARED_DATA")
            pytest.skip(f"shared data folder {folder} not found (CAUSALRM_SHARED_DATA={where or 'unset'}): "
                        f"point CAUSALRM_SHARED_DATA at the folder holding {name}/ to run this test")
        return folder

    return dataset


@pytest.fixture(scope="session")
def clean_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """5,000 exposures of tidy synthetic logs (no messiness), seed 7."""
    out = tmp_path_factory.mktemp("clean_logs")
    simulate(SimulationConfig(out=str(out), n_exposures=5_000, seed=7))
    return out


@pytest.fixture(scope="session")
def messy_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """5,000 exposures of messy synthetic logs (messiness 0.6), seed 11."""
    out = tmp_path_factory.mktemp("messy_logs")
    simulate(SimulationConfig(out=str(out), n_exposures=5_000, messiness=0.6, seed=11))
    return out


@pytest.fixture(scope="session")
def warehouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A warehouse holding the feedback table of 8,000 synthetic exposures (seed 5), plus
    ``truth.parquet`` beside it (``warehouse.parent / "truth.parquet"``). Built the real way:
    simulate (clean logs) -> ``causalrm ingest``, so WH/events, WH/rejects and WH/manifest.json
    exist too. Read-only: copy it (shutil.copytree) before writing into it."""
    import shutil

    from feedback_etl.ingest import IngestConfig, ingest

    root = tmp_path_factory.mktemp("wh")
    simulate(SimulationConfig(out=str(root / "logs"), n_exposures=8_000, seed=5))
    wh = root / "warehouse"
    ingest(IngestConfig(inputs=(str(root / "logs" / "events"),), warehouse=str(wh)))
    shutil.copy(root / "logs" / "truth.parquet", root / "truth.parquet")
    return wh


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
