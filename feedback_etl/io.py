"""Reading and writing warehouse tables (the one place where the ETL touches files)."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import polars as pl

from feedback_etl.warehouse import Snapshot, snapshot, write_table
from schemas.errors import WarehouseError

# The pandera models (schemas.feedback, schemas.validation) are imported where used: pandera
# pulls in pandas and pyspark.pandas, about 1.3 s of start-up (issue 19).

if TYPE_CHECKING:
    import pyarrow
    import pyarrow.dataset

def feedback_dir(warehouse: str | Path) -> Path:
    return Path(warehouse) / "feedback"


def validate_feedback(frame: pl.DataFrame) -> pl.DataFrame:
    """Validate a collected feedback frame on its full data (lazy=True reports every failure)."""
    from schemas.feedback import FeedbackTable
    from schemas.validation import validate_table

    return validate_table(frame, FeedbackTable, "feedback")


def feedback_dataset(warehouse: str | Path, *, version: int | str | None = None) -> "pyarrow.dataset.Dataset":
    """The feedback table as a ``pyarrow.dataset.Dataset`` over one committed version's files.

    ``version`` is None (the version the manifest commits), a Delta version number of the table
    (``causalrm history WH``) or an ISO timestamp (the warehouse as the last run committed by then
    left it). The dataset is a literal list of that version's Parquet files, so it stays the same
    snapshot however long it is read (``to_batches(columns=[...])`` streams it), while ingests
    commit newer versions; only ``causalrm vacuum`` deletes its files once it is old.

    Raises
    ------
    WarehouseError : no feedback table, an old-layout warehouse, or no such version.
    """
    snap = _snapshot(warehouse, "feedback", version)
    return snap.dataset()


def feedback_files(warehouse: str | Path, *, version: int | str | None = None) -> list[Path]:
    """The Parquet files of one committed version of the feedback table (literal paths: hand them
    to an engine through :func:`feedback_etl.paths.engine_file`, or read them as they are)."""
    return list(_snapshot(warehouse, "feedback", version).files)


def warehouse_versions(warehouse: str | Path, *, as_of: int | str | None = None) -> dict[str, int]:
    """The table versions that form the warehouse now, or ``as_of`` a feedback version or an ISO
    timestamp (the last run committed by then): what an export records to be rebuilt exactly.

    Raises
    ------
    ConfigError : ``as_of`` is neither a number nor a timestamp.
    WarehouseError : no run was committed by that time, or no feedback table.
    """
    from feedback_etl.warehouse import DELTA_TABLES, versions_as_of

    versions = versions_as_of(Path(warehouse), as_of)
    for table in DELTA_TABLES:  # a warehouse without a manifest: each table's latest version
        if table not in versions and snapshot(Path(warehouse), table) is not None:
            versions[table] = _snapshot(warehouse, table, None).version
    if "feedback" not in versions:
        _snapshot(warehouse, "feedback", None)  # raises: no feedback table
    return versions


def table_version(warehouse: str | Path, table: str) -> int:
    """The version of ``table`` (events, rejects, feedback) that the warehouse commits now.

    Raises
    ------
    WarehouseError : the warehouse has no such table.
    """
    return _snapshot(warehouse, table, None).version


def read_feedback(warehouse: str | Path, *, validate: bool = True, version: int | str | None = None) -> pl.DataFrame:
    """The feedback table (one committed version, see :func:`feedback_dataset`) as one frame
    sorted by exposure_id.

    Raises
    ------
    WarehouseError : the warehouse has no feedback table yet, or lacks a contract column.
    """
    root = feedback_dir(warehouse)
    frame = pl.from_arrow(feedback_dataset(warehouse, version=version).to_table())
    frame = frame.with_columns(pl.col("impression_date").cast(pl.Date)).sort("exposure_id")
    from schemas.feedback import FeedbackTable

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


def _snapshot(warehouse: str | Path, table: str, version: int | str | None) -> Snapshot:
    snap = snapshot(Path(warehouse), table, version)
    if snap is None:
        raise WarehouseError(
            f"warehouse has no {table} table",
            where=str(Path(warehouse) / table),
            fix=f"run `causalrm ingest LOGS --warehouse {warehouse}` first",
        )
    return snap


def write_feedback(frame: pl.DataFrame, directory: str | Path) -> int:
    """Commit a validated feedback frame as a new version of the Delta table at ``directory``
    (``WH/feedback``; the whole table is replaced), rows sorted by exposure_id. Returns the version.

    Ingest commits through :func:`feedback_etl.warehouse.write_table` and the manifest; this is
    for building a warehouse's feedback table directly (tests, hand-made samples).
    """
    directory = Path(directory)
    table = to_arrow(frame.sort("exposure_id"))
    run_id = "write_feedback-" + datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    version = write_table(directory.parent, directory.name, [table], mode="overwrite", run_id=run_id, empty_schema=table.schema)
    manifest_path = directory.parent / "manifest.json"
    if directory.name == "feedback" and manifest_path.exists():
        # Readers follow the manifest's versions: commit the new one there too.
        from feedback_etl.warehouse import read_manifest, write_json

        manifest = read_manifest(directory.parent)
        tables = manifest.setdefault("tables", {})
        tables["versions"] = {**tables.get("versions", {}), "feedback": int(version)}
        write_json(manifest_path, manifest)
    return int(version)


def to_arrow(frame: pl.DataFrame) -> "pyarrow.Table":
    """The Arrow types every warehouse write uses (large strings and lists, as polars writes
    them), so that files of one table written by either engine read back as one schema."""
    return frame.to_arrow(compat_level=pl.CompatLevel.oldest())


def read_embeddings(warehouse: str | Path) -> pl.DataFrame | None:
    """``WH/embeddings/*.parquet`` as (exposure_id, embedding) or None when `causalrm embed` has not run."""
    root = Path(warehouse) / "embeddings"
    files = sorted(root.glob("*.parquet"))
    if not files:
        return None
    # A literal file list: glob=False, or a warehouse named like ``wh[1]`` reads another folder.
    return pl.read_parquet(files, glob=False, hive_partitioning=False).unique("exposure_id", keep="last").sort("exposure_id")


# ---------------------------------------------------------------- staged events, rejects (ingest)


def events_dir(warehouse: str | Path) -> Path:
    return Path(warehouse) / "events"


def rejects_dir(warehouse: str | Path) -> Path:
    return Path(warehouse) / "rejects"


def read_events(warehouse: str | Path) -> pl.DataFrame:
    """``WH/events`` (staged, typed, de-duplicated events) with their ``run_id``, sorted by event_id
    (the version the manifest commits).

    Raises
    ------
    WarehouseError : the warehouse has no events yet.
    """
    return pl.from_arrow(_snapshot(warehouse, "events", None).dataset().to_table()).sort("event_id")


def read_rejects(warehouse: str | Path) -> pl.DataFrame:
    """``WH/rejects`` (every input row not accepted), sorted by run, file and row."""
    snap = snapshot(Path(warehouse), "rejects", None)
    if snap is None or not snap.files:
        from schemas.rejects import RejectsTable

        return pl.DataFrame(schema={name: col.dtype.type for name, col in RejectsTable.to_schema().columns.items()})
    return pl.from_arrow(snap.dataset().to_table()).sort("run_id", "source_file", "row_number")


def validated_batches(batches, validate, *, run_id: str | None = None) -> Iterator[pl.DataFrame]:
    """Validate each Arrow record batch (a collected frame, full data) and yield the validated
    frame, with a ``run_id`` column appended when given.

    ``validate`` maps a polars frame to the validated frame (raising TableValidationError);
    batches come from a DuckDB query and go on to :func:`feedback_etl.warehouse.write_table`, so
    memory stays bounded by one batch.
    """
    for batch in batches:
        frame = validate(pl.from_arrow(batch))
        if run_id is not None:
            frame = frame.with_columns(run_id=pl.lit(run_id, dtype=pl.String))
        yield frame
