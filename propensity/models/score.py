"""`causalrm propensity score`: score every exposure of the feedback table with a channel's saved
fold models, in-process (``engine="local"``) or inside Spark (``engine="spark"``, see
:mod:`propensity.models.spark_score`), and write the scores into ``WH/propensity/scores.parquet``.

Fit once on one machine (``causalrm propensity fit``, on the whole table or on a sample warehouse:
``models_from``), then score a feedback table of any size with the saved models (issue 8).

Which score an exposure gets
----------------------------
* **An exposure in the fit** (the fitted warehouse's scores hold it with a fold ``k >= 0``) keeps
  the out-of-fold ``propensity``, ``propensity_raw`` and ``fold`` that ``propensity fit`` wrote.
  They are looked up, not recomputed: that is the cross-fitted score (model k never saw the
  exposure or its user) the diagnostics in ``metrics.json`` describe. Recomputing it from
  ``models[k]`` gives the same number when the exposure's features are unchanged (tests check
  this; :func:`score_frame` does it when given ``folds``). If a re-ingest changed a fitted
  exposure's features, it still keeps its fit-time score: refit to take the change in.
* **A new exposure** (not in the fit, or scored by an earlier ``propensity score``, ``fold = -1``)
  gets the fold average: ``propensity_raw = mean_k model_k(x)`` and
  ``propensity = clip(mean_k calibrator_k(model_k(x)), floor, 1)`` with the fit's floor, and
  ``fold = -1``. No model saw the exposure, so it is an honest out-of-sample score, but it is *not*
  cross-fitted the way fit scores are: it averages K models, so it is a little smoother (less
  variance) than one fold model's score, and its calibration is the average of K calibrated maps,
  not itself calibrated on anything. ``metrics.json`` describes the fit's exposures only; it gains
  a ``scoring`` entry (engine, counts, unseen levels) and is not recomputed.

Downstream, ``fold = -1`` marks the averaged rows; a consumer that cross-fits by the ``fold``
column should treat -1 as "no fold" (it is not a user-grouped fold).

Features are rebuilt exactly as at fit time: the spec's columns in the spec's order, categorical
levels from the spec (``models/<channel>/config.json``), numerics in the spec's ``numeric_dtype``
(float64; float32 after a case-control fit), every model score shifted by the spec's ``logit_shift``
(0 unless the models were fitted on a case-control sample), embeddings joined by
``exposure_id`` when the models used them. A categorical level the fit never saw (a new model_id,
say) becomes a missing value, exactly as a null was at fit time (LightGBM's missing branch, an
all-zero one-hot row for the MLP and logistic models); such exposures are counted, logged and kept
in ``metrics.json[channel]["scoring"]["unseen_levels"]``.

The local engine streams the feedback Parquet files in chunks of ``chunk_rows`` (memory bounded by
one chunk, the fit's scores of the channel and, when the models use them, the embeddings, which it
loads whole as ``propensity fit`` does), writes one part per chunk, and commits the parts with
:func:`propensity.io.commit_score_parts`. The Spark engine writes parts from the executors and
commits them the same way.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import polars as pl
import pyarrow.parquet as pq

from propensity.models.entity_features import append_encodings, prepend_id_buckets, with_side_features
from propensity.models.features import EMBEDDING_PREFIX, build_features, design_matrix
from propensity.io import (
    SCORES_LAYOUTS,
    commit_score_parts,
    metrics_path,
    models_dir,
    propensity_dir,
    read_scores,
    scores_layout,
    write_metrics,
)
from schemas.errors import ConfigError, InputFileError, WarehouseError
from schemas.feedback import CHANNELS

log = logging.getLogger(__name__)

ENGINES: tuple[str, ...] = ("local", "spark")
NEW_FOLD = -1
# Columns a scoring batch carries beside the features: the fit's score of the exposure, if any.
FIT_COLUMNS: tuple[str, ...] = ("fit_propensity", "fit_propensity_raw", "fit_fold")


@dataclass(frozen=True, kw_only=True)
class ScoreConfig:
    """Options of ``causalrm propensity score``.

    Attributes
    ----------
    channel : feedback channel whose saved models score (a key of ``schemas.feedback.CHANNELS``).
    engine : ``local`` (in-process, chunked) or ``spark`` (``mapInArrow`` on a SparkSession).
    threads : local: LightGBM threads (None: all cores); spark: ``local[threads]`` when this call
        starts the session (an existing session, e.g. under spark-submit, is reused as it is).
    layout : form of ``scores.parquet``: ``file`` (one file, read by every consumer), ``partitioned``
        (a directory Hive-partitioned by channel) or None: keep the warehouse's current form.
    models_from : warehouse whose ``propensity/models/<channel>/`` and fit scores to use (e.g. a
        sample warehouse fitted on one machine); None: the scored warehouse itself.
    chunk_rows : local engine: rows per chunk; spark engine: Arrow batch size per Python call.
    """

    channel: str = "vote"
    engine: str = "local"
    threads: int | None = None
    layout: str | None = None
    models_from: str | None = None
    chunk_rows: int = 200_000

    def __post_init__(self) -> None:
        if self.channel not in CHANNELS:
            raise ConfigError(f"unknown channel {self.channel!r}", where="--channel", fix=f"use one of {sorted(CHANNELS)}")
        if self.engine not in ENGINES:
            raise ConfigError(f"unknown engine {self.engine!r}", where="--engine", fix=f"use one of {list(ENGINES)}")
        if self.layout is not None and self.layout not in SCORES_LAYOUTS:
            raise ConfigError(f"unknown scores layout {self.layout!r}", where="--layout", fix=f"use one of {list(SCORES_LAYOUTS)}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be >= 1, got {self.threads}", where="--threads", fix="omit it to use every core")
        if self.chunk_rows < 1:
            raise ConfigError(f"chunk_rows must be >= 1, got {self.chunk_rows}", where="chunk_rows")


@dataclass(frozen=True, kw_only=True)
class ScoreResult:
    """What a scoring run wrote.

    Attributes
    ----------
    n_exposures : rows written for the channel (every exposure of the feedback table).
    n_fit : exposures that kept their out-of-fold score from the fit.
    n_new : exposures scored with the fold average (``fold = -1``).
    unseen_levels : per categorical column, exposures whose level the fit never saw (treated as missing).
    """

    channel: str
    engine: str
    n_exposures: int
    n_fit: int
    n_new: int
    layout: str
    scores_path: Path
    duration_s: float
    unseen_levels: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["scores_path"] = str(self.scores_path)
        return d


# ------------------------------------------------------------------------------------ features


def _feature_columns(spec: dict[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...], int]:
    """(categorical, numeric, embedding_dim) of the fit, from the saved spec."""
    names = list(spec["feature_names"])
    categorical = tuple(spec["categorical_levels"])
    numeric = tuple(n for n in names if n not in categorical and not n.startswith(EMBEDDING_PREFIX))
    return categorical, numeric, sum(n.startswith(EMBEDDING_PREFIX) for n in names)


def scoring_columns(spec: dict[str, Any]) -> list[str]:
    """The feedback-table columns scoring reads: exposure_id and the fit's feature columns."""
    categorical, numeric, _ = _feature_columns(spec)
    # Side-feature columns come from the fit's files (joined on their keys), not from the table (issue 17).
    side = set(spec.get("side_columns") or ())
    id_embedded = (spec.get("id_embeddings") or {}).get("columns") or ()
    keys = [k for k in (*(spec.get("side_keys") or ()), *(spec.get("id_encodings") or {}), *id_embedded) if k not in (*categorical, *numeric)]
    return ["exposure_id", *[c for c in (*categorical, *numeric) if c not in side], *dict.fromkeys(keys)]


