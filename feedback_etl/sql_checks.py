"""The warehouse tables' contracts checked in SQL on every row, without importing pandera (issue 19).

The pandera models (``schemas.staged_event.StagedEvent``, ``schemas.rejects.RejectsTable``,
``schemas.feedback.FeedbackTable``) stay the contracts. Importing pandera costs about 1.3 s of
start-up (it pulls in pandas and, with the [spark] extra, pyspark.pandas), more than a small
ingest's own work, and running it on every row of every batch is a large part of a big one. So
the DuckDB engine checks the same rules here, as one aggregate query per table over the engine's
relation, and casts each written batch to the contract's types (pandera's ``coerce``):

* ``CONTRACTS`` restates each model as data: column -> (polars type, nullable, unique, value
  checks); ``tests/feedback_etl/test_sql_checks.py`` derives the same from the pandera models
  (:func:`derive_contract`) and fails when the two differ, so a model change cannot be missed;
* ``FRAME_CHECKS``: the models' cross-column checks as DuckDB SQL (true on a row that breaks it).

The types are held by name (``_SPEC``) and ``CONTRACTS`` is built from them on first use, so that an
ingest imports neither pandera nor polars: the SQL checks and :func:`arrow_schema` (the Arrow schema
the DuckDB engine commits) need no polars type (importing polars is about 0.1 s of a small ingest's
start-up; issue 19).

Custom feature columns (issue 17) are still validated with pandera (:mod:`feedback_etl.features`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import duckdb

from schemas.errors import RejectReason, TableValidationError
from schemas.event_columns import EVENT_TYPES

if TYPE_CHECKING:
    import polars as pl
    import pyarrow as pa

_UTC, _S, _I32, _I64, _F64, _B, _I8, _DATE = "Datetime[us, UTC]", "String", "Int32", "Int64", "Float64", "Boolean", "Int8", "Date"
REJECT_REASONS = tuple(r.value for r in RejectReason)

# table -> column -> (type name, nullable, unique, ((check, value), ...)); check: ge, le or isin.
_SPEC: dict[str, dict[str, tuple]] = {
    "events": {
        "event_id": (_S, False, True, ()),
        "event_time": (_UTC, False, False, ()),
        "event_type": (_S, False, False, (("isin", EVENT_TYPES),)),
        "exposure_id": (_S, False, False, ()),
        "user_id": (_S, True, False, ()),
        "session_id": (_S, True, False, ()),
        "prompt_id": (_S, True, False, ()),
        "response_id": (_S, True, False, ()),
        "model_id": (_S, True, False, ()),
        "prompt_text": (_S, True, False, ()),
        "response_text": (_S, True, False, ()),
        "position": (_I32, True, False, (("ge", 0),)),
        "platform": (_S, True, False, ()),
        "locale": (_S, True, False, ()),
        "latency_ms": (_F64, True, False, (("ge", 0),)),
        "solicited": (_B, True, False, ()),
        "source_file": (_S, False, False, ()),
        "row_number": (_I64, False, False, (("ge", 1),)),
        "context": (_S, True, False, ()),
    },
    "rejects": {
        "run_id": (_S, False, False, ()),
        "source_file": (_S, False, False, ()),
        "row_number": (_I64, False, False, (("ge", 0),)),
        "reason": (_S, False, False, (("isin", REJECT_REASONS),)),
        "detail": (_S, True, False, ()),
        "event_id": (_S, True, False, ()),
        "exposure_id": (_S, True, False, ()),
        "payload": (_S, True, False, ()),
    },
    "feedback": {
        "exposure_id": (_S, False, True, ()),
        "user_id": (_S, False, False, ()),
        "session_id": (_S, False, False, ()),
        "prompt_id": (_S, False, False, ()),
        "response_id": (_S, False, False, ()),
        "model_id": (_S, False, False, ()),
        "impression_time": (_UTC, False, False, ()),
        "impression_date": (_DATE, False, False, ()),
        "impression_hour": (_I32, False, False, (("ge", 0), ("le", 23))),
        "position": (_I32, True, False, (("ge", 0),)),
        "platform": (_S, True, False, ()),
        "locale": (_S, True, False, ()),
        "latency_ms": (_F64, True, False, (("ge", 0),)),
        "prompt_text": (_S, True, False, ()),
        "response_text": (_S, True, False, ()),
        "response_chars": (_I64, True, False, (("ge", 0),)),
        "observed": (_B, False, False, ()),
        "label": (_I8, True, False, (("isin", (0, 1)),)),
        "copied": (_B, False, False, ()),
        "regenerated": (_B, False, False, ()),
        "shared": (_B, False, False, ()),
        "solicited": (_B, False, False, ()),
        "feedback_delay_s": (_F64, True, False, (("ge", 0),)),
        "n_events": (_I32, False, False, (("ge", 1),)),
        "n_late_events": (_I32, False, False, (("ge", 0),)),
        "user_prior_exposures": (_I64, False, False, (("ge", 0),)),
        "user_prior_votes": (_I64, False, False, (("ge", 0),)),
        "user_prior_feedback_rate": (_F64, True, False, (("ge", 0), ("le", 1))),
        "split": (_S, False, False, (("isin", ("train", "val", "test")),)),
    },
}


def _polars_type(name: str) -> pl.DataType:
    import polars as pl

    if name == _UTC:
        return pl.Datetime(time_unit="us", time_zone="UTC")
    return getattr(pl, name)()


def _arrow_type(name: str) -> pa.DataType:
    """The Arrow type polars writes for a contract type (strings as large strings)."""
    import pyarrow as pa

    return {
        _S: pa.large_string(), _I8: pa.int8(), _I32: pa.int32(), _I64: pa.int64(), _F64: pa.float64(),
        _B: pa.bool_(), _DATE: pa.date32(), _UTC: pa.timestamp("us", tz="UTC"),
    }[name]


_CONTRACTS: dict[str, dict[str, tuple]] = {}


def polars_contracts() -> dict[str, dict[str, tuple]]:
    """``_SPEC`` with polars types (``CONTRACTS``), built on first use (it imports polars)."""
    if not _CONTRACTS:
        _CONTRACTS.update({
            table: {column: (_polars_type(kind), *rest) for column, (kind, *rest) in spec.items()}
            for table, spec in _SPEC.items()
        })
    return _CONTRACTS


def __getattr__(name: str):
    if name == "CONTRACTS":
        return polars_contracts()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def contract_columns(table: str) -> list[str]:
    """The columns of ``table``'s contract, in order."""
    return list(_SPEC[table])


