"""The raw-event contract's column names and event types, without pandera.

Kept apart from :mod:`schemas.raw_event` (the pandera model) so that code needing only the names
(input discovery, field mappings, the ingest start-up) does not import pandera, which pulls in
pandas and, with the [spark] extra, pyspark.pandas (about 1.3 s; issue 19).
"""

from __future__ import annotations

import polars as pl

EVENT_TYPES: tuple[str, ...] = (
    "impression",
    "thumbs_up",
    "thumbs_down",
    "vote_cleared",
    "copy",
    "regenerate",
    "share",
)
VOTE_EVENT_TYPES: tuple[str, ...] = ("thumbs_up", "thumbs_down", "vote_cleared")

# Columns every row must carry, and those an impression must carry in addition.
REQUIRED_COLUMNS: tuple[str, ...] = ("event_id", "event_time", "event_type", "exposure_id")
IMPRESSION_REQUIRED: tuple[str, ...] = ("user_id", "session_id", "prompt_id", "response_id", "model_id")
IMPRESSION_OPTIONAL: dict[str, pl.DataType] = {
    "prompt_text": pl.Utf8(),
    "response_text": pl.Utf8(),
    "position": pl.Int32(),
    "platform": pl.Utf8(),
    "locale": pl.Utf8(),
    "latency_ms": pl.Float64(),
    # Randomized feedback slice (issue 11): feedback was solicited at random for this exposure.
    "solicited": pl.Boolean(),
}
KNOWN_COLUMNS: tuple[str, ...] = REQUIRED_COLUMNS + IMPRESSION_REQUIRED + tuple(IMPRESSION_OPTIONAL)
