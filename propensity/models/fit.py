"""`causalrm propensity fit`: cross-fitted, calibrated, clipped propensities for one channel.

Steps: read WH/feedback (and WH/embeddings) -> features -> user-grouped folds -> one model per
fold trained on the other folds -> out-of-fold raw scores -> calibration fitted on the other
folds' out-of-fold scores -> clipping at a floor -> diagnostics -> WH/propensity/.
"""

from __future__ import annotations

import logging
import shutil
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from propensity.models.calibration import CALIBRATIONS, ClipReport, clip_propensity, cross_calibrate, default_floor, MAX_DEFAULT_FLOOR
from feedback_etl.sizes import parse_memory
from propensity.models.casecontrol import RowPlan, fit_case_control, row_plan
from propensity.models.score import load_fold_models  # noqa: F401  (public here too: propensity.models.fit.load_fold_models)
from propensity.models.crossfit import _take, cross_fit, group_folds
from propensity.diagnostics import propensity_diagnostics
from propensity.models.estimators import ESTIMATORS, make_estimator
from propensity.models.custom_features import select_features, with_custom_features
from propensity.models.entity_features import (
    bucket_columns,
    check_id_columns,
    full_encodings,
    join_entity_features,
    load_side_tables,
    oof_encoder,
)
from propensity.models.features import EMBEDDING_PREFIX, build_features, design_matrix
from propensity.io import models_dir, read_metrics, replace_dir, write_metrics, write_scores
from schemas.errors import ConfigError, EstimationError, WarehouseError
from schemas.feedback import CHANNELS

log = logging.getLogger(__name__)
# Share of observed rows clipped above which a fit warns (their weights are capped: bias).
OBSERVED_CLIP_WARNING = 0.03


