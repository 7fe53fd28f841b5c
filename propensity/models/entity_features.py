"""Entity features and out-of-fold id encodings for the propensity fit (issue 17).

Two ways to tell the model *who* and *what* an exposure is about:

* **Side-feature files** (``--user-features FILE``, ``--item-features FILE``): Parquet or CSV, one
  row per entity, keyed by ``user_id`` (user files) or ``prompt_id`` / ``response_id`` (item
  files), joined to the feedback rows at fit time. Their other columns become features (strings:
  categorical, numbers and booleans: numeric). Point-in-time caveat: a file describes its
  entities as they are *now*; a column that changed because of the feedback itself (a user's vote
  count, an item's average rating) leaks the outcome into the propensity. Use attributes fixed
  before the exposures (sign-up cohort, item genre), or snapshot them as of the logs.
* **Out-of-fold id encodings** (``--id-encodings user_id,response_id``): each id becomes one
  numeric column, the smoothed feedback rate of that id, ``(sum o + m * prior) / (n + m)`` with
  ``m`` = :data:`SMOOTHING`. It is fitted *inside* the cross-fitting folds (the ``augment`` hook of
  :func:`propensity.models.crossfit.cross_fit`): fold k's held-out rows are encoded from the other
  folds' rows only, and each training row of fold j != k from the rows outside folds j and k. So
  no row's own label reaches its own encoding, and fold k's labels never reach fold k's model.
  New exposures (``propensity score``) are encoded from every fitted row (saved with the models).
* **Learned id embeddings** (``--id-embeddings user_id,response_id``, MLP model only): each id is
  hashed into one of ``id_buckets`` buckets (:func:`id_buckets`, a keyed BLAKE2b digest: the same
  bucket in every process and library version, so unseen ids need no vocabulary) and the MLP learns
  one vector per bucket (:class:`propensity.models.estimators.MLPPropensity`). The vectors are
  parameters of the fold models, so they are learned inside the cross-fitting folds like every
  other weight: fold k's model never sees fold k's rows or labels.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl

from schemas.errors import ConfigError, InputFileError

log = logging.getLogger(__name__)

USER_KEYS: tuple[str, ...] = ("user_id",)
ITEM_KEYS: tuple[str, ...] = ("prompt_id", "response_id")
ID_COLUMNS: tuple[str, ...] = ("user_id", "prompt_id", "response_id")
SMOOTHING = 20.0
ENCODING_SUFFIX = "_rate_oof"
# Hash buckets of a learned id embedding (2^16 x 8 floats = 2 MB per id column and fold model).
ID_BUCKETS = 2**16
BUCKET_SUFFIX = "_bucket"
MAX_LEVELS = 1000


@dataclass(frozen=True)
class EntityTable:
    """One side-feature file: its key column, the feature columns and their kinds."""

    path: str
    key: str
    frame: pl.DataFrame
    categorical: tuple[str, ...]
    numeric: tuple[str, ...]


def read_entity_features(path: str | Path, *, keys: Sequence[str], option: str) -> EntityTable:
    """Read and check one side-feature file.

    Raises
    ------
    InputFileError : unreadable file, no key column, null or duplicate keys, a column of an
        unusable type or a categorical column with more than :data:`MAX_LEVELS` values.
    """
    path = Path(path)
    where = f"{option} {path}"
    try:
        if path.suffix == ".parquet":
            frame = pl.read_parquet(path, glob=False)  # a literal path (issue 16)
        elif path.suffix == ".csv":
            frame = pl.read_csv(path, infer_schema_length=None, glob=False)
        else:
            raise InputFileError("side-feature file must be .parquet or .csv", where=where, fix="convert the file")
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise InputFileError(f"cannot read side-feature file: {str(exc).splitlines()[0]}", where=where,
                             fix="pass an existing Parquet or CSV file with a header row") from exc
    key = next((k for k in keys if k in frame.columns), None)
    if key is None:
        raise InputFileError(f"file has no key column ({' or '.join(keys)})", where=where,
                             fix=f"name the entity column {keys[0]}")
    frame = frame.with_columns(pl.col(key).cast(pl.String))
    if frame[key].null_count():
        raise InputFileError(f"{frame[key].null_count():,} rows have no {key}", where=f"{where}, column {key}",
                             fix="drop the rows without a key")
    repeated = frame.group_by(key).len().filter(pl.col("len") > 1)
    if repeated.height:
        raise InputFileError(
            f"{repeated.height:,} {key} value(s) appear more than once (e.g. {repeated[key][0]!r})",
            where=f"{where}, column {key}", fix="keep one row per entity (a snapshot as of the logs)",
        )
    categorical, numeric = [], []
    for name, dtype in frame.schema.items():
        if name == key or name in ID_COLUMNS:
            continue
        if dtype == pl.Boolean or dtype.is_numeric():
            numeric.append(name)
        elif dtype in (pl.String, pl.Categorical):
            distinct = frame[name].n_unique()
            if distinct > MAX_LEVELS:
                raise InputFileError(
                    f"categorical column {name!r} has {distinct:,} distinct values (cap {MAX_LEVELS:,})", where=f"{where}, column {name}",
                    fix="an id is no side feature: use --id-encodings for ids, or bucket the column",
                )
            categorical.append(name)
        else:
            raise InputFileError(f"column {name!r} has type {dtype}, neither text, number nor boolean", where=f"{where}, column {name}",
                                 fix="cast it to a number or a string, or drop it")
    if not categorical and not numeric:
        raise InputFileError(f"file holds only its key column {key}", where=where, fix="add the entity's feature columns")
    return EntityTable(str(path), key, frame, tuple(categorical), tuple(numeric))


def join_entity_features(
    feedback: pl.DataFrame, tables: Sequence[EntityTable]
) -> tuple[pl.DataFrame, tuple[str, ...], tuple[str, ...], list[str]]:
    """Left-join each table's features to the feedback rows (same order).

    Returns (frame, categorical, numeric, warnings): the added columns and plain-language warnings
    (exposures without a row in a file get nulls).

    Raises
    ------
    ConfigError : a feature column's name is a column already (of the table or another file).
    InputFileError : no key of a file matches any exposure.
    """
    categorical: list[str] = []
    numeric: list[str] = []
    warnings: list[str] = []
    for table in tables:
        names = [*table.categorical, *table.numeric]
        clash = [n for n in names if n in feedback.columns]
        if clash:
            raise ConfigError(f"side-feature column(s) {clash} already exist in the feedback rows", where=table.path,
                              fix="rename them in the file (e.g. with a user_ / item_ prefix)")
        keys = table.frame.select(table.key)
        n_matched = feedback.select(table.key).join(keys, on=table.key, how="semi").height
        if n_matched == 0:
            raise InputFileError(f"no {table.key} of the file matches an exposure", where=f"{table.path}, column {table.key}",
                                 fix=f"key the file by the warehouse's {table.key} values (pseudonymised ids need the same key)")
        if n_matched < feedback.height:
            warnings.append(f"{feedback.height - n_matched:,} of {feedback.height:,} exposures have no row in {table.path}: their "
                            "side features are null")
        unused = keys.join(feedback.select(table.key).unique(), on=table.key, how="anti").height
        if unused:
            warnings.append(f"{unused:,} of {table.frame.height:,} rows of {table.path} match no exposure")
        for name in names:
            if table.frame[name].drop_nulls().n_unique() <= 1:
                warnings.append(f"side feature {name!r} of {table.path} holds at most one value: it carries no information")
        feedback = feedback.join(table.frame.select(table.key, *names), on=table.key, how="left", maintain_order="left")
        categorical += table.categorical
        numeric += table.numeric
    for message in warnings:
        log.warning("propensity features: %s", message)
    return feedback, tuple(categorical), tuple(numeric), warnings


def check_side_columns(columns: Sequence[str], tables: Sequence[EntityTable]) -> None:
    """ConfigError when a side-feature column is already a column of the feedback rows (or of an earlier file)."""
    taken = set(columns)
    for table in tables:
        names = [*table.categorical, *table.numeric]
        clash = [n for n in names if n in taken]
        if clash:
            raise ConfigError(f"side-feature column(s) {clash} already exist in the feedback rows", where=table.path,
                              fix="rename them in the file (e.g. with a user_ / item_ prefix)")
        taken.update(names)


def join_side_columns(frame: pl.DataFrame, tables: Sequence[EntityTable]) -> pl.DataFrame:
    """``frame`` with every table's feature columns left-joined on its key, same row order, no checks
    (one batch of a streamed fit: :class:`SideKeyCounter` checks the keys over all batches)."""
    for table in tables:
        frame = frame.join(table.frame.select(table.key, *table.categorical, *table.numeric), on=table.key, how="left",
                           maintain_order="left")
    return frame


class SideKeyCounter:
    """The key checks of :func:`join_entity_features`, batch by batch: call :meth:`add` on every
    batch of the feedback rows, then :meth:`warnings` (which raises when no key matched)."""

    def __init__(self, tables: Sequence[EntityTable]) -> None:
        self.tables = list(tables)
        self.n_rows = 0
        self.n_matched = [0] * len(self.tables)
        self.used: list[set[str]] = [set() for _ in self.tables]

    def add(self, frame: pl.DataFrame) -> None:
        self.n_rows += frame.height
        for i, table in enumerate(self.tables):
            keys = frame[table.key].cast(pl.String)
            hit = keys.is_in(table.frame[table.key].implode()).fill_null(False)
            self.n_matched[i] += int(hit.sum())
            self.used[i].update(keys.filter(hit).unique().to_list())

    def warnings(self) -> list[str]:
        found = []
        for table, n_matched, used in zip(self.tables, self.n_matched, self.used):
            if n_matched == 0:
                raise InputFileError(f"no {table.key} of the file matches an exposure", where=f"{table.path}, column {table.key}",
                                     fix=f"key the file by the warehouse's {table.key} values (pseudonymised ids need the same key)")
            if n_matched < self.n_rows:
                found.append(f"{self.n_rows - n_matched:,} of {self.n_rows:,} exposures have no row in {table.path}: their "
                             "side features are null")
            if len(used) < table.frame.height:
                found.append(f"{table.frame.height - len(used):,} of {table.frame.height:,} rows of {table.path} match no exposure")
            for name in (*table.categorical, *table.numeric):
                if table.frame[name].drop_nulls().n_unique() <= 1:
                    found.append(f"side feature {name!r} of {table.path} holds at most one value: it carries no information")
        for message in found:
            log.warning("propensity features: %s", message)
        return found


def load_side_tables(user_features: str | None, item_features: str | None) -> list[EntityTable]:
    """The side-feature files of a fit (none, one or both)."""
    tables = []
    if user_features:
        tables.append(read_entity_features(user_features, keys=USER_KEYS, option="--user-features"))
    if item_features:
        tables.append(read_entity_features(item_features, keys=ITEM_KEYS, option="--item-features"))
    return tables


def check_id_columns(names: Sequence[str], *, where: str = "--id-encodings") -> tuple[str, ...]:
    """``names`` if every one is an id column that can be encoded (or embedded), else ConfigError."""
    unknown = [n for n in names if n not in ID_COLUMNS]
    if unknown:
        verb = "embedded" if where == "--id-embeddings" else "id-encoded"
        raise ConfigError(f"{unknown} cannot be {verb}", where=where, fix=f"use {', '.join(ID_COLUMNS)}")
    return tuple(dict.fromkeys(names))


# ---------------------------------------------------------------- out-of-fold id encodings


def _codes(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    levels, codes = np.unique(ids.astype(str), return_inverse=True)
    return levels, codes


def smoothed_rate(codes: np.ndarray, y: np.ndarray, rows: np.ndarray, n_levels: int, prior: float) -> np.ndarray:
    """Per level, ``(sum y + m * prior) / (n + m)`` over ``rows``; levels without rows get ``prior``.

    Returns an array of shape (n_levels,)."""
    sums = np.bincount(codes[rows], weights=y[rows].astype(np.float64), minlength=n_levels)
    counts = np.bincount(codes[rows], minlength=n_levels).astype(np.float64)
    return (sums + SMOOTHING * prior) / (counts + SMOOTHING)


def oof_encoder(ids: dict[str, np.ndarray], y: np.ndarray, folds: np.ndarray):
    """The ``augment`` hook of :func:`propensity.models.crossfit.cross_fit` for id encodings.

    ``ids`` maps an id column to its values, arrays of shape (n_rows,) aligned with ``y`` and
    ``folds`` (the rows ``cross_fit`` is given). For fold k, held-out rows are encoded from the
    training rows; a training row of fold j from the training rows outside fold j.
    """
    y = np.asarray(y).astype(np.float64)
    folds = np.asarray(folds)
    coded = {name: _codes(np.asarray(values)) for name, values in ids.items()}

    def augment(k: int, train_rows: np.ndarray, test_rows: np.ndarray) -> tuple[pd.DataFrame, pd.DataFrame]:
        prior = float(y[train_rows].mean())
        train_cols, test_cols = {}, {}
        for name, (levels, codes) in coded.items():
            column = name + ENCODING_SUFFIX
            test_cols[column] = smoothed_rate(codes, y, train_rows, len(levels), prior)[codes[test_rows]]
            encoded = np.empty(len(train_rows), dtype=np.float64)
            train_folds = folds[train_rows]
            for j in np.unique(train_folds):
                inner = train_rows[train_folds != j]
                mine = train_folds == j
                # The prior too from the inner rows only: a training-wide prior would hold the row's own label.
                encoded[mine] = smoothed_rate(codes, y, inner, len(levels), float(y[inner].mean()))[codes[train_rows[mine]]]
            train_cols[column] = encoded
        return pd.DataFrame(train_cols), pd.DataFrame(test_cols)

    return augment


def full_encodings(ids: dict[str, np.ndarray], y: np.ndarray) -> dict[str, dict]:
    """Encodings of every level from all fitted rows, for scoring new exposures (JSON-able)."""
    y = np.asarray(y).astype(np.float64)
    prior = float(y.mean())
    out = {}
    for name, values in ids.items():
        levels, codes = _codes(np.asarray(values))
        rates = smoothed_rate(codes, y, np.arange(len(y)), len(levels), prior)
        out[name] = {"prior": prior, "levels": dict(zip(levels.tolist(), rates.tolist()))}
    return out


def apply_encodings(feedback: pl.DataFrame, encodings: dict[str, dict]) -> pd.DataFrame:
    """The encoded columns of ``feedback``'s rows from saved encodings (unseen ids get the prior)."""
    columns = {}
    for name, saved in encodings.items():
        mapping = saved["levels"]
        values = feedback[name].cast(pl.String).replace_strict(
            list(mapping), list(mapping.values()), default=saved["prior"], return_dtype=pl.Float64
        )
        columns[name + ENCODING_SUFFIX] = values.fill_null(saved["prior"]).to_numpy()
    return pd.DataFrame(columns)


