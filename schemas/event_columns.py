"""The raw-event contract's column names and event types, without pandera.

Kept apart from :mod:`schemas.raw_event` (the pandera model) so that code needing only the names
(input discovery, field mappings, the ingest start-up) does not import pandera, which pulls in
pandas and, with the [spark] extra, pyspark.pandas (about 1.3 s; issue 19).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
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
# The optional columns and their polars types by name: ``IMPRESSION_OPTIONAL`` (name -> polars type)
# is built on first use, so that code needing only the names does not import polars (issue 19).
_IMPRESSION_OPTIONAL_TYPES: dict[str, str] = {
    "prompt_text": "Utf8",
    "response_text": "Utf8",
    "position": "Int32",
    "platform": "Utf8",
    "locale": "Utf8",
    "latency_ms": "Float64",
    # Randomized feedback slice (issue 11): feedback was solicited at random for this exposure.
    "solicited": "Boolean",
}
IMPRESSION_OPTIONAL_COLUMNS: tuple[str, ...] = tuple(_IMPRESSION_OPTIONAL_TYPES)
KNOWN_COLUMNS: tuple[str, ...] = REQUIRED_COLUMNS + IMPRESSION_REQUIRED + IMPRESSION_OPTIONAL_COLUMNS


def __getattr__(name: str) -> dict[str, pl.DataType]:
    if name == "IMPRESSION_OPTIONAL":
        import polars as pl

        return {column: getattr(pl, kind)() for column, kind in _IMPRESSION_OPTIONAL_TYPES.items()}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