@dataclass(frozen=True, kw_only=True)
class PropensityConfig:
    """Options of one propensity fit (a TOML ``[propensity]`` table maps onto it one to one).

    Attributes
    ----------
    channel : feedback channel, a key of ``schemas.feedback.CHANNELS`` (vote -> ``observed``,
        copy -> ``copied``, regenerate -> ``regenerated``, share -> ``shared``).
    model : ``lightgbm`` (default), ``mlp`` or ``logistic``.
    folds : K user-grouped cross-fitting folds (>= 2).
    calibration : ``isotonic``, ``platt`` or ``none``; cross-fitted like the model.
    clip : propensity floor in (0, 1); weights are then at most 1/clip. Clipped rows are counted.
    seed : fold assignment and model seed.
    use_embeddings : append WH/embeddings when present (ignored when absent).
    n_jobs : LightGBM threads (0 = all cores).
    device : MLP device: ``auto``, ``cpu``, ``cuda``.
    reliability_bins : bins of the reliability table and ECE.
    model_params : extra estimator parameters (e.g. ``{"n_estimators": 300}``).
    max_rows : feedback rows the fit may hold in memory (None: what ``memory_limit`` allows). A
        larger table is fitted on a case-control sample with an exact correction and scored
        streamed (``propensity.models.casecontrol``); a table that fits is fitted whole, as before.
    memory_limit : memory budget of the fit (``4GB``, ``512MB``), turned into rows with a per-row estimate.
    batch_rows : rows per batch when a sampled fit streams the feedback table.
    """

    channel: str = "vote"
    model: str = "lightgbm"
    folds: int = 5
    calibration: str = "isotonic"
    # None: derived from the data (propensity.models.calibration.default_floor, issue 17); the fit
    # records the floor it used as ``clip`` in metrics.json and the model spec.
    clip: float | None = None
    seed: int = 0
    use_embeddings: bool = True
    n_jobs: int = 0
    device: str = "auto"
    reliability_bins: int = 10
    model_params: Mapping[str, Any] = field(default_factory=dict)
    max_rows: int | None = None
    memory_limit: str = "4GB"
    batch_rows: int = 200_000
    # Feature columns (issue 17): None = the contract's context plus every custom column; exclude drops some.
    features: tuple[str, ...] | None = None
    exclude_features: tuple[str, ...] = ()
    # Entity side features and out-of-fold id encodings (propensity.models.entity_features).
    user_features: str | None = None
    item_features: str | None = None
    id_encodings: tuple[str, ...] = ()
    # Learned id embeddings of the MLP (hashed buckets, fitted inside the folds like every weight).
    id_embeddings: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # A TOML / metrics.json list becomes a tuple (the config stays hashable and comparable).
        if self.features is not None:
            object.__setattr__(self, "features", tuple(self.features))
        object.__setattr__(self, "exclude_features", tuple(self.exclude_features))
        object.__setattr__(self, "id_encodings", check_id_columns(self.id_encodings))
        object.__setattr__(self, "id_embeddings", check_id_columns(self.id_embeddings, where="--id-embeddings"))
        if self.channel not in CHANNELS:
            raise ConfigError(f"unknown channel {self.channel!r}", where="--channel", fix=f"use one of {sorted(CHANNELS)}")
        if self.model not in ESTIMATORS:
            raise ConfigError(f"unknown propensity model {self.model!r}", where="--model", fix=f"use one of {sorted(ESTIMATORS)}")
        if self.id_embeddings and self.model != "mlp":
            raise ConfigError(
                f"learned id embeddings need the mlp model, not {self.model!r}", where="--id-embeddings",
                fix="add --model mlp, or use --id-encodings (out-of-fold feedback rates, any model)",
            )
        if self.calibration not in CALIBRATIONS:
            raise ConfigError(f"unknown calibration {self.calibration!r}", where="--calibration", fix=f"use one of {list(CALIBRATIONS)}")
        if self.folds < 2:
            raise ConfigError(f"folds must be >= 2, got {self.folds}", where="--folds", fix="use --folds 5")
        if self.clip is not None and not 0.0 < self.clip < 1.0:
            raise ConfigError(
                f"clip must be in (0, 1), got {self.clip}", where="--clip", fix="use e.g. --clip 0.05 (1e-4 clips almost nothing)"
            )
        if self.reliability_bins < 2:
            raise ConfigError(f"reliability_bins must be >= 2, got {self.reliability_bins}", where="reliability_bins")
        if self.device != "auto" and not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ConfigError(f"unknown device {self.device!r}", where="--device", fix="use auto, cpu or cuda")
        if self.max_rows is not None and self.max_rows < 1_000:
            raise ConfigError(f"max_rows must be >= 1000, got {self.max_rows}", where="--max-rows", fix="use e.g. --max-rows 2000000")
        if self.batch_rows < 1:
            raise ConfigError(f"batch_rows must be >= 1, got {self.batch_rows}", where="batch_rows")
        parse_memory(self.memory_limit)
        self.estimator()  # unknown model_params fail here, before any data is read

    @property
    def target(self) -> str:
        """The feedback-table column this channel's model predicts."""
        return CHANNELS[self.channel]

    def estimator(self):
        """The unfitted estimator this config describes."""
        defaults: dict[str, Any] = {"random_state": self.seed}
        if self.model == "lightgbm":
            defaults["n_jobs"] = self.n_jobs
        if self.model == "mlp":
            defaults["device"] = self.device
        if self.model == "logistic":
            defaults = {}
        params = {**defaults, **dict(self.model_params)}
        if self.model == "mlp":  # the design matrix's first columns are the id buckets (or none)
            params["n_id_columns"] = len(self.id_embeddings)
        return make_estimator(self.model, **params)

    def id_embedding_spec(self) -> dict[str, Any] | None:
        """What the saved spec records so that scoring hashes the same columns into the same buckets."""
        if not self.id_embeddings:
            return None
        estimator = self.estimator()
        return {"columns": list(self.id_embeddings), "buckets": int(estimator.id_buckets), "dim": int(estimator.id_embedding_dim)}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["model_params"] = dict(self.model_params)
        d["target"] = self.target
        return d


@dataclass(frozen=True, kw_only=True)
class PropensityResult:
    """What a fit produced: the scores frame, the channel's diagnostics and where they were written."""

    scores: pl.DataFrame
    metrics: dict[str, Any]
    clip: ClipReport
    scores_path: Path
    metrics_path: Path
    models_path: Path


