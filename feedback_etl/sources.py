"""Input readers and source adapters: turn input files into the ``raw_events`` relation.

Everything engine-specific about *reading* lives here (DuckDB table functions over files); every
*transform* from ``raw_events`` onward is a SQL file in ``sql/``. ``raw_events`` has the columns
``file_index, source_file, row_number, parse_ok, payload`` and the sixteen canonical columns of
``schemas.raw_event`` (of any type: ``sql/staging/stg_events_typed.sql`` types them).

Readers keep every input row, so reconciliation can count them:

* JSON Lines (``.jsonl``, ``.ndjson``, ``.json``, optionally ``.gz``) are read one line at a time as
  text; a line that is not a JSON object is an ``unparseable_row``, never a read error. Blank lines
  are not rows. ``row_number`` is the line number.
* Parquet: ``row_number`` is the 1-based row in the file.
* CSV (header row, optionally ``.gz``): lines the CSV parser cannot split are ``unparseable_row``
  (their ``row_number`` is the file line); other rows are numbered by record (1 = first data row).

Source adapters (``sql/adapters/*.sql``) reduce other formats to the same relation: ``oasst``
(message trees), ``ratings`` (a user x item matrix or ``user_id,item_id,rating`` triples), and the
tracing / chat-log exports of :data:`EXPORT_ADAPTERS` (issue 18: ``langfuse`` traces, scores and
observations as the public API returns them; ``langsmith`` runs and feedback; ``openai-chat``
stored chat completions and a feedback file; see docs/sources.md). For them a "row" is a canonical event the adapter emits (plus
one per source record it cannot parse); the manifest also records the source records read.

File paths and validated source column names are the only things pasted into SQL text, because
DuckDB views cannot take bound parameters: paths as escaped string literals, column names as
quoted identifiers after :func:`feedback_etl.mapping.check_source_column`.
"""

from __future__ import annotations

import gzip
import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb

from feedback_etl.mapping import FieldMapping, json_path, path_segments
from feedback_etl.features import context_sql, jsonl_reference
from feedback_etl.paths import engine_file
from feedback_etl.sqlfiles import SQL_DIR, run_sql
from schemas.errors import ConfigError, InputFileError
from schemas.event_columns import IMPRESSION_OPTIONAL_COLUMNS, IMPRESSION_REQUIRED, KNOWN_COLUMNS, REQUIRED_COLUMNS

if TYPE_CHECKING:  # side_features imports numpy and polars: only the ratings source needs it
    from feedback_etl.side_features import SideTable

SOURCES: tuple[str, ...] = ("canonical", "oasst", "langfuse", "langsmith", "openai-chat", "ratings")
# Adapters of tracing / chat-log exports (issue 18): records -> kinds -> feedback -> canonical events.
# Each runs sql/adapters/<name>_records.sql, <name>_feedback.sql (into "source_feedback": one row
# per feedback record, with its comment, correction and gold-label role) and <name>.sql.
EXPORT_ADAPTERS: dict[str, str] = {"langfuse": "langfuse", "langsmith": "langsmith", "openai-chat": "openai_chat"}
CANONICAL_COLUMNS: tuple[str, ...] = (
    "event_id", "event_time", "event_type", "exposure_id", *IMPRESSION_REQUIRED, *IMPRESSION_OPTIONAL_COLUMNS,
)
assert set(CANONICAL_COLUMNS) == set(KNOWN_COLUMNS)

# Synthetic time for sources without timestamps (OASST, rating matrices).
UNDATED_BASE_TIME = datetime(2023, 2, 1, tzinfo=timezone.utc)
_SAMPLE_LINES = 1000
_MAX_LINE_BYTES = 64 * 1024 * 1024