def uses_embeddings(spec: dict[str, Any]) -> bool:
    return _feature_columns(spec)[2] > 0


def unseen_levels(frame: pl.DataFrame, spec: dict[str, Any]) -> dict[str, int]:
    """Per categorical feature, the rows whose (non-null) level is not among the fit's levels."""
    counts = {}
    for name, levels in spec["categorical_levels"].items():
        values = frame[name].cast(pl.String)
        counts[name] = int((values.is_not_null() & ~values.is_in(list(levels))).sum())
    return counts


def no_embeddings_error(spec: dict[str, Any]) -> WarehouseError:
    return WarehouseError(
        f"the {spec['channel']!r} propensity models were fitted with {_feature_columns(spec)[2]}-dimensional text embeddings "
        "and the warehouse has none",
        where="WH/embeddings",
        fix="run `causalrm embed WH` with the fit's model, or refit with `causalrm propensity fit --no-embeddings`",
    )


def scoring_features(
    feedback: pl.DataFrame, spec: dict[str, Any], embeddings: pl.DataFrame | None = None
) -> tuple[pd.DataFrame | np.ndarray, dict[str, int]]:
    """The model input of every row, built exactly as ``propensity fit`` built it.

    Parameters
    ----------
    feedback : polars frame with ``exposure_id`` and the fit's feature columns (and, when the models
        used embeddings and ``embeddings`` is None, an ``embedding`` list column).
    spec : ``models/<channel>/config.json`` as a dict.
    embeddings : (exposure_id, embedding) covering every row, or None.

    Returns
    -------
    inputs : LightGBM: pandas DataFrame of shape (n_rows, n_features) with the fit's columns and
        categorical levels; MLP / logistic: float64 design matrix of shape (n_rows, n_design)
        (an MLP with id embeddings: the hashed id buckets first, see ``MLPPropensity.n_id_columns``).
    unseen : per categorical column, rows with a level the fit never saw (now missing).

    Raises
    ------
    WarehouseError : the models used embeddings and there are none, or the features differ from the fit's.
    InputFileError : a feature column is missing.
    """
    categorical, numeric, embedding_dim = _feature_columns(spec)
    feedback = with_side_features(feedback, spec)  # --user-features / --item-features of the fit (issue 17)
    if embedding_dim:
        if embeddings is None and "embedding" in feedback.columns:
            embeddings = feedback.select("exposure_id", "embedding")
        if embeddings is None:
            raise no_embeddings_error(spec)
    else:
        embeddings = None
    # The fit's levels, not this batch's: codes must mean what they meant at fit time; a level
    # the fit never saw becomes missing, as a null was then.
    fit_levels = {name: list(spec["categorical_levels"][name]) for name in categorical}
    X, names, categorical_names = build_features(
        feedback, embeddings, categorical=categorical, numeric=numeric, levels=fit_levels,
        numeric_dtype=np.dtype(spec.get("numeric_dtype", "float64")),
    )
    if names != list(spec["feature_names"]):
        raise WarehouseError(
            f"scoring features differ from the fit's ({len(names)} vs {len(spec['feature_names'])} columns; "
            f"first difference: {next((a, b) for a, b in zip([*names, None], [*spec['feature_names'], None]) if a != b)})",
            where="WH/embeddings" if embedding_dim else "WH/feedback",
            fix="embed with the fit's model (same dimension), or refit the propensity models on this warehouse",
        )
    unseen = {name: int(((X[name].cat.codes.to_numpy() < 0) & feedback[name].is_not_null().to_numpy()).sum()) for name in categorical_names}
    if spec["model"] == "lightgbm":
        return append_encodings(X, feedback, spec), unseen
    matrix, design_names = design_matrix(X, categorical_names, dtype=np.float64)
    if spec.get("design_names") is not None and design_names != list(spec["design_names"]):
        raise WarehouseError(
            "the one-hot design matrix differs from the fit's", where="models/config.json",
            fix="refit the propensity models with this version of causalrm",
        )
    # The MLP's id-bucket columns come first, the id encodings last (as cross_fit's augment hook appended them).
    return prepend_id_buckets(append_encodings(matrix, feedback, spec), feedback, spec), unseen