def _check_target(feedback: pl.DataFrame, cfg: PropensityConfig, warehouse: Path) -> np.ndarray:
    if feedback.is_empty():
        raise WarehouseError(
            "feedback table is empty (0 exposures)", where=str(warehouse / "feedback"), fix=f"ingest logs: `causalrm ingest LOGS --warehouse {warehouse}`"
        )
    if cfg.target not in feedback.columns:
        raise WarehouseError(
            f"feedback table lacks the {cfg.channel!r} channel's column {cfg.target!r}", where=str(warehouse / "feedback"),
            fix="re-run `causalrm ingest` so the table follows the schemas.feedback contract",
        )
    y = feedback[cfg.target].fill_null(False).cast(pl.Boolean).to_numpy()
    n_pos = int(y.sum())
    if n_pos == 0:
        raise EstimationError(
            f"no exposure has {cfg.channel!r} feedback ({cfg.target} is false on all {len(y):,} rows)",
            where=str(warehouse / "feedback"),
            fix=f"check that the logs carry {cfg.channel} events, or fit another --channel",
        )
    if n_pos == len(y):
        raise EstimationError(
            f"every exposure has {cfg.channel!r} feedback ({cfg.target} is true on all {len(y):,} rows): one class only, "
            "propensity is 1 everywhere",
            where=str(warehouse / "feedback"),
            fix="log impressions without feedback too (the exposure universe), not only the rated ones",
        )
    return y