_SUFFIX_FORMATS: dict[str, dict[str, str]] = {
    "canonical": {".parquet": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv"},
    "oasst": {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"},
    "langfuse": {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json"},
    "langsmith": {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json"},
    "openai-chat": {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json"},
    "ratings": {".ascii": "matrix", ".txt": "matrix", ".dat": "matrix", ".csv": "triples"},
}
_REQUIRED_KEYS: dict[str, tuple[str, ...]] = {
    "oasst": ("message_tree_id", "prompt"),
    "langfuse": ("id",),
    "langsmith": ("id",),
    "triples": ("user_id", "item_id", "rating"),
}


@dataclass(frozen=True)
class InputFile:
    """One input file. ``index`` orders files (earlier files win ties between duplicate copies)."""

    path: Path
    format: str
    compressed: bool
    index: int

    @property
    def tag(self) -> str:
        """A safe short name for ids derived from the file (e.g. Coat's ``train``)."""
        name = self.path.name
        for suffix in (".gz", *self.path.suffixes[-1:]):
            name = name.removesuffix(suffix)
        return re.sub(r"[^A-Za-z0-9_.-]", "_", name.split(".")[0]) or "file"


def _literal(text: str) -> str:
    """A SQL string literal (single quotes doubled)."""
    return "'" + text.replace("'", "''") + "'"


def _engine_literal(f: "InputFile") -> str:
    """The SQL literal of a plain link to the file: DuckDB reads every path (a list too) as a glob
    pattern, so a file named ``b[c].jsonl`` would read ``bc.jsonl`` (issue 16). The user's own path
    is only ever pasted as data (``source_file``)."""
    return _literal(engine_file(f.path))


def _identifier(name: str) -> str:
    """A quoted SQL identifier (double quotes doubled), safe for any name."""
    return '"' + name.replace('"', '""') + '"'


def discover_inputs(inputs: tuple[str, ...] | list[str], source: str) -> list[InputFile]:
    """Expand INPUT arguments (files or folders) into the files to read, in a stable order.

    Raises
    ------
    InputFileError : an input does not exist, a folder holds no readable file, or a suffix is
        not one the source reads.
    """
    formats = _SUFFIX_FORMATS[source]
    paths: list[Path] = []
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            found = sorted(
                p for p in path.rglob("*")
                if p.is_file() and not p.name.startswith((".", "_")) and _suffix(p) in formats
            )
            if not found:
                raise InputFileError(
                    f"folder holds no {source} input file ({', '.join(sorted(formats))})",
                    where=str(path),
                    fix="point INPUT at the files or pick the right --source",
                )
            paths.extend(found)
        elif path.is_file():
            if _suffix(path) not in formats:
                raise InputFileError(
                    f"cannot read {_suffix(path) or 'a file without suffix'} files as --source {source}",
                    where=str(path),
                    fix=f"use one of {', '.join(sorted(formats))} (optionally .gz), or another --source",
                )
            paths.append(path)
        else:
            raise InputFileError("input file does not exist", where=str(path), fix="check the path")
    return [
        InputFile(path=p.resolve(), format=formats[_suffix(p)], compressed=p.suffix == ".gz", index=i)
        for i, p in enumerate(paths)
    ]


def _suffix(path: Path) -> str:
    suffixes = path.suffixes
    if suffixes and suffixes[-1] == ".gz":
        return suffixes[-2] if len(suffixes) > 1 and suffixes[-2] != ".parquet" else ""
    return suffixes[-1] if suffixes else ""


# ---------------------------------------------------------------- preflight (before the lock)


def preflight(conn: duckdb.DuckDBPyConnection | None, files: list[InputFile], source: str, mapping: FieldMapping) -> dict[str, list[str]]:
    """Check every file can be read and has its required columns, before anything is touched.

    Returns the unknown extra columns found per file (recorded in the manifest; JSON files are
    judged on their first 1,000 records). With ``conn`` None a DuckDB connection is opened only
    when a Parquet file needs describing (the other formats are checked in Python; issue 19).

    Raises
    ------
    InputFileError : unreadable file, wrong format, or a required column missing (named).
    """
    if conn is None and any(f.format == "parquet" for f in files):
        with duckdb.connect() as probe:
            return preflight(probe, files, source, mapping)
    unknown: dict[str, list[str]] = {}
    for f in files:
        if f.format == "parquet":
            columns = _describe(conn, f, f"read_parquet({_engine_literal(f)})", "Parquet")
        elif f.format in ("csv", "triples"):
            columns = csv_header(f)
        elif f.format == "matrix":
            columns = _check_matrix(f)
        elif f.format == "json":
            columns = _check_json_document(f)
        else:
            columns = _check_json_lines(f)
        if source == "canonical":
            required = [mapping.column(c) for c in REQUIRED_COLUMNS]
            mapped = {mapping.column(c) for c in CANONICAL_COLUMNS} | {path_segments(mapping.column(c))[0] for c in CANONICAL_COLUMNS}
        else:
            required = list(_REQUIRED_KEYS.get(f.format if f.format == "triples" else source, ()))
            mapped = set(required)
        if columns is not None:
            for column in required:
                # CSV is flat: a dotted header is a column name; elsewhere it may be a nested path.
                if not (column in columns if f.format in ("csv", "triples") else has_source_column(column, columns)):
                    raise InputFileError(
                        f"input lacks required column {column!r}",
                        where=str(f.path),
                        fix=f"add the column, rename it in the fields table of a --mapping file, or pick the right --source (now {source})",
                    )
            extras = sorted(set(columns) - mapped)
            if extras and source == "canonical":
                unknown[str(f.path)] = extras
    return unknown


def _describe(conn: duckdb.DuckDBPyConnection, f: InputFile, reader: str, what: str) -> list[str]:
    try:
        return [row[0] for row in conn.execute(f"DESCRIBE SELECT * FROM {reader}").fetchall()]
    except duckdb.Error as exc:
        raise InputFileError(
            f"cannot read file as {what}: {str(exc).splitlines()[0]}",
            where=str(f.path),
            fix="check the file is complete and has the format its suffix says",
        ) from exc


def csv_header(f: InputFile) -> list[str]:
    """Column names from the header row of a comma-separated file (RFC 4180 quoting).

    Raises
    ------
    InputFileError : unreadable, empty, or a header with blank or repeated names.
    """
    import csv

    try:
        with _open_text(f) as handle:
            header = next(csv.reader(handle), [])
    except (OSError, UnicodeDecodeError, EOFError, csv.Error) as exc:
        raise InputFileError(f"cannot read file as UTF-8 CSV: {exc}", where=str(f.path), fix="check the file (gzip when it ends in .gz)") from exc
    names = [h.strip() for h in header]
    if not _is_valid_utf8("".join(names)):
        raise InputFileError(
            "CSV header row is not valid UTF-8",
            where=f"{f.path}, line 1",
            fix="save the file as UTF-8 (a bad byte in a data row only rejects that row)",
        )
    if not names or any(not n for n in names) or len(set(names)) != len(names):
        raise InputFileError(
            f"CSV header row {header!r} is empty, has a blank or a repeated column name",
            where=str(f.path),
            fix="start the file with one comma-separated row of distinct column names",
        )
    return names


def _open_text(f: InputFile):
    """The file as text. Invalid UTF-8 becomes lone surrogates instead of an error: a bad byte is a
    fault of its line (an ``unparseable_row`` at its line number), not of the file (issue 16)."""
    if f.compressed:
        return gzip.open(f.path, "rt", encoding="utf-8", errors="surrogateescape")
    return open(f.path, encoding="utf-8", errors="surrogateescape")


def _is_valid_utf8(text: str) -> bool:
    """False for text read by :func:`_open_text` from bytes that are not UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


MAX_LINE_CHARS = 64 * 2**20


def _check_json_lines(f: InputFile) -> list[str] | None:
    """Union of keys over the first JSON-object lines; None when the file has no lines at all."""
    keys: set[str] = set()
    objects = lines = 0
    try:
        with _open_text(f) as handle:
            # readline with a limit: a decompression bomb or a runaway line cannot fill memory.
            for line in iter(lambda: handle.readline(MAX_LINE_CHARS + 1), ""):
                if len(line) > MAX_LINE_CHARS and not line.endswith("\n"):
                    raise InputFileError(
                        f"line {lines + 1} is longer than {MAX_LINE_CHARS:,} characters (a runaway line or a decompression bomb)",
                        where=str(f.path),
                        fix="split the file into one JSON object per line; events are far smaller than this",
                    )
                if not line.strip():
                    continue
                lines += 1
                try:
                    record = json.loads(line) if _is_valid_utf8(line) else None
                except (ValueError, RecursionError):  # RecursionError: deeply nested JSON
                    record = None
                if isinstance(record, dict):
                    objects += 1
                    keys.update(record)
                if lines >= _SAMPLE_LINES:
                    break
    except (OSError, UnicodeDecodeError, EOFError) as exc:
        raise InputFileError(
            f"cannot read file as UTF-8 JSON Lines: {exc}",
            where=str(f.path),
            fix="check the file is complete (and gzip when it ends in .gz)",
        ) from exc
    if lines == 0:
        return None
    if objects == 0:
        raise InputFileError(
            f"none of the first {lines} lines is a JSON object: not JSON Lines",
            where=str(f.path),
            fix="pass one JSON object per line, or the --source that reads this format",
        )
    return sorted(keys)


def _check_json_document(f: InputFile) -> list[str] | None:
    """A .json Langfuse export: a JSON array of traces, {"data": [...]}, or one trace; else JSONL."""
    shape = json_document_shape(f)
    if shape == "jsonl":
        return _check_json_lines(f)
    return None


def json_document_shape(f: InputFile) -> str:
    """'array', 'data', 'object' for a JSON document, 'jsonl' when the file is JSON Lines instead.

    The file is parsed once per (path, size, mtime): the check and the reader both ask, and an export
    of a few hundred MB takes seconds and several times its size in Python objects to parse."""
    try:
        stat = f.path.stat()
    except OSError as exc:
        raise InputFileError(f"cannot read file as UTF-8 JSON: {exc}", where=str(f.path)) from exc
    key = (str(f.path), stat.st_size, stat.st_mtime_ns)
    if key not in _SHAPES:
        _SHAPES.clear()  # one file's answer at a time: the cache only spares the repeat questions
        _SHAPES[key] = _parse_document_shape(f)
    return _SHAPES[key]


_SHAPES: dict[tuple[str, int, int], str] = {}


def _parse_document_shape(f: InputFile) -> str:
    try:
        with f.path.open("rb") as handle:
            head = handle.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    except OSError as exc:
        raise InputFileError(f"cannot read file as UTF-8 JSON: {exc}", where=str(f.path)) from exc
    if head.startswith(b"["):
        # A JSON Lines file cannot start with an array; DuckDB reads the array itself, element by
        # element, and says where it is malformed (parsing a 100 MB export in Python took 1 GB).
        return "array"
    try:
        doc = json.loads(f.path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise InputFileError(f"cannot read file as UTF-8 JSON: {exc}", where=str(f.path)) from exc
    except ValueError:
        return "jsonl"
    if isinstance(doc, list):
        return "array"
    if isinstance(doc, dict) and isinstance(doc.get("data"), list):
        return "data"
    if isinstance(doc, dict):
        return "object"
    raise InputFileError("JSON document is neither a list of traces nor an object", where=str(f.path))


def _check_matrix(f: InputFile) -> None:
    try:
        with _open_text(f) as handle:
            first = next((line for line in handle if line.strip()), "")
    except (OSError, UnicodeDecodeError, EOFError) as exc:
        raise InputFileError(f"cannot read rating matrix: {exc}", where=str(f.path)) from exc
    cells = first.split()
    if cells and not all(re.fullmatch(r"-?\d+(\.\d+)?", c) for c in cells[:50]):
        raise InputFileError(
            "first line of the rating matrix is not whitespace-separated numbers",
            where=str(f.path),
            fix="pass a user x item matrix (0 = unrated), or user_id,item_id,rating triples as .csv",
        )
    return None


# ---------------------------------------------------------------- raw_events


def raw_event_parts(
    conn: duckdb.DuckDBPyConnection,
    files: list[InputFile],
    source: str,
    mapping: FieldMapping,
    *,
    rating_threshold: float,
    side_tables: "list[SideTable] | None" = None,
) -> tuple[list[str], list[str]]:
    """SELECT statements, each a slice of ``raw_events``, plus the relations of source records.

    Canonical inputs give one statement per file (a file's columns and the STRUCT type of its
    payload are its own, so the typing step runs once per statement); adapters give one statement
    over everything they read. Also creates ``event_type_map``. The second value names the
    relations holding each adapter's source records (``file_index`` per row), for the manifest's
    ``source_records``; it is empty for canonical inputs, whose records are the rows themselves.
    """
    conn.execute(
        'CREATE OR REPLACE TEMP TABLE "event_type_map" ("source_value" VARCHAR, "event_type" VARCHAR)'
    )
    conn.executemany('INSERT INTO "event_type_map" VALUES (?, ?)', mapping.event_type_rows())
    if not files:
        return [_empty_raw_select()], []
    if source == "canonical":
        return [_canonical_part(conn, f, mapping) for f in files], []
    params = {"base_time": UNDATED_BASE_TIME, "threshold": float(rating_threshold)}
    if source == "oasst":
        _register_records(conn, files)
        run_sql(conn, "adapters/oasst", params, into="adapter_events")
        relations = ["source_records"]
    elif source in EXPORT_ADAPTERS:
        run_export_adapter(conn, files, source, mapping)
        relations = ["source_records"]
    elif source == "ratings":
        matrices = [f for f in files if f.format == "matrix"]
        triples = [f for f in files if f.format == "triples"]
        parts, relations = [], []
        if matrices:
            _register_records(conn, matrices)
            run_sql(conn, "adapters/ratings_matrix", params, into="adapter_events_matrix")
            parts.append('SELECT * FROM "adapter_events_matrix"')
            relations.append("source_records")
        if triples:
            _register_triples(conn, triples)
            run_sql(conn, "adapters/ratings_triples", params, into="adapter_events_triples")
            parts.append('SELECT * FROM "adapter_events_triples"')
            relations.append("source_triples")
        conn.execute(f'CREATE OR REPLACE TEMP VIEW "adapter_events_rated" AS {" UNION ALL ".join(parts)}')
        _ratings_context(conn, side_tables or [])
    else:  # pragma: no cover - IngestConfig validates the source
        raise ConfigError(f"unknown source {source!r}")
    canonical = ", ".join(_identifier(c) for c in CANONICAL_COLUMNS)
    packed = ", ".join(f"{_identifier(c)} := {_identifier(c)}" for c in CANONICAL_COLUMNS)
    context = ', "context"' if source == "ratings" else ""
    part = f"""SELECT "file_index", "source_file", "row_number", "parse_ok", "payload" AS "payload_text",
               STRUCT_PACK({packed}) AS "payload", CAST(NULL AS VARCHAR) AS "nested_column", {canonical}{context}
        FROM "adapter_events" """
    return [part], relations


def ratings_features(side_tables: "list[SideTable]") -> dict[str, str]:
    """The feature columns a ratings ingest adds: the outcome column ``rating`` and each side file's
    columns, name -> type (the ``[features]`` types of docs/features.md)."""
    return {"rating": "numeric", **{name: kind for table in side_tables for name, kind in table.types.items()}}


def _ratings_context(conn: duckdb.DuckDBPyConnection, side_tables: "list[SideTable]") -> None:
    """``adapter_events``: the ratings adapter's events, impressions with a ``context`` JSON object
    holding the exposure's raw rating (from its first vote) and its user's and item's side features
    (the feature contract of feedback_etl.features; issue 17)."""
    from feedback_etl.side_features import JOIN_COLUMN

    joins, pairs = [], ["'rating', CAST(r.\"rating\" AS VARCHAR)"]
    for k, table in enumerate(side_tables):
        relation = f"side_features_{k}"
        conn.register(relation, table.frame.to_arrow())
        alias = f"s{k}"
        joins.append(f'LEFT JOIN "{relation}" AS {alias} ON {alias}."key" = a.{_identifier(JOIN_COLUMN[table.entity])}')
        pairs += [f"{_literal(name)}, CAST({alias}.{_identifier(name)} AS VARCHAR)" for name in table.types]
    conn.execute(
        f"""CREATE OR REPLACE TEMP VIEW "adapter_events" AS
        WITH ratings AS (
            SELECT "exposure_id", arg_min("rating_value", "row_number") AS "rating"
            FROM "adapter_events_rated" WHERE "rating_value" IS NOT NULL
            GROUP BY "exposure_id"
        )
        SELECT a.* EXCLUDE ("rating_value"),
               CASE WHEN a."event_type" = 'impression' THEN CAST(json_object({", ".join(pairs)}) AS VARCHAR) END AS "context"
        FROM "adapter_events_rated" AS a
        LEFT JOIN ratings AS r ON r."exposure_id" = a."exposure_id"
        {" ".join(joins)}"""
    )


def run_export_adapter(conn: duckdb.DuckDBPyConnection, files: list[InputFile], source: str, mapping: FieldMapping) -> None:
    """Run a trace / chat-log adapter: ``source_records`` -> ``<name>_records`` (each record's
    kind) -> ``source_feedback`` -> ``adapter_events``. Lookup tables from the mapping are bound as
    rows, never pasted into SQL."""
    _register_records(conn, files)
    run_adapter_sql(conn, source, mapping)


def run_adapter_sql(conn: duckdb.DuckDBPyConnection, source: str, mapping: FieldMapping) -> None:
    """The SQL half of :func:`run_export_adapter`, over an existing ``source_records`` relation."""
    name = EXPORT_ADAPTERS[source]
    _lookup_table(conn, "score_channels", ("score_name", "channel"),
                  mapping.score_channels.items() if source == "langfuse" else mapping.feedback_channels.items())
    _lookup_table(conn, "vote_categories", ("value", "polarity"), mapping.category_rows(source.split("-")[0]))
    roles = [(s, "organic") for s in mapping.organic_sources] + [(s, "audit") for s in mapping.audit_sources]
    _lookup_table(conn, "score_roles", ("origin", "role"), roles)
    _lookup_table(conn, "audit_keys", ("name",), [(k,) for k in mapping.audit_keys])
    params = {
        "user_path": json_path(mapping.fields.get("user_id", "extra.metadata.user_id")),
        "session_path": json_path(mapping.fields.get("session_id", "extra.metadata.session_id")),
    }
    run_sql(conn, f"adapters/{name}_records", into=f"{name}_records")
    run_sql(conn, f"adapters/{name}_feedback", into="source_feedback")
    run_sql(conn, f"adapters/{name}", params, into="adapter_rows")
    # ``name`` comes from EXPORT_ADAPTERS (fixed names), never from user input.
    conn.execute(f'CREATE OR REPLACE TEMP VIEW "export_records" AS SELECT * FROM "{name}_records"')
    run_sql(conn, "adapters/export_events", into="adapter_events")
    # Warnings the adapter can tell (read by ingest.reconcile into the run's warnings).
    if (SQL_DIR / "adapters" / f"{name}_checks.sql").is_file():
        run_sql(conn, f"adapters/{name}_checks", into="adapter_warnings")


def _lookup_table(conn: duckdb.DuckDBPyConnection, table: str, columns: tuple[str, ...], rows) -> None:
    spec = ", ".join(f"{_identifier(c)} VARCHAR" for c in columns)
    conn.execute(f"CREATE OR REPLACE TEMP TABLE {_identifier(table)} ({spec})")
    rows = sorted(tuple(r) for r in rows)
    if rows:
        conn.executemany(f"INSERT INTO {_identifier(table)} VALUES ({', '.join('?' for _ in columns)})", rows)


def _empty_raw_select() -> str:
    columns = ", ".join(f"CAST(NULL AS VARCHAR) AS {_identifier(c)}" for c in CANONICAL_COLUMNS)
    return (
        'SELECT 0 AS "file_index", CAST(NULL AS VARCHAR) AS "source_file", CAST(0 AS BIGINT) AS "row_number", '
        'TRUE AS "parse_ok", CAST(NULL AS VARCHAR) AS "payload_text", CAST(NULL AS VARCHAR) AS "payload", '
        f'CAST(NULL AS VARCHAR) AS "nested_column", {columns} WHERE FALSE'
    )


def _lines_table(conn: duckdb.DuckDBPyConnection, f: InputFile) -> str:
    """Materialise every line of a text file as ``lines_<i>`` (row_number = line number, line,
    readable) and return the table name.

    DuckDB's CSV reader with a NUL delimiter, no quoting and strict mode hands back each line
    untouched (LF or CRLF endings); a line it cannot hand back (a NUL byte inside, invalid UTF-8,
    longer than 64 MiB) lands in its rejects table and comes back here with ``readable`` false, at
    its line number. Blank lines are kept (the caller drops them) so that numbering stays exact.
    A file DuckDB cannot split that way (a bare CR inside a line, or any NUL byte, found by a quick
    scan first) is read by a slower Python fallback with the same result.
    """
    table, rejects, scan = f"lines_{f.index}", f"lines_{f.index}_rejects", f"lines_{f.index}_scan"
    reader = (
        f"read_csv({_engine_literal(f)}, columns = {{'line': 'VARCHAR'}}, header = false, "
        f"delim = chr(0), quote = '', escape = '', auto_detect = false, "
        f"strict_mode = true, store_rejects = true, rejects_table = {_literal(rejects)}, "
        f"rejects_scan = {_literal(scan)}, max_line_size = {_MAX_LINE_BYTES}, "
        f"compression = {_literal('gzip' if f.compressed else 'none')})"
    )
    if _has_nul_byte(f):
        # DuckDB reads a line made only of NUL bytes as a blank line; such files go the slow way.
        _lines_table_python(conn, f, table)
        return table
    try:
        _create_table(conn, table, f'SELECT ROW_NUMBER() OVER () AS "row_number", "line", TRUE AS "readable" FROM {reader}', [f])
    except InputFileError:
        # DuckDB's strict reader gives up on a bare CR inside a line; read such a file in Python.
        _lines_table_python(conn, f, table)
        return table
    if not conn.execute(f"SELECT COUNT(*) FROM {_identifier(rejects)}").fetchall()[0][0]:  # fetchall: no result left pending
        return table  # every line was handed back: its ordinal is its line number (no renumbering copy; issue 19)
    conn.execute(
        f'CREATE OR REPLACE TEMP TABLE {_identifier(table + "_read")} AS SELECT "row_number" AS "ordinal", "line" FROM {_identifier(table)}'
    )
    conn.execute(
        f"""CREATE OR REPLACE TEMP TABLE {_identifier(table)} AS
        {_renumber(table + "_read", rejects, "line")}
        SELECT "record_number" AS "row_number", "line", TRUE AS "readable" FROM numbered
        UNION ALL
        SELECT CAST("line" AS BIGINT), LTRIM("csv_line", chr(10)), FALSE FROM {_identifier(rejects)}"""
    )
    return table


_FALLBACK_MAX_BYTES = 1 << 30


def _has_nul_byte(f: InputFile) -> bool:
    """Whether the (decompressed) file holds a NUL byte; a C-speed scan, 4 MiB at a time into one
    reused buffer (reading into new blocks cost twice as much; issue 19)."""
    buffer = bytearray(1 << 22)
    try:
        with (gzip.open(f.path, "rb") if f.compressed else open(f.path, "rb", buffering=0)) as handle:
            while size := handle.readinto(buffer):
                if buffer.find(b"\x00", 0, size) >= 0:
                    return True
    except (OSError, EOFError) as exc:
        raise InputFileError(f"cannot read file: {exc}", where=str(f.path), fix="check the file is complete") from exc
    return False


def _lines_table_python(conn: duckdb.DuckDBPyConnection, f: InputFile, table: str) -> None:
    """The same table as :func:`_lines_table`, split in Python (fallback; the file must fit in
    memory, at most 1 GiB once decompressed)."""
    import pyarrow as pa

    try:
        with (gzip.open(f.path, "rb") if f.compressed else open(f.path, "rb")) as handle:
            raw = handle.read(_FALLBACK_MAX_BYTES + 1)
    except (OSError, EOFError) as exc:
        raise InputFileError(f"cannot read file: {exc}", where=str(f.path), fix="check the file is complete") from exc
    if len(raw) > _FALLBACK_MAX_BYTES:
        raise InputFileError(
            "file has lines DuckDB cannot split (a bare CR) and is larger than 1 GiB",
            where=str(f.path),
            fix="normalise line endings to LF or CRLF",
        )
    pieces = raw.split(b"\n")
    if pieces and pieces[-1] == b"":
        pieces.pop()
    lines, readable = [], []
    for piece in pieces:
        piece = piece[:-1] if piece.endswith(b"\r") else piece
        try:
            text = piece.decode("utf-8")
            ok = "\x00" not in text
        except UnicodeDecodeError:
            text, ok = piece.decode("utf-8", "replace"), False
        lines.append(text if text or not ok else None)
        readable.append(ok)
    arrow = pa.table({
        "row_number": pa.array(range(1, len(lines) + 1), pa.int64()),
        "line": pa.array(lines, pa.string()),
        "readable": pa.array(readable, pa.bool_()),
    })
    conn.register("lines_fallback", arrow)
    try:
        conn.execute(f'CREATE OR REPLACE TEMP TABLE {_identifier(table)} AS SELECT * FROM "lines_fallback"')
    finally:
        conn.unregister("lines_fallback")


def _renumber(parsed: str, rejects: str, line_column: str, offset: int = 0) -> str:
    """A ``WITH ... numbered AS (...)`` prefix giving each parsed record its record number.

    The reader numbers parsed records 1, 2, ... and skips the lines it rejected; the k-th parsed
    record sits after every rejected line whose record number minus its rank is below k (one line
    per record). ``offset`` turns file line numbers into record numbers (1 for a header row).
    """
    return f"""WITH rejected AS (
            SELECT "{line_column}" - {offset} AS "record_number", ROW_NUMBER() OVER (ORDER BY "{line_column}") AS "rank"
            FROM {_identifier(rejects)}
        ),
        numbered AS (
            SELECT p.*, CAST(p."ordinal" + (
                SELECT COUNT(*) FROM rejected AS r WHERE r."record_number" - r."rank" < p."ordinal"
            ) AS BIGINT) AS "record_number"
            FROM {_identifier(parsed)} AS p
        )"""


# A line holding a character other than space and tab (not blank): as TRIM("line", ' ' || chr(9)) <> ''
# but a scan instead of a trimmed copy of every line (TRIM with a set of characters cost a third of
# reading a JSON Lines file; issue 19).
_NOT_BLANK = """regexp_matches("line", '[^ \\t]')"""
# Whether a line json_valid accepts is a JSON object: a valid JSON text that starts with "{" is one, so
# json_type (a second parse of the line) is asked only of the others (leading blanks, arrays, scalars).
_IS_OBJECT = """CASE WHEN starts_with("line", '{') THEN TRUE ELSE json_type("line") = 'OBJECT' END"""


def _json_lines_select(conn: duckdb.DuckDBPyConnection, f: InputFile) -> str:
    table = _lines_table(conn, f)
    return f"""
        SELECT {f.index} AS "file_index", {_literal(str(f.path))} AS "source_file", {_literal(f.tag)} AS "file_tag",
               "row_number", "line" AS "record",
               CASE WHEN "readable" AND json_valid("line") THEN {_IS_OBJECT} ELSE FALSE END AS "parse_ok"
        FROM {_identifier(table)}
        WHERE NOT "readable" OR ("line" IS NOT NULL AND {_NOT_BLANK})"""


def _register_records(conn: duckdb.DuckDBPyConnection, files: list[InputFile]) -> None:
    """``source_records``: one JSON record (or matrix line) per row, numbered per file."""
    parts = []
    for f in files:
        shape = json_document_shape(f) if f.format == "json" else "jsonl"
        if shape == "array":
            # Streamed by DuckDB's JSON reader, one element per row, in file order (ROW_NUMBER() OVER ()
            # numbers the scan as it comes): 300,000 traces (100 MB) in 0.5 s and 0.3 GB.
            parts.append(
                f"""SELECT {f.index} AS "file_index", {_literal(str(f.path))} AS "source_file", {_literal(f.tag)} AS "file_tag",
                       CAST(ROW_NUMBER() OVER () AS BIGINT) AS "row_number", CAST("json" AS VARCHAR) AS "record",
                       TRUE AS "parse_ok"
                FROM read_json({_engine_literal(f)}, format = 'array', records = false, columns = {{'json': 'JSON'}})"""
            )
        elif shape != "jsonl":
            path = "'$.data'" if shape == "data" else "'$'"
            array = (
                f"CASE WHEN json_type(\"content\") = 'OBJECT' AND {path} = '$' THEN json_array(json(\"content\")) "
                f"ELSE json_extract(\"content\", {path}) END"
            )
            # The array unnested in the select list, numbered by generate_subscripts (they advance
            # together). The lateral form, UNNEST(...) WITH ORDINALITY in FROM, ran out of DuckDB's
            # memory on a 4 MB export of 20,000 traces at 256MB, and at 4GB on a 134 MB one of 300,000.
            parts.append(
                f"""SELECT {f.index} AS "file_index", {_literal(str(f.path))} AS "source_file", {_literal(f.tag)} AS "file_tag",
                       CAST(generate_subscripts("records", 1) AS BIGINT) AS "row_number",
                       CAST(UNNEST("records") AS VARCHAR) AS "record", TRUE AS "parse_ok"
                FROM (SELECT CAST({array} AS JSON[]) AS "records" FROM read_text({_engine_literal(f)}))"""
            )
        elif f.format == "matrix":
            table = _lines_table(conn, f)
            parts.append(
                f"""SELECT {f.index} AS "file_index", {_literal(str(f.path))} AS "source_file", {_literal(f.tag)} AS "file_tag",
                       "row_number", "line" AS "record", "readable" AS "parse_ok"
                FROM {_identifier(table)} WHERE NOT "readable" OR ("line" IS NOT NULL AND {_NOT_BLANK})"""
            )
        else:
            parts.append(_json_lines_select(conn, f))
    _create_table(conn, "source_records", " UNION ALL ".join(parts), files)


def _create_table(conn: duckdb.DuckDBPyConnection, name: str, select: str, files: list[InputFile]) -> None:
    try:
        conn.execute(f"CREATE OR REPLACE TEMP TABLE {_identifier(name)} AS {select}")
    except duckdb.Error as exc:
        message = str(exc).splitlines()[0]
        for f in files:  # DuckDB names the link it read; the user knows their own path
            message = message.replace(str(engine_file(f.path)), str(f.path))
        raise InputFileError(
            f"cannot read input: {message}",
            where=", ".join(str(f.path) for f in files[:3]) + (" ..." if len(files) > 3 else ""),
            fix="check the files are complete and in the format their suffix says",
        ) from exc


def _read_csv(conn: duckdb.DuckDBPyConnection, f: InputFile) -> tuple[str, str]:
    """Materialise one CSV file as ``csv_<i>`` (all VARCHAR, numbered) and its unparseable lines as
    ``csv_<i>_rejects`` (line, csv_line). Returns both table names."""
    table, rejects = f"csv_{f.index}", f"csv_{f.index}_rejects"
    scan = f"csv_{f.index}_scan"
    # A fixed dialect (comma, double quotes, header row) instead of sniffing: sniffing a small file
    # with a broken line guesses wrong, and the dialect is part of the input contract anyway.
    columns = "{" + ", ".join(f"{_literal(name)}: 'VARCHAR'" for name in csv_header(f)) + "}"
    reader = (
        f"read_csv({_engine_literal(f)}, columns = {columns}, header = true, auto_detect = false, "
        f"delim = ',', quote = '\"', escape = '\"', store_rejects = true, "
        f"rejects_table = {_literal(rejects)}, rejects_scan = {_literal(scan)}, "
        f"max_line_size = {_MAX_LINE_BYTES}, compression = {_literal('gzip' if f.compressed else 'none')})"
    )
    _create_table(conn, table, f'SELECT ROW_NUMBER() OVER () AS "ordinal", * FROM {reader}', [f])
    conn.execute(
        f"""CREATE OR REPLACE TEMP TABLE {_identifier(table + '_numbered')} AS
        {_renumber(table, rejects, "line", offset=1)}
        SELECT * EXCLUDE ("ordinal") FROM numbered"""
    )
    return table + "_numbered", rejects


# Bytes of text per row (as Parquet stores it, before compression) from which typing a file without
# its texts pays: building rejected rows' payloads afterwards costs a second pass over the file's
# rows (0.3 CPU s per million events), reading the texts in typing costs their bytes (1.5 CPU s per
# million events of ~1.4 KB; the simulator's pooled texts are stored as dictionaries, ~6 bytes a row).
LEAN_TEXT_BYTES = 64


def lean_parquet_part(conn: duckdb.DuckDBPyConnection, f: InputFile, mapping: FieldMapping) -> str | None:
    """``f`` (a canonical Parquet file) as a slice of ``raw_events`` whose ``payload`` is null, when
    its texts weigh at least :data:`LEAN_TEXT_BYTES` a row, else None: the typing step then reads
    only the columns it types, not the texts that only a rejected row's payload needs (the ingest
    builds those payloads later, for the rejected rows alone; issue 19)."""
    if f.format != "parquet":
        return None
    texts = [mapping.column(c) for c in ("prompt_text", "response_text")]
    rows, size = conn.execute(
        f"SELECT (SELECT SUM(num_rows) FROM parquet_file_metadata({_engine_literal(f)})), "
        f"SUM(total_uncompressed_size) FILTER (WHERE path_in_schema IN (?, ?)) FROM parquet_metadata({_engine_literal(f)})", texts,
    ).fetchone()
    if not rows or (size or 0) / rows < LEAN_TEXT_BYTES:
        return None
    return _canonical_part(conn, f, mapping, payload=False)


def _canonical_part(conn: duckdb.DuckDBPyConnection, f: InputFile, mapping: FieldMapping, *, payload: bool = True) -> str:
    """One canonical file as a slice of ``raw_events``, with --mapping renames applied (``payload``
    False: a null payload, Parquet only)."""
    if f.format == "jsonl":
        return _canonical_jsonl(conn, f, mapping)
    if f.format == "parquet":
        reader = f"read_parquet({_engine_literal(f)}, file_row_number = true)"
        columns = [r[0] for r in conn.execute(f"DESCRIBE SELECT * FROM read_parquet({_engine_literal(f)})").fetchall()]
        row_number = '"file_row_number" + 1'
    else:
        table, rejects = _read_csv(conn, f)
        reader = _identifier(table)
        columns = [r[0] for r in conn.execute(f"DESCRIBE {reader}").fetchall() if r[0] != "record_number"]
        row_number = '"record_number"'
    selected = ", ".join(f"{_column_reference(mapping.column(c), columns, f.format)} AS {_identifier(c)}" for c in CANONICAL_COLUMNS)
    # Custom context columns (issue 17): their raw values as one JSON object, kept beside the event.
    context = context_sql(mapping, lambda source: _column_reference(source, columns, f.format))
    if context is not None:
        selected += f', {context} AS "context"'
    packed = ", ".join(f"{_identifier(c)} := {_identifier(c)}" for c in columns)
    packed = f"STRUCT_PACK({packed})" if payload or f.format != "parquet" else "CAST(NULL AS VARCHAR)"
    head = f'{f.index} AS "file_index", {_literal(str(f.path))} AS "source_file"'
    nested = _nested_column(conn, f, mapping, columns) if f.format == "parquet" else "CAST(NULL AS VARCHAR)"
    part = f"""SELECT {head}, CAST({row_number} AS BIGINT) AS "row_number", TRUE AS "parse_ok",
               CAST(NULL AS VARCHAR) AS "payload_text", {packed} AS "payload",
               {nested} AS "nested_column", {selected}
        FROM {reader}"""
    if f.format == "csv":
        nulls = ", ".join(f"NULL AS {_identifier(c)}" for c in CANONICAL_COLUMNS)
        part = f"""SELECT * FROM ({part}) AS parsed
        UNION ALL BY NAME
        SELECT {head}, CAST("line" - 1 AS BIGINT) AS "row_number", FALSE AS "parse_ok",
               "csv_line" AS "payload_text", NULL AS "payload", {nulls}
        FROM {_identifier(rejects)}"""
    return part


def _nested_column(conn: duckdb.DuckDBPyConnection, f: InputFile, mapping: FieldMapping, columns: list[str]) -> str:
    """SQL naming the first canonical column whose value in a Parquet row is a struct, map or list
    (a ``bad_value``: the contract wants a scalar; issue 16), NULL when none is."""
    types = {r[0]: r[1] for r in conn.execute(f"DESCRIBE SELECT * FROM read_parquet({_engine_literal(f)})").fetchall()}
    branches = []
    for c in CANONICAL_COLUMNS:
        name = mapping.column(c)
        head, *rest = path_segments(name)
        if name in columns:
            kind = str(types.get(name, ""))
            if kind.startswith(("STRUCT", "MAP", "UNION")) or kind.endswith("]"):
                branches.append(f"WHEN {_identifier(name)} IS NOT NULL THEN {_literal(c)}")
        elif rest and head in columns:
            path = _literal(json_path(".".join(rest)))
            branches.append(f"WHEN json_type(TO_JSON({_identifier(head)}), {path}) IN ('OBJECT', 'ARRAY') THEN {_literal(c)}")
    return f"CASE {' '.join(branches)} END" if branches else "CAST(NULL AS VARCHAR)"


def _column_reference(name: str, columns: list[str], file_format: str) -> str:
    """SQL for a mapped source column of a Parquet or CSV file: the column itself; for a dotted
    name in Parquet that is no column, the path into its first key's nested value (via JSON, so a
    path a row lacks is NULL, not an error); else NULL."""
    if name in columns:
        return _identifier(name)
    head, *rest = path_segments(name)
    if file_format == "parquet" and rest and head in columns:
        return f"json_extract_string(TO_JSON({_identifier(head)}), {_literal(json_path('.'.join(rest)))})"
    return "NULL"


def has_source_column(name: str, columns: list[str] | set[str]) -> bool:
    """Whether a mapped source column is present: the name itself, or a dotted path's first key."""
    return name in columns or path_segments(name)[0] in columns


def _canonical_jsonl(conn: duckdb.DuckDBPyConnection, f: InputFile, mapping: FieldMapping) -> str:
    """One JSON Lines file: parse each line once, pull every canonical field as text."""
    paths = ", ".join(_literal(json_path(mapping.column(c))) for c in CANONICAL_COLUMNS)
    fields = ", ".join(f'"values"[{k + 1}] AS {_identifier(c)}' for k, c in enumerate(CANONICAL_COLUMNS))
    context = context_sql(mapping, jsonl_reference)
    if context is not None:  # custom context columns (issue 17)
        fields += f', CASE WHEN "parse_ok" THEN {context} END AS "context"'
    # An object or array where a canonical column wants a scalar is a bad_value (issue 16). json_type
    # parses the line a second time, so it is asked only on lines holding a [ or a second {: a
    # memchr-speed test (a list lambda over the values cost 60% of the parse).
    names = "[" + ", ".join(_literal(c) for c in CANONICAL_COLUMNS) + "]"
    nested = (
        f"""CASE WHEN "parse_ok" AND (strpos("record", '[') > 0 OR strpos(substr("record", 2), '{{') > 0)
               THEN {names}[list_position(list_transform(json_type("record", [{paths}]), lambda t: t IN ('OBJECT', 'ARRAY')), true)]
           END"""
    )
    return f"""
        SELECT "file_index", "source_file", "row_number", "parse_ok", "record" AS "payload_text",
               CAST(NULL AS VARCHAR) AS "payload", {nested} AS "nested_column", {fields}
        FROM (
            SELECT *, CASE WHEN "parse_ok" THEN json_extract_string("record", [{paths}]) END AS "values"
            FROM ({_json_lines_select(conn, f)}) AS records
        ) AS parsed"""


def _register_triples(conn: duckdb.DuckDBPyConnection, files: list[InputFile]) -> None:
    """``source_triples`` for ratings given as user_id,item_id,rating CSV files."""
    parts = []
    for f in files:
        table, rejects = _read_csv(conn, f)
        head = f'{f.index} AS "file_index", {_literal(str(f.path))} AS "source_file", {_literal(f.tag)} AS "file_tag"'
        parts.append(
            f"""SELECT {head}, "record_number" AS "row_number", TRUE AS "parse_ok",
                   "user_id", "item_id", "rating" AS "rating_text",
                   -- VARCHAR, not JSON: a rejected line's raw text (below) is no JSON and must not be cast to it
                   CAST(TO_JSON(STRUCT_PACK("user_id" := "user_id", "item_id" := "item_id", "rating" := "rating")) AS VARCHAR) AS "payload"
            FROM {_identifier(table)}
            UNION ALL
            SELECT {head}, CAST("line" - 1 AS BIGINT) AS "row_number", FALSE AS "parse_ok",
                   NULL AS "user_id", NULL AS "item_id", NULL AS "rating_text", "csv_line" AS "payload"
            FROM {_identifier(rejects)}"""
        )
    conn.execute(f'CREATE OR REPLACE TEMP VIEW "source_triples" AS {" UNION ALL ".join(parts)}')