# ---------------------------------------------------------------- scoring with a fit's entity inputs


_SIDE_CACHE: dict[tuple[str, float], EntityTable] = {}


def with_side_features(feedback: pl.DataFrame, spec: dict) -> pl.DataFrame:
    """``feedback`` plus the side-feature columns the fit joined (its config's files, read again).

    Raises
    ------
    InputFileError : a file the fit used is gone or changed shape (refit, or restore the file).
    """
    config = spec.get("config") or {}
    tables = []
    for option, keys in (("user_features", USER_KEYS), ("item_features", ITEM_KEYS)):
        path = config.get(option)
        if not path:
            continue
        try:
            stamp = Path(path).stat().st_mtime
        except OSError as exc:
            raise InputFileError("the side-feature file the propensity fit used is gone", where=f"--{option.replace('_', '-')} {path}",
                                 fix="restore the file, or refit the propensity models") from exc
        key = (path, stamp)
        if key not in _SIDE_CACHE:
            _SIDE_CACHE.clear()  # one fit's files at a time
            _SIDE_CACHE[key] = read_entity_features(path, keys=keys, option=f"--{option.replace('_', '-')}")
        table = _SIDE_CACHE[key]
        missing = [n for n in (*table.categorical, *table.numeric) if n in feedback.columns]
        if not missing:
            tables.append(table)
    for table in tables:  # no match checks here: a scoring batch may well hold none of a file's keys
        names = [*table.categorical, *table.numeric]
        feedback = feedback.join(table.frame.select(table.key, *names), on=table.key, how="left", maintain_order="left")
    return feedback