def fit_propensity(warehouse: str | Path, cfg: PropensityConfig | None = None, *, progress: bool = False) -> PropensityResult:
    """Fit one channel's cross-fitted propensities and write scores, metrics and models.

    Parameters
    ----------
    warehouse : the warehouse folder (holding ``feedback/``, optionally ``embeddings/``).
    cfg : options (default :class:`PropensityConfig`()).
    progress : show a rich progress bar over folds.

    Returns
    -------
    :class:`PropensityResult`; ``scores`` has one row per exposure: exposure_id, propensity,
    propensity_raw, fold.

    Raises
    ------
    WarehouseError : no or empty feedback table, stale embeddings.
    EstimationError : no observed rows, every row observed, a fold with one class.
    TableValidationError / WarehouseError : the feedback table breaks its contract.
    """
    from feedback_etl.io import read_embeddings, read_feedback

    cfg = cfg or PropensityConfig()
    warehouse = Path(warehouse)
    if not warehouse.is_dir():
        raise WarehouseError("warehouse folder does not exist", where=str(warehouse), fix="pass the folder given to `causalrm ingest --warehouse`")
    started = time.perf_counter()
    plan = row_plan(warehouse, cfg)
    if plan.sampled:  # more rows than the fit may hold: case-control sample, streamed scoring (issue 23)
        if cfg.id_encodings:
            raise ConfigError(
                f"a case-control fit ({plan.n_rows:,} rows > --max-rows {plan.max_rows:,}) cannot encode ids out of fold yet",
                where="--id-encodings",
                fix="raise --max-rows / --memory-limit so the table is fitted whole, or use learned id embeddings "
                    "(--model mlp --id-embeddings ...)",
            )
        if cfg.clip is None:  # no scores yet to take a quantile of: min(0.05, rate / 2) from one streamed column
            cfg = replace(cfg, clip=_sampled_floor(warehouse, cfg))
        return _fit_sampled(warehouse, cfg, plan, started, progress)
    feedback = read_feedback(warehouse)  # names a missing contract column itself (WarehouseError)
    observed = _check_target(feedback, cfg, warehouse)
    embeddings = read_embeddings(warehouse) if cfg.use_embeddings else None
    feedback = with_custom_features(feedback, warehouse)  # custom context columns (issue 17)
    side_warnings: list[str] = []
    side_tables = load_side_tables(cfg.user_features, cfg.item_features)
    if side_tables:  # --user-features / --item-features, joined at fit time
        feedback, _, _, side_warnings = join_entity_features(feedback, side_tables)
    categorical, numeric = select_features(feedback, cfg.features, cfg.exclude_features)
    X, feature_names, categorical_names = build_features(feedback, embeddings, categorical=categorical, numeric=numeric)
    folds = group_folds(feedback["user_id"].to_numpy(), cfg.folds, cfg.seed)
    # LightGBM takes X itself; the design matrix then only feeds the balance diagnostics (float32 is plenty).
    X_design, design_names = design_matrix(X, categorical_names, dtype=np.float32 if cfg.model == "lightgbm" else np.float64)
    model_input = X if cfg.model == "lightgbm" else X_design
    id_embedding = cfg.id_embedding_spec()
    if id_embedding:  # hashed id buckets first (the MLP's n_id_columns); label-free, so computed once for all folds
        model_input = np.hstack([bucket_columns(feedback, cfg.id_embeddings, id_embedding["buckets"]), X_design])
    log.info(
        "propensity %s: %d exposures, %d with feedback, %d features (%s), %d folds, model %s",
        cfg.channel, len(observed), int(observed.sum()), len(feature_names),
        "with embeddings" if embeddings is not None else "no embeddings", cfg.folds, cfg.model,
    )

    # Solicited (randomized-slice) votes were asked for, not given organically: a model fitted with them
    # as feedback estimates F + (1 - F) p_organic(x) (issue 15). The model is fitted on organic rows;
    # solicited rows get the slice's response rate (observed by design).
    fit_rows, solicited = _organic_rows(feedback, cfg)
    with _fold_progress(progress, cfg.folds, f"propensity {cfg.channel}") as advance:
        # Out-of-fold id encodings are fitted inside the folds (the augment hook), never on a row's own label.
        ids = {name: feedback[name].to_numpy()[fit_rows] for name in cfg.id_encodings}
        augment = oof_encoder(ids, observed[fit_rows], folds[fit_rows]) if ids else None
        fitted = cross_fit(cfg.estimator(), _take(model_input, fit_rows), observed[fit_rows], folds[fit_rows], augment=augment,
                           on_fold_done=advance)
    calibrated_fit, calibrators = cross_calibrate(fitted.oof, observed[fit_rows], folds[fit_rows], cfg.calibration)
    slice_rate = float(observed[solicited].mean()) if solicited.any() else None
    calibrated, raw = np.full(len(observed), slice_rate or 0.0), np.full(len(observed), slice_rate or 0.0)
    calibrated[fit_rows], raw[fit_rows] = calibrated_fit, fitted.oof
    floor_source = "--clip" if cfg.clip is not None else "data"
    if cfg.clip is None:  # the floor that fits the data, recorded as the config's clip from here on
        cfg = replace(cfg, clip=default_floor(calibrated_fit, observed[fit_rows]))
    propensity, clip_report = clip_propensity(calibrated, cfg.clip, 1.0, observed=observed)
    _log_clipping(cfg, clip_report)

    diagnostics = propensity_diagnostics(  # of the organic model, on the rows it was fitted to
        observed[fit_rows], propensity[fit_rows], propensity_raw=fitted.oof, folds=folds[fit_rows], X=_take(X_design, fit_rows),
        feature_names=design_names, n_bins=cfg.reliability_bins, embedding_prefix=EMBEDDING_PREFIX,
    )
    diagnostics = {
        "channel": cfg.channel,
        "target": cfg.target,
        **diagnostics,
        # Read by propensity.slice.label_aware: the context model is already organic (no refit needed).
        "solicited_excluded": bool(solicited.any()),
        "n_solicited": int(solicited.sum()),
        "solicited_response_rate": slice_rate,
        "clipping": {**clip_report.to_dict(), "floor_source": floor_source},
        "warnings": _warnings(cfg, clip_report, diagnostics) + side_warnings,
        "id_encodings": list(cfg.id_encodings),
        "id_embeddings": list(cfg.id_embeddings),
        "features": feature_names if embeddings is None else [n for n in feature_names if not n.startswith(EMBEDDING_PREFIX)],
        "categorical_features": categorical_names,
        "embedding_dim": int(sum(n.startswith(EMBEDDING_PREFIX) for n in feature_names)),
        "sampling": plan.to_dict(),
        "config": cfg.to_dict(),
        "estimator_params": _jsonable(cfg.estimator().get_params()),
        "fitted_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "duration_s": round(time.perf_counter() - started, 3),
    }
    fallback = _embedding_fallback(warehouse, cfg, embeddings)
    if fallback:
        log.warning("propensity %s: %s", cfg.channel, fallback)
        diagnostics["warnings"].append(fallback)

    scores = pl.DataFrame(
        {
            "exposure_id": feedback["exposure_id"],
            "propensity": propensity,
            "propensity_raw": raw,
            "fold": folds.astype(np.int32),
        }
    )
    encodings = {"id_encodings": full_encodings(ids, observed[fit_rows])} if ids else {}
    if id_embedding:
        encodings["id_embeddings"] = id_embedding
    if side_tables:  # scoring joins these columns from the same files, on these keys
        encodings.update(side_columns=[n for t in side_tables for n in (*t.categorical, *t.numeric)],
                         side_keys=list(dict.fromkeys(t.key for t in side_tables)))
    models_path = _write_models(warehouse, cfg, fitted.models, calibrators, X, feature_names, categorical_names, design_names, encodings or None)
    scores_path = write_scores(warehouse, cfg.channel, scores)
    metrics_path = write_metrics(warehouse, cfg.channel, diagnostics)
    log.info("propensity %s: AUC %.3f, ECE %.4f, ESS/N %.3f", cfg.channel, diagnostics["auc"], diagnostics["ece"], diagnostics["weights"]["ess_ratio"])
    return PropensityResult(
        scores=scores, metrics=diagnostics, clip=clip_report, scores_path=scores_path, metrics_path=metrics_path, models_path=models_path
    )


