"""Weighted-dataset contract: what `causalrm weights export` writes and `causalrm train` reads.

``DATASET/data.parquet``: one row per exposure (observed and unobserved: CausalRM's losses average
over all exposures), key ``exposure_id``. ``DATASET/manifest.json`` carries everything else a
trainer needs (schema version, propensity config and diagnostics, noise estimate with intervals,
clip level, ESS, row counts per split). Optional ``DATASET/pairs.parquet`` for Bradley-Terry.

Feature columns: the feedback table's context columns (``schemas.feedback.CONTEXT_CATEGORICAL`` and
``CONTEXT_NUMERIC``) and, when ``causalrm embed`` ran, ``embedding`` (list of float32).
"""

from __future__ import annotations

import pandera.polars as pa
import polars as pl

from schemas.feedback import SPLITS

SCHEMA_VERSION = 1


class WeightedDataset(pa.DataFrameModel):
    """One row per exposure; ``weight`` is 0 on unobserved rows and 1/p (under the scheme) on observed."""

    exposure_id: str = pa.Field(unique=True, nullable=False)
    user_id: str = pa.Field(nullable=False)
    prompt_id: str = pa.Field(nullable=False)
    response_id: str = pa.Field(nullable=False)
    prompt_text: str | None = pa.Field(nullable=True)
    response_text: str | None = pa.Field(nullable=True)
    channel: str = pa.Field(nullable=False)
    observed: pl.Boolean = pa.Field(nullable=False)
    label: pl.Int8 | None = pa.Field(nullable=True, isin=[0, 1])
    propensity: pl.Float64 = pa.Field(gt=0, le=1)
    weight: pl.Float64 = pa.Field(ge=0)
    split: str = pa.Field(isin=list(SPLITS))
    rho01: pl.Float64 = pa.Field(ge=0, lt=1)
    rho10: pl.Float64 = pa.Field(ge=0, lt=1)

    class Config:
        # Feature columns (context, embedding) vary with the warehouse: not strict.
        strict = False
        coerce = True

    @pa.dataframe_check
    def weight_zero_iff_unobserved(cls, data: pa.PolarsData) -> pl.LazyFrame:
        """Unobserved rows carry weight 0 and no label; observed rows a positive weight and a label."""
        return data.lazyframe.select(
            pl.when(pl.col("observed"))
            .then((pl.col("weight") > 0) & pl.col("label").is_not_null())
            .otherwise((pl.col("weight") == 0) & pl.col("label").is_null())
        )

    @pa.dataframe_check
    def noise_identified(cls, data: pa.PolarsData) -> pl.LazyFrame:
        """rho01 + rho10 < 1, else the noise-corrected loss is undefined."""
        return data.lazyframe.select((pl.col("rho01") + pl.col("rho10")) < 1)
