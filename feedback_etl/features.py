"""Custom context columns (issue 17): the feature contract from raw events to the feedback table.

What drives who gives feedback (a plan tier, an app version, a country, an experiment arm, the
turn number...) is logged by every product, but not in the canonical columns. A custom feature is

* declared in the mapping file's ``[features]`` table (``plan_tier = "categorical"``, or
  ``turn = {type = "numeric", source = "meta.turn"}``), or
* an extra raw-event column picked up with ``causalrm ingest --keep-extra-columns`` (its type is
  inferred: boolean when every value is true/false, numeric when every value is a number, else
  categorical).

The flow (DuckDB engine; ``feedback_etl.spark_ingest`` runs the same steps on Spark):

1. the canonical readers (``feedback_etl.sources``) add a ``context`` column to ``raw_events``: a
   JSON object of each feature's raw value as text (:func:`context_sql`);
2. staging keeps it beside the typed row (:func:`capture_context`) and the accepted events carry
   it to ``WH/events`` (:func:`attach_context`: the ``context`` column, null without features);
3. the feedback build gives each feature a typed column of the feedback table, taken from the
   exposure's impression (:func:`add_feature_columns`): declared types are checked (a value that
   does not parse is one error naming file, row and column), categorical columns are capped in
   distinct values, all-null and constant columns are warned about;
4. the DuckDB engine checks every row of the written feedback files against ``FeedbackTable``'s
   SQL form and each feature against its declared type (:func:`feature_sql`, the SQL form of
   :func:`feature_schema`); the Spark engine validates with :func:`validate_feedback` (pandera);
   the manifest records each feature.

Features accumulate across runs: a column declared in one batch and absent in another is null for
the other batch's exposures (the manifest's ``tables.features`` keeps every feature's type).
Propensity fits read them with :func:`read_feature_frame` and use them by default.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

import duckdb

from feedback_etl.mapping import CONTEXT_COLUMN, FieldMapping, check_feature_name, check_source_column, contract_columns, json_path
from schemas.errors import ConfigError, InputFileError

if TYPE_CHECKING:
    import polars as pl

# polars is imported where a frame is handled: an ingest without custom features never does (issue 19).
log = logging.getLogger(__name__)

# An extra column picked up by --keep-extra-columns gets its type from the data.
INFERRED = "inferred"
# Distinct values a categorical feature may hold: more is an id, not a context (use an entity feature).
DEFAULT_MAX_LEVELS = 1000
_POLARS_TYPES: dict[str, str] = {"categorical": "String", "numeric": "Float64", "boolean": "Boolean"}
# Outcome columns: kept in the feedback table beside the binary label (the ``ratings`` source's raw
# rating, issue 17), read by ``fit-label-aware --label-column``, never a model feature (they exist only
# where feedback was given, so a propensity model would read the answer off them).
OUTCOME_COLUMNS: tuple[str, ...] = ("rating",)


def with_extra_columns(mapping: FieldMapping, unknown_columns: dict[str, list[str]]) -> tuple[FieldMapping, list[str]]:
    """``mapping`` plus every extra raw-event column (``--keep-extra-columns``) as an inferred feature.

    Returns the mapping and warnings for extra columns that cannot be features (their names).
    Declared features and columns that are the source of a declared feature are left as declared.
    """
    features = dict(mapping.features)
    sources = {source for _, source in features.values()} | {source.split(".")[0] for _, source in features.values()}
    skipped: list[str] = []
    for column in sorted({c for columns in unknown_columns.values() for c in columns}):
        if column in features or column in sources:
            continue
        try:
            check_feature_name(column, where="--keep-extra-columns")
            check_source_column(column, where="--keep-extra-columns")
        except ConfigError:
            skipped.append(column)
            continue
        features[column] = (INFERRED, column)
    warnings = [
        f"--keep-extra-columns: {len(skipped)} extra column(s) {skipped[:5]} cannot be feature names; "
        "declare them in the mapping's [features] table with a name and source = \"...\""
    ] if skipped else []
    return replace(mapping, features=MappingProxyType(features)), warnings


# Engines that carry custom features: DuckDB here, Spark in feedback_etl.spark_ingest (same steps).
FEATURE_ENGINES: tuple[str, ...] = ("duckdb", "spark")


def check_engine(engine: str, mapping: FieldMapping, keep_extra_columns: bool) -> None:
    """An engine that does not carry custom features refuses them: one line instead of a silent drop."""
    if engine not in FEATURE_ENGINES and (mapping.features or keep_extra_columns):
        raise ConfigError(
            f"custom feature columns ([features] table or --keep-extra-columns) are not supported by the {engine} engine",
            where=f"--engine {engine}",
            fix="ingest with --engine duckdb to keep them, or drop the [features] table and --keep-extra-columns",
        )


def check_source(source: str, mapping: FieldMapping, keep_extra_columns: bool) -> None:
    """Custom features are read from canonical raw events; an adapter's source has none to keep."""
    if source != "canonical" and (mapping.features or keep_extra_columns):
        raise ConfigError(
            f"custom feature columns ([features] table or --keep-extra-columns) are read from canonical raw events, not --source {source}",
            where=f"--source {source}",
            fix="drop the [features] table / --keep-extra-columns, or export the events in the canonical format with the extra columns",
        )


