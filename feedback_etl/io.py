"""Reading and writing warehouse tables (the one place where the ETL touches files)."""

from __future__ import annotations

from pathlib import Path

import pandera.errors
import polars as pl

from schemas.errors import TableValidationError, WarehouseError
from schemas.feedback import FeedbackTable


def feedback_dir(warehouse: str | Path) -> Path:
    return Path(warehouse) / "feedback"


def validate_feedback(frame: pl.DataFrame) -> pl.DataFrame:
    """Validate a collected feedback frame on its full data (lazy=True reports every failure)."""
    try:
        return FeedbackTable.validate(frame, lazy=True)
    except pandera.errors.SchemaErrors as exc:
        cases = exc.failure_cases
        sample = str(cases.head(5).to_dicts()) if hasattr(cases, "head") else str(cases)[:500]
        raise TableValidationError("feedback", len(cases), sample) from exc
    except pandera.errors.SchemaError as exc:
        raise TableValidationError("feedback", 1, str(exc)[:500]) from exc


def read_feedback(warehouse: str | Path, *, validate: bool = True) -> pl.DataFrame:
    """Read ``WH/feedback/`` (hive-partitioned by impression_date) as one frame sorted by exposure_id.

    Raises
    ------
    WarehouseError : the warehouse has no feedback table yet.
    """
    root = feedback_dir(warehouse)
    files = sorted(root.glob("impression_date=*/*.parquet"))
    if not files:
        raise WarehouseError(
            "warehouse has no feedback table",
            where=str(root),
            fix=f"run `causalrm ingest LOGS --warehouse {warehouse}` first",
        )
    frame = pl.read_parquet(root / "**" / "*.parquet", hive_partitioning=True)
    frame = frame.with_columns(pl.col("impression_date").cast(pl.Date)).sort("exposure_id")
    frame = frame.select(list(FeedbackTable.to_schema().columns))
    return validate_feedback(frame) if validate else frame


def write_feedback(frame: pl.DataFrame, directory: str | Path) -> None:
    """Write a validated feedback frame as Parquet, hive-partitioned by impression_date, into
    ``directory`` (the caller swaps it into place atomically)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for (day,), part in frame.sort("exposure_id").partition_by("impression_date", as_dict=True).items():
        target = directory / f"impression_date={day.isoformat()}"
        target.mkdir(parents=True, exist_ok=True)
        part.drop("impression_date").write_parquet(target / "part-0.parquet")


def read_embeddings(warehouse: str | Path) -> pl.DataFrame | None:
    """``WH/embeddings/*.parquet`` as (exposure_id, embedding) or None when `causalrm embed` has not run."""
    root = Path(warehouse) / "embeddings"
    files = sorted(root.glob("*.parquet"))
    if not files:
        return None
    return pl.read_parquet(files).unique("exposure_id", keep="last").sort("exposure_id")
