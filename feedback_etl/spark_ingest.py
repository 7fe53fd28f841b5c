"""``causalrm ingest --engine spark``: the same ETL, run by Apache Spark (issue 8).

The transforms are the DuckDB files in ``sql/``, translated once by
:mod:`feedback_etl.sql_translate`; this module only reads the inputs into ``raw_events``, runs the
translated steps over Spark temp views of the same names, validates and writes. Everything around
the run -- preflight, sha256 skipping, the lock, staging, the atomic commit and the manifest -- is
``feedback_etl.ingest._run``'s, shared with the DuckDB engine. The warehouse it writes is the one
the DuckDB engine writes: same rows, same Parquet column names, order and types.

What it reads: canonical Parquet and JSON Lines (``.jsonl``, ``.ndjson``, ``.json``, optionally
``.gz``), with ``--mapping`` field and event-type renames and custom feature columns
(``[features]``, ``--keep-extra-columns``; section "custom context columns" below, issue 17).
``row_number`` is numbered as DuckDB numbers it: Parquet by the file's own row index, JSON Lines
by line (blank lines skipped but counted; LF or CRLF; a bare CR stays inside its line; a leading
UTF-8 BOM is dropped; a line with invalid UTF-8 or a NUL byte is an ``unparseable_row``). What it refuses, with one ConfigError
before the warehouse is touched: other sources (oasst, langfuse, ratings), CSV inputs, and the
privacy hook (``--pseudonymize-key-env``, ``--text hash|drop``, ``--redact``, ``--embed``).

Validation (``io.validate_table`` with the pandera models on the DuckDB side, every row):

* on **every row**, in Spark SQL, one aggregate pass per table derived from its pandera model:
  the exact column set (strict), non-null columns, unique keys (``exposure_id``, ``event_id``),
  each column's value checks (ranges such as ``impression_hour`` in [0, 23], ``n_events >= 1``,
  ``user_prior_feedback_rate`` in [0, 1]; sets such as ``split`` in train/val/test, ``label`` in
  {0, 1}, ``reason`` a reject code, ``event_type`` a canonical type) and the model's cross-column
  checks (``label`` null exactly when not ``observed``; impressions carry their five ids), written
  out in SQL in :data:`DATAFRAME_CHECKS`;
* on a **sample** of at most :data:`SAMPLE_ROWS` rows per table (all rows when the table is
  smaller), collected through Arrow into polars: the full pandera model, as the DuckDB engine runs
  it (dtypes after coercion included).

Types are not left to chance: every written table is cast to its model's types first.

Execution: the typed input rows, the resolution table, the rejects and the user splits are
written as Parquet into ``<staging>/.spark-scratch/<view>`` and read back under their view names
(:class:`_Cache` says why not ``persist``). The wide rows are copied no more than they must be
(issue 19): the resolution rules read the key columns only (``sql/staging/stg_resolution.sql``,
as the DuckDB engine runs them); the accepted events are a view over the typed rows, written
once, into the events table, and later steps read those files; the feedback mart is computed
once, by its write. Each table is checked on the files just written, before they are handed over
(:func:`_write`). A CTE read twice in one file is left to Spark (inlined, shuffles reused) unless
the file marks it ``MATERIALIZED`` (:func:`feedback_etl.sql_translate.spark_statements`).

Reject payloads: JSON Lines rows keep the raw line, and rows rejected after typing (orphans,
conflicts) the same JSON text as DuckDB's. A Parquet row rejected at typing is the same JSON object
in Spark's spelling: ``to_json`` writes a TIMESTAMP column as ``2026-01-05T10:00:00.000Z`` (DuckDB
``2026-01-05 10:00:00+00``) and floats in Java's shortest form.
"""

from __future__ import annotations

import logging
import re
import shutil
from contextlib import contextmanager
from datetime import timedelta
from functools import reduce
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import polars as pl

from feedback_etl import features
from feedback_etl.ingest import _EVENT_COLUMNS, IngestConfig, _mart_fingerprint, _Steps, reconcile
from feedback_etl.io import validate_feedback
from feedback_etl.mapping import CONTEXT_COLUMN, FieldMapping, path_segments
from feedback_etl.sources import CANONICAL_COLUMNS, InputFile
from feedback_etl.paths import engine_file, engine_folder, is_plain
from feedback_etl.warehouse import TableWrite, snapshot
from schemas.errors import ConfigError, InputFileError, TableValidationError
from schemas.feedback import FeedbackTable
from schemas.rejects import RejectsTable
from schemas.staged_event import StagedEvent
from schemas.validation import validate_table

if TYPE_CHECKING:  # pyspark is imported lazily: the DuckDB engine never needs it
    from pyspark.sql import Column, DataFrame, SparkSession

log = logging.getLogger(__name__)

SPARK_FORMATS: tuple[str, ...] = ("parquet", "jsonl")
SAMPLE_ROWS = 200_000
# Runtime settings for the run, restored afterwards (the session may be the user's own).
RUN_CONF: dict[str, str] = {
    # DuckDB's TO_JSON writes null fields; Spark's drops them unless told otherwise.
    "spark.sql.jsonGenerator.ignoreNullFields": "false",
    # Column names from files and --mapping match exactly, as in the DuckDB reader.
    "spark.sql.caseSensitive": "true",
    "spark.sql.session.timeZone": "UTC",
}
# Cross-column checks of the pandera models as Spark SQL: true on a row that breaks the check.
DATAFRAME_CHECKS: dict[str, str] = {
    "label_iff_observed": "`observed` <> (`label` IS NOT NULL)",
    "impressions_carry_ids": (
        "`event_type` = 'impression' AND (`user_id` IS NULL OR `session_id` IS NULL OR `prompt_id` IS NULL"
        " OR `response_id` IS NULL OR `model_id` IS NULL)"
    ),
}
_CORRUPT = "__causalrm_corrupt_record"
_JSON_OPTIONS = {
    "mode": "PERMISSIVE",
    "columnNameOfCorruptRecord": _CORRUPT,
    # DuckDB's JSON reader takes neither single quotes nor bare NaN / Infinity in strict mode...
    "allowSingleQuotes": "false",
    # ...but it does take NaN (it reads as a number); keep Spark's default here.
    "allowNonNumericNumbers": "true",
}
_SPARK_TYPES: dict[type, str] = {
    pl.String: "STRING", pl.Int64: "BIGINT", pl.Int32: "INT", pl.Int8: "TINYINT", pl.Float64: "DOUBLE",
    pl.Boolean: "BOOLEAN", pl.Datetime: "TIMESTAMP_LTZ", pl.Date: "DATE",
}


