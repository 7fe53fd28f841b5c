"""Pairwise-preference contract: ``DATASET/pairs.parquet`` written by ``causalrm weights export --pairs``.

One row per ordered pair of *observed* exposures of the same prompt in the same split whose observed
labels differ (label 1 = chosen, label 0 = rejected), for a Bradley-Terry trainer. ``weight`` is the
inverse probability that both exposures were observed (1 / (p_chosen * p_rejected) under the
scheme); ``flip_probability`` = P(clean order reversed) + P(clean labels tied) / 2 given the observed
labels (the Bradley-Terry target is 1 - it). docs/methods.md ("Pair weight and flip probability") derives both.
"""

from __future__ import annotations

import pandera.polars as pa
import polars as pl

from schemas.feedback import SPLITS


class PairsTable(pa.DataFrameModel):
    """One row per (chosen, rejected) pair; key ``pair_id``."""

    pair_id: str = pa.Field(unique=True, nullable=False)
    prompt_id: str = pa.Field(nullable=False)
    split: str = pa.Field(isin=list(SPLITS))
    channel: str = pa.Field(nullable=False)
    chosen_exposure_id: str = pa.Field(nullable=False)
    rejected_exposure_id: str = pa.Field(nullable=False)
    chosen_response_id: str = pa.Field(nullable=False)
    rejected_response_id: str = pa.Field(nullable=False)
    prompt_text: str | None = pa.Field(nullable=True)
    chosen_text: str | None = pa.Field(nullable=True)
    rejected_text: str | None = pa.Field(nullable=True)
    chosen_propensity: pl.Float64 = pa.Field(gt=0, le=1)
    rejected_propensity: pl.Float64 = pa.Field(gt=0, le=1)
    weight: pl.Float64 = pa.Field(gt=0)
    # < 0.5 whenever rho01 + rho10 < 1: a pair is more likely right than reversed.
    flip_probability: pl.Float64 = pa.Field(ge=0, lt=0.5)

    class Config:
        strict = True
        coerce = True

    @pa.dataframe_check
    def distinct_sides(cls, data: pa.PolarsData) -> pl.LazyFrame:
        """A pair compares two different exposures of two different responses."""
        return data.lazyframe.select(
            (pl.col("chosen_exposure_id") != pl.col("rejected_exposure_id"))
            & (pl.col("chosen_response_id") != pl.col("rejected_response_id"))
        )
