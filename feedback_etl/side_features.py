"""Side features of a ratings log, read at ingest (issue 17): ``causalrm ingest --source ratings
--user-features FILE --item-features FILE``.

A ratings warehouse carries no context that varies (every cell is an impression of the same kind),
so who rates what can only be explained by what is known about the user and the item. These files
say it; their columns become custom feature columns of the feedback table (docs/features.md), used
by default by ``propensity fit``, ``fit-label-aware``'s outcome model, the noise proxy and the audit,
like any declared feature.

Accepted files, one row per entity:

* a whitespace-separated **matrix** (``.ascii``, ``.txt``, ``.dat``), in the layout of the ratings
  matrix itself: line n describes user ``u<n-1>`` (item ``i<n-1>``), the ids the ``ratings`` adapter
  gives the matrix's lines (columns). Column names come from ``<stem>_map.txt`` beside the file (one
  name per line, as Coat ships them: ``gender:men``), else they are numbered; each becomes
  ``user_<name>`` / ``item_<name>`` with anything but letters and digits replaced by ``_``
  (``user_gender_men``). Numbers only.
* a **table** (``.csv`` or ``.parquet``) keyed by ``user_id`` (user file) or ``item_id`` /
  ``response_id`` (item file), the ids of the ratings triples; every other column is a feature
  (text: categorical, numbers and booleans: numeric), named as in the file.

Point-in-time caveat (as for ``propensity fit --user-features``): use attributes fixed before the
ratings (demographics, item category), never ones computed from them (a user's rating count).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from feedback_etl.mapping import check_feature_name
from schemas.errors import ConfigError, InputFileError

MATRIX_SUFFIXES: tuple[str, ...] = (".ascii", ".txt", ".dat")
TABLE_KEYS: dict[str, tuple[str, ...]] = {"user": ("user_id",), "item": ("item_id", "response_id")}
# The feedback-table id a file's key joins: users on user_id, items on response_id (ratings adapter).
JOIN_COLUMN: dict[str, str] = {"user": "user_id", "item": "response_id"}
_ID_PREFIX: dict[str, str] = {"user": "u", "item": "i"}


@dataclass(frozen=True)
class SideTable:
    """One side-feature file: ``frame`` holds ``key`` (the entity id, text) and the feature columns."""

    path: str
    entity: str
    frame: pl.DataFrame
    types: dict[str, str]

    @property
    def option(self) -> str:
        return f"--{self.entity}-features"


def _column_name(entity: str, raw: str) -> str:
    return f"{entity}_" + (re.sub(r"[^0-9A-Za-z]+", "_", raw).strip("_").lower() or "x")


def _read_matrix(path: Path, entity: str) -> tuple[pl.DataFrame, dict[str, str]]:
    where = f"--{entity}-features {path}"
    try:
        values = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except (OSError, ValueError) as exc:
        raise InputFileError(f"cannot read side-feature matrix: {str(exc).splitlines()[0]}", where=where,
                             fix="one line per entity, whitespace-separated numbers (the ratings matrix's layout)") from exc
    if values.size == 0:
        raise InputFileError("side-feature matrix is empty", where=where, fix="one line per entity, one column per feature")
    map_file = path.with_name(f"{path.stem}_map.txt")
    raw_names = [line.strip() for line in map_file.read_text().splitlines() if line.strip()] if map_file.is_file() else []
    if raw_names and len(raw_names) != values.shape[1]:
        raise InputFileError(f"{map_file.name} names {len(raw_names)} columns but the matrix has {values.shape[1]}",
                             where=str(map_file), fix="one name per matrix column, in order (or remove the map file)")
    names = [_column_name(entity, n) for n in raw_names] if raw_names else [f"{entity}_f{j}" for j in range(values.shape[1])]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise InputFileError(f"column names {repeated} repeat after cleaning", where=str(map_file), fix="give the columns distinct names")
    frame = pl.DataFrame({"key": [f"{_ID_PREFIX[entity]}{k}" for k in range(values.shape[0])],
                          **{name: values[:, j] for j, name in enumerate(names)}})
    return frame, {name: "numeric" for name in names}


def _read_table(path: Path, entity: str) -> tuple[pl.DataFrame, dict[str, str]]:
    where = f"--{entity}-features {path}"
    try:
        frame = pl.read_parquet(path, glob=False) if path.suffix == ".parquet" else pl.read_csv(path, infer_schema_length=None, glob=False)
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise InputFileError(f"cannot read side-feature file: {str(exc).splitlines()[0]}", where=where,
                             fix="pass a Parquet or CSV file with a header row") from exc
    keys = TABLE_KEYS[entity]
    key = next((k for k in keys if k in frame.columns), None)
    if key is None:
        raise InputFileError(f"file has no key column ({' or '.join(keys)})", where=where, fix=f"name the entity column {keys[0]}")
    frame = frame.rename({key: "key"}).with_columns(pl.col("key").cast(pl.String))
    types: dict[str, str] = {}
    for name, dtype in frame.schema.items():
        if name == "key":
            continue
        check_feature_name(name, where=f"{where}, column {name}")
        if dtype == pl.Boolean:
            types[name] = "boolean"
        elif dtype.is_numeric():
            types[name] = "numeric"
        elif dtype in (pl.String, pl.Categorical):
            types[name] = "categorical"
        else:
            raise InputFileError(f"column {name!r} has type {dtype}, neither text, number nor boolean", where=f"{where}, column {name}",
                                 fix="cast it to a number or a string, or drop it")
    return frame, types


def read_side_table(path: str | Path, entity: str) -> SideTable:
    """Read and check one side-feature file (see the module docstring).

    Raises
    ------
    InputFileError : unreadable file, wrong suffix, no key column, null or repeated keys, a column
        of an unusable type, a map file that does not fit the matrix, no feature column.
    ConfigError : a column name that cannot be a feedback-table column.
    """
    path = Path(path)
    where = f"--{entity}-features {path}"
    if not path.is_file():
        raise InputFileError("side-feature file not found", where=where, fix="pass an existing file")
    if path.suffix in MATRIX_SUFFIXES:
        frame, types = _read_matrix(path, entity)
    elif path.suffix in (".csv", ".parquet"):
        frame, types = _read_table(path, entity)
    else:
        raise InputFileError(f"side-feature file must be {', '.join(MATRIX_SUFFIXES)} (a matrix), .csv or .parquet", where=where,
                             fix="convert the file")
    if frame["key"].null_count():
        raise InputFileError(f"{frame['key'].null_count():,} rows have no key", where=where, fix="drop the rows without a key")
    repeated = frame.group_by("key").len().filter(pl.col("len") > 1)
    if repeated.height:
        raise InputFileError(f"{repeated.height:,} key value(s) appear more than once (e.g. {repeated['key'][0]!r})", where=where,
                             fix="keep one row per entity")
    if not types:
        raise InputFileError("file holds only its key column", where=where, fix="add the entity's feature columns")
    return SideTable(str(path), entity, frame, types)


def read_side_tables(user_features: str | None, item_features: str | None) -> list[SideTable]:
    """The side-feature files of an ingest (none, one or both); their column names must not clash."""
    tables = [read_side_table(path, entity) for entity, path in (("user", user_features), ("item", item_features)) if path]
    if len(tables) == 2:
        clash = sorted(set(tables[0].types) & set(tables[1].types))
        if clash:
            raise ConfigError(f"columns {clash} are in both side-feature files", where=f"{tables[0].path}, {tables[1].path}",
                              fix="rename them in one file (e.g. with a user_ / item_ prefix)")
    return tables
