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


def _stopgap_feedback(cfg: SimulationConfig) -> "pl.DataFrame":
    """STOPGAP until `causalrm ingest` lands: the feedback table built straight from the simulator's
    exposures (clean logs only). The ETL owner replaces every use of this with simulate -> ingest."""
    import polars as pl

    from feedback_etl.simulator import exposure_frame

    f = exposure_frame(cfg)
    t = pl.col("event_time").str.to_datetime("%Y-%m-%dT%H:%M:%S%.fZ", time_zone="UTC")
    f = f.with_columns(impression_time=t).sort("impression_time", "exposure_id")
    f = f.with_columns(
        user_prior_exposures=pl.int_range(pl.len()).over("user_id").cast(pl.Int64),
        user_prior_votes=(pl.col("observed").cast(pl.Int64).cum_sum().over("user_id") - pl.col("observed").cast(pl.Int64)),
    )
    split_bucket = pl.col("user_id").hash(7) % 10
    return f.select(
        "exposure_id", "user_id", "session_id", "prompt_id", "response_id", "model_id", "impression_time",
        impression_date=pl.col("impression_time").dt.date(),
        impression_hour=pl.col("impression_time").dt.hour().cast(pl.Int32),
        position=pl.col("position").cast(pl.Int32), platform="platform", locale="locale", latency_ms="latency_ms",
        prompt_text="prompt_text", response_text="response_text",
        response_chars=pl.col("response_text").str.len_chars().cast(pl.Int64),
        observed="observed", label=pl.col("label").cast(pl.Int8), copied="copied", regenerated="regenerated",
        shared="shared", solicited="solicited", feedback_delay_s=pl.when(pl.col("observed")).then(pl.lit(60.0)),
        n_events=(1 + pl.col("observed").cast(pl.Int32) + pl.col("copied").cast(pl.Int32)
                  + pl.col("regenerated").cast(pl.Int32) + pl.col("shared").cast(pl.Int32)),
        n_late_events=pl.lit(0, dtype=pl.Int32),
        user_prior_exposures="user_prior_exposures", user_prior_votes="user_prior_votes",
        user_prior_feedback_rate=pl.when(pl.col("user_prior_exposures") > 0).then(
            pl.col("user_prior_votes") / pl.col("user_prior_exposures")),
        split=pl.when(split_bucket < 8).then(pl.lit("train")).when(split_bucket < 9).then(pl.lit("val")).otherwise(pl.lit("test")),
    )


@pytest.fixture(scope="session")
def warehouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A warehouse holding the feedback table of 8,000 synthetic exposures (seed 5), plus
    ``truth.parquet`` beside it (``warehouse.parent / "truth.parquet"``). Read-only: copy it
    (shutil.copytree) before writing into it."""
    from feedback_etl.io import validate_feedback, write_feedback

    root = tmp_path_factory.mktemp("wh")
    cfg = SimulationConfig(out=str(root / "logs"), n_exposures=8_000, seed=5)
    simulate(cfg)
    wh = root / "warehouse"
    write_feedback(validate_feedback(_stopgap_feedback(cfg)), wh / "feedback")
    import shutil

    shutil.copy(root / "logs" / "truth.parquet", root / "truth.parquet")
    return wh