def _fit_sampled(warehouse: Path, cfg: PropensityConfig, plan: RowPlan, started: float, progress: bool) -> PropensityResult:
    """The fit of a table larger than ``plan.max_rows`` (see ``propensity.models.casecontrol``).
    ``scores`` of the result is empty: every exposure's score is in scores.parquet (read_scores)."""
    with _fold_progress(progress, cfg.folds, f"propensity {cfg.channel}") as advance:
        fit = fit_case_control(warehouse, cfg, plan, write_models=_write_models, on_fold_done=advance)
    _log_clipping(cfg, fit.clip)
    diagnostics = {
        "channel": cfg.channel,
        "target": cfg.target,
        **fit.diagnostics,
        "clipping": fit.clip.to_dict(),
        "warnings": _warnings(cfg, fit.clip, fit.diagnostics) + fit.warnings,
        "id_encodings": [],
        "id_embeddings": list(cfg.id_embeddings),
        "features": [n for n in fit.feature_names if not n.startswith(EMBEDDING_PREFIX)],
        "categorical_features": fit.categorical_names,
        "embedding_dim": int(sum(n.startswith(EMBEDDING_PREFIX) for n in fit.feature_names)),
        "sampling": fit.sampling,
        "config": cfg.to_dict(),
        "estimator_params": _jsonable(cfg.estimator().get_params()),
        "fitted_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "duration_s": round(time.perf_counter() - started, 3),
    }
    metrics_path = write_metrics(warehouse, cfg.channel, diagnostics)
    log.info("propensity %s: AUC %.3f, ECE %.4f, ESS/N %.3f (case-control fit on %d of %d exposures)", cfg.channel,
             diagnostics["auc"], diagnostics["ece"], diagnostics["weights"]["ess_ratio"], fit.sampling["n_sample"], plan.n_rows)
    empty = pl.DataFrame(schema={"exposure_id": pl.String, "propensity": pl.Float64, "propensity_raw": pl.Float64, "fold": pl.Int32})
    return PropensityResult(
        scores=empty, metrics=diagnostics, clip=fit.clip, scores_path=fit.scores_path, metrics_path=metrics_path, models_path=fit.models_path,
    )


def _sampled_floor(warehouse: Path, cfg: PropensityConfig) -> float:
    """The data-derived floor of a case-control fit: ``min(0.05, observed rate / 2)`` (see ``default_floor``)."""
    import pyarrow.compute as pc

    from feedback_etl.io import feedback_dataset

    column = feedback_dataset(warehouse).to_table(columns=[cfg.target])[cfg.target]
    rate = float(pc.mean(pc.cast(column, "double")).as_py() or 0.0)
    return float(max(min(MAX_DEFAULT_FLOOR, rate / 2), 1e-6)) if rate > 0 else MAX_DEFAULT_FLOOR


def _organic_rows(feedback: pl.DataFrame, cfg: PropensityConfig) -> tuple[np.ndarray, np.ndarray]:
    """(indices of the rows the context model is fitted on, solicited mask): the vote channel leaves
    out solicited (randomized-slice) exposures; the implicit channels are never solicited."""
    if cfg.channel == "vote" and "solicited" in feedback.columns:
        solicited = feedback["solicited"].fill_null(False).cast(pl.Boolean).to_numpy()
    else:
        solicited = np.zeros(feedback.height, dtype=bool)
    return np.flatnonzero(~solicited), solicited


def _log_clipping(cfg: PropensityConfig, report: ClipReport) -> None:
    """Clipping changes weights, so it is always reported (EconML #1054: silent clipping misleads)."""
    message = (
        f"propensity {cfg.channel}: clipped {report.n_clipped:,} of {report.n_exposures:,} propensities "
        f"({report.share_clipped:.2%}) to [{report.floor:g}, {report.ceiling:g}]; "
        f"{report.n_clipped_observed:,} of them observed ({report.share_clipped_observed:.2%} of observed rows)"
    )
    log.log(logging.WARNING if report.n_clipped else logging.INFO, message)