# ---------------------------------------------------------------- reading: raw -> context


def context_sql(mapping: FieldMapping, reference) -> str | None:
    """SQL for the ``context`` column of a canonical slice of ``raw_events``, None without features.

    ``reference(source)`` is the SQL of one feature's raw value (any type; cast to text here):
    for JSON Lines a path into the record, for Parquet / CSV the column (or a nested path).
    """
    if not mapping.features:
        return None
    pairs = ", ".join(f"'{name}', CAST({reference(source)} AS VARCHAR)" for name, (_, source) in mapping.features.items())
    return f"CAST(json_object({pairs}) AS VARCHAR)"


def jsonl_reference(source: str) -> str:
    """A feature's raw value in a JSON Lines record (the ``record`` column), as text."""
    return f"json_extract_string(\"record\", '{json_path(source)}')"


# ---------------------------------------------------------------- staging: keep context beside the typed rows


def capture_context(conn: duckdb.DuckDBPyConnection, *, append: bool) -> bool:
    """Copy the ``context`` of the current ``raw_events`` slice into ``feature_context``.

    Returns whether the slice had a context column (no features: nothing is copied)."""
    columns = {row[0] for row in conn.execute('DESCRIBE "raw_events"').fetchall()}
    if CONTEXT_COLUMN not in columns:
        return False
    # Keyed by (file, row, event id): an adapter makes several events of one source row (a rating
    # matrix line holds a user's every item), each with its own context.
    select = (
        'SELECT "source_file", "row_number", CAST("event_id" AS VARCHAR) AS "event_id", "context" '
        'FROM "raw_events" WHERE "context" IS NOT NULL'
    )
    if append and _has_table(conn, "feature_context"):
        conn.execute(f'INSERT INTO "feature_context" {select}')
    else:
        conn.execute(f'CREATE OR REPLACE TEMP TABLE "feature_context" AS {select}')
    return True


def attach_context(conn: duckdb.DuckDBPyConnection) -> None:
    """Give ``new_events`` its ``context`` column (last, as in ``WH/events``): null without features."""
    if _has_table(conn, "feature_context"):
        conn.execute(
            """CREATE OR REPLACE TEMP TABLE "new_events_context" AS
            SELECT n.*, c."context" FROM "new_events" AS n
            LEFT JOIN (
                SELECT "source_file", "row_number", "event_id", ANY_VALUE("context") AS "context"
                FROM "feature_context" GROUP BY 1, 2, 3
            ) AS c ON c."source_file" = n."source_file" AND c."row_number" = n."row_number" AND c."event_id" = n."event_id"
            """
        )
    else:
        conn.execute('CREATE OR REPLACE TEMP TABLE "new_events_context" AS SELECT *, CAST(NULL AS VARCHAR) AS "context" FROM "new_events"')
    # ``new_events`` is a view over the staging tables (ingest.stage) or, for other callers, a table.
    is_view = conn.execute("SELECT COUNT(*) FROM duckdb_views() WHERE view_name = 'new_events'").fetchone()[0]
    conn.execute('DROP VIEW "new_events"' if is_view else 'DROP TABLE "new_events"')
    conn.execute('ALTER TABLE "new_events_context" RENAME TO "new_events"')


def _has_table(conn: duckdb.DuckDBPyConnection, name: str) -> bool:
    return bool(conn.execute("SELECT COUNT(*) FROM duckdb_tables() WHERE table_name = ?", [name]).fetchone()[0])