def check_supported(cfg: IngestConfig, files: list[InputFile], typed_hook: Any) -> None:
    """Refuse what the Spark engine does not do, before the warehouse is touched.

    Raises
    ------
    ConfigError : a privacy hook, a CSV input, or no Java 17+ to start Spark with.
    """
    if typed_hook is not None:
        raise ConfigError(
            "privacy options (--pseudonymize-key-env, --text hash|drop, --redact, --embed) are not supported by the Spark engine",
            where="--engine spark",
            fix="ingest with --engine duckdb, or pseudonymise and scrub the logs before they reach causalrm",
        )
    import importlib.util

    missing = [name for name in ("pyspark", "sqlglot") if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(
            f"the Spark engine needs {' and '.join(missing)}, not installed",
            where="--engine spark",
            fix="pip install 'causalrm[spark]' (PySpark + sqlglot; Java 17+ on PATH), or use --engine duckdb",
        )
    other = [f for f in files if f.format not in SPARK_FORMATS]
    if other:
        raise ConfigError(
            f"the Spark engine reads Parquet and JSON Lines, not {other[0].format.upper()} ({len(other)} file(s))",
            where=f"--engine spark, {other[0].path}",
            fix="convert the files to Parquet or JSON Lines, or ingest with --engine duckdb",
        )
    from pyspark.sql import SparkSession

    if SparkSession.getActiveSession() is None:
        from feedback_etl.spark_session import check_java

        check_java()


def spark_pipeline(
    cfg: IngestConfig,
    warehouse: Path,
    staging: Path,
    files: list[InputFile],
    mapping: FieldMapping,
    run_id: str,
    tables: dict,
    steps: _Steps,
    *,
    writes: dict[str, TableWrite],
) -> tuple[dict, dict]:
    """Run the SQL steps on Spark, reconcile, validate and write each table's new files.

    Same contract as ``feedback_etl.ingest._pipeline``: Spark writes Parquet into each
    :class:`~feedback_etl.warehouse.TableWrite`'s folder, which ``ingest._run`` commits to the
    Delta tables with delta-rs (no delta-spark needed); returns (counts for the run's manifest
    record, the manifest's new ``tables``). Every path Spark opens is a plain link
    (:mod:`feedback_etl.paths`), never a pattern built from a user's path.
    """
    from feedback_etl.spark_session import get_spark

    # Timed as its own step: starting the JVM is a fixed cost of every run (benchmarks/ingest).
    spark = steps.run("spark_session", lambda: get_spark(threads=cfg.threads, conf=_memory_conf(cfg.memory_limit)))
    with _run_settings(spark), _Cache(spark, engine_folder(staging) / ".spark-scratch") as cache:
        return _pipeline(spark, cache, cfg, warehouse, staging, files, mapping, run_id, tables, steps, writes)


def _pipeline(
    spark: "SparkSession",
    cache: "_Cache",
    cfg: IngestConfig,
    warehouse: Path,
    staging: Path,
    files: list[InputFile],
    mapping: FieldMapping,
    run_id: str,
    tables: dict,
    steps: _Steps,
    writes: dict[str, TableWrite],
) -> tuple[dict, dict]:
    from feedback_etl.sql_translate import spark_sql

    window = timedelta(seconds=cfg.window_seconds)

    def run(name: str, params: dict | None = None, *, view: str | None = None, conform=None) -> "DataFrame | list":
        """One translated step, kept under ``view`` (later steps read it), else collected."""
        frame = spark.sql(spark_sql(name, params))
        if conform is not None:
            frame = _conform(frame, conform)
        return cache.keep(frame, view) if view else frame.collect()

    steps.run("register", lambda: _register_warehouse_events(spark, warehouse))
    previous_feedback = snapshot(warehouse, "feedback")  # its users keep their split; read before this run writes
    parts = steps.run("read", lambda: _read_inputs(spark, files, mapping))

    def type_events() -> None:
        from py4j.protocol import Py4JJavaError
        from pyspark.errors import PySparkException

        typed = []
        for part in parts:
            part.createOrReplaceTempView("raw_events")
            typed.append(spark.sql(spark_sql("staging/stg_events_typed")))
        try:  # the inputs are read here
            cache.keep(reduce(lambda a, b: a.unionByName(b), typed), "typed_events")
            # Custom context columns (issue 17): each row's raw values beside it, as features.capture_context.
            contexts = [part.select("source_file", "row_number", "context").where("context IS NOT NULL")
                        for part in parts if CONTEXT_COLUMN in part.columns]
            if contexts:
                cache.keep(reduce(lambda a, b: a.unionByName(b), contexts), "feature_context")
        except (PySparkException, Py4JJavaError) as exc:
            raise InputFileError(
                f"cannot read input: {str(exc).strip().splitlines()[0][:300]}",
                where=", ".join(str(f.path) for f in files[:3]) + (" ..." if len(files) > 3 else ""),
                fix="check the files are complete and in the format their suffix says",
            ) from exc

    steps.run("stg_events_typed", type_events)
    # Rules 1, 5 and 6 in one query, as the DuckDB engine runs them (issue 19).
    steps.run("stg_resolution", lambda: _resolve(spark, cache))
    # The accepted rows are a view over typed_events (anti-joins with the small, broadcast
    # resolution table), not a copy (issue 19): read by the reconciliation (event types only) and
    # by the events write; later steps read the written events files instead.
    new_events = steps.run("stg_new_events", lambda: _view(spark.sql(spark_sql("staging/stg_new_events")), "new_events"))
    # WH/events carries custom context columns (issue 17): the context of each accepted row, as
    # features.attach_context gives it (null without features).
    new_events = steps.run("context", lambda: _attach_context(spark, cache, new_events))
    rejects = steps.run("stg_rejects", lambda: run("staging/stg_rejects", {"run_id": run_id}, view="rejects"))

    counts = steps.run("reconcile", lambda: reconcile(_SparkConnection(spark), []))

    def write_events() -> None:
        from pyspark.sql import functions as F

        def check(written: "DataFrame") -> None:
            if counts["accepted"]:
                _validate(written.drop("run_id"), StagedEvent, "events")

        # Written even when empty (one file with the schema): the first run creates the table.
        frame = _conform(new_events, StagedEvent)
        written = _write(frame.withColumn("run_id", F.lit(run_id)), writes["events"], check=check)
        # From here on this run's events are the files just written (narrow columnar reads), not
        # typed_events with its anti-joins; typed_events is deleted once the rejects are written.
        _view(written.select(*[F.col(name) for name in _EVENT_COLUMNS]), "new_events")

    def write_rejects() -> None:
        def check(written: "DataFrame") -> None:
            if counts["rejected_total"]:
                _validate(written, RejectsTable, "rejects")

        _write(_conform(rejects, RejectsTable).orderBy("source_file", "row_number"), writes["rejects"], check=check)

    steps.run("write_events", write_events)
    steps.run("write_rejects", write_rejects)
    for view in ("typed_events", "rejects", "resolution", "new_events_context"):
        cache.drop(view)
    spark.sql("SELECT * FROM warehouse_events UNION ALL SELECT * FROM new_events").createOrReplaceTempView("all_events")
    counts["late_events"] = steps.run(
        "stg_late_events", lambda: int(run("staging/stg_late_events", {"window": window})[0][0])
    )
    # Each user's split, balanced in rows; users of the committed feedback table keep theirs (issue 15).
    steps.run("marts/user_splits", lambda: (
        _register_previous_splits(spark, warehouse, previous_feedback), run("marts/user_splits", view="user_splits")))
    # The mart is not materialised: it is computed once, by the feedback write (then checked on the
    # written files), unless custom feature columns are joined to it first.
    mart = steps.run("marts/feedback", lambda: _conform(_statements(spark, cache, "marts/feedback", {"window": window}, keep=MART_KEEP),
                                                        FeedbackTable))
    wanted = features.resolve_features(mapping, tables.get("features"))
    mart, kept, feature_warnings = steps.run(
        "features", lambda: _add_feature_columns(spark, cache, mart, wanted, max_levels=cfg.max_feature_levels)
    )
    types = {name: spec["type"] for name, spec in kept.items()}
    summary = steps.run("write_feedback", lambda: _write_feedback(mart, writes["feedback"], types))

    totals = spark.sql("SELECT COUNT(*) FROM all_events").collect()[0][0]
    new_tables = {
        "events": int(totals),
        "rejects": int(tables.get("rejects", 0)) + counts["rejected_total"],
        "feedback": summary["exposures"],
        "feedback_window_seconds": cfg.window_seconds,
        # The same marts and contract as the DuckDB engine's: a later DuckDB run may keep its days.
        "feedback_fingerprint": _mart_fingerprint(window),
        "feedback_summary": summary,
        "features": {name: {"type": spec["type"], "source": spec["source"]} for name, spec in kept.items()},
    }
    counts["feedback"] = {"rebuilt": True, **summary}
    counts["features"] = kept
    counts["_adapter_warnings"] = [*counts.get("_adapter_warnings", []), *feature_warnings]
    counts["spark"] = {"version": spark.version, "master": spark.sparkContext.master}
    return counts, new_tables


# ---------------------------------------------------------------- resolution (rules 1, 5, 6)

# The views over ``resolution`` (sql/staging/stg_resolution.sql), with the columns of the files they
# replace, as ``ingest._resolve`` defines them for DuckDB.
RESOLUTION_VIEWS: tuple[tuple[str, str, str], ...] = (
    ("duplicates", "duplicate", "`file_index`, `row_number`, `event_id`"),
    ("impression_losers", "impression_loser", "`file_index`, `row_number`, `event_id`, `exposure_id`, `same_content`"),
    ("orphans", "orphan", "`file_index`, `row_number`, `event_id`, `exposure_id`"),
)


# CTEs of sql/marts/feedback.sql the Spark engine keeps before the rest runs: "resolved" (one narrow
# row per exposure: its channels, label and split) is read three times (the output rows and both
# halves of the history stream); inlined, Spark computed its joins and the per-exposure aggregate
# once per read.
MART_KEEP: tuple[str, ...] = ("resolved",)


def _statements(spark: "SparkSession", cache: "_Cache", name: str, params: dict | None = None, *, keep: tuple[str, ...] = ()) -> "DataFrame":
    """``sql/<name>.sql`` as a frame, its materialised CTEs kept first
    (:func:`~feedback_etl.sql_translate.spark_statements`); those stay kept until the run ends."""
    from feedback_etl.sql_translate import spark_statements

    statements = spark_statements(name, params, keep=keep)
    for view, sql in statements[:-1]:
        cache.keep(spark.sql(sql), view)
    return spark.sql(statements[-1][1])


def _resolve(spark: "SparkSession", cache: "_Cache") -> None:
    """Rules 1, 5 and 6 as one query on the key columns (issue 19), kept as ``resolution``, and the
    views ``duplicates``, ``impression_losers``, ``orphans`` over it. ``typed_content`` (the rows'
    typed content, read for contested impressions only) is ``typed_events`` itself here.

    The CTEs the file marks ``MATERIALIZED`` are kept first, as DuckDB keeps them
    (:func:`~feedback_etl.sql_translate.spark_statements`): on 1M events the one query then costs
    10.5 JVM CPU s against 13.6-15.0 for the three separate files, and 19-21 with every CTE left
    to Spark (``benchmarks/ingest/spark_resolution_step.py``).
    """
    from feedback_etl.sql_translate import spark_statements

    spark.table("typed_events").createOrReplaceTempView("typed_content")
    cache.keep(_statements(spark, cache, "staging/stg_resolution"), "resolution")
    for view, _ in spark_statements("staging/stg_resolution")[:-1]:
        cache.drop(view)
    for view, rule, columns in RESOLUTION_VIEWS:
        spark.sql(f"SELECT {columns} FROM resolution WHERE `rule` = '{rule}'").createOrReplaceTempView(view)


# ---------------------------------------------------------------- session, cache


@contextmanager
def _run_settings(spark: "SparkSession") -> Iterator[None]:
    """Apply :data:`RUN_CONF` for the run and put the session's own values back afterwards."""
    before = {key: spark.conf.get(key, None) for key in RUN_CONF}
    for key, value in RUN_CONF.items():
        spark.conf.set(key, value)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, value)
        for view in ("raw_events", "event_type_map", "warehouse_events", "typed_events", "typed_content", "resolution", "duplicates",
                     "impression_losers", "orphans", "new_events", "rejects", "all_events", "previous_splits", "user_splits",
                     "feedback_mart", "feature_context", "new_events_context", "impression_context", "feedback_mart_features"):
            spark.catalog.dropTempView(view)


