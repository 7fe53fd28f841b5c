"""Propensity fits in bounded memory: case-control sampling with an exact correction, and
streamed out-of-fold scoring of every exposure (issue 23).

:func:`propensity.models.fit.fit_propensity` reads the whole feedback table when it fits in the
fit's memory budget (:func:`plan_rows`; numbers are then exactly those of an in-memory fit) and
calls :func:`fit_case_control` otherwise:

1. **Summary pass** (streamed; ``user_id``, the target and the categorical columns): rows, observed
   rows, exposures per user, categorical levels. The folds are assigned per user with
   :func:`propensity.models.crossfit.assign_user_folds` on the users sorted by id, so they are the
   folds :func:`~propensity.models.crossfit.group_folds` gives in memory.
2. **Sample pass**: every observed row is kept with probability ``s1`` (1 unless the observed rows
   alone would fill more than half the budget) and every unobserved row with probability
   ``s0 = (max_rows - s1 n1) / n0``; the draw is a Bernoulli on a seeded hash of ``exposure_id``,
   so the sample does not depend on file or batch order. Each fold's rows are sampled at the same
   rates, so a fold model is trained on the other folds' sample, as in a full fit.
3. **Fold models** on the sample (:func:`~propensity.models.crossfit.cross_fit`). Sampling by
   outcome multiplies the odds of o = 1 by ``s1 / s0`` whatever x is, so for a model with a
   logistic link (all three estimators end in a sigmoid) ``logit P(o=1|x) = logit P_sample(o=1|x)
   + log(s0 / s1)``: the prior correction of Prentice and Pyke (1979) and King and Zeng (2001),
   exact when the model is right. Every model score is shifted by it (``logit_shift`` in the
   saved spec, applied by :func:`propensity.models.score.predict_calibrated`).
4. **Calibration** (:func:`~propensity.models.calibration.cross_calibrate`) on the sample's
   out-of-fold shifted scores with weights ``1/s``: each map estimates the *population's*
   P(o=1 | score), so what the shift leaves (a misspecified model) is calibrated away as in a
   full fit, and the scores are estimates of P(o=1 | x).
5. **Scoring pass**: every exposure, batch by batch, by the model and calibrator of its user's
   fold (cross-fitting keeps its meaning: no model scores a user it was trained on), clipped at
   the floor; one Parquet part per batch, committed with :func:`propensity.io.commit_score_parts`.
   Memory: the sample, one batch, and 19 bytes per exposure for the diagnostics.
6. **Diagnostics** on every exposure (AUC, ECE, reliability, weights, clipping); the balance table
   on a uniform sample of the exposures (the case-control sample thinned to one keep rate,
   ``min(s0, s1)``, for both classes), reported as such under ``balance.sample``.

``metrics.json[channel]["sampling"]`` records the budget, the rates, the sample's counts per fold
and the correction; the full fit records ``{"sampled": false, ...}`` there too.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from feedback_etl.sizes import parse_memory
from schemas.errors import ConfigError, EstimationError, WarehouseError

log = logging.getLogger(__name__)

# Bytes a full in-memory fit holds per exposure: the whole feedback table read by polars (texts
# included), the pandas feature frame, LightGBM's binned copy and the float32 design matrix. The
# issue measured 0.8 KB per exposure on a 15M-exposure table with the contract's 16 features; each
# embedding dimension adds float32 copies in the feature frame, the design matrix and LightGBM.
BYTES_PER_ROW = 800
BYTES_PER_EMBEDDING_DIM = 12
# Interpreter, libraries and LightGBM's fixed buffers.
BASE_BYTES = 400 * 2**20
# Held for every exposure by a case-control fit: observed flag, calibrated and raw score, fold
# (19 bytes), the clipped propensity (8) and the diagnostics' transient copies (AUC sorts the scores
# twice, the reliability table bins them): the 30M-exposure benchmark peaked 0.5 GB above a 4GB
# budget planned at 24 bytes per exposure.
BYTES_PER_STREAMED_ROW = 80
MIN_SAMPLE_ROWS = 10_000
# Seeds of the two hash draws (sample; thinning observed rows for the balance sample), offset from
# the fit's seed so they are independent of each other.
_SAMPLE_SALT = 0x5EED
_BALANCE_SALT = 0xBA1A


@dataclass(frozen=True, kw_only=True)
class RowPlan:
    """How many feedback rows a fit may hold, and whether the table fits.

    Attributes
    ----------
    n_rows : rows of the feedback table.
    max_rows : rows the fit may hold in memory: ``--max-rows``, or what ``--memory-limit`` allows
        at ``bytes_per_row`` (the smaller of the two when both are given).
    sampled : True when ``n_rows > max_rows``: the fit samples (case-control) and streams.
    """

    n_rows: int
    max_rows: int
    sampled: bool
    memory_limit: str
    memory_limit_bytes: int
    max_rows_option: int | None
    bytes_per_row: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "sampled": self.sampled, "n_rows": self.n_rows, "max_rows": self.max_rows, "max_rows_option": self.max_rows_option,
            "memory_limit": self.memory_limit, "bytes_per_row_estimate": self.bytes_per_row,
        }


def plan_rows(n_rows: int, *, max_rows: int | None, memory_limit: str, embedding_dim: int = 0) -> RowPlan:
    """Decide whether ``n_rows`` fit: ``max_rows`` when given, capped by what ``memory_limit`` allows.

    The memory estimate is ``BASE_BYTES + rows x bytes_per_row`` for the sample plus
    ``BYTES_PER_STREAMED_ROW`` for every row of the table (what a case-control fit keeps per row).
    """
    limit = parse_memory(memory_limit)
    per_row = BYTES_PER_ROW + BYTES_PER_EMBEDDING_DIM * embedding_dim
    fits_whole = BASE_BYTES + n_rows * per_row <= limit
    by_memory = max(MIN_SAMPLE_ROWS, (limit - BASE_BYTES - n_rows * BYTES_PER_STREAMED_ROW) // per_row)
    if fits_whole:
        by_memory = max(by_memory, n_rows)
    cap = int(by_memory if max_rows is None else min(max_rows, by_memory))
    return RowPlan(
        n_rows=n_rows, max_rows=cap, sampled=n_rows > cap, memory_limit=memory_limit, memory_limit_bytes=limit,
        max_rows_option=max_rows, bytes_per_row=per_row,
    )


@dataclass(frozen=True, kw_only=True)
class SampleRates:
    """Bernoulli keep-probabilities of a case-control sample: ``observed`` (s1) and ``unobserved`` (s0)."""

    observed: float
    unobserved: float

    @property
    def logit_shift(self) -> float:
        """log(s0 / s1): added to a sample-fitted logit to get the population's."""
        return float(np.log(self.unobserved) - np.log(self.observed))

    def weights(self, observed: np.ndarray) -> np.ndarray:
        """1/s per row of the sample: the inverse of its keep-probability."""
        return np.where(np.asarray(observed, dtype=bool), 1.0 / self.observed, 1.0 / self.unobserved)