# ---------------------------------------------------------------- the feedback table's feature columns


def resolve_features(mapping: FieldMapping, recorded: dict | None) -> dict[str, dict]:
    """Every feature of the warehouse: earlier runs' (``tables.features`` of the manifest) and this run's.

    A type declared in this run's mapping wins; an inferred column keeps the type it was given
    first, so a batch cannot flip a column's type. Returns name -> {"type", "source", "origin"}.
    """
    features = {name: {**spec, "origin": "earlier run"} for name, spec in (recorded or {}).items()}
    for name, (kind, source) in mapping.features.items():
        if kind == INFERRED and name in features:
            continue
        features[name] = {"type": kind, "source": source, "origin": "extra column" if kind == INFERRED else "declared"}
    return features


def judge_feature(name: str, spec: dict, kind: str, non_null: int, distinct: int, max_levels: int,
                  warnings: list[str]) -> dict | None:
    """What ingest keeps of one feature column once an engine has counted its values (DuckDB here,
    Spark in ``spark_ingest``): its manifest record, or None for an extra column over the level cap.
    A declared categorical over the cap is a ConfigError; an all-null or constant column is kept
    with a warning appended to ``warnings``."""
    if kind == "categorical" and distinct > max_levels:
        if spec["origin"] == "declared":
            raise ConfigError(
                f"categorical feature {name!r} has {distinct:,} distinct values, more than the cap of {max_levels:,}",
                where=f"features table, column {name}",
                fix="an id is not a context column: pass it as --user-features / --item-features at fit time, "
                "declare it numeric, or raise --max-feature-levels",
            )
        warnings.append(f"extra column {name!r} has {distinct:,} distinct values (cap {max_levels:,}): not kept as a feature")
        return None
    if non_null == 0:
        warnings.append(f"feature {name!r} is null on every exposure (source {spec['source']!r} absent?): it carries no information")
    elif distinct == 1:
        warnings.append(f"feature {name!r} holds one value on every exposure that has it: it carries little information")
    return {"type": kind, "source": spec["source"], "origin": spec["origin"], "non_null": int(non_null), "distinct": int(distinct)}


