"""Reading and writing warehouse tables (the one place where the ETL touches files)."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from schemas.errors import WarehouseError
from schemas.feedback import FeedbackTable
from schemas.validation import validate_table


# Snappy, DuckDB's default: about a third faster to write than zstd for ~25% larger files.
PARQUET_COMPRESSION = "snappy"


def feedback_dir(warehouse: str | Path) -> Path:
    return Path(warehouse) / "feedback"


def validate_feedback(frame: pl.DataFrame) -> pl.DataFrame:
    """Validate a collected feedback frame on its full data (lazy=True reports every failure)."""
    return validate_table(frame, FeedbackTable, "feedback")


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
    contract = list(FeedbackTable.to_schema().columns)
    missing = [c for c in contract if c not in frame.columns]
    if missing:
        raise WarehouseError(
            f"feedback table lacks contract column(s) {', '.join(missing)}",
            where=str(root),
            fix="rebuild the warehouse with this version's `causalrm ingest` (the table was written by another version or by hand)",
        )
    frame = frame.select(contract)
    return validate_feedback(frame) if validate else frame


def write_feedback(frame: pl.DataFrame, directory: str | Path) -> None:
    """Write a validated feedback frame as Parquet, hive-partitioned by impression_date, into
    ``directory`` (the caller swaps it into place atomically)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for (day,), part in frame.sort("exposure_id").partition_by("impression_date", as_dict=True).items():
        target = directory / f"impression_date={day.isoformat()}"
        target.mkdir(parents=True, exist_ok=True)
        part.drop("impression_date").write_parquet(target / "part-0.parquet", compression=PARQUET_COMPRESSION)


def read_embeddings(warehouse: str | Path) -> pl.DataFrame | None:
    """``WH/embeddings/*.parquet`` as (exposure_id, embedding) or None when `causalrm embed` has not run."""
    root = Path(warehouse) / "embeddings"
    files = sorted(root.glob("*.parquet"))
    if not files:
        return None
    return pl.read_parquet(files).unique("exposure_id", keep="last").sort("exposure_id")


# ---------------------------------------------------------------- staged events, rejects (ingest)


def events_dir(warehouse: str | Path) -> Path:
    return Path(warehouse) / "events"


def rejects_dir(warehouse: str | Path) -> Path:
    return Path(warehouse) / "rejects"


def read_events(warehouse: str | Path) -> pl.DataFrame:
    """``WH/events/`` (staged, typed, de-duplicated events) with their ``run_id``, sorted by event_id.

    Raises
    ------
    WarehouseError : the warehouse has no events yet.
    """
    return _read_run_partitioned(events_dir(warehouse), "events", warehouse).sort("event_id")


def read_rejects(warehouse: str | Path) -> pl.DataFrame:
    """``WH/rejects/`` (every input row not accepted), sorted by run, file and row."""
    root = rejects_dir(warehouse)
    if not any(root.glob("run_id=*/*.parquet")):
        from schemas.rejects import RejectsTable

        return pl.DataFrame(schema={name: col.dtype.type for name, col in RejectsTable.to_schema().columns.items()})
    return _read_run_partitioned(root, "rejects", warehouse).sort("run_id", "source_file", "row_number")


def _read_run_partitioned(root: Path, table: str, warehouse: str | Path) -> pl.DataFrame:
    files = sorted(root.glob("run_id=*/*.parquet"))
    if not files:
        raise WarehouseError(
            f"warehouse has no {table} table",
            where=str(root),
            fix=f"run `causalrm ingest LOGS --warehouse {warehouse}` first",
        )
    frames = [
        pl.read_parquet(path).with_columns(run_id=pl.lit(path.parent.name.removeprefix("run_id="))) for path in files
    ]
    return pl.concat(frames, how="vertical_relaxed")


def write_validated_parts(
    batches,
    validate,
    directory: str | Path,
    *,
    prefix: str = "part",
) -> int:
    """Validate each Arrow record batch (a collected frame, full data) and write it as one Parquet
    part ``<prefix>-00000.parquet``, ``-00001``, ... into ``directory``. Returns the rows written.

    ``validate`` maps a polars frame to the validated frame (raising TableValidationError);
    batches come from a DuckDB query, so memory stays bounded by one batch.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rows = 0
    for k, batch in enumerate(batches):
        frame = validate(pl.from_arrow(batch))
        frame.write_parquet(directory / f"{prefix}-{k:05d}.parquet", compression=PARQUET_COMPRESSION)
        rows += frame.height
    return rows