def sample_rates(n_observed: int, n_unobserved: int, max_rows: int) -> SampleRates:
    """Keep-probabilities filling ``max_rows`` in expectation: every observed row when they take at
    most half of it, the rest of the budget as a uniform share of the unobserved rows."""
    if max_rows < 2:
        raise ConfigError(f"max_rows must be >= 2, got {max_rows}", where="--max-rows", fix="use e.g. --max-rows 1000000")
    s1 = min(1.0, (max_rows / 2) / n_observed) if n_observed else 1.0
    left = max_rows - s1 * n_observed
    s0 = min(1.0, left / n_unobserved) if n_unobserved else 1.0
    return SampleRates(observed=float(s1), unobserved=float(s0))


def keep_mask(exposure_id: pl.Series, observed: np.ndarray, rates: SampleRates, seed: int, salt: int = _SAMPLE_SALT) -> np.ndarray:
    """Bool array: the rows a Bernoulli draw with ``rates`` keeps, from a seeded hash of each
    ``exposure_id`` (the same row is kept whatever batch or file order it is read in)."""
    uniform = exposure_id.cast(pl.String).hash(seed=seed + salt).to_numpy().astype(np.float64) / 2.0**64
    return uniform < np.where(np.asarray(observed, dtype=bool), rates.observed, rates.unobserved)


# ------------------------------------------------------------------------------------ streaming


def _batches(dataset, columns: list[str], batch_rows: int) -> Iterator[pl.DataFrame]:
    # Little read-ahead: pyarrow's default (16 batches, 4 files) holds up to a GB of rows at 10M exposures.
    for batch in dataset.to_batches(columns=columns, batch_size=batch_rows, batch_readahead=1, fragment_readahead=1):
        if batch.num_rows:
            yield pl.from_arrow(batch)


def _head(dataset, rows: int):
    """The first ``rows`` rows of the table, texts left out (what ``select_features`` looks at). A
    plain ``dataset.head`` buffers whole row groups of every column: 2.2 GB for a 1M-row row group
    with texts, 0.5 GB this way (issue 23)."""
    import pyarrow.dataset as pads

    narrow = [c for c in dataset.schema.names if c not in ("prompt_text", "response_text")]
    return dataset.head(rows, columns=narrow, batch_size=rows, batch_readahead=0, fragment_readahead=0,
                        fragment_scan_options=pads.ParquetFragmentScanOptions(pre_buffer=False))


