"""Multi-level labels for the label-aware fit (issue 17): ``fit-label-aware --label-column rating``.

The exponential tilt of :mod:`propensity.slice.label_aware` holds for any finite label set: with a
rating r in {1, ..., 5}, P(o = 1 | x, r) = c(x) exp(beta_r), the outcome model is the multiclass
m_r(x) = P(r | x, o = 1) and the slice's moment equations give one factor per rating value. Selection
on a 1-5 rating is often sharper than on the binary vote derived from it (users rate what they love
or hate), so the factor per value removes more of it; this is what the Coat slice benchmark used
(``benchmarks/slice/``).

The feedback table holds the multi-level label as an outcome column (the ``ratings`` source's raw
``rating``, :data:`feedback_etl.features.OUTCOME_COLUMNS`); the slice file gives each slice
exposure's solicited value in a column of the same name, beside its binary ``label``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from schemas.errors import ConfigError, EstimationError, InputFileError


def label_codes(values: np.ndarray, observed: np.ndarray, slice_values: np.ndarray, *, column: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Codes of the distinct label values seen on observed rows.

    Returns (label_values, codes, slice_codes): the sorted values, array (n_labels,); the code of each
    row's value, array (n,) (0 where unobserved); the code of each slice value, array (n_slice,).

    Raises
    ------
    InputFileError : a slice value never seen among the organic labels (its propensity has no outcome model).
    """
    label_values = np.unique(values[observed])
    codes = np.where(observed, np.searchsorted(label_values, np.where(observed, values, label_values[0])), 0)
    slice_codes = np.searchsorted(label_values, slice_values)
    unknown = (slice_codes >= len(label_values)) | (label_values[np.minimum(slice_codes, len(label_values) - 1)] != slice_values)
    if unknown.any():
        raise InputFileError(
            f"{int(unknown.sum())} slice value(s) of {column!r} never occur among the organic labels, e.g. {slice_values[unknown][:3].tolist()}",
            where=f"slice file, column {column}", fix=f"slice values must be among {label_values.tolist()}",
        )
    return label_values, codes.astype(np.int64), slice_codes.astype(np.int64)


def read_slice_values(path: str | Path, column: str) -> pl.DataFrame:
    """``exposure_id`` and the slice file's ``column`` (the solicited multi-level label, float).

    Raises
    ------
    InputFileError : the file lacks the column or holds a value that is not a number.
    """
    path = Path(path)
    readers = {".parquet": lambda p: pl.read_parquet(p, glob=False), ".csv": lambda p: pl.read_csv(p, glob=False),
               ".jsonl": lambda p: pl.read_ndjson(p.read_bytes()), ".ndjson": lambda p: pl.read_ndjson(p.read_bytes())}
    frame = readers[path.suffix](path)  # read_slice_file has checked the path, format and ids
    if column not in frame.columns:
        raise InputFileError(f"slice file lacks column {column!r} (has {frame.columns})", where=str(path),
                             fix=f"with --label-column {column}, give each slice exposure its solicited {column} beside label")
    values = frame.select(pl.col("exposure_id").cast(pl.Utf8), pl.col(column).cast(pl.Float64, strict=False).alias("value"))
    bad = values.filter(pl.col("value").is_null())
    if bad.height:
        raise InputFileError(f"{bad.height} slice rows have no numeric {column}, e.g. {bad['exposure_id'].head(3).to_list()}",
                             where=f"{path}, column {column}", fix=f"every slice row needs its {column}")
    return values