def _warnings(cfg: PropensityConfig, report: ClipReport, diagnostics: dict[str, Any]) -> list[str]:
    """Plain-language problems a user should see before trusting the weights (also logged)."""
    found = []
    rate = diagnostics["observed_rate"]
    if cfg.clip >= rate:
        found.append(
            f"clip floor {cfg.clip:g} is at or above the {cfg.channel} feedback rate {rate:.4f}: most propensities are "
            f"clipped and the weights barely vary; use a floor well below the rate, e.g. --clip {rate / 10:.2g}"
        )
    if report.share_clipped > 0.10:
        found.append(f"{report.share_clipped:.1%} of propensities were clipped at {cfg.clip:g}: weak overlap or a floor too high")
    if report.share_clipped_observed > OBSERVED_CLIP_WARNING:
        # Clipped observed rows carry capped weights: their share is the bias the floor buys (issue 17).
        found.append(
            f"{report.n_clipped_observed:,} observed rows ({report.share_clipped_observed:.1%}) have propensities below the floor "
            f"{cfg.clip:g} and carry capped weights; fix: lower the floor (e.g. --clip {max(cfg.clip / 4, 1e-4):.2g}, or leave "
            "--clip out to derive it from the data) or add the features that explain who gives feedback (docs/features.md)"
        )
    ess_ratio = diagnostics["weights"]["ess_ratio"]
    if ess_ratio is not None and ess_ratio < 0.1:
        found.append(f"effective sample size is {ess_ratio:.1%} of the observed rows: a few weights dominate")
    for message in found:
        log.warning("propensity %s: %s", cfg.channel, message)
    return found


def _embedding_fallback(warehouse: Path, cfg: PropensityConfig, embeddings: pl.DataFrame | None) -> str | None:
    """A warning when this fit runs without embeddings although the channel's last fit had them
    (issue 16: a failed or deleted ``causalrm embed`` must not silently weaken the model)."""
    if embeddings is not None or not cfg.use_embeddings:
        return None
    try:
        dim = read_metrics(warehouse, cfg.channel).get("embedding_dim") or 0
    except WarehouseError:
        return None
    if not dim:
        return None
    return (f"fitted without embeddings although the last {cfg.channel} fit used {dim}-dim embeddings "
            f"(WH/embeddings is missing); run `causalrm embed {warehouse}` again, or pass --no-embeddings "
            "to fit without them on purpose")


def _jsonable(params: dict[str, Any]) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in params.items()}


def _write_models(
    warehouse: Path,
    cfg: PropensityConfig,
    models: list,
    calibrators: list,
    X,
    feature_names: list[str],
    categorical_names: list[str],
    design_names: list[str],
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write fold models, calibrators and the feature spec into models/<channel>/ (swapped in whole).
    ``extra`` keys join the spec (a case-control fit's ``logit_shift``, ``numeric_dtype``, ``sampling``)."""
    import json

    target = models_dir(warehouse, cfg.channel)
    staging = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    staging.mkdir(parents=True)
    try:
        files = []
        for k, model in enumerate(models):
            files += [p.name for p in model.save(staging, f"fold_{k}")]
        (staging / "calibration.json").write_text(json.dumps([c.to_dict() for c in calibrators], indent=1))
        spec = {
            "channel": cfg.channel,
            "target": cfg.target,
            "model": cfg.model,
            "n_folds": len(models),
            "fold_files": files,
            "feature_names": feature_names,
            "categorical_levels": {c: [str(v) for v in X[c].cat.categories] for c in categorical_names},
            "design_names": design_names if cfg.model != "lightgbm" else None,
            "config": cfg.to_dict(),
            "note": "propensity = clip(calibration[k](fold_k(x))) for exposures of fold k; score new exposures "
                    "with propensity.models.fit.load_fold_models and average over folds",
            **(extra or {}),
        }
        (staging / "config.json").write_text(json.dumps(spec, indent=2))
        replace_dir(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


class _NullProgress:
    def __enter__(self):
        return lambda k: None

    def __exit__(self, *exc) -> None:
        return None


class _RichProgress:
    def __init__(self, total: int, label: str) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=True)
        self.total, self.label = total, label

    def __enter__(self):
        self.progress.__enter__()
        task = self.progress.add_task(f"{self.label}: folds", total=self.total)
        return lambda k: self.progress.advance(task)

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)


def _fold_progress(enabled: bool, total: int, label: str):
    return _RichProgress(total, label) if enabled else _NullProgress()