def _embedding_files(warehouse: Path) -> list[Path]:
    return sorted((warehouse / "embeddings").glob("*.parquet"))


def stream_rows(
    warehouse: Path, dataset, columns: list[str], batch_rows: int, *, embeddings: bool = False, memory_limit: str = "1GB"
) -> Iterator[pl.DataFrame]:
    """The feedback table's ``columns`` in batches of at most ``batch_rows`` rows, with an
    ``embedding`` column joined by exposure_id when ``embeddings`` (the last row of an exposure in
    the sorted embedding files wins, as :func:`feedback_etl.io.read_embeddings`); DuckDB does that
    join out of core, spilling to a temporary folder beyond ``memory_limit``."""
    if not embeddings:
        yield from _batches(dataset, columns, batch_rows)
        return
    # DuckDB reads every path of a list as a glob pattern: hand it plain links (issue 16), made in
    # sorted order so that ``filename`` still orders the files as their real names do.
    budget = parse_memory(memory_limit)
    with feedback_connection(dataset.files, dataset.schema, memory_limit_bytes=budget,
                             prefix="causalrm-embjoin-") as (con, links):
        files = [links.file(p) for p in _embedding_files(warehouse)]
        con.execute("SET preserve_insertion_order = false")
        selected = ", ".join(f'f."{c}"' for c in columns)
        query = f"""
            WITH ranked AS (
                SELECT exposure_id, embedding,
                       row_number() OVER (PARTITION BY exposure_id ORDER BY filename DESC, file_row_number DESC) AS rank
                FROM read_parquet(?, filename = true, file_row_number = true)
            )
            SELECT {selected}, e.embedding
            FROM feedback f LEFT JOIN (SELECT exposure_id, embedding FROM ranked WHERE rank = 1) e USING (exposure_id)
        """
        reader = con.sql(query, params=[[str(p) for p in files]]).to_arrow_reader(batch_rows)
        for batch in reader:
            if batch.num_rows:
                yield pl.from_arrow(batch)


def embedding_dim(warehouse: Path) -> int:
    """Dimension of ``WH/embeddings`` (0 when there are none), from one row."""
    import pyarrow.parquet as pq

    for path in _embedding_files(warehouse):
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1, columns=["embedding"]):
            if batch.num_rows:
                first = batch.column(0)[0].as_py()
                return len(first) if first is not None else 0
    return 0


@dataclass(frozen=True, kw_only=True)
class TableSummary:
    """What the summary pass counts: rows, observed rows, users (sorted) with counts, levels."""

    n_rows: int
    n_observed: int
    users: pl.DataFrame  # user_id (sorted), n
    levels: dict[str, list[str]]
    n_solicited: int = 0
    n_solicited_observed: int = 0


def summarise(dataset, target: str, categorical: tuple[str, ...], batch_rows: int, *, solicited: str | None = None) -> TableSummary:
    """One streamed pass over ``user_id``, ``target``, the categorical columns and, when given,
    the ``solicited`` flag column (counts of solicited rows and of their answered ones)."""
    n_rows = n_observed = n_solicited = n_solicited_observed = 0
    merged = pl.DataFrame(schema={"user_id": pl.String, "n": pl.UInt32})
    pending: list[pl.DataFrame] = []
    levels: dict[str, set[str]] = {name: set() for name in categorical}
    for frame in _batches(dataset, ["user_id", target, *categorical, *([solicited] if solicited else [])], batch_rows):
        n_rows += frame.height
        observed = frame[target].fill_null(False).cast(pl.Boolean)
        n_observed += int(observed.sum())
        if solicited:
            flag = frame[solicited].fill_null(False).cast(pl.Boolean)
            n_solicited += int(flag.sum())
            n_solicited_observed += int((flag & observed).sum())
        pending.append(frame.group_by(pl.col("user_id").cast(pl.String)).agg(n=pl.len().cast(pl.UInt32)))
        for name in categorical:
            levels[name].update(frame[name].cast(pl.String).drop_nulls().unique().to_list())
        if len(pending) >= 16:  # merge now and then: memory stays O(users), not O(batches x users)
            merged = pl.concat([merged, *pending]).group_by("user_id").agg(pl.col("n").sum())
            pending = []
    merged = pl.concat([merged, *pending]).group_by("user_id").agg(pl.col("n").sum()).sort("user_id")
    return TableSummary(
        n_rows=n_rows, n_observed=n_observed, users=merged, levels={name: sorted(values) for name, values in levels.items()},
        n_solicited=n_solicited, n_solicited_observed=n_solicited_observed,
    )


# ------------------------------------------------------------------------------------ the fit