def multiclass_outcome(
    X: Any, codes: np.ndarray, train_rows: np.ndarray, folds: np.ndarray, n_labels: int, *, model: str, strata: np.ndarray,
    n_strata: int, seed: int = 0, n_jobs: int = 0,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Cross-fitted m_r(x) = P(r | x, o = 1), array (n, n_labels): fold k's rows scored by a multiclass
    LightGBM trained on the organic observed rows (``train_rows``) of the other folds; ``model="none"``:
    the label shares of the row's stratum among all organic observed rows."""
    models = fit_multiclass_models(X, codes, train_rows, folds, np.unique(folds), n_labels, model=model, strata=strata,
                                   n_strata=n_strata, seed=seed, n_jobs=n_jobs)
    m = predict_multiclass(models, X, folds, strata)
    return m, multiclass_info(model, n_labels, m[train_rows])


def multiclass_info(model: str, n_labels: int, m_train: np.ndarray) -> dict[str, Any]:
    """What ``label_aware.json`` records about the multiclass outcome model (``m_train``: m at the organic votes)."""
    info: dict[str, Any] = {"model": model, "n_labels": int(n_labels)}
    if model != "none":
        info["mean"] = m_train.mean(axis=0).tolist()
    return info


def fit_multiclass_models(
    X: Any, codes: np.ndarray, train_rows: np.ndarray, folds: np.ndarray, fold_values: np.ndarray, n_labels: int, *, model: str,
    strata: np.ndarray, n_strata: int, seed: int = 0, n_jobs: int = 0,
) -> dict[str, Any]:
    """The multiclass outcome model of each fold in ``fold_values`` (trained on the organic votes of the
    other folds), or the label shares per stratum for ``model="none"``. ``X`` / ``codes`` / ``folds`` /
    ``strata`` cover at least ``train_rows``: the in-memory fit passes the whole table, a streamed one its
    organic votes and slice rows (issue 23); :func:`predict_multiclass` then scores any rows.

    Raises
    ------
    EstimationError : a fold whose training rows hold one label value only.
    """
    if model == "none":
        shares = np.empty((n_strata, n_labels))
        for s in range(n_strata):
            rows = train_rows[strata[train_rows] == s]
            rows = rows if len(rows) else train_rows
            shares[s] = np.bincount(codes[rows], minlength=n_labels) / len(rows)
        return {"model": "none", "shares": shares, "n_labels": int(n_labels)}
    import lightgbm as lgb

    from propensity.models.crossfit import _take

    train_folds = folds[train_rows]
    per_fold: dict[int, Any] = {}
    for k in fold_values:
        fit_rows = train_rows[train_folds != k]
        present = np.unique(codes[fit_rows])
        if len(present) < 2:
            raise EstimationError(f"fold {k}'s training rows hold one label value only", where="label-aware outcome model",
                                  fix="use --label-model none, or fewer folds in `propensity fit`")
        classifier = lgb.LGBMClassifier(n_estimators=200, num_leaves=15, min_child_samples=20, learning_rate=0.05,
                                        n_jobs=n_jobs or None, random_state=seed, verbose=-1)
        classifier.fit(_take(X, fit_rows), codes[fit_rows])
        per_fold[int(k)] = classifier
    return {"model": model, "folds": per_fold, "n_labels": int(n_labels)}


def predict_multiclass(models: dict[str, Any], X: Any, folds: np.ndarray, strata: np.ndarray) -> np.ndarray:
    """m_r(x) for rows of ``X``, each by the model of its fold (:func:`fit_multiclass_models`), array (n, n_labels)."""
    if models["model"] == "none":
        return models["shares"][np.asarray(strata, dtype=np.int64)]
    from propensity.models.crossfit import _take

    m = np.zeros((len(folds), models["n_labels"]))
    for k, classifier in models["folds"].items():
        rows = np.flatnonzero(folds == k)
        if len(rows):
            m[np.ix_(rows, classifier.classes_)] = classifier.predict_proba(_take(X, rows))
    return m


def check_label_column(name: str) -> str:
    """``name`` if it can be a multi-level label column, else ConfigError."""
    from feedback_etl.features import OUTCOME_COLUMNS

    if name != "label" and name not in OUTCOME_COLUMNS:
        raise ConfigError(f"--label-column must be label or an outcome column ({', '.join(OUTCOME_COLUMNS)}), got {name!r}",
                          where="--label-column", fix="e.g. --label-column rating on a warehouse ingested with --source ratings")
    return name


def multilevel_labels(
    warehouse: str | Path, feedback: pl.DataFrame, column: str, slice_file: str | None, labelled: pl.DataFrame, observed: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(codes (n,), slice_codes (n_slice,), label_values (n_labels,)) of the multi-level label ``column``:
    the feedback table's outcome column on observed rows, the slice file's column on ``labelled``'s rows.

    Raises
    ------
    ConfigError : no slice file (flagged solicited rows carry the binary vote only), or no such column.
    InputFileError : slice rows without the column's value, or a value unseen among the organic labels.
    """
    from feedback_etl.features import read_outcome_column

    if not slice_file:
        raise ConfigError(f"--label-column {column} needs a --slice file giving each slice exposure its {column}",
                          where="--label-column", fix=f"pass --slice FILE with exposure_id, label and {column}")
    values = feedback.select("exposure_id").join(read_outcome_column(warehouse, column), on="exposure_id", how="left", maintain_order="left")
    return labels_from_values(values[column].to_numpy().astype(np.float64), observed, column, slice_file, labelled, warehouse)


def labels_from_values(
    value: np.ndarray, observed: np.ndarray, column: str, slice_file: str | Path, labelled: pl.DataFrame, warehouse: str | Path,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`multilevel_labels` from the rows' values of ``column`` (array (n,), NaN where missing):
    a streamed fit reads them with its core rows (issue 23)."""
    missing = observed & np.isnan(value)
    if missing.any():
        raise EstimationError(f"{int(missing.sum()):,} observed rows have no {column}", where=f"{warehouse}, column {column}",
                              fix=f"every rated exposure needs its {column}; re-ingest the ratings")
    from_file = read_slice_values(slice_file, column)
    slice_values = labelled.select("exposure_id").join(from_file, on="exposure_id", how="left", maintain_order="left")["value"]
    if slice_values.null_count():
        raise InputFileError(f"{slice_values.null_count()} slice rows have no {column}", where=f"{slice_file}, column {column}",
                             fix=f"every slice row needs its {column}")
    label_values, codes, slice_codes = label_codes(value, observed, slice_values.to_numpy().astype(np.float64), column=column)
    return codes, slice_codes, label_values


def row_codes(value: np.ndarray, observed: np.ndarray, label_values: np.ndarray) -> np.ndarray:
    """Codes of observed rows' values in ``label_values`` (0 elsewhere), as :func:`label_codes` gives them:
    a streamed fit's scoring batches (every observed value is among ``label_values``)."""
    safe = np.where(observed, value, label_values[0])
    return np.where(observed, np.searchsorted(label_values, safe), 0).astype(np.int64)
