"""Staged-event contract: ``WH/events`` (a Delta table, docs/warehouse.md), written by ``causalrm ingest``.

One row per accepted event, key ``event_id`` (unique across the warehouse). The typed columns of
:class:`schemas.raw_event.RawEvent` plus lineage (``source_file``, ``row_number``); the run that
added an event is the table's ``run_id`` column. The feedback table is rebuilt from these rows.
"""

from __future__ import annotations

import pandera.polars as pa
import polars as pl

from schemas.raw_event import RawEvent


class StagedEvent(RawEvent):
    """A typed, de-duplicated event accepted into the warehouse."""

    event_id: str = pa.Field(nullable=False, unique=True)
    source_file: str = pa.Field(nullable=False)
    row_number: pl.Int64 = pa.Field(nullable=False, ge=1)
    # Custom context columns' raw values as one JSON object (issue 17, docs/features.md); null without features.
    context: str | None = pa.Field(nullable=True)

    class Config:
        strict = True
        coerce = True
