"""Propensity features: the feedback table's context and history columns, plus text embeddings.

One row per exposure, in the order of the feedback frame given. Categorical columns are pandas
``category`` columns (LightGBM splits on them natively); the MLP and the logistic baseline take
the one-hot :func:`design_matrix` instead.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import polars as pl

from schemas.errors import InputFileError, WarehouseError
from schemas.feedback import CONTEXT_CATEGORICAL, CONTEXT_NUMERIC

log = logging.getLogger(__name__)

EMBEDDING_PREFIX = "emb_"


def build_features(
    feedback: pl.DataFrame,
    embeddings: pl.DataFrame | None = None,
    *,
    categorical: tuple[str, ...] = CONTEXT_CATEGORICAL,
    numeric: tuple[str, ...] = CONTEXT_NUMERIC,
    levels: Mapping[str, Sequence[str]] | None = None,
    numeric_dtype: type | np.dtype = np.float64,
) -> tuple[pd.DataFrame, list[str], list[str]]:
    """Feature matrix of every exposure for a propensity model.

    Parameters
    ----------
    feedback : polars frame, one row per exposure (the feedback table, or any frame holding
        ``exposure_id`` and the feature columns).
    embeddings : polars frame (``exposure_id``, ``embedding`` list[float]) from
        ``feedback_etl.io.read_embeddings`` or None. When given it must cover every exposure.
    categorical, numeric : feature column names (default: the feedback contract's context and
        user-history columns).
    levels : optional categories per categorical column (e.g. the whole table's, when ``feedback``
        is one batch or a sample of it); a value outside them becomes missing. None: the sorted
        non-null values of ``feedback``.
    numeric_dtype : dtype of the numeric columns: float64 (default) or float32 (half the memory;
        a streamed fit uses it, recorded in the saved spec so scoring builds the same values).

    Returns
    -------
    X : pandas DataFrame of shape (n_exposures, n_features), rows in ``feedback``'s order;
        categorical columns have dtype ``category`` (categories sorted, nulls stay missing; built
        from integer codes, never from Python string objects), numeric ones ``numeric_dtype`` (nulls
        are NaN), embedding dimensions float32 named ``emb_000``...
    feature_names : list of the n_features column names.
    categorical_names : the subset of ``feature_names`` that is categorical.

    Raises
    ------
    InputFileError : a feature column is missing from ``feedback``.
    WarehouseError : embeddings exist but do not cover every exposure, or have ragged dimensions.
    """
    missing = [c for c in (*categorical, *numeric) if c not in feedback.columns]
    if missing:
        raise InputFileError(
            f"feedback table lacks propensity feature column(s) {missing}",
            where="WH/feedback",
            fix="re-run `causalrm ingest` so the table follows the schemas.feedback contract",
        )
    columns: dict[str, pd.Series | np.ndarray] = {}
    for name in categorical:
        values = feedback[name].cast(pl.String)
        known = list(levels[name]) if levels is not None else values.drop_nulls().unique().sort().to_list()
        columns[name] = pd.Categorical.from_codes(category_codes(values, known), categories=known)
    for name in numeric:
        columns[name] = feedback[name].cast(pl.Float64).to_numpy(allow_copy=True).astype(numeric_dtype)
    X = pd.DataFrame(columns)
    categorical_names = list(categorical)

    if embeddings is not None:
        matrix = _embedding_matrix(feedback, embeddings)
        names = [f"{EMBEDDING_PREFIX}{j:03d}" for j in range(matrix.shape[1])]
        X = pd.concat([X, pd.DataFrame(matrix, columns=names)], axis=1)
    return X, list(X.columns), categorical_names


def category_codes(values: pl.Series, levels: Sequence[str]) -> np.ndarray:
    """Int32 codes of ``values`` in ``levels`` (sorted strings), -1 for null or unknown values.

    The codes of ``pd.Categorical(values, categories=levels)``, computed in polars without
    turning every row into a Python string object.
    """
    if not levels:
        return np.full(len(values), -1, dtype=np.int32)
    codes = values.cast(pl.String).replace_strict(list(levels), list(range(len(levels))), default=-1, return_dtype=pl.Int32)
    return codes.fill_null(-1).to_numpy().astype(np.int32, copy=False)


def _embedding_matrix(feedback: pl.DataFrame, embeddings: pl.DataFrame) -> np.ndarray:
    """(n_exposures, dim) float32 embeddings aligned with ``feedback``'s rows."""
    if "exposure_id" not in feedback.columns:
        raise InputFileError("feedback frame lacks exposure_id", where="WH/feedback", fix="pass the feedback table")
    joined = feedback.select("exposure_id").join(
        embeddings.select("exposure_id", "embedding"), on="exposure_id", how="left", maintain_order="left"
    )
    n_missing = joined["embedding"].null_count()
    if n_missing:
        raise WarehouseError(
            f"embeddings cover {len(joined) - n_missing:,} of {len(joined):,} exposures",
            where="WH/embeddings",
            fix="re-run `causalrm embed WH` after the last ingest, or fit with --no-embeddings",
        )
    lengths = joined["embedding"].list.len()
    if lengths.n_unique() != 1:
        raise WarehouseError(
            f"embeddings have ragged dimensions {sorted(lengths.unique().to_list())[:5]}",
            where="WH/embeddings",
            fix="re-run `causalrm embed WH` with one model",
        )
    dim = int(lengths[0])
    flat = joined["embedding"].explode().cast(pl.Float32).to_numpy()
    return flat.reshape(len(joined), dim)


def design_matrix(
    X: pd.DataFrame, categorical_names: list[str] | None = None, *, dtype: type = np.float64
) -> tuple[np.ndarray, list[str]]:
    """Numeric float64 matrix for models without native categoricals (MLP, logistic, balance).

    Categorical columns become one indicator column per level (``platform=ios``; a missing value
    is all zeros); numeric columns are copied (NaN kept: the estimators impute). ``dtype=np.float32``
    halves the memory of a matrix that only feeds diagnostics (e.g. with 384 embedding dimensions).

    Returns
    -------
    matrix : ndarray of shape (n_exposures, n_columns)
    names : list of the n_columns column names
    """
    categorical_names = [c for c in X.columns if isinstance(X[c].dtype, pd.CategoricalDtype)] if categorical_names is None else categorical_names
    names: list[str] = []
    for name in X.columns:
        if name in categorical_names:
            names.extend(f"{name}={level}" for level in X[name].cat.categories)
        else:
            names.append(name)
    # Column-major: the matrix is filled and read (diagnostics, standardisation) column by column.
    matrix = np.empty((len(X), len(names)), dtype=dtype, order="F")
    j = 0
    for name in X.columns:
        column = X[name]
        if name in categorical_names:
            codes = column.cat.codes.to_numpy()
            width = len(column.cat.categories)
            block = matrix[:, j : j + width]
            block[:] = 0
            rows = np.flatnonzero(codes >= 0)
            block[rows, codes[rows]] = 1
            j += width
        else:
            matrix[:, j] = column.to_numpy(dtype=np.float64, na_value=np.nan)
            j += 1
    return matrix, names