def add_feature_columns(
    conn: duckdb.DuckDBPyConnection, features: dict[str, dict], *, max_levels: int = DEFAULT_MAX_LEVELS
) -> tuple[dict[str, dict], list[str]]:
    """Append one typed column per feature to ``feedback_mart`` (from each exposure's impression).

    A constant number of passes whatever the number of features (issue 19): every feature's raw
    text is extracted from the impressions' context once (one JSON parse per row), then one
    aggregate infers types and counts the values that do not parse, one counts each typed column's
    values, and one join appends the columns.

    Returns the features kept (name -> type, source, origin, non_null, distinct) and warnings.

    Raises
    ------
    InputFileError : a declared numeric or boolean feature holds a value of another type (naming
        the file, row and column of the first one).
    ConfigError : a declared categorical feature has more than ``max_levels`` distinct values.
    """
    if not features:
        return {}, []
    names = list(features)
    raws = {name: f'"__raw_{i}"' for i, name in enumerate(names)}
    paths = ", ".join(f"'$.\"{name}\"'" for name in names)
    extracted = ", ".join(f"NULLIF(TRIM(c.\"__values\"[{i + 1}]), '') AS {raws[name]}" for i, name in enumerate(names))
    conn.execute(
        f"""CREATE OR REPLACE TEMP TABLE "impression_context" AS
        SELECT c."exposure_id", c."source_file", c."row_number", {extracted}
        FROM (
            SELECT "exposure_id", "source_file", "row_number", json_extract_string("context", [{paths}]) AS "__values"
            FROM "all_events" WHERE "event_type" = 'impression' AND "context" IS NOT NULL
        ) AS c"""
    )
    # Pass 1: what an inferred column holds, and how many values of a declared numeric / boolean do not parse.
    probes: list[str] = []
    for name in names:
        raw, kind = raws[name], features[name]["type"]
        if kind == INFERRED:
            probes += [f"COUNT({raw})", f"COUNT(*) FILTER (WHERE LOWER({raw}) IN ('true', 'false'))",
                       f"COUNT(*) FILTER (WHERE isfinite(TRY_CAST({raw} AS DOUBLE)))"]
        elif kind != "categorical":
            probes.append(f"COUNT(*) FILTER (WHERE {raw} IS NOT NULL AND {_typed(raw, kind)} IS NULL)")
    counts = iter(conn.execute(f'SELECT {", ".join(probes)} FROM "impression_context"').fetchone() if probes else ())
    kinds: dict[str, str] = {}
    bad: dict[str, int] = {}
    for name in names:
        kind = features[name]["type"]
        if kind == INFERRED:
            kind = _inferred_kind(next(counts), next(counts), next(counts))
        elif kind != "categorical":
            bad[name] = next(counts)
        kinds[name] = kind
    # Pass 2: each typed column's values and distinct values.
    typed = {name: _typed(raws[name], kinds[name]) for name in names}
    totals = conn.execute(
        f'SELECT {", ".join(f"COUNT({typed[n]}), COUNT(DISTINCT {typed[n]})" for n in names)} FROM "impression_context"'
    ).fetchone()
    warnings: list[str] = []
    kept: dict[str, dict] = {}
    expressions: list[str] = []
    for i, name in enumerate(names):  # in the features' order: the first faulty one is the error
        spec = features[name]
        if bad.get(name):
            _raise_bad_value(conn, name, spec, kinds[name], raws[name])
        record = judge_feature(name, spec, kinds[name], totals[2 * i], totals[2 * i + 1], max_levels, warnings)
        if record is None:
            continue
        kept[name] = record
        expressions.append(f'{_typed("c." + raws[name], kinds[name])} AS "{name}"')
    for message in warnings:
        log.warning("ingest features: %s", message)
    if expressions:
        conn.execute(
            f"""CREATE OR REPLACE TEMP TABLE "feedback_mart_features" AS
            SELECT m.*, {", ".join(expressions)}
            FROM "feedback_mart" AS m
            LEFT JOIN "impression_context" AS c ON c."exposure_id" = m."exposure_id"
            """
        )
        conn.execute('DROP TABLE "feedback_mart"')
        conn.execute('ALTER TABLE "feedback_mart_features" RENAME TO "feedback_mart"')
    conn.execute('DROP TABLE "impression_context"')
    return kept, warnings


def _typed(raw: str, kind: str) -> str:
    if kind == "numeric":
        return f"CASE WHEN isfinite(TRY_CAST({raw} AS DOUBLE)) THEN TRY_CAST({raw} AS DOUBLE) END"
    if kind == "boolean":
        return f"CASE LOWER({raw}) WHEN 'true' THEN TRUE WHEN '1' THEN TRUE WHEN 'false' THEN FALSE WHEN '0' THEN FALSE END"
    return raw


def _inferred_kind(values: int, booleans: int, numbers: int) -> str:
    """An extra column's type: boolean when every value is true/false, numeric when every value is a number."""
    if values and booleans == values:
        return "boolean"
    if values and numbers == values:
        return "numeric"
    return "categorical"


def _raise_bad_value(conn: duckdb.DuckDBPyConnection, name: str, spec: dict, kind: str, raw: str) -> None:
    """The first value of a declared numeric / boolean feature that is not of its type: one error."""
    bad = f"{raw} IS NOT NULL AND {_typed(raw, kind)} IS NULL"
    source_file, row_number, value = conn.execute(
        f'SELECT "source_file", "row_number", {raw} FROM "impression_context" WHERE {bad} ORDER BY 1, 2 LIMIT 1'
    ).fetchone()
    raise InputFileError(
        f"feature {name!r} is declared {kind} but holds {str(value)[:40]!r}",
        where=f"{source_file}, row {row_number}, column {spec['source']}",
        fix=f"fix the value, or declare {name} categorical in the mapping's [features] table",
    )


# ---------------------------------------------------------------- validation and reading back


def feature_schema(types: dict[str, str]):
    """A pandera schema of the feature columns: each nullable, of its declared type, numbers finite."""
    import pandera.polars as pa
    import polars as pl

    columns = {}
    for name, kind in types.items():
        checks = [pa.Check(lambda data: data.lazyframe.select(pl.col(data.key).is_finite() | pl.col(data.key).is_null()), name="finite")] if kind == "numeric" else []
        columns[name] = pa.Column(getattr(pl, _POLARS_TYPES[kind])(), nullable=True, coerce=True, checks=checks)
    return pa.DataFrameSchema(columns, strict=True, name="FeedbackFeatures")