class _Cache:
    """Frames read several times, materialised as Parquet in a scratch folder of the staging area
    and read back under the temp view name the SQL reads them by.

    Not ``persist``: each step's plan would carry every earlier step's plan (new_events holds
    typed_events four times over) and Spark's analyser, which walks the whole plan, took minutes by
    the rejects step on 8,000 events. Not ``localCheckpoint`` either: it cuts the lineage, but the
    checkpointed relation carries the optimiser's size estimate of its old plan (a join's estimate
    is the product of its inputs'), so even a table of ten rows was never broadcast. Read back from
    Parquet, a relation's size is its files' size, the key tables (duplicates, losers, orphans)
    are broadcast while small, and the rows spill to disk (on a cluster: the shared staging area).
    """

    def __init__(self, spark: "SparkSession", scratch: Path) -> None:
        self.spark, self.scratch = spark, scratch
        self.views: dict[str, Path] = {}

    def __enter__(self) -> "_Cache":
        return self

    def __exit__(self, *exc: object) -> None:
        for view in self.views:  # the session may be the user's own: no view left pointing at deleted files
            self.spark.catalog.dropTempView(view)
        shutil.rmtree(self.scratch, ignore_errors=True)

    def keep(self, frame: "DataFrame", view: str) -> "DataFrame":
        folder = self.scratch / view
        shutil.rmtree(folder, ignore_errors=True)
        frame.write.mode("overwrite").parquet(_uri(folder))
        kept = self.spark.read.parquet(_uri(folder))
        kept.createOrReplaceTempView(view)
        self.views[view] = folder
        return kept

    def drop(self, view: str) -> None:
        """Delete a view's rows now (DuckDB drops its typed copy of the input early, too)."""
        self.spark.catalog.dropTempView(view)
        folder = self.views.pop(view, None)
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)


