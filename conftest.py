"""Root fixtures: small seeded logs built with the simulator (shared by every test package)."""

from __future__ import annotations

from pathlib import Path

import pytest

from feedback_etl.simulator import SimulationConfig, simulate
from feedback_etl.texts import find_shared_data


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only shared datasets folder (../shared/data)."""
    return find_shared_data()


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
