"""Feedback table contract: one row per exposure (impression), key ``exposure_id``.

Written by the ETL to ``WH/feedback`` (a Delta table, docs/warehouse.md); read by
propensity, noise, weights and the trainer. See docs/ingest.md "Warehouse layout" and "Resolution rules".
"""

from __future__ import annotations

import pandera.polars as pa
import polars as pl

SPLITS: tuple[str, ...] = ("train", "val", "test")

# Channels: the explicit vote (observed/label) and the implicit ones (a 0/1 flag each).
CHANNELS: dict[str, str] = {"vote": "observed", "copy": "copied", "regenerate": "regenerated", "share": "shared"}

CONTEXT_CATEGORICAL: tuple[str, ...] = ("model_id", "platform", "locale")
CONTEXT_NUMERIC: tuple[str, ...] = (
    "position",
    "latency_ms",
    "response_chars",
    "impression_hour",
    "user_prior_exposures",
    "user_prior_votes",
    "user_prior_feedback_rate",
)


class FeedbackTable(pa.DataFrameModel):
    """One row per exposure. ``label`` is null exactly when ``observed`` is false."""

    exposure_id: str = pa.Field(unique=True, nullable=False)
    user_id: str = pa.Field(nullable=False)
    session_id: str = pa.Field(nullable=False)
    prompt_id: str = pa.Field(nullable=False)
    response_id: str = pa.Field(nullable=False)
    model_id: str = pa.Field(nullable=False)
    impression_time: pl.Datetime(time_unit="us", time_zone="UTC") = pa.Field(nullable=False)
    impression_date: pl.Date = pa.Field(nullable=False)
    impression_hour: pl.Int32 = pa.Field(ge=0, le=23)
    position: pl.Int32 | None = pa.Field(nullable=True, ge=0)
    platform: str | None = pa.Field(nullable=True)
    locale: str | None = pa.Field(nullable=True)
    latency_ms: pl.Float64 | None = pa.Field(nullable=True, ge=0)
    prompt_text: str | None = pa.Field(nullable=True)
    response_text: str | None = pa.Field(nullable=True)
    response_chars: pl.Int64 | None = pa.Field(nullable=True, ge=0)
    observed: pl.Boolean = pa.Field(nullable=False)
    label: pl.Int8 | None = pa.Field(nullable=True, isin=[0, 1])
    copied: pl.Boolean = pa.Field(nullable=False)
    regenerated: pl.Boolean = pa.Field(nullable=False)
    shared: pl.Boolean = pa.Field(nullable=False)
    solicited: pl.Boolean = pa.Field(nullable=False)
    feedback_delay_s: pl.Float64 | None = pa.Field(nullable=True, ge=0)
    n_events: pl.Int32 = pa.Field(ge=1)
    n_late_events: pl.Int32 = pa.Field(ge=0)
    user_prior_exposures: pl.Int64 = pa.Field(ge=0)
    user_prior_votes: pl.Int64 = pa.Field(ge=0)
    user_prior_feedback_rate: pl.Float64 | None = pa.Field(nullable=True, ge=0, le=1)
    split: str = pa.Field(isin=list(SPLITS))

    class Config:
        strict = True
        coerce = True

    @pa.dataframe_check
    def label_iff_observed(cls, data: pa.PolarsData) -> pl.LazyFrame:
        """label is set exactly on observed rows."""
        return data.lazyframe.select(pl.col("observed") == pl.col("label").is_not_null())
