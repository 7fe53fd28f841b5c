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
