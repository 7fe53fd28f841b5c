"""What tracing exports say about answers besides votes (issue 18): comments, corrections, gold labels.

The warehouse's events hold the vote; a Langfuse score, a LangSmith feedback record or a chat-log
feedback row also carries a comment, a correction, who gave it (``origin``: Langfuse's score
``source`` API / ANNOTATION / EVAL, LangSmith's ``feedback_source.type``) and whether it is organic
feedback or a careful human rating (``role``). :func:`read_annotations` reads the same inputs with
the same adapter SQL as ``causalrm ingest --source langfuse|langsmith|openai-chat`` (relation
``source_feedback``) and returns one row per feedback record.

:func:`audit_labels` turns the ratings whose role is ``audit`` (Langfuse: ANNOTATION scores of a
vote score name, by default; LangSmith: the mapping's ``audit_keys``) into the gold audit set the
noise estimator reads: ``exposure_id, true_label`` (1 = good answer), the format of
``causalrm noise estimate --method audit --audit FILE``; an exposure rated twice keeps its latest
rating. ``causalrm ingest --annotations-out FILE --audit-out FILE`` writes both.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import polars as pl

from feedback_etl.mapping import load_mapping
from feedback_etl.sources import EXPORT_ADAPTERS, discover_inputs, preflight, run_export_adapter
from schemas.errors import ConfigError, InputFileError

ANNOTATION_COLUMNS: tuple[str, ...] = (
    "feedback_id", "exposure_id", "name", "origin", "role", "channel", "polarity", "value", "value_text",
    "comment", "correction", "feedback_time", "source_file",
)
_WRITERS = {".parquet": "write_parquet", ".csv": "write_csv", ".jsonl": "write_ndjson", ".ndjson": "write_ndjson"}


def read_annotations(inputs: tuple[str, ...] | list[str], source: str, mapping: str | Path | None = None) -> pl.DataFrame:
    """One row per feedback record of ``inputs`` (columns :data:`ANNOTATION_COLUMNS`), sorted by id.

    Raises
    ------
    ConfigError : ``source`` is not a tracing / chat-log source.
    InputFileError : an input is missing or unreadable (as for ingest).
    """
    if source not in EXPORT_ADAPTERS:
        raise ConfigError(
            f"annotations come from --source {', '.join(EXPORT_ADAPTERS)}, not {source}",
            where="--annotations-out / --audit-out",
            fix="drop the option, or ingest a Langfuse, LangSmith or OpenAI-style chat export",
        )
    field_mapping = load_mapping(mapping)
    files = discover_inputs(tuple(inputs), source)
    with duckdb.connect() as conn:
        conn.execute("SET TimeZone = 'UTC'")
        preflight(conn, files, source, field_mapping)
        run_export_adapter(conn, files, source, field_mapping)
        columns = ", ".join(f'"{c}"' for c in ANNOTATION_COLUMNS)
        return conn.sql(f'SELECT {columns} FROM "source_feedback" ORDER BY "feedback_id"').pl()


def audit_labels(annotations: pl.DataFrame) -> pl.DataFrame:
    """The gold audit set (exposure_id, true_label Int8) of the ``audit`` ratings that are votes.

    An exposure rated more than once keeps its latest rating (by feedback_time, then id).
    """
    gold = annotations.filter(
        (pl.col("role") == "audit") & (pl.col("channel") == "vote") & pl.col("polarity").is_not_null()
        & pl.col("exposure_id").is_not_null()
    )
    return (
        gold.sort("feedback_time", "feedback_id", nulls_last=False)
        .group_by("exposure_id", maintain_order=True)
        .last()
        .select("exposure_id", true_label=(pl.col("polarity") == "up").cast(pl.Int8))
        .sort("exposure_id")
    )


def write_frame(frame: pl.DataFrame, path: str | Path) -> Path:
    """Write ``frame`` as Parquet, CSV or JSON Lines by the suffix of ``path``.

    Raises
    ------
    InputFileError : an unknown suffix or an unwritable path.
    """
    path = Path(path)
    writer = _WRITERS.get(path.suffix)
    if writer is None:
        raise InputFileError(f"cannot write {path.suffix or 'a file without suffix'}", where=str(path), fix="use .parquet, .csv or .jsonl")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        getattr(frame, writer)(path)
    except OSError as exc:
        raise InputFileError(f"cannot write file ({exc.strerror})", where=str(path), fix="pick a writable path") from exc
    return path