def arrow_schema(table: str, columns: list[str], *, run_id: bool = False) -> pa.Schema:
    """The Arrow schema the warehouse commits for ``columns`` (in that order) of ``table``: each of
    its contract type as a validated polars batch writes it (``conform``, then
    ``io.to_arrow``), with a string ``run_id`` last when asked, as ``io.validated_batches`` adds it.

    Raises
    ------
    TableValidationError : a column the contract does not name.
    """
    import pyarrow as pa

    unknown = [c for c in columns if c not in _SPEC[table]]
    if unknown:
        raise TableValidationError(table, 1, f"columns {unknown} are not in the contract")
    fields = [pa.field(c, _arrow_type(_SPEC[table][c][0])) for c in columns]
    if run_id:
        fields.append(pa.field("run_id", pa.large_string()))
    return pa.schema(fields)


# The models' dataframe checks (by their pandera names) as DuckDB SQL: true on a row that breaks it.
FRAME_CHECKS: dict[str, dict[str, str]] = {
    "events": {
        "impressions_carry_ids": (
            "\"event_type\" = 'impression' AND (\"user_id\" IS NULL OR \"session_id\" IS NULL OR \"prompt_id\" IS NULL"
            " OR \"response_id\" IS NULL OR \"model_id\" IS NULL)"
        ),
    },
    "rejects": {},
    "feedback": {"label_iff_observed": '"observed" <> ("label" IS NOT NULL)'},
}
_CHECK_NAMES = {"ge": "greater_than_or_equal_to", "le": "less_than_or_equal_to", "isin": "isin"}