def append_encodings(inputs, feedback: pl.DataFrame, spec: dict):
    """The model input with the fit's id-encoding columns appended (unchanged without encodings)."""
    encodings = spec.get("id_encodings")
    if not encodings:
        return inputs
    extra = apply_encodings(feedback, encodings)
    if isinstance(inputs, pd.DataFrame):
        return pd.concat([inputs, extra.set_axis(inputs.index, axis=0)], axis=1)
    return np.hstack([inputs, extra.to_numpy(dtype=np.float64)])


# ---------------------------------------------------------------- hashed ids for learned embeddings


def id_buckets(values: pl.Series, buckets: int, *, column: str) -> np.ndarray:
    """Bucket of every id, an int64 array of shape (n_rows,) in [0, buckets]; a null id gets
    ``buckets`` (the embedding's "unknown" slot).

    The bucket is a BLAKE2b digest keyed by the column name, modulo ``buckets``: stable across
    processes and library versions (polars' ``hash`` is not), and computed once per distinct id.
    """
    import hashlib

    text = values.cast(pl.String)
    distinct = text.drop_nulls().unique()
    key = column.encode()
    hashed = [int.from_bytes(hashlib.blake2b(v.encode(), digest_size=8, key=key).digest(), "little") % buckets for v in distinct.to_list()]
    codes = text.replace_strict(distinct, pl.Series(hashed, dtype=pl.Int64), default=buckets, return_dtype=pl.Int64)
    return codes.fill_null(buckets).to_numpy().astype(np.int64, copy=False)


def bucket_columns(feedback: pl.DataFrame, columns: Sequence[str], buckets: int) -> np.ndarray:
    """The hashed buckets of ``columns``, a float64 array of shape (n_rows, len(columns)) (bucket
    numbers are exact in float32 and float64 up to 2^24): the first columns of an MLP's input, so
    that out-of-fold id encodings can still be appended last (``cross_fit``'s augment hook)."""
    if not columns:
        return np.empty((feedback.height, 0))
    return np.column_stack([id_buckets(feedback[name], buckets, column=name) for name in columns]).astype(np.float64)


def prepend_id_buckets(inputs: np.ndarray, feedback: pl.DataFrame, spec: dict) -> np.ndarray:
    """The model input with the fit's id-bucket columns first (unchanged without id embeddings)."""
    saved = spec.get("id_embeddings")
    if not saved:
        return inputs
    return np.hstack([bucket_columns(feedback, saved["columns"], int(saved["buckets"])), inputs])