@dataclass(frozen=True, kw_only=True)
class CaseControlFit:
    """What :func:`fit_case_control` produced; ``fit_propensity`` adds the config and writes metrics.

    Attributes
    ----------
    diagnostics : :func:`propensity.diagnostics.propensity_diagnostics` on every exposure, with
        ``balance`` from a uniform sample (``balance.sample`` says which).
    clip : the clipping report over every exposure.
    sampling : what ``metrics.json[channel]["sampling"]`` records.
    """

    diagnostics: dict[str, Any]
    clip: Any
    sampling: dict[str, Any]
    feature_names: list[str]
    categorical_names: list[str]
    scores_path: Path
    models_path: Path
    warnings: list[str] = field(default_factory=list)  # the side-feature files' key checks


def fit_case_control(warehouse: Path, cfg, plan: RowPlan, *, write_models: Callable[..., Path],
                     on_fold_done: Callable[[int], None] | None = None,
                     commit_scores: Callable[[list[Path]], Path] | None = None) -> CaseControlFit:
    """Fit one channel's propensities on a case-control sample and score every exposure streamed.

    ``cfg`` is a :class:`propensity.models.fit.PropensityConfig`; ``plan`` says how many rows fit;
    ``write_models`` is ``propensity.models.fit._write_models`` (passed in: this module is
    upstream of ``fit``). Writes the scores and the models; the caller writes the metrics.
    ``commit_scores`` takes the score parts instead of ``scores.parquet`` (it must move them out of
    their staging folder): ``fit-label-aware``'s context refit keeps its scores to itself.

    Raises
    ------
    EstimationError : no observed row, every row observed, a fold with one class.
    WarehouseError : embeddings that do not cover an exposure.
    """
    from feedback_etl.io import feedback_dataset
    from propensity.diagnostics import propensity_diagnostics
    from propensity.io import commit_score_parts, propensity_dir
    from propensity.models.calibration import clip_propensity, cross_calibrate
    from propensity.models.crossfit import assign_user_folds, cross_fit
    from propensity.models.custom_features import select_features
    from propensity.models.entity_features import SideKeyCounter, check_side_columns, join_side_columns, load_side_tables
    from propensity.models.features import EMBEDDING_PREFIX, build_features, design_matrix
    from propensity.models.score import predict_calibrated, scoring_features, shift_logit

    started = time.perf_counter()
    dataset = feedback_dataset(warehouse)  # one snapshot (a literal file list) for all three passes
    target = cfg.target
    # The same feature columns as an in-memory fit: the contract's context plus the table's custom
    # columns (issue 17), narrowed by --features / --exclude-features; the first rows only feed
    # select_features' warning about constant columns. Side-feature files (--user-features /
    # --item-features) are joined to every batch on their keys, as the in-memory fit joins them whole.
    present = set(dataset.schema.names)
    side_tables = load_side_tables(cfg.user_features, cfg.item_features)
    check_side_columns(dataset.schema.names, side_tables)
    side_columns = [n for t in side_tables for n in (*t.categorical, *t.numeric)]
    side_keys = list(dict.fromkeys(t.key for t in side_tables))
    head = join_side_columns(pl.from_arrow(_head(dataset, 10_000)), side_tables)
    categorical, numeric = select_features(head, cfg.features, cfg.exclude_features)
    table_features = [c for c in (*categorical, *numeric) if c not in side_columns]
    missing = [c for c in ("exposure_id", "user_id", target, *table_features, *side_keys, *cfg.id_embeddings) if c not in present]
    if missing:
        raise WarehouseError(
            f"feedback table lacks column(s) {missing}", where=str(warehouse / "feedback"),
            fix="re-run `causalrm ingest` so the table follows the schemas.feedback contract",
        )
    use_embeddings = cfg.use_embeddings and bool(_embedding_files(warehouse))
    # As the in-memory fit: solicited (randomized-slice) votes are not organic feedback, so the vote
    # model is fitted on organic rows only and solicited rows get the slice's response rate.
    solicited_column = "solicited" if cfg.channel == "vote" and "solicited" in present else None

    # 1. summary pass -> folds per user (over every row, as group_folds), levels, class counts
    summary = summarise(dataset, target, tuple(c for c in categorical if c not in side_columns), cfg.batch_rows,
                        solicited=solicited_column)
    _check_counts(summary, cfg, warehouse)
    levels = dict(summary.levels)
    for table in side_tables:  # a side file's levels are the file's own
        levels.update({c: sorted(table.frame[c].cast(pl.String).drop_nulls().unique().to_list()) for c in table.categorical})
    user_folds = summary.users.with_columns(
        fold=pl.Series(assign_user_folds(summary.users["n"].to_numpy(), cfg.folds, cfg.seed), dtype=pl.Int32)
    ).select("user_id", "fold")
    n_fit_observed = summary.n_observed - summary.n_solicited_observed
    n_fit_unobserved = summary.n_rows - summary.n_solicited - n_fit_observed
    rates = sample_rates(n_fit_observed, n_fit_unobserved, plan.max_rows)
    slice_rate = summary.n_solicited_observed / summary.n_solicited if summary.n_solicited else None

    # 2. sample pass (organic rows only)
    flag_columns = [solicited_column] if solicited_column else []
    # Id columns of learned id embeddings (MLP): hashed per row, so a sample needs nothing from the other rows.
    id_columns = [c for c in dict.fromkeys((*side_keys, *cfg.id_embeddings)) if c not in ("user_id", *table_features)]
    columns = ["exposure_id", "user_id", target, *table_features, *flag_columns, *id_columns]
    kept: list[pl.DataFrame] = []
    side_keys_seen = SideKeyCounter(side_tables)
    for frame in stream_rows(warehouse, dataset, columns, cfg.batch_rows, embeddings=use_embeddings, memory_limit=plan.memory_limit):
        side_keys_seen.add(frame)
        observed = frame[target].fill_null(False).cast(pl.Boolean).to_numpy()
        keep = keep_mask(frame["exposure_id"], observed, rates, cfg.seed) & ~_solicited(frame, solicited_column)
        rows = frame.filter(pl.Series(keep))
        if rows.height:  # copied out: filtered rows still point into the whole batch's string buffers
            kept.append(join_side_columns(detached(rows), side_tables))
    side_warnings = side_keys_seen.warnings() if side_tables else []
    sample = pl.concat(kept).sort("exposure_id") if kept else pl.DataFrame()
    del kept
    release_unused_memory()  # the batches' freed Arrow pages, before the features are built
    sample = sample.join(user_folds, on="user_id", how="left", maintain_order="left")
    y = sample[target].fill_null(False).cast(pl.Boolean).to_numpy()
    folds = sample["fold"].to_numpy().astype(np.int32)
    weights = rates.weights(y)
    embeddings = sample.select("exposure_id", "embedding") if use_embeddings else None
    X, feature_names, categorical_names = build_features(
        sample, embeddings, categorical=categorical, numeric=numeric, levels=levels, numeric_dtype=np.float32
    )
    X_design, design_names = design_matrix(X, categorical_names, dtype=np.float32 if cfg.model == "lightgbm" else np.float64)
    model_input = X if cfg.model == "lightgbm" else X_design
    id_embedding = cfg.id_embedding_spec()
    if id_embedding:  # the MLP's id-bucket columns first, as in an in-memory fit
        from propensity.models.entity_features import bucket_columns

        model_input = np.hstack([bucket_columns(sample, cfg.id_embeddings, id_embedding["buckets"]), X_design])
    log.info(
        "propensity %s: %d exposures (%d observed) > %d rows the fit may hold: case-control sample of %d rows "
        "(observed kept at rate %.4g, unobserved at %.4g), %d features, %d folds, model %s",
        cfg.channel, summary.n_rows, summary.n_observed, plan.max_rows, sample.height, rates.observed, rates.unobserved,
        len(feature_names), cfg.folds, cfg.model,
    )

    # 3. + 4. fold models on the sample, logit shift, calibration weighted back to the population
    fitted = cross_fit(cfg.estimator(), model_input, y, folds, on_fold_done=on_fold_done)
    oof = shift_logit(fitted.oof, rates.logit_shift)
    sample_calibrated, calibrators = cross_calibrate(oof, y, folds, cfg.calibration, weights=weights)
    per_fold = [
        {"fold": int(k), "n_sample": int((folds == k).sum()), "n_sample_observed": int(y[folds == k].sum())}
        for k in np.unique(folds)
    ]
    sampling = {
        **plan.to_dict(),
        "method": "case-control: every exposure kept with probability rate_observed if observed, rate_unobserved if not "
                  "(seeded hash of exposure_id)",
        "rate_observed": rates.observed,
        "rate_unobserved": rates.unobserved,
        "n_sample": int(sample.height),
        "n_sample_observed": int(y.sum()),
        "per_fold": per_fold,
        "correction": "model scores shifted by logit_shift = log(rate_unobserved / rate_observed) (logistic-link prior "
                      "correction), then calibrated on the sample's out-of-fold scores weighted 1/rate",
        "logit_shift": rates.logit_shift,
        "batch_rows": cfg.batch_rows,
        "numeric_dtype": "float32",
    }
    models_path = write_models(
        warehouse, cfg, fitted.models, calibrators, X, feature_names, categorical_names, design_names,
        extra={"logit_shift": rates.logit_shift, "numeric_dtype": "float32", "sampling": sampling,
               **({"id_embeddings": id_embedding} if id_embedding else {}),
               # scoring joins these columns from the same files, on these keys (as after an in-memory fit)
               **({"side_columns": side_columns, "side_keys": side_keys} if side_tables else {})},
    )
    # The saved spec drives scoring, so the streamed scores are what `propensity score` computes from the saved models.
    spec = json.loads((models_path / "config.json").read_text())
    models = fitted.models

    # balance on a uniform sample of the exposures: the sample thinned to the lower of the two rates
    uniform_rate = min(rates.observed, rates.unobserved)
    thin = SampleRates(observed=uniform_rate / rates.observed, unobserved=uniform_rate / rates.unobserved)
    uniform = keep_mask(sample["exposure_id"], y, thin, cfg.seed, salt=_BALANCE_SALT)
    floor = cfg.clip
    balance = propensity_diagnostics(
        y[uniform], np.clip(sample_calibrated[uniform], floor, 1.0), X=X_design[uniform], feature_names=design_names,
        n_bins=cfg.reliability_bins, embedding_prefix=EMBEDDING_PREFIX,
    )["balance"]
    balance["sample"] = {
        "n": int(uniform.sum()), "rate": uniform_rate,
        "note": "balance computed on a uniform sample of the exposures (the case-control sample thinned to one keep "
                "rate for observed and unobserved rows), not on every exposure",
    }
    del X, X_design, model_input, sample, fitted
    release_unused_memory()

    # 5. scoring pass: every exposure by its own fold's model and calibrator
    score_columns = ["exposure_id", "user_id", target, *table_features, *flag_columns, *id_columns]
    staging = propensity_dir(warehouse) / f".fit-{cfg.channel}.{uuid.uuid4().hex}.tmp"
    staging.mkdir(parents=True)
    # Per-exposure arrays for the diagnostics, filled batch by batch in place (no lists to concatenate:
    # a copy of each would double them at the end).
    n = summary.n_rows
    observed_all, organic = np.zeros(n, dtype=bool), np.ones(n, dtype=bool)
    calibrated_all, raw_all, fold_all = np.empty(n), np.empty(n), np.empty(n, dtype=np.int16)
    offset = 0
    try:
        parts = []
        for frame in stream_rows(warehouse, dataset, score_columns, cfg.batch_rows, embeddings=use_embeddings,
                                 memory_limit=plan.memory_limit):
            frame = frame.join(user_folds, on="user_id", how="left", maintain_order="left")
            inputs, _ = scoring_features(frame, spec)
            calibrated, raw, fold = predict_calibrated(inputs, spec, models, calibrators, frame["fold"].to_numpy())
            solicited = _solicited(frame, solicited_column)
            if solicited.any():
                calibrated[solicited] = raw[solicited] = slice_rate
            part = staging / f"part-{len(parts):05d}.parquet"
            pl.DataFrame({
                "exposure_id": frame["exposure_id"].cast(pl.String),
                "propensity": np.clip(calibrated, floor, 1.0),
                "propensity_raw": raw,
                "fold": pl.Series(fold, dtype=pl.Int32),
            }).write_parquet(part)
            parts.append(part)
            rows = slice(offset, offset + frame.height)
            observed_all[rows] = frame[target].fill_null(False).cast(pl.Boolean).to_numpy()
            calibrated_all[rows], raw_all[rows], fold_all[rows], organic[rows] = calibrated, raw, fold, ~solicited
            offset += frame.height
        if offset != n:
            raise WarehouseError(
                f"the feedback table changed while it was read ({n:,} rows counted, {offset:,} scored)",
                where=str(warehouse / "feedback"), fix="run `causalrm propensity fit` again once the ingest is done",
            )
        scores_path = commit_scores(parts) if commit_scores else commit_score_parts(warehouse, cfg.channel, parts)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    propensity, clip_report = clip_propensity(calibrated_all, floor, 1.0, observed=observed_all)
    del calibrated_all

    # 6. diagnostics on every organic exposure (the rows the model describes); balance from the uniform sample above
    if not organic.all():  # copies only when there are solicited rows to leave out
        observed_all, propensity, raw_all, fold_all = observed_all[organic], propensity[organic], raw_all[organic], fold_all[organic]
    diagnostics = propensity_diagnostics(observed_all, propensity, propensity_raw=raw_all, folds=fold_all, n_bins=cfg.reliability_bins)
    diagnostics["balance"] = balance
    diagnostics["solicited_excluded"] = bool(summary.n_solicited)
    diagnostics["n_solicited"] = summary.n_solicited
    diagnostics["solicited_response_rate"] = slice_rate
    sampling["duration_s"] = round(time.perf_counter() - started, 3)
    return CaseControlFit(
        diagnostics=diagnostics, clip=clip_report, sampling=sampling, feature_names=feature_names,
        categorical_names=categorical_names, scores_path=scores_path, models_path=models_path, warnings=side_warnings,
    )