# ------------------------------------------------------------------------------------ scoring


def _as_polars(frame: Any) -> pl.DataFrame:
    if isinstance(frame, pl.DataFrame):
        return frame
    if isinstance(frame, pd.DataFrame):
        return pl.from_pandas(frame)
    return pl.from_arrow(frame)


def score_frame(
    feedback: pl.DataFrame | pd.DataFrame,
    spec: dict[str, Any],
    models: list,
    calibrators: list,
    embeddings: pl.DataFrame | None = None,
    *,
    folds: np.ndarray | None = None,
) -> pl.DataFrame:
    """Propensities of the rows of ``feedback`` from the saved fold models (see the module docstring).

    Parameters
    ----------
    feedback : polars or pandas frame (or Arrow table) with ``exposure_id`` and the fit's feature
        columns (any extra columns are ignored), one row per exposure.
    spec, models, calibrators : what :func:`propensity.models.fit.load_fold_models` returns.
    embeddings : (exposure_id, embedding) covering every row when the models used embeddings
        (None: an ``embedding`` column of ``feedback``, else an error).
    folds : int array of shape (n_rows,) or None. ``folds[i] = k >= 0`` scores row i with fold k's
        model and calibrator only: the exposure's out-of-fold score if it was in fold k of the fit.
        ``-1`` (and None, for every row) gives the fold average.

    Returns
    -------
    polars frame of shape (n_rows, 4), in ``feedback``'s row order: ``exposure_id``, ``propensity``
    (float64 in [floor, 1], the fit's clip floor), ``propensity_raw`` (float64, the model score or
    the fold average of model scores), ``fold`` (int32: ``folds``, or -1).
    """
    frame = _as_polars(feedback)
    inputs, unseen = scoring_features(frame, spec, embeddings)
    for name, n in unseen.items():
        if n:
            log.warning("propensity %s: %d exposure(s) have a %s level the fit never saw; scored as missing", spec["channel"], n, name)
    propensity, raw, fold = _predict(inputs, spec, models, calibrators, folds)
    return pl.DataFrame(
        {
            "exposure_id": frame["exposure_id"].cast(pl.String),
            "propensity": propensity,
            "propensity_raw": raw,
            "fold": pl.Series(fold, dtype=pl.Int32),
        }
    )