def quote_identifier(name: str) -> str:
    """A SQL identifier in double quotes (a quote inside doubled): any column name, literally."""
    return '"' + name.replace('"', '""') + '"'


def _literal(value: object) -> str:
    return "'" + value.replace("'", "''") + "'" if isinstance(value, str) else repr(value)


def aggregate_checks(table: str, *, skip_unique: bool = False) -> list[tuple[str, str]]:
    """(name, DuckDB SQL counting the rows that break it) for every rule of ``table``'s contract."""
    checks: list[tuple[str, str]] = []
    for name, (_, nullable, unique, value_checks) in _SPEC[table].items():
        ref = quote_identifier(name)
        if not nullable:
            checks.append((f"{name} not null", f"COUNT_IF({ref} IS NULL)"))
        if unique and not skip_unique:
            checks.append((f"{name} unique", f"COUNT({ref}) - COUNT(DISTINCT {ref})"))
        for kind, value in value_checks:
            if kind == "ge":
                broken = f"{ref} < {value!r}"
            elif kind == "le":
                broken = f"{ref} > {value!r}"
            else:
                broken = f"{ref} NOT IN ({', '.join(_literal(v) for v in value)})"
            checks.append((f"{name} {_CHECK_NAMES[kind]} {value!r}", f"COUNT_IF({broken})"))
    checks += [(name, f"COUNT_IF({sql})") for name, sql in FRAME_CHECKS[table].items()]
    return checks


def validate_relation(conn: duckdb.DuckDBPyConnection, relation: str, table: str, *, skip_unique: bool = False) -> None:
    """Check every row of ``relation`` against ``table``'s contract in one aggregate query.

    ``skip_unique``: the caller has checked the unique keys already (e.g. ``ingest._check_unique``).

    Raises
    ------
    TableValidationError : the columns differ from the contract's (strict), or rows break a rule
        (each failing rule with its number of rows).
    """
    columns = [row[0] for row in conn.execute(f"DESCRIBE {quote_identifier(relation)}").fetchall()]
    wanted = list(_SPEC[table])
    if sorted(columns) != sorted(wanted):
        raise TableValidationError(table, 1, f"columns {sorted(set(columns) ^ set(wanted))} differ from the contract")
    checks = aggregate_checks(table, skip_unique=skip_unique)
    if not checks:
        return
    row = conn.execute(f"SELECT {', '.join(sql for _, sql in checks)} FROM {quote_identifier(relation)}").fetchall()[0]
    failing = {name: int(n) for (name, _), n in zip(checks, row) if n}
    if failing:
        raise TableValidationError(table, len(failing), f"on all rows: {failing}")


def conform(frame: pl.DataFrame, table: str) -> pl.DataFrame:
    """Cast each column of a batch to its contract type, in the frame's own order (pandera's coerce)."""
    import polars as pl

    contract = polars_contracts()[table]
    casts = [pl.col(name).cast(contract[name][0]) for name in frame.columns if frame.schema[name] != contract[name][0]]
    try:
        return frame.with_columns(casts) if casts else frame
    except pl.exceptions.PolarsError as exc:
        raise TableValidationError(table, 1, f"cannot cast to the contract's types: {str(exc).splitlines()[0][:300]}") from exc


def derive_contract(model) -> tuple[dict[str, tuple], list[str]]:
    """A pandera model as (``CONTRACTS`` entry, names of its dataframe checks): what the test compares."""
    schema = model.to_schema()
    reverse = {v: k for k, v in _CHECK_NAMES.items()}
    columns = {}
    for name, column in schema.columns.items():
        value_checks = []
        for check in column.checks:
            stats = check.statistics
            kind = reverse.get(check.name, check.name)
            value = stats.get("min_value", stats.get("max_value", stats.get("allowed_values")))
            value_checks.append((kind, tuple(value) if kind == "isin" else value))
        columns[name] = (column.dtype.type, bool(column.nullable), bool(column.unique), tuple(value_checks))
    return columns, [check.name for check in schema.checks]
