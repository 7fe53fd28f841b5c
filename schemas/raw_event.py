"""Raw-event contract: what `causalrm ingest --source canonical` accepts.

One row per event, JSON Lines (optionally .gz), Parquet or CSV. See docs/contract.md "Raw events".
Unknown extra columns are allowed (recorded in the ingest manifest, not fatal), so the model is
not strict. Row-level problems (a missing id, a bad timestamp) are not validation *failures* of a
file: the ETL routes such rows to ``WH/rejects/`` with a reason code; this model describes the
typed, accepted rows.
"""

from __future__ import annotations

import pandera.polars as pa
import polars as pl

# The names live in schemas.event_columns (no pandera import); re-exported here.
from schemas.event_columns import (  # noqa: F401
    EVENT_TYPES,
    IMPRESSION_OPTIONAL,
    IMPRESSION_REQUIRED,
    KNOWN_COLUMNS,
    REQUIRED_COLUMNS,
    VOTE_EVENT_TYPES,
)


class RawEvent(pa.DataFrameModel):
    """A typed, accepted raw event."""

    event_id: str = pa.Field(nullable=False)
    event_time: pl.Datetime(time_unit="us", time_zone="UTC") = pa.Field(nullable=False)
    event_type: str = pa.Field(isin=list(EVENT_TYPES))
    exposure_id: str = pa.Field(nullable=False)
    user_id: str | None = pa.Field(nullable=True)
    session_id: str | None = pa.Field(nullable=True)
    prompt_id: str | None = pa.Field(nullable=True)
    response_id: str | None = pa.Field(nullable=True)
    model_id: str | None = pa.Field(nullable=True)
    prompt_text: str | None = pa.Field(nullable=True)
    response_text: str | None = pa.Field(nullable=True)
    position: pl.Int32 | None = pa.Field(nullable=True, ge=0)
    platform: str | None = pa.Field(nullable=True)
    locale: str | None = pa.Field(nullable=True)
    latency_ms: pl.Float64 | None = pa.Field(nullable=True, ge=0)
    solicited: pl.Boolean | None = pa.Field(nullable=True)

    class Config:
        strict = False
        coerce = True

    @pa.dataframe_check
    def impressions_carry_ids(cls, data: pa.PolarsData) -> pl.LazyFrame:
        """An impression must name its user, session, prompt, response and model."""
        is_imp = pl.col("event_type") == "impression"
        has_ids = pl.all_horizontal([pl.col(c).is_not_null() for c in IMPRESSION_REQUIRED])
        return data.lazyframe.select((~is_imp) | has_ids)