def shift_logit(score: np.ndarray, shift: float) -> np.ndarray:
    """sigmoid(logit(score) + shift): the prior correction of a logistic-link model fitted on a
    case-control sample (King and Zeng, 2001), see ``propensity.models.casecontrol``."""
    if not shift:
        return score
    with np.errstate(divide="ignore"):
        logit = np.log(score) - np.log1p(-score)
    return 1.0 / (1.0 + np.exp(-(logit + shift)))


def _predict(
    inputs: pd.DataFrame | np.ndarray, spec: dict[str, Any], models: list, calibrators: list, folds: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    calibrated, raw, folds = predict_calibrated(inputs, spec, models, calibrators, folds)
    floor = float(spec["config"]["clip"])
    return np.clip(calibrated, floor, 1.0), raw, folds


def predict_calibrated(
    inputs: pd.DataFrame | np.ndarray, spec: dict[str, Any], models: list, calibrators: list, folds: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(calibrated propensity before the floor, raw score, fold) of every row of ``inputs``:
    fold k's model and calibrator for rows of fold k, the fold average for fold -1. A spec with a
    ``logit_shift`` (models fitted on a case-control sample) has it applied to every model score."""
    n = len(inputs)
    shift = float(spec.get("logit_shift") or 0.0)
    k_models = len(models)
    folds = np.full(n, NEW_FOLD, dtype=np.int64) if folds is None else np.asarray(folds, dtype=np.int64)
    if folds.shape != (n,) or (len(folds) and (folds.min() < NEW_FOLD or folds.max() >= k_models)):
        raise ConfigError(f"folds must be an int array of shape ({n},) with values in [-1, {k_models})", where="score_frame")
    new = folds == NEW_FOLD
    raw_sum = np.zeros(n)
    calibrated_sum = np.zeros(n)
    raw = np.full(n, np.nan)
    calibrated = np.full(n, np.nan)
    for k, (model, calibrator) in enumerate(zip(models, calibrators)):
        rows = np.flatnonzero(new | (folds == k))
        if not len(rows):
            continue
        every_row = len(rows) == n
        subset = inputs if every_row else (inputs.iloc[rows] if isinstance(inputs, pd.DataFrame) else inputs[rows])
        score = shift_logit(model.predict_propensity(subset), shift)
        # As cross_calibrate: the calibrated score is clipped to [0, 1] before the floor.
        mapped = np.clip(calibrator.predict(score), 0.0, 1.0)
        own = folds[rows] == k
        raw[rows[own]] = score[own]
        calibrated[rows[own]] = mapped[own]
        raw_sum[rows] += np.where(own, 0.0, score)
        calibrated_sum[rows] += np.where(own, 0.0, mapped)
    raw[new] = raw_sum[new] / k_models
    calibrated[new] = calibrated_sum[new] / k_models
    return calibrated, raw, folds.astype(np.int32)


def score_batch(
    batch: pl.DataFrame, spec: dict[str, Any], models: list, calibrators: list, embeddings: pl.DataFrame | None = None
) -> pl.DataFrame:
    """One batch of the scoring job, the same in both engines.

    ``batch`` holds exposure_id, the feature columns (and ``embedding`` when needed) and the fit's
    score columns ``fit_propensity``, ``fit_propensity_raw``, ``fit_fold`` (null when the exposure
    was not in the fit). Fitted rows keep their fit score; the others get :func:`score_frame`'s fold
    average. Returns (exposure_id, propensity, propensity_raw, fold) in ``batch``'s row order.
    """
    kept = batch["fit_fold"].is_not_null().to_numpy()
    propensity = batch["fit_propensity"].cast(pl.Float64).to_numpy().copy()
    raw = batch["fit_propensity_raw"].cast(pl.Float64).to_numpy().copy()
    fold = batch["fit_fold"].fill_null(NEW_FOLD).cast(pl.Int32).to_numpy().copy()
    if not kept.all():
        rows = np.flatnonzero(~kept)
        scored = score_frame(batch.filter(pl.Series(~kept)), spec, models, calibrators, embeddings)
        propensity[rows] = scored["propensity"].to_numpy()
        raw[rows] = scored["propensity_raw"].to_numpy()
        fold[rows] = NEW_FOLD
    return pl.DataFrame(
        {
            "exposure_id": batch["exposure_id"].cast(pl.String),
            "propensity": propensity,
            "propensity_raw": raw,
            "fold": pl.Series(fold, dtype=pl.Int32),
        }
    )


# ------------------------------------------------------------------------------------ driver


def load_fold_models(warehouse: str | Path, channel: str = "vote") -> tuple[dict[str, Any], list, list]:
    """The saved spec, fold models and calibrators of a channel (to score new exposures).

    Returns
    -------
    spec : dict from ``models/<channel>/config.json``
    models : list of K fitted estimators
    calibrators : list of K fitted calibrators
    """
    import json

    from propensity.models.calibration import calibrator_from_dict
    from propensity.models.estimators import ESTIMATORS

    directory = models_dir(warehouse, channel)
    if not (directory / "config.json").is_file():
        raise WarehouseError(
            f"no saved propensity models for channel {channel!r}", where=str(directory),
            fix=f"run `causalrm propensity fit {warehouse} --channel {channel}`",
        )
    spec = json.loads((directory / "config.json").read_text())
    cls = ESTIMATORS[spec["model"]]
    models = [cls.load(directory, f"fold_{k}") for k in range(spec["n_folds"])]
    calibrators = [calibrator_from_dict(d) for d in json.loads((directory / "calibration.json").read_text())]
    return spec, models, calibrators




def model_files(warehouse: str | Path, channel: str) -> dict[str, bytes]:
    """The bytes of every file in ``models/<channel>/`` (what a Spark job broadcasts)."""
    directory = models_dir(warehouse, channel)
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def models_digest(files: dict[str, bytes]) -> str:
    digest = hashlib.sha256()
    for name, content in sorted(files.items()):
        digest.update(name.encode())
        digest.update(hashlib.sha256(content).digest())
    return digest.hexdigest()


def load_models_from_files(files: dict[str, bytes], channel: str, directory: Path) -> tuple[dict[str, Any], list, list]:
    """Write ``files`` into ``directory/propensity/models/<channel>/`` and load them with
    :func:`load_fold_models` (so every engine loads models one way)."""
    target = models_dir(directory, channel)
    target.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (target / name).write_bytes(content)
    return load_fold_models(directory, channel)


def fit_scores(models_warehouse: Path, channel: str) -> pl.DataFrame:
    """The fit's out-of-fold scores (exposure_id, fit_propensity, fit_propensity_raw, fit_fold),
    only rows with a fold >= 0 (rows a previous ``propensity score`` averaged are not the fit's)."""
    try:
        scores = read_scores(models_warehouse, channel)
    except WarehouseError:
        log.info("propensity %s: no fit scores in %s; every exposure gets the fold average", channel, models_warehouse)
        return pl.DataFrame(schema={"exposure_id": pl.String, "fit_propensity": pl.Float64, "fit_propensity_raw": pl.Float64, "fit_fold": pl.Int32})
    return scores.filter(pl.col("fold") >= 0).select(
        "exposure_id", fit_propensity="propensity", fit_propensity_raw="propensity_raw", fit_fold="fold"
    )


def feedback_files(warehouse: Path) -> list[Path]:
    """The Parquet files of the feedback table's committed version (``feedback_etl.io.feedback_files``)."""
    from feedback_etl.io import feedback_files as committed_files

    files = sorted(Path(f) for f in committed_files(warehouse))
    if not files:
        raise WarehouseError(
            "warehouse has no feedback table", where=str(warehouse / "feedback"),
            fix=f"run `causalrm ingest LOGS --warehouse {warehouse}` first",
        )
    return files


# Engines other than ``local`` are plug-ins: they import this module's contract (scoring_features,
# score_batch, ...) and are looked up by name when asked for, like an entry point, so the core never
# imports an engine back (issue 20).
ENGINE_PLUGINS: dict[str, str] = {"spark": "propensity.models.spark_score"}


def _engine_plugin(engine: str):
    import importlib

    return importlib.import_module(ENGINE_PLUGINS[engine])


def score_propensity(
    warehouse: str | Path,
    channel: str = "vote",
    *,
    engine: str = "local",
    threads: int | None = None,
    layout: str | None = None,
    models_from: str | Path | None = None,
    chunk_rows: int = 200_000,
    progress: bool = False,
) -> ScoreResult:
    """Score every exposure of ``WH/feedback`` with the channel's saved models and write its rows
    of ``WH/propensity/scores.parquet`` (other channels kept). See the module docstring for which
    score an exposure gets and :class:`ScoreConfig` for the options.

    Raises
    ------
    ConfigError : invalid options; Java missing (spark).
    WarehouseError : no warehouse, feedback table, saved models or (when the models used them) embeddings.
    InputFileError : the feedback table lacks a feature column.
    """
    cfg = ScoreConfig(
        channel=channel, engine=engine, threads=threads, layout=layout,
        models_from=str(models_from) if models_from is not None else None, chunk_rows=chunk_rows,
    )
    warehouse = Path(warehouse)
    if not warehouse.is_dir():
        raise WarehouseError("warehouse folder does not exist", where=str(warehouse), fix="pass the folder given to `causalrm ingest --warehouse`")
    models_wh = Path(cfg.models_from) if cfg.models_from else warehouse
    started = time.perf_counter()
    spec, models, calibrators = load_fold_models(models_wh, channel)  # names a missing fit clearly
    feedback_files(warehouse)
    staging = propensity_dir(warehouse) / f".score-{channel}.{uuid.uuid4().hex}.tmp"
    staging.mkdir(parents=True)
    try:
        if cfg.engine == "local":
            parts, unseen = _score_local(warehouse, models_wh, cfg, spec, models, calibrators, staging, progress)
        else:
            parts, unseen = _engine_plugin(cfg.engine).score_spark(warehouse, models_wh, cfg, spec, staging)
        n_fit, n_new = _count_parts(parts)
        path = commit_score_parts(warehouse, channel, parts, layout=cfg.layout)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if models_wh.resolve() != warehouse.resolve():
        _adopt_models(models_wh, warehouse, channel)
    for name, n in unseen.items():
        if n:
            log.warning("propensity %s: %d exposure(s) have a %s level the fit never saw; scored as missing", channel, n, name)
    result = ScoreResult(
        channel=channel, engine=cfg.engine, n_exposures=n_fit + n_new, n_fit=n_fit, n_new=n_new, unseen_levels=unseen,
        layout=scores_layout(warehouse) or "file", scores_path=path, duration_s=round(time.perf_counter() - started, 3),
    )
    _record_scoring(warehouse, models_wh, cfg, result)
    log.info("propensity %s: scored %d exposures (%d kept from the fit, %d fold-averaged) with %s in %.1f s",
             channel, result.n_exposures, n_fit, n_new, cfg.engine, result.duration_s)
    return result


def _score_local(
    warehouse: Path, models_wh: Path, cfg: ScoreConfig, spec: dict[str, Any], models: list, calibrators: list, staging: Path,
    progress: bool,
) -> tuple[list[Path], dict[str, int]]:
    from feedback_etl.io import read_embeddings

    for model in models:
        if hasattr(model, "n_jobs"):
            model.n_jobs = cfg.threads or 0
    files = feedback_files(warehouse)
    columns = scoring_columns(spec)
    for path in files:
        present = set(pq.ParquetFile(path).schema_arrow.names)
        missing = [c for c in columns if c not in present]
        if missing:
            raise InputFileError(
                f"feedback table lacks propensity feature column(s) {missing}", where=str(path),
                fix="re-run `causalrm ingest` so the table follows the schemas.feedback contract",
            )
    embeddings = None
    if uses_embeddings(spec):
        embeddings = read_embeddings(warehouse)
        if embeddings is None:
            raise no_embeddings_error(spec)
    fit = fit_scores(models_wh, cfg.channel)
    total = sum(pq.ParquetFile(path).metadata.num_rows for path in files)
    unseen = {name: 0 for name in spec["categorical_levels"]}
    parts = []
    with _row_progress(progress, total, f"propensity score {cfg.channel}") as advance:
        for path in files:
            for batch in pq.ParquetFile(path).iter_batches(batch_size=cfg.chunk_rows, columns=columns):
                frame = pl.from_arrow(batch).join(fit, on="exposure_id", how="left", maintain_order="left")
                frame = with_side_features(frame, spec)  # the fit's --user-features / --item-features (issue 17)
                for name, n in unseen_levels(frame, spec).items():
                    unseen[name] += n
                scored = score_batch(frame, spec, models, calibrators, embeddings)
                part = staging / f"part-{len(parts):05d}.parquet"
                scored.write_parquet(part)
                parts.append(part)
                advance(frame.height)
    return parts, unseen


def _count_parts(parts: list[Path]) -> tuple[int, int]:
    n_fit = n_new = 0
    for part in parts:
        fold = pq.read_table(part, columns=["fold"]).column("fold").to_numpy()
        n_new += int((fold == NEW_FOLD).sum())
        n_fit += int((fold != NEW_FOLD).sum())
    return n_fit, n_new


def _adopt_models(models_wh: Path, warehouse: Path, channel: str) -> None:
    """Copy the models (and their metrics entry) that scored ``warehouse`` into it, so the
    warehouse says which models its scores came from (``load_fold_models(WH)`` works)."""
    from propensity.io import read_metrics, replace_dir

    target = models_dir(warehouse, channel)
    staging = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    shutil.copytree(models_dir(models_wh, channel), staging)
    replace_dir(staging, target)
    if metrics_path(models_wh).is_file():
        entry = read_metrics(models_wh).get(channel)
        if entry is not None:
            write_metrics(warehouse, channel, entry)


def _record_scoring(warehouse: Path, models_wh: Path, cfg: ScoreConfig, result: ScoreResult) -> None:
    if not metrics_path(warehouse).is_file():
        return
    metrics = json.loads(metrics_path(warehouse).read_text())
    entry = metrics.get(cfg.channel)
    if not isinstance(entry, dict):
        return
    entry["scoring"] = {
        "engine": cfg.engine,
        "n_exposures": result.n_exposures,
        "n_fit": result.n_fit,
        "n_new": result.n_new,
        "unseen_levels": result.unseen_levels,
        "layout": result.layout,
        "models_from": str(models_wh),
        "scored_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "duration_s": result.duration_s,
        "note": "fold = -1 rows: propensity = clip(mean_k calibration[k](fold_k(x))), not cross-fitted; "
                "the diagnostics above describe the fit's exposures only",
    }
    write_metrics(warehouse, cfg.channel, entry)


class _NullProgress:
    def __enter__(self):
        return lambda n: None

    def __exit__(self, *exc) -> None:
        return None


class _RichRows:
    def __init__(self, total: int, label: str) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=True)
        self.total, self.label = total, label

    def __enter__(self):
        self.progress.__enter__()
        task = self.progress.add_task(f"{self.label}: exposures", total=self.total)
        return lambda n: self.progress.advance(task, n)

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)


def _row_progress(enabled: bool, total: int, label: str):
    return _RichRows(total, label) if enabled else _NullProgress()