def _solicited(frame: pl.DataFrame, column: str | None) -> np.ndarray:
    """Bool array: the batch's solicited rows (all False without the column)."""
    if column is None:
        return np.zeros(frame.height, dtype=bool)
    return frame[column].fill_null(False).cast(pl.Boolean).to_numpy()


def _check_counts(summary: TableSummary, cfg, warehouse: Path) -> None:
    where = str(warehouse / "feedback")
    if summary.n_rows == 0:
        raise WarehouseError("feedback table is empty (0 exposures)", where=where, fix=f"ingest logs: `causalrm ingest LOGS --warehouse {warehouse}`")
    if summary.n_observed == 0:
        raise EstimationError(
            f"no exposure has {cfg.channel!r} feedback ({cfg.target} is false on all {summary.n_rows:,} rows)", where=where,
            fix=f"check that the logs carry {cfg.channel} events, or fit another --channel",
        )
    if summary.n_observed == summary.n_rows:
        raise EstimationError(
            f"every exposure has {cfg.channel!r} feedback ({cfg.target} is true on all {summary.n_rows:,} rows): one class only, "
            "propensity is 1 everywhere", where=where,
            fix="log impressions without feedback too (the exposure universe), not only the rated ones",
        )


def row_plan(warehouse: Path, cfg) -> RowPlan:
    """:func:`plan_rows` for a warehouse's feedback table and a :class:`~propensity.models.fit.PropensityConfig`
    (rows counted from the Parquet footers, nothing read)."""
    from feedback_etl.io import feedback_dataset

    n_rows = int(feedback_dataset(warehouse).count_rows())
    dim = embedding_dim(warehouse) if cfg.use_embeddings else 0
    return plan_rows(n_rows, max_rows=cfg.max_rows, memory_limit=cfg.memory_limit, embedding_dim=dim)