# Each feature type's DuckDB cast and the Arrow type a validated polars batch writes it as
# (``_POLARS_TYPES``: String as large_string, as polars writes strings).
_SQL_TYPES: dict[str, tuple[str, str]] = {
    "categorical": ("VARCHAR", "large_string"), "numeric": ("DOUBLE", "float64"), "boolean": ("BOOLEAN", "bool_"),
}


def feature_sql(types: dict[str, str]) -> tuple[list[str], list, list[tuple[str, str]]]:
    """:func:`feature_schema` in SQL, for the DuckDB engine (issue 19: no pandera, no Python-side frame).

    Returns the select list entries (each feature cast to its declared type, as pandera's coerce
    does), the Arrow fields the warehouse commits for them, and the checks as ``(name, SQL of an
    aggregate counting the rows that break it)``: a numeric feature must be finite or null.
    """
    import pyarrow as pa

    select, fields, checks = [], [], []
    for name, kind in types.items():
        cast, arrow = _SQL_TYPES[kind]
        quoted = '"' + name.replace('"', '""') + '"'
        select.append(f"CAST({quoted} AS {cast}) AS {quoted}")
        fields.append(pa.field(name, getattr(pa, arrow)()))
        if kind == "numeric":
            checks.append((f"{name}: finite", f"COUNT_IF(NOT isfinite({quoted}))"))
    return select, fields, checks


def validate_feedback(frame: pl.DataFrame, types: dict[str, str] | None = None) -> pl.DataFrame:
    """Validate a feedback frame: contract columns with ``FeedbackTable``, features with their types.

    Raises
    ------
    TableValidationError : either part breaks its contract.
    """
    from feedback_etl import io
    from schemas.validation import validate_table

    if not types:
        return io.validate_feedback(frame)
    contract = contract_columns()
    base = io.validate_feedback(frame.select(contract))
    extra = validate_table(frame.select(list(types)), feature_schema(types), "feedback (custom features)")
    return base.hstack(extra)


def feature_types(frame: pl.DataFrame | dict) -> dict[str, str]:
    """name -> categorical | numeric | boolean of the custom feature columns in a frame (or schema)."""
    import polars as pl

    schema = frame.schema if isinstance(frame, pl.DataFrame) else frame
    contract = set(contract_columns())
    types = {}
    for name, dtype in schema.items():
        if name in contract or name == CONTEXT_COLUMN or name in OUTCOME_COLUMNS:
            continue
        types[name] = "boolean" if dtype == pl.Boolean else "numeric" if dtype.is_numeric() else "categorical"
    return types


def read_feature_frame(warehouse: str | Path, *, version: int | str | None = None) -> pl.DataFrame | None:
    """``exposure_id`` and every custom feature column of the feedback table, None when it has none."""
    import polars as pl
    import pyarrow.dataset  # noqa: F401  (the dataset's module)

    from feedback_etl import io

    dataset = io.feedback_dataset(warehouse, version=version)
    schema = pl.from_arrow(dataset.schema.empty_table()).schema
    names = list(feature_types(dict(schema)))
    if not names:
        return None
    return pl.from_arrow(dataset.to_table(columns=["exposure_id", *names]))


def read_outcome_column(warehouse: str | Path, name: str, *, version: int | str | None = None) -> pl.DataFrame:
    """``exposure_id`` and the outcome column ``name`` (e.g. ``rating``) of the feedback table.

    Raises
    ------
    ConfigError : ``name`` is no outcome column, or the feedback table does not hold it.
    """
    import polars as pl
    import pyarrow.dataset  # noqa: F401  (the dataset's module)

    from feedback_etl import io

    if name not in OUTCOME_COLUMNS:
        raise ConfigError(f"{name!r} is not an outcome column", where="--label-column", fix=f"use one of {', '.join(OUTCOME_COLUMNS)}")
    dataset = io.feedback_dataset(warehouse, version=version)
    if name not in dataset.schema.names:
        raise ConfigError(
            f"the feedback table has no {name!r} column", where=f"{warehouse}, --label-column {name}",
            fix="ingest with --source ratings, whose adapter keeps the raw rating beside the binary label",
        )
    return pl.from_arrow(dataset.to_table(columns=["exposure_id", name]))