def _view(frame: "DataFrame", name: str) -> "DataFrame":
    """``frame`` under the temp view ``name`` (not materialised: each read runs its plan)."""
    frame.createOrReplaceTempView(name)
    return frame


def _memory_conf(memory_limit: str) -> dict[str, str]:
    """``--memory-limit`` as the JVM heap (``spark.driver.memory``), used when causalrm starts Spark
    itself in local mode; a running session (spark-submit, a notebook) keeps its own."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(K|M|G|T)i?B\s*", memory_limit, re.IGNORECASE)
    if not match:
        return {}
    scale = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}[match.group(2).upper()]
    return {"spark.driver.memory": f"{max(512, int(float(match.group(1)) * scale))}m"}


class _SparkConnection:
    """Just enough of a DuckDB connection for ``ingest.reconcile``: its queries run translated on
    Spark, so both engines count with the same SQL."""

    def __init__(self, spark: "SparkSession") -> None:
        self.spark = spark

    def execute(self, sql: str) -> "_Result":
        from feedback_etl.sql_translate import translate

        return _Result([tuple(row) for row in self.spark.sql(translate(sql)).collect()])


class _Result:
    def __init__(self, rows: list[tuple]) -> None:
        self.rows = rows

    def fetchone(self) -> tuple | None:
        return self.rows[0] if self.rows else None

    def fetchall(self) -> list[tuple]:
        return self.rows


# ---------------------------------------------------------------- reading: raw_events, warehouse_events


def _quoted(name: str) -> "Column":
    from pyspark.sql import functions as F

    return F.col("`" + name.replace("`", "``") + "`")


def _uri(path: Path) -> str:
    """A local path as Hadoop reads it: the local file system even on a cluster whose default is
    HDFS. Hadoop globs every path it reads, so only plain paths (links made by
    :mod:`feedback_etl.paths`) are handed over; anything else is a bug, refused here."""
    if not is_plain(path):
        raise ValueError(f"not a plain path, Spark would read it as a pattern: {path}")
    return "file://" + str(path)


def _register_warehouse_events(spark: "SparkSession", warehouse: Path) -> None:
    """``warehouse_events``: the events earlier runs accepted, typed as the DuckDB engine types them."""
    from pyspark.sql import functions as F

    types = {name: _spark_sql_type(kind) for name, kind in _EVENT_COLUMNS.items()}
    events = snapshot(warehouse, "events")
    if events is not None and events.files:
        # The committed version's literal file list (what delta-spark would read from the log).
        table = engine_folder(warehouse / "events")
        frame = spark.read.parquet(*[_uri(table / f.relative_to(warehouse / "events")) for f in events.files])
        frame = frame.select([F.col(name).cast(kind).alias(name) for name, kind in types.items()])
    else:
        frame = _rows(spark, [], types)
    frame.createOrReplaceTempView("warehouse_events")


def _register_previous_splits(spark: "SparkSession", warehouse: Path, feedback: Any) -> None:
    """``previous_splits`` (user_id, split): the users of the committed feedback table (``feedback``,
    its snapshot taken before this run wrote anything; None on a first run), who keep their split
    (sql/marts/user_splits.sql)."""
    from pyspark.sql import functions as F

    if feedback is not None and feedback.files:
        table = engine_folder(warehouse / "feedback")
        frame = spark.read.parquet(*[_uri(table / f.relative_to(warehouse / "feedback")) for f in feedback.files])
        frame = frame.select(*[F.col(c).cast("string").alias(c) for c in ("user_id", "split")]).distinct()
    else:
        frame = _rows(spark, [], {"user_id": "STRING", "split": "STRING"})
    frame.createOrReplaceTempView("previous_splits")


def _rows(spark: "SparkSession", rows: list[tuple], types: dict[str, str]) -> "DataFrame":
    """A small literal table, built inside the JVM. Not ``createDataFrame(list)``: that makes a
    Python RDD, whose jobs start Python workers and whose unknown size rules out broadcast joins
    (every join with it became a sort-merge join of the whole input)."""
    from pyspark.sql import functions as F

    if not rows:
        return spark.range(0).select([F.lit(None).cast(kind).alias(name) for name, kind in types.items()])
    structs = [F.struct(*[F.lit(v).cast(kind).alias(name) for v, (name, kind) in zip(row, types.items())]) for row in rows]
    return spark.range(1).select(F.inline(F.array(*structs)))


def _spark_sql_type(duckdb_type: str) -> str:
    return {"VARCHAR": "STRING", "TIMESTAMP WITH TIME ZONE": "TIMESTAMP_LTZ", "INTEGER": "INT"}.get(duckdb_type, duckdb_type)


def _read_inputs(spark: "SparkSession", files: list[InputFile], mapping: FieldMapping) -> list["DataFrame"]:
    """One slice of ``raw_events`` per file (as DuckDB: a file's columns are its own), plus the
    ``event_type_map`` view."""
    _rows(spark, mapping.event_type_rows(), {"source_value": "STRING", "event_type": "STRING"}).createOrReplaceTempView(
        "event_type_map"
    )
    if not files:
        return [_empty_raw_events(spark)]
    return [_parquet_part(spark, f, mapping) if f.format == "parquet" else _jsonl_part(spark, f, mapping) for f in files]


def _head(f: InputFile) -> list["Column"]:
    from pyspark.sql import functions as F

    return [F.lit(f.index).alias("file_index"), F.lit(str(f.path)).alias("source_file")]


def _empty_raw_events(spark: "SparkSession") -> "DataFrame":
    head = {"file_index": "INT", "source_file": "STRING", "row_number": "BIGINT", "parse_ok": "BOOLEAN",
            "payload_text": "STRING", "payload": "STRUCT<none: STRING>", "nested_column": "STRING"}
    return _rows(spark, [], {**head, **{c: "STRING" for c in CANONICAL_COLUMNS}})


def _parquet_part(spark: "SparkSession", f: InputFile, mapping: FieldMapping) -> "DataFrame":
    """A Parquet file: ``row_number`` from the file's own row index; ``payload`` the row as a struct
    (serialised only on rejected rows, by the typing step)."""
    from pyspark.sql import functions as F

    frame = spark.read.parquet(_uri(Path(engine_file(f.path))))
    columns = list(frame.columns)
    frame = frame.select("*", F.col("_metadata.row_index").alias("__row_index"))
    selected = [_parquet_column(frame, mapping.column(c), columns).alias(c) for c in CANONICAL_COLUMNS]
    # Custom context columns (issue 17): the raw values as one JSON object (features.context_sql).
    context = _context(mapping, lambda source: _parquet_column(frame, source, columns))
    return frame.select(
        *_head(f),
        (F.col("__row_index") + 1).cast("bigint").alias("row_number"),
        F.lit(True).alias("parse_ok"),
        F.lit(None).cast("string").alias("payload_text"),
        F.struct(*[_quoted(c).alias(c) for c in columns]).alias("payload"),
        _parquet_nested_column(frame, mapping, columns).alias("nested_column"),
        *selected,
        *([context.alias(CONTEXT_COLUMN)] if context is not None else []),
    )


def _parquet_nested_column(frame: "DataFrame", mapping: FieldMapping, columns: list[str]) -> "Column":
    """The first canonical column whose value is a struct, map or array, as
    ``sources._nested_column`` names it for DuckDB (a ``bad_value``; issue 16)."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    nested_types = (T.StructType, T.MapType, T.ArrayType)
    branches = []
    for c in CANONICAL_COLUMNS:
        name = mapping.column(c)
        head, *rest = path_segments(name)
        if name in columns:
            if isinstance(frame.schema[name].dataType, nested_types):
                branches.append((_quoted(name).isNotNull(), c))
        elif rest and head in columns and isinstance(frame.schema[head].dataType, nested_types):
            branches.append((_is_json_container(F.to_json(_quoted(head)), rest, _parquet_column(frame, name, columns)), c))
    if not branches:
        return F.lit(None).cast("string")
    return F.coalesce(*[F.when(condition, F.lit(c)) for condition, c in branches])


def _is_json_container(json_text: "Column", keys: list[str] | tuple[str, ...], value: "Column") -> "Column":
    """Whether ``value``, read as text at ``keys`` of ``json_text``, was a JSON object or array there
    (DuckDB's ``json_type``), not a string that starts with { or [.

    Only such values are looked at again: the text is parsed with a schema holding just that key,
    typed as a map (for ``{``) or an array (for ``[``); a string there does not convert and gives
    NULL. One small Jackson parse per suspicious value, nothing for the others.
    """
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    def at_keys(kind: "T.DataType") -> "Column":
        schema = kind
        for key in reversed(keys):
            schema = T.StructType([T.StructField(key, schema)])
        parsed = F.from_json(json_text, schema, {"mode": "PERMISSIVE", "allowNonNumericNumbers": "true"})
        for key in keys:
            parsed = parsed.getField(key)
        return parsed.isNotNull()

    first = F.substring(value, 1, 1)
    return (
        F.when(first == "{", at_keys(T.MapType(T.StringType(), T.StringType())))
        .when(first == "[", at_keys(T.ArrayType(T.StringType())))
        .otherwise(F.lit(False))
    )


def _parquet_column(frame: "DataFrame", name: str, columns: list[str]) -> "Column":
    """A mapped column of a Parquet file, as DuckDB reads it (``sources._column_reference``): the
    column, else a dotted path into the nested value of its first key (NULL where a row lacks it)."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    if name in columns:
        return _quoted(name)
    head, *rest = path_segments(name)
    if rest and head in columns and isinstance(frame.schema[head].dataType, (T.StructType, T.MapType, T.ArrayType)):
        return F.get_json_object(F.to_json(_quoted(head)), _spark_json_path(rest))
    return F.lit(None).cast("string")


def _spark_json_path(keys: list[str] | tuple[str, ...]) -> str:
    """Spark's JSON path of checked keys, bracketed so hyphens and spaces are kept: $['a']['b']."""
    return "$" + "".join(f"['{key}']" for key in keys)


def _jsonl_part(spark: "SparkSession", f: InputFile, mapping: FieldMapping) -> "DataFrame":
    """A JSON Lines file, one row per non-blank line, numbered by line.

    Lines are split on LF only (CRLF loses its CR; a bare CR stays inside its line, as DuckDB
    reads it). Line numbers come from the order of the file's splits: a per-partition count gives
    each partition's first line number (partitions of one file are in file order). A line is
    ``parse_ok`` when it is valid UTF-8 without NUL bytes and one JSON object with nothing after it.
    """
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    lines = spark.read.option("lineSep", "\n").text(_uri(Path(engine_file(f.path))))
    lines = lines.select(F.col("value").alias("line"), F.monotonically_increasing_id().alias("__id"))
    # monotonically_increasing_id = partition index << 33 | row within the partition.
    lines = lines.select("line", F.shiftright("__id", 33).alias("__part"), (F.col("__id").bitwiseAND((1 << 33) - 1)).alias("__pos"))
    sizes = {row[0]: row[1] for row in lines.groupBy("__part").count().collect()}
    starts, total = [], 0
    for part in range(max(sizes, default=-1) + 1):
        starts.append(total)
        total += sizes.get(part, 0)
    first = F.element_at(F.array(*[F.lit(s) for s in starts]), F.col("__part").cast("int") + 1) if starts else F.lit(0)
    numbered = lines.select((first + F.col("__pos") + 1).cast("bigint").alias("row_number"), "line")

    text = F.regexp_replace(F.col("line"), "\r$", "")
    text = F.when(F.col("row_number") == 1, F.regexp_replace(text, "^\ufeff", "")).otherwise(text)
    readable = F.expr("is_valid_utf8(line)") & (F.instr(F.col("line"), "\u0000") == 0)
    numbered = numbered.select("row_number", text.alias("line"), readable.alias("readable"))
    numbered = numbered.where(~F.col("readable") | (F.regexp_replace(F.col("line"), "[ \t]", "") != ""))

    sources = {c: mapping.column(c) for c in CANONICAL_COLUMNS}
    # A dotted source name is a path into nested objects (issue 18), read from the line itself.
    schema = T.StructType(
        [T.StructField(name, T.StringType()) for name in dict.fromkeys(sources.values()) if "." not in name]
        + [T.StructField(_CORRUPT, T.StringType())]
    )
    parsed = F.when(F.col("readable"), F.from_json(F.col("line"), schema, _JSON_OPTIONS))
    numbered = numbered.select("*", parsed.alias("record"))
    numbered = numbered.select("*", (
        F.col("readable")
        & F.col("record").isNotNull()
        & F.col(f"record.{_CORRUPT}").isNull()
        & F.col("line").rlike(r"\}\s*$")
    ).alias("__parse_ok"))
    parse_ok = F.col("__parse_ok")
    raw_values = [
        F.get_json_object(F.col("line"), _spark_json_path(path_segments(sources[c]))) if "." in sources[c]
        else F.col("record").getField(sources[c])
        for c in CANONICAL_COLUMNS
    ]
    values = [F.when(parse_ok, value) for value in raw_values]
    fields = [value.alias(c) for value, c in zip(values, CANONICAL_COLUMNS)]
    payload_type = "STRUCT<none: STRING>"  # never serialised: payload_text holds the raw line
    # An object or array where a canonical column wants a scalar is a bad_value (issue 16), told
    # from a string that merely starts with { or [ by a second look at such values only.
    # The first such column: array_compact + element_at, not COALESCE over CASEs, which Catalyst's
    # conditional rewrites expanded branch by branch until the plan outgrew the driver's heap.
    kinds = [F.when(_is_json_container(F.col("line"), path_segments(sources[c]), value), F.lit(c))
             for value, c in zip(raw_values, CANONICAL_COLUMNS)]
    nested = F.when(parse_ok, F.element_at(F.array_compact(F.array(*kinds)), 1))
    # Custom context columns (issue 17): each feature's raw value read from the line by its path.
    context = _context(mapping, lambda source: F.get_json_object(F.col("line"), _spark_json_path(path_segments(source))))
    return numbered.select(
        *_head(f),
        "row_number",
        parse_ok.alias("parse_ok"),
        F.expr("make_valid_utf8(line)").alias("payload_text"),
        F.lit(None).cast(payload_type).alias("payload"),
        nested.alias("nested_column"),
        *fields,
        *([F.when(parse_ok, context).alias(CONTEXT_COLUMN)] if context is not None else []),
    )


# ---------------------------------------------------------------- conform, validate, write


def _conform(frame: "DataFrame", model) -> "DataFrame":
    """Cast every column to its model's type, in the frame's own column order.

    Raises
    ------
    TableValidationError : the frame's columns are not exactly the model's (strict).
    """
    from pyspark.sql import functions as F

    schema = model.to_schema()
    wanted = list(schema.columns)
    if sorted(frame.columns) != sorted(wanted):
        raise TableValidationError(
            model.__name__, 1, f"columns {sorted(set(frame.columns) ^ set(wanted))} differ from the contract"
        )
    casts = []
    for name in frame.columns:
        dtype = schema.columns[name].dtype.type
        spark_type = next(kind for base, kind in _SPARK_TYPES.items() if isinstance(dtype, base) or dtype == base)
        casts.append(F.col(name).cast(spark_type).alias(name))
    return frame.select(casts)


def aggregate_checks(model) -> list[tuple[str, str]]:
    """(name, Spark SQL counting the rows that break it) for every check of a pandera model that can
    be counted in one aggregate pass: nulls, uniqueness, value checks, cross-column checks."""
    schema = model.to_schema()
    checks: list[tuple[str, str]] = []
    for name, column in schema.columns.items():
        ref = f"`{name}`"
        if not column.nullable:
            checks.append((f"{name} not null", f"COUNT_IF({ref} IS NULL)"))
        if column.unique:
            checks.append((f"{name} unique", f"COUNT({ref}) - COUNT(DISTINCT {ref})"))
        for check in column.checks:
            stats = check.statistics
            if check.name == "greater_than_or_equal_to":
                broken = f"{ref} < {stats['min_value']!r}"
            elif check.name == "less_than_or_equal_to":
                broken = f"{ref} > {stats['max_value']!r}"
            elif check.name == "isin":
                values = ", ".join(_sql_value(v) for v in stats["allowed_values"])
                broken = f"{ref} NOT IN ({values})"
            else:
                log.warning("no Spark SQL for check %s on %s.%s: checked on the sample only", check.name, model.__name__, name)
                continue
            checks.append((f"{name} {check.name} {stats}", f"COUNT_IF({broken})"))
    for check in schema.checks:
        condition = DATAFRAME_CHECKS.get(check.name)
        if condition is None:
            log.warning("no Spark SQL for dataframe check %s of %s: checked on the sample only", check.name, model.__name__)
            continue
        checks.append((check.name, f"COUNT_IF({condition})"))
    return checks


def _sql_value(value: object) -> str:
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return repr(value)


def _validate(
    frame: "DataFrame", model, table: str, types: dict[str, str] | None = None, extra: tuple["Column", ...] = ()
) -> Any:
    """Aggregate checks on every row, then the pandera model on a sample (module docstring);
    ``types``: custom feature columns of the feedback table, checked with ``features.validate_feedback``;
    ``extra``: more aggregates computed in the same pass, returned (the Row, as ``x0``, ``x1``...).

    Raises
    ------
    TableValidationError : naming the table, the failing checks and their row counts.
    """
    from pyspark.sql import functions as F

    checks = aggregate_checks(model)
    row = frame.agg(
        F.count(F.lit(1)).alias("__rows"),
        *[F.expr(sql).alias(f"c{k}") for k, (_, sql) in enumerate(checks)],
        *[column.alias(f"x{k}") for k, column in enumerate(extra)],
    ).collect()[0]
    failing = {name: int(row[f"c{k}"]) for k, (name, _) in enumerate(checks) if row[f"c{k}"]}
    if failing:
        raise TableValidationError(table, len(failing), f"on all rows: {failing}")
    rows = int(row["__rows"])
    sample = frame if rows <= SAMPLE_ROWS else frame.sample(fraction=min(1.0, 1.2 * SAMPLE_ROWS / rows), seed=0).limit(SAMPLE_ROWS)
    collected = pl.from_arrow(sample.toArrow())
    if table == "feedback" and types:
        features.validate_feedback(collected, types)
    elif table == "feedback":
        validate_feedback(collected)
    else:
        validate_table(collected, model, table)
    return row


def _write(frame: "DataFrame", write: TableWrite, check: "Callable[[DataFrame], Any] | None" = None) -> "DataFrame":
    """Write Parquet (snappy) into the table write's folder (through a plain link), keep only the
    ``part-*.parquet`` files there and hand them to ``write`` to be committed; returns the written
    rows, read back from those files.

    ``check`` is called with the written rows before they are handed over (issue 19: the plan runs
    once, for the write, and the checks read its columnar output): when it raises, the files are
    never adopted and the failed run deletes its folder (``TableWrite.discard``).
    """
    import pyarrow.parquet as pq

    write.folder.mkdir(parents=True, exist_ok=True)
    target = engine_folder(write.folder) / "spark"
    frame.write.mode("errorifexists").option("compression", "snappy").parquet(_uri(target))
    parts = []
    for path in sorted((write.folder / "spark").rglob("*")):
        if path.is_file() and (path.name.startswith((".", "_")) or path.suffix == ".crc"):
            path.unlink()
        elif path.is_file() and path.suffix == ".parquet":
            parts.append(path)
    written = frame.sparkSession.read.schema(frame.schema).parquet(_uri(target))
    if check is not None:
        check(written)
    if parts:
        write.adopt(parts, pq.read_schema(parts[0]))
    return written


def _write_feedback(mart: "DataFrame", write: TableWrite, types: dict[str, str] | None = None) -> dict:
    """Write the feedback table's files, rows grouped by impression_date and sorted by exposure_id
    within each file (as the DuckDB engine writes it), then validate the written rows, with the
    run's summary counted in the same pass. ``types``: the custom feature columns after the
    contract's (issue 17), validated with their declared types."""
    from pyspark.sql import functions as F

    summary: dict = {}

    def check(written: "DataFrame") -> None:
        row = _validate(written, FeedbackTable, "feedback", types, extra=(
            F.count_if("observed"), F.count_if("copied"), F.count_if("regenerated"), F.count_if("shared"),
            F.count_distinct("impression_date"),
        ))
        summary.update({
            "exposures": int(row["__rows"]), "observed": int(row["x0"]), "copied": int(row["x1"]),
            "regenerated": int(row["x2"]), "shared": int(row["x3"]), "days": int(row["x4"]),
        })

    # Every file holds whole days (a hash partition by day); an empty mart is one file with the schema.
    _write(mart.repartition("impression_date").sortWithinPartitions("exposure_id"), write, check=check)
    return summary


# ---------------------------------------------------------------- custom context columns (issue 17)
#
# The DuckDB engine's feedback_etl.features, step for step: the readers add ``context`` (each
# feature's raw value as text, one JSON object), staging keeps it beside the typed rows and
# WH/events carries it, and the feedback build gives each feature a typed column from the
# exposure's impression. Types, inference, the checks, the level cap and the warnings are the
# same; the expressions are written for Spark so they answer as DuckDB's do (a numeric value is a
# finite DOUBLE that DuckDB would read too: Java's 1d / 1f suffixes are not numbers).


def _context(mapping: FieldMapping, reference) -> "Column | None":
    """``context`` of a raw slice (features.context_sql): ``to_json`` of a struct of each feature's
    raw value as text, nulls kept (RUN_CONF); None without features."""
    from pyspark.sql import functions as F

    if not mapping.features:
        return None
    return F.to_json(F.struct(*[reference(source).cast("string").alias(name) for name, (_, source) in mapping.features.items()]))


def _attach_context(spark: "SparkSession", cache: "_Cache", new_events: "DataFrame") -> "DataFrame":
    """``new_events`` with its ``context`` column last (features.attach_context), under that view."""
    if "feature_context" not in cache.views:
        frame = new_events.selectExpr("*", "CAST(NULL AS STRING) AS `context`")
    else:
        frame = spark.sql(
            """SELECT n.*, c.`context` FROM new_events AS n
            LEFT JOIN (SELECT `source_file`, `row_number`, ANY_VALUE(`context`) AS `context` FROM feature_context GROUP BY 1, 2) AS c
            ON c.`source_file` = n.`source_file` AND c.`row_number` = n.`row_number`"""
        )
        frame = cache.keep(frame, "new_events_context")
    frame.createOrReplaceTempView("new_events")
    return frame


def _raw_feature(name: str) -> "Column":
    from pyspark.sql import functions as F

    value = F.trim(F.get_json_object(F.col("context"), _spark_json_path([name])))
    return F.when(value != "", value)


def _finite_double(raw: "Column") -> "Column":
    """DuckDB's ``CASE WHEN isfinite(TRY_CAST(raw AS DOUBLE)) THEN ... END`` on Spark."""
    from pyspark.sql import functions as F

    from feedback_etl.sql_translate import DOUBLE_SUFFIX

    number = raw.try_cast("double")
    finite = number.isNotNull() & ~F.isnan(number) & (F.abs(number) != float("inf")) & ~raw.rlike(DOUBLE_SUFFIX)
    return F.when(finite, number)


def _typed_feature(raw: "Column", kind: str) -> "Column":
    """features._typed on Spark."""
    from pyspark.sql import functions as F

    if kind == "numeric":
        return _finite_double(raw)
    if kind == "boolean":
        lowered = F.lower(raw)
        return F.when(lowered.isin("true", "1"), F.lit(True)).when(lowered.isin("false", "0"), F.lit(False))
    return raw


def _add_feature_columns(
    spark: "SparkSession", cache: "_Cache", mart: "DataFrame", wanted: dict[str, dict], *, max_levels: int
) -> tuple["DataFrame", dict[str, dict], list[str]]:
    """features.add_feature_columns on Spark: (the mart with one typed column per kept feature, the
    features kept, warnings). Raises as it does (InputFileError, ConfigError)."""
    from pyspark.sql import functions as F

    if not wanted:
        return mart, {}, []
    context = cache.keep(spark.sql(
        """SELECT `exposure_id`, `context`, `source_file`, `row_number` FROM all_events
        WHERE `event_type` = 'impression' AND `context` IS NOT NULL"""
    ), "impression_context")
    warnings: list[str] = []
    kept: dict[str, dict] = {}
    columns: list["Column"] = []
    for name, spec in wanted.items():
        raw = _raw_feature(name)
        kind = spec["type"]
        if kind == features.INFERRED:
            values, booleans, numbers = context.agg(
                F.count(raw), F.count_if(F.lower(raw).isin("true", "false")), F.count(_finite_double(raw))
            ).collect()[0]
            kind = "boolean" if values and booleans == values else "numeric" if values and numbers == values else "categorical"
        elif kind != "categorical":
            bad = context.where(raw.isNotNull() & _typed_feature(raw, kind).isNull())
            row = bad.orderBy("source_file", "row_number").select("source_file", "row_number", raw.alias("value")).limit(1).collect()
            if row:
                raise InputFileError(
                    f"feature {name!r} is declared {kind} but holds {str(row[0]['value'])[:40]!r}",
                    where=f"{row[0]['source_file']}, row {row[0]['row_number']}, column {spec['source']}",
                    fix=f"fix the value, or declare {name} categorical in the mapping's [features] table",
                )
        typed = _typed_feature(raw, kind)
        non_null, distinct = context.agg(F.count(typed), F.count_distinct(typed)).collect()[0]
        record = features.judge_feature(name, spec, kind, non_null, distinct, max_levels, warnings)
        if record is None:
            continue
        kept[name] = record
        columns.append(typed.cast(_FEATURE_TYPES[kind]).alias(name))
    for message in warnings:
        log.warning("ingest features: %s", message)
    if columns:
        impressions = context.select(F.col("exposure_id").alias("__context_exposure_id"), "context")
        joined = mart.join(impressions, mart["exposure_id"] == impressions["__context_exposure_id"], how="left")
        mart = cache.keep(joined.select(*[mart[c] for c in mart.columns], *columns), "feedback_mart_features")
    return mart, kept, warnings


_FEATURE_TYPES = {"categorical": "STRING", "numeric": "DOUBLE", "boolean": "BOOLEAN"}