def stream_plan(n_rows: int, *, max_rows: int | None, memory_limit: str) -> dict[str, Any]:
    """Whether a command after the fit (fit-label-aware, noise estimate, weights export, audit; issue 23)
    reads the feedback table whole or streams it: whole when ``n_rows`` fits in ``memory_limit`` at
    :data:`BYTES_PER_ROW` (the threshold of :func:`plan_rows`) and in ``max_rows`` when given."""
    limit = parse_memory(memory_limit)
    whole = max(0, (limit - BASE_BYTES) // BYTES_PER_ROW)
    cap = int(whole if max_rows is None else min(max_rows, whole))
    return {"streamed": n_rows > cap, "n_rows": int(n_rows), "max_rows": cap, "max_rows_option": max_rows,
            "memory_limit": memory_limit, "memory_limit_bytes": limit}


def register_feedback(con, files: list[str], schema=None) -> None:
    """Create the DuckDB view ``feedback`` over the feedback table's Parquet ``files`` (plain paths,
    e.g. from :class:`feedback_etl.paths.LiteralPaths`), read by DuckDB's own Parquet reader: its
    buffers stay under the connection's memory limit, where a registered pyarrow dataset's scanner
    reads whole row groups ahead (2 GB more at 10M exposures; issue 23). Columns of the table's
    ``schema`` (a pyarrow schema, e.g. ``feedback_dataset(WH).schema``) that no file holds (an
    all-null column a writer left out) are added as typed nulls, as the pyarrow dataset shows them."""
    listed = ", ".join("'" + str(f).replace("'", "''") + "'" for f in files)
    con.execute(f"CREATE TEMP VIEW _feedback_files AS SELECT * FROM read_parquet([{listed}], union_by_name = true)")
    present = {row[0] for row in con.execute("DESCRIBE _feedback_files").fetchall()}
    missing = [f for f in (schema or []) if f.name not in present]
    extra = "".join(f', NULL::{_duckdb_type(f.type)} AS "{f.name}"' for f in missing)
    con.execute(f"CREATE TEMP VIEW feedback AS SELECT *{extra} FROM _feedback_files")


# Bytes one joined score row takes in DuckDB's hash table (exposure_id and a few doubles), from the
# 30M-exposure export and audit (issue 23): one score table of 30M rows spilled at a 2GB share, half
# of it (hash(exposure_id) % 2) did not.
JOIN_BYTES_PER_ROW = 120


def join_partitions(n_rows: int, memory_limit_bytes: int, *, tables: int = 1, embedding_dim: int = 0) -> int:
    """How many passes, each over the exposures with ``hash(exposure_id) % K = k``, a join of every
    feedback row with ``tables`` score tables (and the embeddings when ``embedding_dim``) needs to keep
    its hash tables within DuckDB's ``memory_limit_bytes``. A spilled join of 30M rows cost 2.6x the
    CPU of two passes that fit (73.4 against 28.5 s); a pass re-reads the feedback table but only
    decodes the rows it keeps."""
    per_row = JOIN_BYTES_PER_ROW * tables + (JOIN_BYTES_PER_ROW + 8 * embedding_dim if embedding_dim else 0)
    return max(1, math.ceil(n_rows * per_row / max(1, memory_limit_bytes)))


def partition_predicate(k: int, n_parts: int) -> str:
    """SQL predicate on ``exposure_id`` of pass ``k`` of :func:`join_partitions` (``TRUE`` for one pass)."""
    return "TRUE" if n_parts == 1 else f"hash(exposure_id) % {int(n_parts)} = {int(k)}"


def partitioned_batches(con, template: str, n_parts: int, batch_rows: int) -> Iterator[Any]:
    """The non-empty Arrow batches of ``template`` (SQL whose ``{part}`` marks where each pass's
    :func:`partition_predicate` goes), pass after pass over the ``n_parts`` of :func:`join_partitions`.
    Each pass's reader is closed when it ends, or when the caller stops early (the connection is then
    free for its next query)."""
    for k in range(n_parts):
        reader = con.sql(template.replace("{part}", partition_predicate(k, n_parts))).to_arrow_reader(batch_rows)
        try:
            for batch in reader:
                if batch.num_rows:
                    yield batch
        finally:
            reader.close()


@contextmanager
def feedback_connection(files, schema=None, *, memory_limit_bytes: int, prefix: str) -> Iterator[tuple[Any, Any]]:
    """A DuckDB connection for the streamed steps, yielded with its :class:`feedback_etl.paths.LiteralPaths`
    as ``(con, links)``: memory limited to ``memory_limit_bytes`` (64 MB at least), spilling to a
    temporary folder named ``prefix...`` beyond it, with the view ``feedback`` over the feedback
    table's ``files`` (:func:`register_feedback`; DuckDB reads every path of a list as a pattern, so
    it is handed plain links, issue 16). Closed, and the spill folder removed, on exit."""
    import tempfile

    import duckdb

    from feedback_etl.paths import literal_paths

    with literal_paths() as links, tempfile.TemporaryDirectory(prefix=prefix) as spill:
        con = duckdb.connect()
        try:
            con.execute(f"SET memory_limit = '{max(64, memory_limit_bytes // 2**20)}MB'")
            con.execute("SET temp_directory = ?", [spill])
            register_feedback(con, [str(links.file(Path(f))) for f in files], schema)
            yield con, links
        finally:
            con.close()


def _duckdb_type(arrow_type) -> str:
    """DuckDB's name for an Arrow type of a feedback column (VARCHAR when unsure)."""
    import pyarrow as pa

    simple = [(pa.types.is_boolean, "BOOLEAN"), (pa.types.is_int8, "TINYINT"), (pa.types.is_int16, "SMALLINT"),
              (pa.types.is_int32, "INTEGER"), (pa.types.is_int64, "BIGINT"), (pa.types.is_float32, "FLOAT"),
              (pa.types.is_float64, "DOUBLE"), (pa.types.is_date32, "DATE"), (pa.types.is_timestamp, "TIMESTAMP")]
    for test, name in simple:
        if test(arrow_type):
            return name
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        return _duckdb_type(arrow_type.value_type) + "[]"
    return "VARCHAR"


def process_rss_bytes() -> int | None:
    """Resident memory of this process now (Linux ``/proc/self/statm``; None where there is none)."""
    import os

    try:
        with open("/proc/self/statm", encoding="ascii") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def release_unused_memory() -> None:
    """Hand the memory freed so far back to the system: Python's cycles, then the free pages pyarrow's
    allocator (mimalloc) keeps for reuse. Called between the passes of a streamed fit: on the 1.53M
    ratings warehouse the label-aware fit still held 0.2-0.3 GB of freed Arrow pages after its
    case-control context refit, which put it 0.2 GB over a 1GB budget (issue 23)."""
    import gc

    import pyarrow as pa

    gc.collect()
    pa.default_memory_pool().release_unused()


def detached(frame: pl.DataFrame) -> pl.DataFrame:
    """A copy of ``frame`` that owns its string data. Rows filtered out of a streamed batch keep
    pointing into the batch's string buffers (polars string views), so a list of kept rows would
    hold every batch whole: 5 GB at 10M exposures in ``weights export`` (issue 23)."""
    return pl.from_arrow(frame.to_arrow(compat_level=pl.CompatLevel.oldest()))
