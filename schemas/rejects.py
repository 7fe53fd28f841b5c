"""Rejects contract: ``WH/rejects`` (a Delta table, docs/warehouse.md), written by ``causalrm ingest``.

One row per input row that was not accepted (never silently dropped), key
(``run_id``, ``source_file``, ``row_number``). ``reason`` is a :class:`schemas.errors.RejectReason`
code, ``detail`` says which field or value, ``payload`` holds the raw input row as JSON text (the
JSONL line itself; for orphan_feedback and conflicting_impression, the typed canonical fields).
"""

from __future__ import annotations

import pandera.polars as pa
import polars as pl

from schemas.errors import RejectReason

REJECT_REASONS: tuple[str, ...] = tuple(r.value for r in RejectReason)


class RejectsTable(pa.DataFrameModel):
    """Rejected input rows with their reason code."""

    run_id: str = pa.Field(nullable=False)
    source_file: str = pa.Field(nullable=False)
    row_number: pl.Int64 = pa.Field(nullable=False, ge=0)
    reason: str = pa.Field(nullable=False, isin=list(REJECT_REASONS))
    detail: str | None = pa.Field(nullable=True)
    event_id: str | None = pa.Field(nullable=True)
    exposure_id: str | None = pa.Field(nullable=True)
    payload: str | None = pa.Field(nullable=True)

    class Config:
        strict = True
        coerce = True
