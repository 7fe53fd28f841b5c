"""Label-aware (missing-not-at-random) propensities P(o = 1 | x, r) from a randomized feedback slice (issue 11).

Why: people react *because of* how they felt about an answer, so the chance of feedback depends on
the label itself, not only on the logged context x. A context model P(o = 1 | x) cannot see that
(missing not at random), and no amount of observational data identifies it. A small randomized
slice can: exposures where feedback was solicited at random show the label distribution of *all*
exposures, which the organic votes distort.

Model (log-linear selection on the label, "exponential tilt")::

    P(o = 1 | x, r) = c(x) * exp(beta_{s,r})                                           (A1)

the label r shifts the log-propensity by the same amount whatever the context, within a stratum s
(one stratum by default; ``strata`` splits by a column such as ``platform``). By Bayes, organic
voters then see a tilted label distribution, P(r | x, o=1) proportional to P(r | x) exp(beta_r). With
m_r(x) = P(r | x, o = 1) (an outcome model fitted on organic votes), p(x) = P(o = 1 | x) (the
context model) and gamma_r = exp(-beta_r)::

    q_r(x)  = P(r | x)        = m_r(x) gamma_r / sum_u m_u(x) gamma_u
    p(x, r) = P(o = 1 | x, r) = p(x) m_r(x) / q_r(x) = p(x) * sum_u m_u(x) gamma_u / gamma_r

Organic data fit any gamma equally well (that is what MNAR means); the slice pins it down. Its
labels are draws from P(r | x) at random x, so gamma solves the moment equations::

    mean over the slice rows of stratum s of q_r(x_i) = share of label r in that stratum's slice

(iterative proportional fitting; for two labels a monotone equation in one unknown). With
``label_model="none"``, m_r(x) = P(r | o = 1, s) is constant in a stratum and the estimator is the
naive-Bayes one used on Coat by Schnabel et al. (2016), after Marlin and Zemel (2009)::

    p(x, r) = p(x) * P(r | o = 1, s) / P(r | s)

Assumptions, besides (A1): (A2) the slice is a random sample of the same exposure population and
its solicited label is the same kind of label as an organic vote (same scale, same noise process);
solicited exposures left unanswered are missing completely at random; (A3) p(x) is calibrated on
*organic* exposures; (A4) positivity: every (x, r) can be voted on. The label here is the observed
vote r, noise included: weights 1/p(x, r) debias any average of a function of (x, r), the
noise-corrected loss of CausalRM among them.

Cross-fitting: p(x) and m(x) are out-of-fold over the context model's user-grouped folds; gamma
comes from the slice, which trains neither. Intervals: bootstrap of the slice rows (within strata)
with Poisson(1) weights on the organic rows, conditional on the fitted p(x) and m(x).

Solicited votes are not organic: a context model fitted with them as feedback estimates
F + (1 - F) p_organic(x) for a slice of share F. When the warehouse has solicited rows,
:func:`fit_label_aware` therefore refits the context model on the organic rows (same model,
features, side-feature files, id encodings or embeddings, folds, calibration and floor as ``causalrm
propensity fit``) unless the fit's metrics say it already excluded them (``"solicited_excluded":
true``). Above the memory budget that refit is a case-control propensity fit (sampled, corrected).

Files (``WH/propensity/``):

* ``scores_label_aware.parquet``: one row per exposure: ``exposure_id``, ``channel``,
  ``propensity`` (the weight's propensity: p(x, r) at the row's own vote on organic votes; the
  slice's response rate on solicited rows, observed by design; the context p(x) on unobserved rows,
  which carry no weight), ``propensity_raw`` (unclipped), ``fold``, ``propensity_context`` (organic
  p(x)), ``propensity_label0`` / ``propensity_label1`` (p(x, r) for each vote), ``propensity_lo`` /
  ``propensity_hi`` (bootstrap interval of ``propensity`` on organic votes, null elsewhere),
  ``solicited``.
* ``label_aware.json``: estimator, assumptions, per-stratum label factors with intervals, the mean
  label by naive / context SNIPS / label-aware SNIPS / slice with intervals, clipping, warnings, and
  the flip rates the slice implies when it carries gold labels.
* ``slice.parquet``: the registered slice: ``exposure_id``, ``label`` (solicited label), ``true_label``
  (gold, nullable), ``source`` (``flag`` or ``file``). :func:`read_slice` reads it (or builds it from
  the ``solicited`` flags); ``causalrm noise estimate --audit slice`` and ``causalrm evaluate --slice``
  use it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from propensity.io import propensity_dir, read_metrics, read_scores
from schemas.errors import ConfigError, EstimationError, IdentifiabilityError, InputFileError, WarehouseError

log = logging.getLogger(__name__)

LABEL_MODELS: tuple[str, ...] = ("lightgbm", "none")
PROPENSITY_KINDS: tuple[str, ...] = ("context", "label-aware")
SLICE_AUDIT = "slice"  # `causalrm noise estimate --audit slice`: the registered slice's gold labels
_M_EPS = 1e-4  # outcome probabilities are kept in [eps, 1 - eps]: a 0 would make a label impossible
_IPF_TOL = 1e-10
_IPF_MAX_ITER = 5000

ASSUMPTIONS: tuple[str, ...] = (
    "A1 log-linear selection on the label: P(o=1 | x, r) = c(x) exp(beta_{s,r}), no context x label interaction within a stratum",
    "A2 the slice is a random sample of the exposures; its solicited label is the same kind of label as an organic vote "
    "(same scale, same noise); unanswered solicitations are missing completely at random",
    "A3 the context propensity p(x) is calibrated on organic exposures",
    "A4 positivity: every (x, r) can receive organic feedback",
)


# --------------------------------------------------------------------------- config


@dataclass(frozen=True, kw_only=True)
class LabelAwareConfig:
    """Options of ``causalrm propensity fit-label-aware``, one to one.

    Parameters
    ----------
    slice : optional slice file (parquet, csv or jsonl) with ``exposure_id``, ``label`` (the solicited
        label, 0/1) and optionally ``true_label`` (a gold label). Its exposures join the rows flagged
        ``solicited`` in the feedback table; an unflagged one keeps its organic vote in the warehouse.
    label_model : ``lightgbm`` (m_r(x) = P(r | x, o=1) cross-fitted on the context features) or
        ``none`` (constant per stratum: the naive-Bayes estimator).
    strata : optional feedback column; the label effect is estimated per value (each needs
        ``min_slice`` labelled slice rows with both labels).
    bootstrap : replicates for the intervals (>= 20).
    confidence : two-sided level of every interval.
    clip : floor of the label-aware propensities (default: the context fit's floor, else 0.05).
    min_slice : fewest labelled slice rows per stratum.
    refit_context : ``auto`` (refit on organic rows when solicited rows exist), ``always`` or ``never``.
    n_jobs : LightGBM threads (0 = all cores).
    seed : seed of the outcome model and the bootstrap.
    max_rows : feedback rows the fit may hold in memory (None: what ``memory_limit`` allows); a larger
        table is fitted streamed with the same results (issue 23, ``propensity.slice._label_aware_streamed``),
        except a context refit, which is then a case-control fit (close, not equal).
    memory_limit : memory budget (``4GB``, ``512MB``), turned into rows as ``propensity fit`` does.
    batch_rows : rows per batch when streaming.
    max_votes : organic votes a streamed fit's outcome model may train on (None: what ``memory_limit``
        leaves once the votes' compact arrays are planned); beyond it the fold models train on a uniform
        sample of the votes, recorded in ``label_aware.json`` (``outcome_model.sampling``).
    """

    channel: str = "vote"
    slice: str | None = None
    label_model: str = "lightgbm"
    strata: str | None = None
    bootstrap: int = 200
    confidence: float = 0.95
    clip: float | None = None
    min_slice: int = 50
    refit_context: str = "auto"
    n_jobs: int = 0
    seed: int = 0
    max_rows: int | None = None
    memory_limit: str = "4GB"
    batch_rows: int = 200_000
    max_votes: int | None = None
    # A multi-level label (issue 17): an outcome column such as the ratings source's raw ``rating``
    # (propensity/slice/multilevel.py); "label" is the binary vote.
    label_column: str = "label"

    def __post_init__(self) -> None:
        from propensity.slice.multilevel import check_label_column

        check_label_column(self.label_column)
        if self.label_column != "label" and not self.slice:
            raise ConfigError(f"--label-column {self.label_column} needs a --slice file giving each slice exposure its {self.label_column}",
                              where="--label-column", fix=f"pass --slice FILE with exposure_id, label and {self.label_column}")
        where = "label-aware propensity config"
        checks = [
            (self.channel == "vote", f"label-aware propensities need the vote channel (got {self.channel!r})",
             "implicit channels are one-class: there is no label to condition on; use --channel vote"),
            (self.label_model in LABEL_MODELS, f"unknown label model {self.label_model!r}", f"use one of {', '.join(LABEL_MODELS)}"),
            (self.bootstrap >= 20, f"bootstrap must be >= 20 replicates, got {self.bootstrap}", "e.g. --bootstrap 200"),
            (0 < self.confidence < 1, f"confidence must be in (0, 1), got {self.confidence}", "e.g. 0.95"),
            (self.clip is None or 0 < self.clip < 1, f"clip must be in (0, 1), got {self.clip}", "e.g. --clip 0.05"),
            (self.min_slice >= 10, f"min_slice must be >= 10, got {self.min_slice}", "e.g. --min-slice 50"),
            (self.refit_context in ("auto", "always", "never"), f"unknown refit_context {self.refit_context!r}", "use auto, always or never"),
            (self.max_rows is None or self.max_rows >= 1, f"max_rows must be >= 1, got {self.max_rows}", "e.g. --max-rows 2000000"),
            (self.batch_rows >= 1, f"batch_rows must be >= 1, got {self.batch_rows}", "e.g. 200000"),
            (self.max_votes is None or self.max_votes >= 100, f"max_votes must be >= 100, got {self.max_votes}", "e.g. 1000000"),
        ]
        for ok, what, fix in checks:
            if not ok:
                raise ConfigError(what, where=where, fix=fix)
        from feedback_etl.sizes import parse_memory

        parse_memory(self.memory_limit)


# --------------------------------------------------------------------------- the estimator (pure)


@dataclass(frozen=True, kw_only=True)
class LabelTilt:
    """Fitted label factors gamma (see the module docstring), one row per stratum.

    Attributes
    ----------
    gamma : array of shape (n_strata, n_labels), gamma_{s,r} = exp(-beta_{s,r}), gamma_{s,0} = 1.
    converged : whether every stratum's moment equations were solved to tolerance.
    """

    gamma: np.ndarray
    converged: bool

    @property
    def relative_propensity(self) -> np.ndarray:
        """P(o=1 | x, r) / P(o=1 | x, r=labels[0]) = gamma_0 / gamma_r, array (n_strata, n_labels)."""
        return self.gamma[:, :1] / self.gamma


def _solve_stratum(m: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, bool]:
    """gamma (n_labels,) with mean_i q_r(x_i) = target_r, q = m gamma / (m @ gamma), by IPF."""
    gamma = np.ones(m.shape[1])
    for _ in range(_IPF_MAX_ITER):
        q = m * gamma
        q /= q.sum(axis=1, keepdims=True)
        mean_q = q.mean(axis=0)
        if np.max(np.abs(mean_q - target)) < _IPF_TOL:
            return gamma / gamma[0], True
        gamma *= target / mean_q
        gamma /= gamma[0]
    return gamma, False


def fit_tilt(outcome: np.ndarray, label: np.ndarray, strata: np.ndarray, n_strata: int, *, weights: np.ndarray | None = None) -> LabelTilt:
    """Solve the slice's moment equations for gamma, per stratum.

    Parameters
    ----------
    outcome : array (n_slice, n_labels), m_r(x_i) = P(r | x_i, o=1) at the slice rows (rows sum to 1).
    label : int array (n_slice,), the slice's label codes in [0, n_labels).
    strata : int array (n_slice,), stratum codes in [0, n_strata).
    weights : optional array (n_slice,) of replicate weights (bootstrap counts).

    Raises
    ------
    IdentifiabilityError : a stratum without slice rows, or without some label value (its gamma
        would be 0 or infinite: that label's propensity is not identified).
    """
    m = np.clip(np.asarray(outcome, dtype=np.float64), _M_EPS, 1.0)
    m /= m.sum(axis=1, keepdims=True)
    n_labels = m.shape[1]
    w = np.ones(len(label)) if weights is None else np.asarray(weights, dtype=np.float64)
    gamma = np.ones((n_strata, n_labels))
    converged = True
    for s in range(n_strata):
        rows = (strata == s) & (w > 0)
        counts = np.bincount(label[rows], weights=w[rows], minlength=n_labels)
        if counts.sum() == 0 or (counts == 0).any():
            raise IdentifiabilityError(
                f"stratum {s}: the slice has {counts.astype(int).tolist()} rows per label value; every label needs slice rows",
                where="randomized slice", fix="collect a larger slice, or use fewer strata",
            )
        target = counts / counts.sum()
        # Replicate weights enter as repeated rows: the weighted mean of q.
        reps = np.repeat(np.flatnonzero(rows), w[rows].astype(np.int64)) if weights is not None else np.flatnonzero(rows)
        gamma[s], ok = _solve_stratum(m[reps], target)
        converged &= ok
    return LabelTilt(gamma=gamma, converged=bool(converged))


def tilted_propensity(context: np.ndarray, outcome: np.ndarray, tilt: LabelTilt, strata: np.ndarray) -> np.ndarray:
    """p(x, r) = p(x) * sum_u m_u(x) gamma_u / gamma_r for every row and label value (unclipped).

    Parameters
    ----------
    context : array (n,), p(x) = P(o=1 | x) on organic exposures.
    outcome : array (n, n_labels), m_r(x).
    strata : int array (n,).

    Returns
    -------
    array (n, n_labels).
    """
    m = np.clip(np.asarray(outcome, dtype=np.float64), _M_EPS, 1.0)
    m /= m.sum(axis=1, keepdims=True)
    gamma = tilt.gamma[strata]
    z = (m * gamma).sum(axis=1, keepdims=True)
    return np.asarray(context, dtype=np.float64)[:, None] * z / gamma


def snips(label_value: np.ndarray, observed: np.ndarray, propensity: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Self-normalised IPS mean: sum o w r / p / sum o w / p (w: optional replicate weights)."""
    o = np.asarray(observed, dtype=bool)
    inv = np.where(o, 1.0 / np.where(o, propensity, 1.0), 0.0)
    if weights is not None:
        inv = inv * weights
    total = inv.sum()
    return float((inv * np.where(o, label_value, 0.0)).sum() / total) if total > 0 else math.nan


@dataclass(frozen=True, kw_only=True)
class LabelAwareEstimate:
    """Everything :func:`estimate_label_aware` computes (arrays over all n exposures).

    Attributes
    ----------
    propensity_by_label : array (n, n_labels), clipped p(x, r).
    propensity_by_label_raw : array (n, n_labels), unclipped.
    interval_by_label : array (n, n_labels, 2) bootstrap interval of p(x, r) on organic observed rows
        (NaN elsewhere).
    tilt : the point estimate; ``tilt_replicates``: gamma per bootstrap replicate (B, n_strata, n_labels).
    estimates : mean label by naive / context / label-aware SNIPS / slice, each {estimate, ci}.
    clipped : counts of organic observed rows whose own-label propensity hit the floor or 1.
    """

    propensity_by_label: np.ndarray
    propensity_by_label_raw: np.ndarray
    interval_by_label: np.ndarray
    tilt: LabelTilt
    tilt_replicates: np.ndarray
    estimates: dict[str, Any]
    clipped: dict[str, Any]


def _percentile(values: np.ndarray, confidence: float, axis: int = 0) -> np.ndarray:
    alpha = (1 - confidence) / 2
    if values.shape[axis] == 0:  # --bootstrap 0: no replicates, so no interval (nanquantile returns a bare nan)
        return np.full((2, *np.delete(values.shape, axis)), np.nan)
    return np.nanquantile(values, [alpha, 1 - alpha], axis=axis)


class _Votes:
    """The organic votes' inputs of :func:`estimate_label_aware` (arrays over the votes only): the
    context propensity, m(x) clipped and normalised once (as :func:`tilted_propensity` does), the
    stratum and the label code. :meth:`own_propensity` is ``tilted_propensity(...)[i, code_i]``
    without the (votes x labels) result: the same operations on the same numbers, so the same values."""

    def __init__(self, context: np.ndarray, outcome: np.ndarray, strata: np.ndarray, code: np.ndarray) -> None:
        m = np.clip(np.asarray(outcome, dtype=np.float64), _M_EPS, 1.0)
        m /= m.sum(axis=1, keepdims=True)
        self.context, self.m, self.strata, self.code = np.asarray(context, dtype=np.float64), m, strata, code

    def own_propensity(self, gamma: np.ndarray) -> np.ndarray:
        """p(x, r) at each vote's own label r (unclipped) for label factors ``gamma`` (n_strata, n_labels)."""
        z = (self.m * gamma[self.strata]).sum(axis=1)
        return self.context * z / gamma[self.strata, self.code]


def estimate_label_aware(
    *,
    context: np.ndarray,
    outcome: np.ndarray,
    organic: np.ndarray,
    observed: np.ndarray,
    label: np.ndarray,
    slice_rows: np.ndarray,
    slice_label: np.ndarray,
    strata: np.ndarray,
    n_strata: int,
    label_values: np.ndarray | None = None,
    floor: float = 0.05,
    bootstrap: int = 200,
    confidence: float = 0.95,
    seed: int = 0,
) -> LabelAwareEstimate:
    """The label-aware estimator on arrays (no file I/O): fit, clip, bootstrap, mean-label estimates.

    Parameters
    ----------
    context : array (n,), organic context propensity p(x) (NaN allowed off the organic rows).
    outcome : array (n, n_labels), m_r(x) = P(r | x, o=1), out-of-fold.
    organic : bool array (n,), exposures whose feedback was not solicited.
    observed : bool array (n,), organic feedback present (meaningful on organic rows).
    label : int array (n,), label codes of observed rows (anything elsewhere).
    slice_rows : int array (n_slice,), row indices of labelled slice exposures.
    slice_label : int array (n_slice,), their solicited label codes.
    strata : int array (n,), stratum codes in [0, n_strata).
    label_values : array (n_labels,), the value of each code (the mean label uses them; default 0..L-1).
    floor : clipping floor of p(x, r) (ceiling 1).

    Returns
    -------
    :class:`LabelAwareEstimate`.
    """
    n, n_labels = outcome.shape
    values = np.arange(n_labels, dtype=np.float64) if label_values is None else np.asarray(label_values, dtype=np.float64)
    organic = np.asarray(organic, dtype=bool)
    obs = organic & np.asarray(observed, dtype=bool)
    code = np.where(obs, label, 0).astype(np.int64)
    strata = np.asarray(strata, dtype=np.int64)
    slice_rows = np.asarray(slice_rows, dtype=np.int64)
    slice_label = np.asarray(slice_label, dtype=np.int64)
    context_raw = np.nan_to_num(np.where(organic, context, np.nan), nan=1.0)  # NaN context: non-organic rows
    p_context = np.clip(context_raw, floor, 1.0)

    tilt = fit_tilt(outcome[slice_rows], slice_label, strata[slice_rows], n_strata)
    # The organic votes' inputs, taken once: the replicates and the interval read only these rows and
    # only their own label's propensity (issue 23: a streamed fit holds millions of votes; every
    # (rows x labels) matrix is built once, after the bootstrap).
    obs_rows = np.flatnonzero(obs)
    vote = _Votes(context_raw[obs_rows], outcome[obs_rows], strata[obs_rows], code[obs_rows])
    value_obs, p_context_obs, all_obs = values[vote.code], p_context[obs_rows], np.ones(len(obs_rows), bool)

    rng = np.random.default_rng([seed, 11])
    slice_strata = strata[slice_rows]
    replicates = np.empty((bootstrap, n_strata, n_labels))
    est_b = {"naive": np.empty(bootstrap), "context_snips": np.empty(bootstrap), "label_aware_snips": np.empty(bootstrap), "slice": np.empty(bootstrap)}
    # Per-row intervals: with two labels p(x, r) is monotone in gamma_1 (gamma_0 = 1), so the bounds
    # are p at gamma_1's percentiles, no (replicates x rows) matrix; more labels keep the matrix.
    own_b = np.empty((bootstrap, len(obs_rows))) if n_labels > 2 else None
    for b in range(bootstrap):
        counts = np.zeros(len(slice_rows))
        for s in range(n_strata):
            members = np.flatnonzero(slice_strata == s)
            if len(members):
                counts += np.bincount(rng.choice(members, len(members)), minlength=len(slice_rows))
        try:
            tilt_b = fit_tilt(outcome[slice_rows], slice_label, slice_strata, n_strata, weights=counts)
        except IdentifiabilityError:
            replicates[b] = np.nan  # a replicate that drew one label value only in some stratum
            if own_b is not None:
                own_b[b] = np.nan
            for key in est_b:
                est_b[key][b] = np.nan
            continue
        replicates[b] = tilt_b.gamma
        p_b = np.clip(vote.own_propensity(tilt_b.gamma), floor, 1.0)
        if own_b is not None:
            own_b[b] = p_b
        w = rng.poisson(1.0, len(obs_rows)).astype(np.float64)
        est_b["naive"][b] = float((w * value_obs).sum() / w.sum()) if w.sum() else math.nan
        est_b["context_snips"][b] = snips(value_obs, all_obs, p_context_obs, w)
        est_b["label_aware_snips"][b] = snips(value_obs, all_obs, p_b, w)
        est_b["slice"][b] = float((counts * values[slice_label]).sum() / counts.sum())
        del p_b, w
    failed = int(np.isnan(replicates[:, 0, 0]).sum())

    lo = hi = None
    if len(obs_rows) and failed < bootstrap:
        # Only the own-label propensity of an observed row enters a weight; that is the one we bound.
        if own_b is not None:
            lo, hi = _percentile(own_b, confidence)
        else:
            g_lo, g_hi = _percentile(replicates[:, :, 1], confidence)  # (n_strata,) each
            bounds = []
            for g in (g_lo, g_hi):
                gamma = tilt.gamma.copy()
                gamma[:, 1] = g
                bounds.append(np.clip(vote.own_propensity(gamma), floor, 1.0))
            lo, hi = np.minimum(*bounds), np.maximum(*bounds)
            del bounds
    del own_b, vote, value_obs, p_context_obs, all_obs

    raw = tilted_propensity(context_raw, outcome, tilt, strata)
    clipped = np.clip(raw, floor, 1.0)
    own_raw_obs = raw[obs_rows, code[obs_rows]]
    interval = np.full((n, n_labels, 2), np.nan)
    if lo is not None:
        interval[obs_rows, code[obs_rows], 0] = lo
        interval[obs_rows, code[obs_rows], 1] = hi
    del lo, hi
    value = values[code]

    point = {
        "naive": float(value[obs_rows].mean()) if len(obs_rows) else math.nan,
        "context_snips": snips(value, obs, p_context),
        "label_aware_snips": snips(value, obs, clipped[np.arange(n), code]),
        "slice": float(values[slice_label].mean()),
    }
    estimates: dict[str, Any] = {}
    for key, est in point.items():
        lo, hi = _percentile(est_b[key], confidence)
        estimates[key] = {"estimate": est, "ci": [float(lo), float(hi)]}
    estimates["n_organic"] = int(organic.sum())
    estimates["n_organic_observed"] = int(obs.sum())
    estimates["n_slice"] = int(len(slice_rows))
    estimates["bootstrap"] = {"replicates": bootstrap, "failed": failed}
    at_floor = int((own_raw_obs <= floor).sum())
    at_one = int((own_raw_obs > 1.0).sum())
    clip_report = {
        "floor": floor, "ceiling": 1.0, "n_observed": int(len(obs_rows)),
        "n_clipped_low": at_floor, "n_clipped_high": at_one,
        "share_clipped": (at_floor + at_one) / len(obs_rows) if len(obs_rows) else 0.0,
    }
    return LabelAwareEstimate(
        propensity_by_label=clipped, propensity_by_label_raw=raw, interval_by_label=interval, tilt=tilt,
        tilt_replicates=replicates, estimates=estimates, clipped=clip_report,
    )


# --------------------------------------------------------------------------- outcome model m(x)


def outcome_probabilities(
    X: Any, observed_label: np.ndarray, train_rows: np.ndarray, folds: np.ndarray, *, model: str, strata: np.ndarray,
    n_strata: int, seed: int = 0, n_jobs: int = 0,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Cross-fitted m_1(x) = P(r = 1 | x, o = 1) for every row (binary vote), as an (n, 2) array.

    Fold k's rows are scored by a model trained on the organic votes of the other folds
    (``train_rows``: indices of organic observed rows). ``model="none"``: the organic up-vote share
    of the row's stratum (from all organic votes; it is a stratum constant, not a fitted score).
    """
    label = np.asarray(observed_label, dtype=np.int64)
    models = fit_outcome_models(X, label, train_rows, folds, np.unique(folds), model=model, strata=strata, n_strata=n_strata,
                                seed=seed, n_jobs=n_jobs)
    m1 = predict_outcome(models, X, folds, strata)
    info: dict[str, Any] = {"model": model}
    if model == "none":
        return np.column_stack([1 - m1, m1]), info
    from sklearn.metrics import roc_auc_score

    y_obs = label[train_rows]
    info["auc_organic_votes"] = float(roc_auc_score(y_obs, m1[train_rows])) if 0 < y_obs.sum() < len(y_obs) else None
    info["mean"] = float(m1[train_rows].mean())
    return np.column_stack([1 - m1, m1]), info


def fit_outcome_models(
    X: Any, label: np.ndarray, train_rows: np.ndarray, folds: np.ndarray, fold_values: np.ndarray, *, model: str,
    strata: np.ndarray, n_strata: int, seed: int = 0, n_jobs: int = 0,
) -> dict[str, Any]:
    """The outcome model of each fold in ``fold_values`` (trained on the organic votes of the other
    folds; a constant when they hold one label), or per-stratum up-vote shares for ``model="none"``.
    ``X`` / ``label`` / ``folds`` / ``strata`` cover at least ``train_rows``: the in-memory fit passes
    the whole table, a streamed one its organic votes and slice rows (issue 23)."""
    if model == "none":
        shares = np.empty(n_strata)
        for s in range(n_strata):
            rows = train_rows[strata[train_rows] == s]
            shares[s] = label[rows].mean() if len(rows) else label[train_rows].mean()
        return {"model": "none", "shares": shares}
    from propensity.models.crossfit import _take
    from propensity.models.estimators import LightGBMPropensity

    train_folds = folds[train_rows]
    per_fold: dict[int, Any] = {}
    for k in fold_values:
        fit_rows = train_rows[train_folds != k]
        y = label[fit_rows]
        if y.min() == y.max():
            per_fold[int(k)] = float(y.mean())
            continue
        estimator = LightGBMPropensity(n_estimators=100, num_leaves=7, min_child_samples=50, learning_rate=0.05,
                                       random_state=seed, n_jobs=n_jobs)
        per_fold[int(k)] = estimator.fit(_take(X, fit_rows), y)
    return {"model": model, "folds": per_fold}


def predict_outcome(models: dict[str, Any], X: Any, folds: np.ndarray, strata: np.ndarray) -> np.ndarray:
    """m_1(x) for rows of ``X``, each by the model of its fold (:func:`fit_outcome_models`), array (n,)."""
    if models["model"] == "none":
        return models["shares"][np.asarray(strata, dtype=np.int64)]
    from propensity.models.crossfit import _take

    m1 = np.empty(len(folds))
    for k, fitted in models["folds"].items():
        rows = np.flatnonzero(folds == k)
        if not len(rows):
            continue
        m1[rows] = fitted if isinstance(fitted, float) else fitted.predict_proba(_take(X, rows))[:, 1]
    return m1


# --------------------------------------------------------------------------- slice I/O


def slice_path(warehouse: str | Path) -> Path:
    return propensity_dir(warehouse) / "slice.parquet"


def label_aware_scores_path(warehouse: str | Path) -> Path:
    return propensity_dir(warehouse) / "scores_label_aware.parquet"


def label_aware_report_path(warehouse: str | Path) -> Path:
    return propensity_dir(warehouse) / "label_aware.json"


def read_slice_file(path: str | Path) -> pl.DataFrame:
    """A slice file (parquet, csv or jsonl) as (exposure_id str, label int8, true_label int8 nullable).

    Raises
    ------
    InputFileError : missing or unreadable file, missing columns, labels other than 0/1, an exposure twice.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError("slice file not found", where=str(path), fix="pass a parquet, csv or jsonl file with exposure_id, label")
    # Literal paths (issue 16): glob=False, and read_ndjson (no such option) reads the bytes.
    readers = {".parquet": lambda p: pl.read_parquet(p, glob=False), ".csv": lambda p: pl.read_csv(p, glob=False),
               ".jsonl": lambda p: pl.read_ndjson(p.read_bytes()), ".ndjson": lambda p: pl.read_ndjson(p.read_bytes())}
    if path.suffix not in readers:
        raise InputFileError(f"unknown slice file format {path.suffix!r}", where=str(path), fix="use .parquet, .csv or .jsonl")
    try:
        frame = readers[path.suffix](path)
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise InputFileError(f"cannot read slice file: {str(exc).splitlines()[0]}", where=str(path), fix="check the file's format") from exc
    missing = [c for c in ("exposure_id", "label") if c not in frame.columns]
    if missing:
        raise InputFileError(
            f"slice file lacks column(s) {missing} (has {frame.columns})", where=str(path),
            fix="the slice needs exposure_id and label (the solicited label, 1 = good); true_label (gold) is optional",
        )
    columns = [pl.col("exposure_id").cast(pl.Utf8), pl.col("label")]
    columns.append(pl.col("true_label") if "true_label" in frame.columns else pl.lit(None).alias("true_label"))
    frame = frame.select(columns)
    for name in ("label", "true_label"):
        values = frame[name].cast(pl.Float64, strict=False)
        bad = frame.filter((~values.is_in([0.0, 1.0]) & frame[name].is_not_null()) | (values.is_null() & frame[name].is_not_null()))
        if name == "label":
            bad = pl.concat([bad, frame.filter(pl.col("label").is_null())])
        if bad.height:
            raise InputFileError(
                f"{bad.height} slice rows have a {name} other than 0/1, e.g. {bad.head(3).to_dicts()}", where=str(path),
                fix=f"{name} must be 0 or 1" + (" (or empty)" if name == "true_label" else ""),
            )
    frame = frame.with_columns(pl.col("label").cast(pl.Float64).cast(pl.Int8), pl.col("true_label").cast(pl.Float64).cast(pl.Int8))
    dup = frame.group_by("exposure_id").len().filter(pl.col("len") > 1)
    if dup.height:
        raise InputFileError(f"{dup.height} exposure(s) appear more than once, e.g. {dup['exposure_id'].head(3).to_list()}",
                             where=str(path), fix="keep one solicited label per exposure")
    if frame.filter(pl.col("exposure_id").is_null()).height:
        raise InputFileError("slice rows with a null exposure_id", where=str(path), fix="every row needs its exposure_id")
    return frame


def build_slice(feedback: pl.DataFrame, slice_file: pl.DataFrame | None = None) -> tuple[pl.DataFrame, dict[str, Any]]:
    """The slice: flagged rows of the feedback table (their vote is the solicited label) plus a file's rows.

    Returns
    -------
    (slice, counts): slice with exposure_id, label (null for an unanswered solicitation), true_label,
    source (``flag`` / ``file``); counts of flagged, answered, file rows, file rows not in the warehouse.
    """
    flagged = feedback.filter(pl.col("solicited")).select(
        "exposure_id", pl.col("label").cast(pl.Int8), pl.lit(None, dtype=pl.Int8).alias("true_label"), pl.lit("flag").alias("source")
    )
    counts: dict[str, Any] = {"flagged": flagged.height, "flagged_answered": int(flagged["label"].is_not_null().sum())}
    if slice_file is None or slice_file.is_empty():
        counts.update({"file_rows": 0, "file_not_in_warehouse": 0, "file_disagreeing_with_vote": 0})
        return flagged, counts
    known = slice_file.join(feedback.select("exposure_id", "solicited", pl.col("label").alias("_vote")), on="exposure_id", how="inner")
    counts["file_rows"] = slice_file.height
    counts["file_not_in_warehouse"] = slice_file.height - known.height
    # A flagged exposure's vote is its solicited label; the file may add its gold label.
    counts["file_disagreeing_with_vote"] = int(known.filter(pl.col("solicited") & (pl.col("label") != pl.col("_vote"))).height)
    from_file = known.select("exposure_id", pl.col("label").cast(pl.Int8), pl.col("true_label").cast(pl.Int8), pl.lit("file").alias("source"))
    flagged = flagged.join(from_file.select("exposure_id", pl.col("true_label").alias("_gold")), on="exposure_id", how="left").with_columns(
        true_label=pl.col("_gold")).drop("_gold")
    merged = pl.concat([flagged, from_file.join(flagged.select("exposure_id"), on="exposure_id", how="anti")])
    return merged.sort("exposure_id"), counts


def read_slice(warehouse: str | Path) -> pl.DataFrame:
    """The warehouse's slice: the registered ``WH/propensity/slice.parquet`` when
    ``fit-label-aware`` wrote one, else the feedback table's ``solicited`` rows.

    Returns
    -------
    frame (exposure_id, label (int8, null when unanswered), true_label (int8, nullable), source).

    Raises
    ------
    WarehouseError : the warehouse has no slice at all.
    """
    path = slice_path(warehouse)
    if path.is_file():
        return pl.read_parquet(path, glob=False)
    from feedback_etl.io import read_feedback

    frame, _ = build_slice(read_feedback(warehouse))
    if frame.is_empty():
        raise WarehouseError(
            "warehouse has no randomized slice (no solicited exposure, no registered slice file)", where=str(warehouse),
            fix="log `solicited: true` on impressions where feedback was asked for at random, or register a slice file with "
                "`causalrm propensity fit-label-aware WH --slice FILE`",
        )
    return frame


def read_slice_audit(warehouse: str | Path) -> pl.DataFrame:
    """The slice's gold labels as a noise audit set (exposure_id, true_label): ``--audit slice``.

    Raises
    ------
    WarehouseError : no slice, or a slice without gold labels.
    """
    frame = read_slice(warehouse)
    gold = frame.filter(pl.col("true_label").is_not_null()).select("exposure_id", "true_label")
    if gold.is_empty():
        raise WarehouseError(
            f"the warehouse's slice ({frame.height:,} exposures) has no gold labels (true_label)", where=str(slice_path(warehouse)),
            fix="register a slice file with a true_label column: `causalrm propensity fit-label-aware WH --slice FILE`",
        )
    return gold


def read_label_aware_scores(warehouse: str | Path, channel: str = "vote") -> pl.DataFrame:
    """``WH/propensity/scores_label_aware.parquet`` (see the module docstring), sorted by exposure_id.

    Raises
    ------
    WarehouseError : not fitted yet, or fitted for another channel.
    """
    path = label_aware_scores_path(warehouse)
    if not path.is_file():
        raise WarehouseError("warehouse has no label-aware propensities", where=str(path),
                             fix=f"run `causalrm propensity fit-label-aware {warehouse}` first")
    scores = pl.read_parquet(path, glob=False).filter(pl.col("channel") == channel)
    if scores.is_empty():
        raise WarehouseError(f"no label-aware propensities for channel {channel!r}", where=str(path),
                             fix=f"run `causalrm propensity fit-label-aware {warehouse}`")
    return scores.sort("exposure_id")


def read_label_aware_report(warehouse: str | Path) -> dict[str, Any] | None:
    """``WH/propensity/label_aware.json`` as a dict, or None when not fitted."""
    path = label_aware_report_path(warehouse)
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def propensity_for_labels(scores: pl.DataFrame, feedback: pl.DataFrame) -> pl.DataFrame:
    """(exposure_id, propensity) for the weights, recomputed from the per-label columns against the
    feedback table's current votes (so a vote changed by a later ingest cannot get the other label's p).

    Raises
    ------
    WarehouseError : exposures without a label-aware propensity (ingest after the fit).
    """
    joined = feedback.select("exposure_id", "observed", "label", "solicited").join(scores, on="exposure_id", how="left", suffix="_s")
    missing = int(joined["propensity"].null_count())
    if missing:
        raise WarehouseError(
            f"{missing:,} of {joined.height:,} exposures have no label-aware propensity", where="propensity/scores_label_aware.parquet",
            fix="rerun `causalrm propensity fit-label-aware WH` after the latest ingest",
        )
    p = (
        pl.when(pl.col("solicited")).then(pl.col("propensity"))
        .when(pl.col("observed") & (pl.col("label") == 1)).then(pl.col("propensity_label1"))
        .when(pl.col("observed") & (pl.col("label") == 0)).then(pl.col("propensity_label0"))
        .otherwise(pl.col("propensity_context"))
    )
    return joined.select("exposure_id", p.alias("propensity"))


# --------------------------------------------------------------------------- warehouse orchestration


@dataclass(frozen=True, kw_only=True)
class LabelAwareResult:
    """What :func:`fit_label_aware` wrote: the scores frame, the report dict and the paths."""

    scores: pl.DataFrame
    report: dict[str, Any]
    scores_path: Path
    report_path: Path
    slice_path: Path


def _write_atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    write(tmp)
    os.replace(tmp, path)


def _context_config(metrics: dict[str, Any] | None):
    from propensity.models.fit import PropensityConfig

    config = dict((metrics or {}).get("config") or {})
    config.pop("target", None)
    known = set(PropensityConfig.__dataclass_fields__)
    return PropensityConfig(**{k: v for k, v in config.items() if k in known})


def _needs_refit(cfg: LabelAwareConfig, metrics: dict[str, Any] | None, has_solicited: bool) -> bool:
    """Whether the context model is refitted on the organic rows (``refit_context``; ``auto``: solicited
    rows exist and the context fit did not leave them out)."""
    excluded = bool((metrics or {}).get("solicited_excluded"))
    return cfg.refit_context == "always" or (cfg.refit_context == "auto" and has_solicited and not excluded)


def _organic_context(feedback: pl.DataFrame, scores: pl.DataFrame, metrics: dict[str, Any] | None, organic: np.ndarray,
                     cfg: LabelAwareConfig, X: Any, X_design: Any, *, feature_names: list[str] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Calibrated (unclipped) P(o=1 | x) of organic feedback, for every organic row.

    A refit takes the context fit's inputs: ``X`` / ``X_design`` built as ``propensity fit`` built them
    (side-feature files joined; ``feature_names`` their columns, recorded), and the fit's out-of-fold
    id encodings (``--id-encodings``) of ``feedback``'s id columns, fitted inside the folds."""
    from propensity.models.calibration import cross_calibrate
    from propensity.models.crossfit import _take, cross_fit

    if not _needs_refit(cfg, metrics, not organic.all()):
        # Calibrated, clipped scores of the fit; the label factor is applied on top and clipped again.
        return scores["propensity"].to_numpy().astype(np.float64), {"source": "propensity/scores.parquet", "refit": False}
    context_cfg = _context_config(metrics)
    rows = np.flatnonzero(organic)
    observed = feedback["observed"].to_numpy().astype(bool)
    folds = scores["fold"].to_numpy()
    model_input = X if context_cfg.model == "lightgbm" else X_design
    id_embedding = context_cfg.id_embedding_spec()
    if id_embedding:  # the fit's MLP reads its first columns as hashed id buckets (--id-embeddings): rebuild them
        from propensity.models.entity_features import bucket_columns

        model_input = np.hstack([bucket_columns(feedback, context_cfg.id_embeddings, id_embedding["buckets"]), model_input])
    augment = None
    if context_cfg.id_encodings:  # out-of-fold feedback rates per id, as the context fit had them
        from propensity.models.entity_features import oof_encoder

        ids = {name: feedback[name].to_numpy()[rows] for name in context_cfg.id_encodings}
        augment = oof_encoder(ids, observed[rows], folds[rows])
    fitted = cross_fit(context_cfg.estimator(), _take(model_input, rows), observed[rows], folds[rows], augment=augment)
    calibrated, _ = cross_calibrate(fitted.oof, observed[rows], folds[rows], context_cfg.calibration)
    context = np.full(len(organic), np.nan)
    context[rows] = calibrated
    log.info("label-aware: refitted the context model (%s) on %d organic exposures", context_cfg.model, len(rows))
    return context, {
        "source": "refit on organic exposures (solicited votes are not organic feedback)", "refit": True,
        "model": context_cfg.model, "calibration": context_cfg.calibration, "n_organic": int(len(rows)),
        **({"features": list(feature_names)} if feature_names is not None else {}),
        "id_encodings": list(context_cfg.id_encodings),
        **({"id_embeddings": list(context_cfg.id_embeddings)} if id_embedding else {}),
    }


def context_side_tables(context_cfg: Any) -> list[Any]:
    """The context fit's side-feature files (``--user-features`` / ``--item-features`` of ``propensity
    fit``), read and checked again: the label-aware outcome model and a refit join their columns as
    the context fit did.

    Raises
    ------
    InputFileError : a file the context fit used is gone (or no longer a valid side-feature file).
    """
    from propensity.models.entity_features import load_side_tables

    for option in ("user_features", "item_features"):
        path = getattr(context_cfg, option)
        if path and not Path(path).is_file():
            flag = f"--{option.replace('_', '-')}"
            raise InputFileError(
                "the side-feature file the context fit (`causalrm propensity fit`) used is gone", where=f"{flag} {path}",
                fix=f"restore the file, or rerun `causalrm propensity fit` (with another {flag}, or without it)",
            )
    return load_side_tables(context_cfg.user_features, context_cfg.item_features)


def _strata_codes(feedback: pl.DataFrame, column: str | None) -> tuple[np.ndarray, list[str]]:
    if column is None:
        return np.zeros(feedback.height, dtype=np.int64), ["all"]
    if column not in feedback.columns:
        raise ConfigError(f"unknown strata column {column!r}", where="--strata", fix="use a feedback column, e.g. platform or model_id")
    values = feedback[column].cast(pl.Utf8).fill_null("<null>").to_numpy()
    levels, codes = np.unique(values, return_inverse=True)
    return codes.astype(np.int64), [str(v) for v in levels]


def fit_label_aware(warehouse: str | Path, cfg: LabelAwareConfig | None = None) -> LabelAwareResult:
    """Fit label-aware propensities for a warehouse and write them (see the module docstring).

    Reads ``WH/feedback``, ``WH/propensity/scores.parquet`` + ``metrics.json`` (the context fit:
    its folds, and its config when the context model is refitted on organic rows),
    ``WH/embeddings`` (when the context fit used them) and ``cfg.slice``. A table with more rows
    than ``cfg.max_rows`` / ``cfg.memory_limit`` allow is fitted streamed, with the same results
    (``propensity.slice._label_aware_streamed``, issue 23).

    Raises
    ------
    WarehouseError : no feedback table, no context propensities, no slice.
    IdentifiabilityError : too few slice rows per stratum, or a stratum's slice lacks a label value.
    EstimationError : no organic votes of both labels.
    """
    from feedback_etl.io import feedback_dataset, read_embeddings, read_feedback
    from propensity.models.custom_features import select_features, with_custom_features
    from propensity.models.entity_features import join_entity_features
    from propensity.models.features import EMBEDDING_PREFIX, build_features, design_matrix

    cfg = cfg or LabelAwareConfig()
    warehouse = Path(warehouse)
    started = time.perf_counter()
    plan = label_aware_plan(feedback_dataset(warehouse).count_rows(), cfg)
    if plan["streamed"]:
        return _fit_label_aware_streamed(warehouse, cfg, plan, started)
    feedback = read_feedback(warehouse)
    if feedback.is_empty():
        raise WarehouseError("feedback table is empty", where=str(warehouse / "feedback"), fix="ingest logs first")
    scores = read_scores(warehouse, cfg.channel)
    joined = feedback.select("exposure_id").join(scores, on="exposure_id", how="left", maintain_order="left")
    if joined["propensity"].null_count():
        raise WarehouseError(
            f"{joined['propensity'].null_count():,} exposures have no context propensity", where="propensity/scores.parquet",
            fix=f"rerun `causalrm propensity fit {warehouse}` after the latest ingest",
        )
    try:
        metrics = read_metrics(warehouse, cfg.channel)
    except WarehouseError:
        metrics = None
    regrouped = None
    if joined["fold"].min() < 0:
        # Some exposures were scored after the fit (`propensity score`, fold -1): no cross-fitting
        # fold to reuse, so every exposure is regrouped by user with the fit's number of folds.
        from propensity.models.crossfit import group_folds

        n_folds = int((metrics or {}).get("config", {}).get("folds") or max(2, joined["fold"].max() + 1))
        folds = group_folds(feedback["user_id"].to_numpy(), n_folds, cfg.seed)
        joined = joined.with_columns(fold=pl.Series(folds.astype(np.int32)))
        regrouped = f"regrouped by user ({n_folds} folds): some context scores had no fold"
    slice_file = read_slice_file(cfg.slice) if cfg.slice else None
    prepared = _prepare_rows(feedback, slice_file, cfg, warehouse)
    strata, levels = _strata_codes(feedback, cfg.strata)
    slice_rows = _slice_rows(feedback, prepared)
    label_values = None  # the binary vote; a multi-level label's values otherwise
    if cfg.label_column != "label":
        from dataclasses import replace

        from propensity.slice.multilevel import multilevel_labels

        label, slice_label, label_values = multilevel_labels(warehouse, feedback, cfg.label_column, cfg.slice, prepared.labelled,
                                                             prepared.observed)
        prepared = replace(prepared, label=label, slice_label=slice_label)
    per_stratum = _check_slice_strata(strata, slice_rows, levels, cfg)

    context_cfg = _context_config(metrics)
    embeddings = read_embeddings(warehouse) if context_cfg.use_embeddings else None
    # The context fit's feature columns, custom context columns and its side-feature files'
    # columns (--user-features / --item-features) included, joined as `propensity fit` joins them:
    # the outcome model and a refit read the same features as the context fit (issues 17, 23).
    side_tables = context_side_tables(context_cfg)
    with_context = with_custom_features(feedback, warehouse)
    side_info: dict[str, Any] = {}
    if side_tables:
        with_context, _, _, side_warnings = join_entity_features(with_context, side_tables)
        side_info = {"side_feature_files": [t.path for t in side_tables], **({"warnings": side_warnings} if side_warnings else {})}
    chosen_categorical, chosen_numeric = select_features(with_context, context_cfg.features, context_cfg.exclude_features)
    X, feature_names, categorical = build_features(with_context, embeddings, categorical=chosen_categorical, numeric=chosen_numeric)
    X_design, _ = design_matrix(X, categorical) if context_cfg.model != "lightgbm" else (None, None)
    folds = joined["fold"].to_numpy()
    refit = _needs_refit(cfg, metrics, not prepared.organic.all())
    context, context_info = _organic_context(
        feedback, joined, metrics, prepared.organic, cfg, X, X_design,
        feature_names=[n for n in feature_names if not n.startswith(EMBEDDING_PREFIX)] if refit else None)
    if refit:
        context_info.update(side_info)
    if regrouped:
        context_info["folds"] = regrouped
    floor = cfg.clip if cfg.clip is not None else float((metrics or {}).get("config", {}).get("clip") or 0.05)
    if label_values is None:
        outcome, outcome_info = outcome_probabilities(
            X, prepared.label, np.flatnonzero(prepared.observed), folds, model=cfg.label_model, strata=strata,
            n_strata=len(levels), seed=cfg.seed, n_jobs=cfg.n_jobs,
        )
    else:
        from propensity.slice.multilevel import multiclass_outcome

        outcome, outcome_info = multiclass_outcome(
            X, prepared.label, np.flatnonzero(prepared.observed), folds, len(label_values), model=cfg.label_model, strata=strata,
            n_strata=len(levels), seed=cfg.seed, n_jobs=cfg.n_jobs,
        )
    if side_tables:
        outcome_info["side_feature_files"] = [t.path for t in side_tables]
    result = estimate_label_aware(
        context=context, outcome=outcome, organic=prepared.organic, observed=prepared.observed, label=prepared.label,
        slice_rows=slice_rows, slice_label=prepared.slice_label, strata=strata, n_strata=len(levels), label_values=label_values,
        floor=floor, bootstrap=cfg.bootstrap, confidence=cfg.confidence, seed=cfg.seed,
    )
    out = _score_rows(
        feedback["exposure_id"], prepared, context, result.propensity_by_label, result.propensity_by_label_raw,
        result.interval_by_label, folds, floor=floor, channel=cfg.channel, multilevel=label_values is not None,
    ).sort("exposure_id")
    report = _report(cfg, result, prepared, levels, per_stratum, strata[slice_rows], feedback, context_info, outcome_info, floor,
                     started, memory=plan, label_values=label_values)
    spath = label_aware_scores_path(warehouse)
    _write_atomic(spath, out.write_parquet)
    return _write_outputs(warehouse, cfg, out, report, prepared.slice_frame, result)


@dataclass(frozen=True, kw_only=True)
class _Rows:
    """Per-row inputs of the estimator over a frame of feedback rows (the whole table, or a streamed
    fit's organic votes and slice rows) and the slice built from them."""

    organic: np.ndarray
    observed: np.ndarray
    label: np.ndarray
    slice_frame: pl.DataFrame
    slice_counts: dict[str, Any]
    labelled: pl.DataFrame
    slice_label: np.ndarray
    response_rate: float
    warnings: list[str]


def _prepare_rows(feedback: pl.DataFrame, slice_file: pl.DataFrame | None, cfg: LabelAwareConfig, warehouse: Path, *,
                  rows: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> _Rows:
    """The slice and the organic votes of ``feedback``, with the refusals of an unusable slice.
    ``rows`` (organic, observed, label; a streamed fit's compact core rows): the rows' arrays, when
    ``feedback`` holds only the rows the slice is built from (solicited rows, slice-file rows)."""
    slice_frame, slice_counts = build_slice(feedback, slice_file)
    warnings: list[str] = []
    if slice_counts.get("file_not_in_warehouse"):
        warnings.append(f"{slice_counts['file_not_in_warehouse']:,} slice-file rows name exposures absent from the warehouse; ignored")
    if slice_counts.get("file_disagreeing_with_vote"):
        warnings.append(f"{slice_counts['file_disagreeing_with_vote']:,} slice-file labels disagree with the solicited vote logged "
                        "for the same exposure; the file's label is used")
    labelled = slice_frame.filter(pl.col("label").is_not_null())
    if labelled.is_empty():
        raise WarehouseError(
            "no randomized slice: no answered solicited exposure in the feedback table and no slice file", where=str(warehouse),
            fix="log `solicited: true` on impressions where feedback was asked for at random, or pass --slice FILE (exposure_id, label)",
        )
    unanswered = slice_counts["flagged"] - slice_counts["flagged_answered"]
    response_rate = slice_counts["flagged_answered"] / slice_counts["flagged"] if slice_counts["flagged"] else 1.0
    if unanswered:
        warnings.append(f"{unanswered:,} of {slice_counts['flagged']:,} solicited exposures went unanswered (response rate "
                        f"{response_rate:.1%}); assumed missing completely at random")
    if rows is None:
        organic = ~feedback["solicited"].to_numpy().astype(bool)
        observed = feedback["observed"].to_numpy().astype(bool) & organic
        label = feedback["label"].fill_null(0).to_numpy().astype(np.int64)
    else:
        organic, observed, label = rows
    if observed.sum() == 0 or label[observed].min() == label[observed].max():
        raise EstimationError(
            f"organic votes hold one class only ({int(observed.sum()):,} votes)", where=str(warehouse / "feedback"),
            fix="the label term needs organic up- and down-votes",
        )
    return _Rows(organic=organic, observed=observed, label=label, slice_frame=slice_frame, slice_counts=slice_counts,
                 labelled=labelled, slice_label=labelled["label"].to_numpy().astype(np.int64), response_rate=response_rate,
                 warnings=warnings)


def _slice_rows(feedback: pl.DataFrame, prepared: _Rows) -> np.ndarray:
    index = {eid: i for i, eid in enumerate(feedback["exposure_id"].to_list())}
    return np.array([index[e] for e in prepared.labelled["exposure_id"].to_list()], dtype=np.int64)


def _check_slice_strata(strata: np.ndarray, slice_rows: np.ndarray, levels: list[str], cfg: LabelAwareConfig) -> np.ndarray:
    per_stratum = np.bincount(strata[slice_rows], minlength=len(levels))
    short = [f"{levels[s]} ({per_stratum[s]})" for s in range(len(levels)) if per_stratum[s] < cfg.min_slice]
    if short:
        raise IdentifiabilityError(
            f"too few labelled slice rows per stratum (need {cfg.min_slice}): {', '.join(short)}", where="randomized slice",
            fix="collect a larger slice, use fewer or no --strata, or lower --min-slice",
        )
    return per_stratum


def _score_rows(
    exposure_id: pl.Series, rows: _Rows, context: np.ndarray, by_label: np.ndarray, by_label_raw: np.ndarray,
    interval: np.ndarray | None, folds: np.ndarray, *, floor: float, channel: str,
    lo_hi: tuple[np.ndarray, np.ndarray] | None = None, multilevel: bool = False,
) -> pl.DataFrame:
    """Rows of ``scores_label_aware.parquet`` (module docstring) from the per-row arrays; ``lo_hi``
    gives the interval columns directly (a streamed batch) instead of ``interval``."""
    organic, observed, label, response_rate = rows.organic, rows.observed, rows.label, rows.response_rate
    n = len(exposure_id)
    index = np.arange(n)
    own = np.where(observed, label, 0)
    p_context = np.clip(np.nan_to_num(context, nan=1.0), floor, 1.0)
    p_own = by_label[index, own]
    propensity = np.where(~organic, response_rate, np.where(observed, p_own, p_context))
    raw = np.where(~organic, response_rate, np.where(observed, by_label_raw[index, own], np.nan_to_num(context, nan=1.0)))
    if lo_hi is None:
        lo = np.where(observed, interval[index, own, 0], np.nan)
        hi = np.where(observed, interval[index, own, 1], np.nan)
    else:
        lo, hi = lo_hi
    by_vote = by_label[:, :2]
    if multilevel:
        # Weights read the column of a row's binary vote (propensity_for_labels); with a multi-level label
        # an observed row's own value fixes its vote, so both columns hold its own-value propensity.
        by_vote = np.repeat(np.where(observed, p_own, p_context)[:, None], 2, axis=1)
    return pl.DataFrame({
        "exposure_id": exposure_id,
        "channel": pl.Series([channel] * n, dtype=pl.Utf8),
        "propensity": propensity,
        "propensity_raw": raw,
        "fold": np.asarray(folds).astype(np.int32),
        "propensity_context": np.where(organic, p_context, response_rate),
        "propensity_label0": np.where(organic, by_vote[:, 0], response_rate),
        "propensity_label1": np.where(organic, by_vote[:, 1], response_rate),
        "propensity_lo": pl.Series(lo, dtype=pl.Float64).fill_nan(None),
        "propensity_hi": pl.Series(hi, dtype=pl.Float64).fill_nan(None),
        "solicited": ~organic,
    })


def _report(
    cfg: LabelAwareConfig, result: LabelAwareEstimate, prepared: _Rows, levels: list[str], per_stratum: np.ndarray,
    slice_strata: np.ndarray, votes: pl.DataFrame, context_info: dict[str, Any], outcome_info: dict[str, Any], floor: float,
    started: float, *, memory: dict[str, Any], label_values: np.ndarray | None = None,
) -> dict[str, Any]:
    """``label_aware.json`` (module docstring); ``votes`` holds at least every observed row (exposure_id, observed, label)."""
    from propensity.diagnostics import kish_ess
    from propensity.io import json_safe

    warnings = list(prepared.warnings)
    if not result.tilt.converged:
        warnings.append("the slice's moment equations did not converge to tolerance; the label factors are approximate")
    failed = result.estimates["bootstrap"]["failed"]
    if failed:
        warnings.append(f"{failed} of {cfg.bootstrap} bootstrap replicates drew a one-label slice stratum and were dropped")
    if result.clipped["share_clipped"] > 0.05:
        warnings.append(f"{result.clipped['share_clipped']:.1%} of organic votes have a label-aware propensity clipped to "
                        f"[{floor:g}, 1]: the label effect is strong or the floor high")
    slice_label = prepared.slice_label
    factor = result.tilt.relative_propensity[:, 1]
    rep = result.tilt_replicates
    factor_b = rep[:, :, 0] / rep[:, :, 1]
    factor_ci = _percentile(factor_b, cfg.confidence)
    label_factors = [
        {"stratum": levels[s], "n_slice": int(per_stratum[s]), "slice_up_share": float(slice_label[slice_strata == s].mean()),
         "relative_propensity_up_vs_down": float(factor[s]), "ci": [float(factor_ci[0, s]), float(factor_ci[1, s])],
         "gamma": result.tilt.gamma[s].tolist()}
        for s in range(len(levels))
    ]
    observed = prepared.observed
    own = np.where(observed, prepared.label, 0)
    p_own = result.propensity_by_label[np.arange(len(own)), own]
    w_obs = 1.0 / p_own[observed]
    ess = kish_ess(w_obs)
    report = {
        "schema": "causalrm.label_aware/1",
        "channel": cfg.channel,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "estimator": "exponential tilt: p(x, r) = p(x) * sum_u m_u(x) gamma_u / gamma_r, gamma from the slice's moment equations"
        + (" (label model none: naive Bayes p(x) P(r | o=1, s) / P(r | s))" if cfg.label_model == "none" else ""),
        "assumptions": list(ASSUMPTIONS),
        "strata": cfg.strata,
        "label_factors": label_factors,
        "slice": {**prepared.slice_counts, "labelled": prepared.labelled.height, "response_rate": prepared.response_rate,
                  "with_gold_label": int(prepared.slice_frame["true_label"].is_not_null().sum())},
        "context": context_info,
        "outcome_model": outcome_info,
        "estimates": result.estimates,
        "weights": {"n_observed": int(observed.sum()), "ess": ess, "ess_over_n": ess / max(1, int(observed.sum())),
                    "max": float(w_obs.max()), "mean": float(w_obs.mean())},
        "clipping": result.clipped,
        "noise_from_slice": _slice_noise(prepared.slice_frame, votes, cfg.confidence),
        # Issue 23: whether the table was read whole or streamed (the estimates are the same).
        "memory": memory,
        "warnings": warnings,
        "config": asdict(cfg),
        "label_values": None if label_values is None else {
            "column": cfg.label_column, "values": label_values.tolist(),
            "relative_propensity": result.tilt.relative_propensity.tolist(),  # per stratum, P(o | x, r) / P(o | x, r_0)
        },
        "duration_s": round(time.perf_counter() - started, 3),
    }
    return json_safe(report)


def _write_outputs(warehouse: Path, cfg: LabelAwareConfig, out: pl.DataFrame, report: dict[str, Any], slice_frame: pl.DataFrame,
                   result: LabelAwareEstimate) -> LabelAwareResult:
    """Write the slice and the report (the scores are already written) and log the summary."""
    for message in report["warnings"]:
        log.warning("label-aware %s: %s", cfg.channel, message)
    spath, rpath, lpath = label_aware_scores_path(warehouse), label_aware_report_path(warehouse), slice_path(warehouse)
    _write_atomic(lpath, slice_frame.write_parquet)
    _write_atomic(rpath, lambda p: p.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n", encoding="utf-8"))
    e = result.estimates
    log.info("label-aware: factor up/down %s; mean label naive %.3f, context SNIPS %.3f, label-aware SNIPS %.3f, slice %.3f",
             ", ".join(f"{f['stratum']} {f['relative_propensity_up_vs_down']:.2f}" for f in report["label_factors"]),
             e["naive"]["estimate"], e["context_snips"]["estimate"], e["label_aware_snips"]["estimate"], e["slice"]["estimate"])
    return LabelAwareResult(scores=out, report=report, scores_path=spath, report_path=rpath, slice_path=lpath)


def label_aware_plan(n_rows: int, cfg: LabelAwareConfig) -> dict[str, Any]:
    """Whether ``fit-label-aware`` reads the table whole or streams it: the threshold of
    ``propensity fit`` (:func:`propensity.models.casecontrol.plan_rows`), ``max_rows`` capping it."""
    from propensity.models.casecontrol import stream_plan

    return stream_plan(n_rows, max_rows=cfg.max_rows, memory_limit=cfg.memory_limit)


def _fit_label_aware_streamed(warehouse: Path, cfg: LabelAwareConfig, plan: dict[str, Any], started: float) -> LabelAwareResult:
    """The fit of :func:`fit_label_aware` on a table above the memory budget (module
    ``propensity.slice._label_aware_streamed``): the same estimator on the organic votes and the
    slice, then every exposure scored in batches. A context refit is a case-control propensity fit
    (:func:`_refit_context_streamed`); context scores without folds get the user folds an in-memory
    fit would give; a multi-level label is read with the core rows."""
    import tempfile
    from contextlib import ExitStack

    import pyarrow.parquet as pq

    from propensity.models.casecontrol import embedding_dim, release_unused_memory
    from propensity.models.custom_features import select_features
    from propensity.models.features import build_features
    from propensity.slice._label_aware_streamed import (
        CORE_WHERE,
        check_streamable,
        duckdb_bytes,
        read_core,
        strata_codes,
        streamed_inputs,
        user_folds,
        vote_plan,
    )

    try:
        metrics = read_metrics(warehouse, cfg.channel)
    except WarehouseError:
        metrics = None
    context_cfg = _context_config(metrics)
    slice_file = read_slice_file(cfg.slice) if cfg.slice else None
    multilevel = cfg.label_column != "label"
    # The context fit's side-feature files: DuckDB joins their columns to every row (outcome model features).
    side_tables = context_side_tables(context_cfg)
    options = {"channel": cfg.channel, "embeddings": context_cfg.use_embeddings, "slice_ids": slice_file,
               "memory_limit_bytes": plan["memory_limit_bytes"] // 2, "side_tables": side_tables}
    with streamed_inputs(warehouse, **options) as inputs:
        head = inputs.head()
        if cfg.strata is not None and cfg.strata not in head.columns:
            raise ConfigError(f"unknown strata column {cfg.strata!r}", where="--strata", fix="use a feedback column, e.g. platform or model_id")
        if multilevel and cfg.label_column not in head.columns:
            raise ConfigError(f"the feedback table has no {cfg.label_column!r} column", where=f"{warehouse}, --label-column {cfg.label_column}",
                              fix="ingest with --source ratings, whose adapter keeps the raw rating beside the binary label")
        # The feedback table's own columns (texts aside): the joined score / fold / slice columns are no features.
        categorical, numeric = select_features(head, context_cfg.features, context_cfg.exclude_features)
        del head
        release_unused_memory()  # the head's Arrow pages, before DuckDB takes its share for the facts
        facts = inputs.facts(categorical, cfg.strata)
        check_streamable(facts, warehouse=warehouse)
        has_solicited = facts.n_organic < facts.n_rows
        refit = _needs_refit(cfg, metrics, has_solicited)
        folds_by_user = None
        if facts.min_fold < 0 and not refit:
            # Some exposures were scored after the fit (`propensity score`, fold -1): regroup every
            # exposure by user with the fit's number of folds, as the in-memory fit does.
            n_folds = int((metrics or {}).get("config", {}).get("folds") or max(2, facts.max_fold + 1))
            folds_by_user = user_folds(inputs.user_counts(), n_folds, cfg.seed)

    context_info: dict[str, Any] = {"source": "propensity/scores.parquet", "refit": False}
    release_unused_memory()  # the first DuckDB pass's freed Arrow pages
    with ExitStack() as stack:
        context_files = None
        if refit:
            from propensity.io import propensity_dir

            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=propensity_dir(warehouse), prefix=".label-aware-refit-")))
            context_files, context_info = _refit_context_streamed(warehouse, cfg, context_cfg, facts, tmp)
            release_unused_memory()  # what the case-control refit freed, before the core rows are read
        elif folds_by_user is not None:
            context_info["folds"] = f"regrouped by user ({n_folds} folds): some context scores had no fold"
        # DuckDB sorts the core rows, then every exposure: its share is what this process leaves of the
        # budget, and at most a quarter of it (the core rows' compact arrays and the vote sample are planned
        # with that share, propensity.slice._label_aware_streamed.vote_plan).
        options["memory_limit_bytes"] = min(_duckdb_share(plan["memory_limit_bytes"]), duckdb_bytes(plan["memory_limit_bytes"]))
        inputs = stack.enter_context(streamed_inputs(warehouse, **options, context_files=context_files, user_folds=folds_by_user))
        if context_files is not None or folds_by_user is not None:
            facts = inputs.facts(categorical, cfg.strata)  # the folds changed
            check_streamable(facts, warehouse=warehouse)

        # 1. the core rows (organic votes, solicited rows, slice-file rows, by exposure_id) as compact
        # arrays, with the features of the rows the outcome model needs (all, or a uniform sample of the votes)
        needed = ["observed", "label", "solicited", "propensity", "fold", *categorical, *numeric,
                  *([cfg.strata] if cfg.strata else []), *(["embedding"] if context_cfg.use_embeddings and inputs.has_embeddings else []),
                  *([cfg.label_column] if multilevel else [])]
        levels = facts.strata_levels

        def features(frame: pl.DataFrame) -> Any:
            embedding = frame.select("exposure_id", "embedding") if "embedding" in frame.columns else None
            return build_features(frame, embedding, categorical=categorical, numeric=numeric, levels=facts.categorical_levels)[0]

        votes_plan = vote_plan(memory_limit_bytes=plan["memory_limit_bytes"], n_core=facts.n_core, n_votes=facts.n_votes,
                               max_votes=cfg.max_votes, embedding_dim=embedding_dim(warehouse) if "embedding" in needed else 0)
        core = read_core(inputs, batch_rows=cfg.batch_rows, columns=needed, plan=votes_plan, seed=cfg.seed, strata=cfg.strata,
                         strata_levels=levels, label_column=cfg.label_column if multilevel else None,
                         features=None if cfg.label_model == "none" else features)
        votes_plan["sampled"] = core.sampling is not None  # label model none: no features, nothing to sample
        release_unused_memory()
        prepared = _prepare_rows(core.slice_rows, slice_file, cfg, warehouse, rows=(core.organic, core.observed, core.label))
        label_values = None
        if multilevel:
            from dataclasses import replace

            from propensity.slice.multilevel import labels_from_values

            label, slice_label, label_values = labels_from_values(core.value, prepared.observed, cfg.label_column, cfg.slice,
                                                                  prepared.labelled, warehouse)
            prepared = replace(prepared, label=label, slice_label=slice_label)
        strata, folds, context = core.strata, core.folds, core.context
        slice_rows = prepared.labelled.select("exposure_id").join(core.slice_rows.select("exposure_id", "_row"), on="exposure_id",
                                                                  how="left", maintain_order="left")["_row"].to_numpy().astype(np.int64)
        per_stratum = _check_slice_strata(strata, slice_rows, levels, cfg)
        floor = cfg.clip if cfg.clip is not None else float((metrics or {}).get("config", {}).get("clip") or 0.05)

        # 2. the outcome model's fold models, on the held rows' organic votes (all, or the sample)
        held = core.held if cfg.label_model != "none" else np.arange(core.n)
        train_rows = np.flatnonzero(prepared.observed[held])
        fold_values = np.array(facts.folds)
        X = core.X
        core.X = None
        if multilevel:
            from propensity.slice.multilevel import fit_multiclass_models, multiclass_info, predict_multiclass, row_codes

            models = fit_multiclass_models(X, prepared.label[held], train_rows, folds[held], fold_values, len(label_values),
                                           model=cfg.label_model, strata=strata[held], n_strata=len(levels), seed=cfg.seed,
                                           n_jobs=cfg.n_jobs)

            def outcome_of(X_rows: Any, folds_rows: np.ndarray, strata_rows: np.ndarray) -> np.ndarray:
                return predict_multiclass(models, X_rows, folds_rows, strata_rows)
        else:
            models = fit_outcome_models(X, prepared.label[held], train_rows, folds[held], fold_values, model=cfg.label_model,
                                        strata=strata[held], n_strata=len(levels), seed=cfg.seed, n_jobs=cfg.n_jobs)

            def outcome_of(X_rows: Any, folds_rows: np.ndarray, strata_rows: np.ndarray) -> np.ndarray:
                m1 = predict_outcome(models, X_rows, folds_rows, strata_rows)
                return np.column_stack([1 - m1, m1])
        if core.sampling is None:
            outcome = outcome_of(X, folds, strata)  # every core row's features are held (or none are needed)
            del X
        else:
            # The fold models saw a sample of the votes: every core row's m(x) in a second pass.
            del X
            release_unused_memory()
            outcome = np.empty((core.n, len(label_values) if multilevel else 2))
            done = 0
            for batch in inputs.batches(cfg.batch_rows, needed, where=CORE_WHERE):
                rows = slice(done, done + batch.height)
                outcome[rows] = outcome_of(features(batch), folds[rows], strata[rows])
                done += batch.height
            if done != core.n:
                raise WarehouseError(f"the feedback table changed during the fit ({done:,} core rows, then {core.n:,})",
                                     where=str(warehouse / "feedback"), fix="rerun after the ingest ends")
        votes = np.flatnonzero(prepared.observed)
        if multilevel:
            outcome_info = multiclass_info(cfg.label_model, len(label_values), outcome[votes])
        else:
            outcome_info = _outcome_info(cfg.label_model, prepared.label[votes], outcome[votes, 1])
        if core.sampling is not None:
            outcome_info["sampling"] = core.sampling
        if side_tables:
            outcome_info["side_feature_files"] = [t.path for t in side_tables]
        result = estimate_label_aware(
            context=context, outcome=outcome, organic=prepared.organic, observed=prepared.observed,
            label=prepared.label, slice_rows=slice_rows, slice_label=prepared.slice_label, strata=strata, n_strata=len(levels),
            label_values=label_values, floor=floor, bootstrap=cfg.bootstrap, confidence=cfg.confidence, seed=cfg.seed,
        )
        del outcome
        result.estimates["n_organic"] = facts.n_organic  # the estimator saw the core rows; this count is the table's
        # The organic votes' interval bounds, in exposure_id order: the scoring pass reads its votes in that order.
        own = prepared.label[votes]
        vote_lo = result.interval_by_label[votes, own, 0]
        vote_hi = result.interval_by_label[votes, own, 1]
        report = _report(cfg, result, prepared, levels, per_stratum, strata[slice_rows], core.slice_rows.drop("_row"), context_info,
                         outcome_info, floor, started,
                         memory={**plan, "core_rows": core.n, "votes": votes_plan,
                                 "note": "the estimator ran on the organic votes and the slice rows, held as compact arrays; every "
                                         "exposure was scored in batches of batch_rows"},
                         label_values=label_values)
        result = _without_row_arrays(result)
        del core, context, strata, folds, votes, own
        release_unused_memory()

        # 3. scoring pass: every exposure, sorted by exposure_id, written batch by batch
        first: list[pl.DataFrame] = []
        cursor = [0]

        def write(path: Path) -> None:
            writer = None
            try:
                for batch in inputs.batches(cfg.batch_rows, needed):
                    X_b = features(batch) if cfg.label_model != "none" else None
                    strata_b = strata_codes(batch, cfg.strata, levels)
                    folds_b = batch["fold"].to_numpy()
                    outcome_b = outcome_of(X_b, folds_b, strata_b)
                    organic = ~batch["solicited"].to_numpy().astype(bool)
                    observed = batch["observed"].to_numpy().astype(bool) & organic
                    if multilevel:
                        label_b = row_codes(batch[cfg.label_column].cast(pl.Float64).to_numpy(), observed, label_values)
                    else:
                        label_b = batch["label"].fill_null(0).to_numpy().astype(np.int64)
                    rows = _Rows(organic=organic, observed=observed, label=label_b, slice_frame=prepared.slice_frame,
                                 slice_counts={}, labelled=prepared.labelled, slice_label=prepared.slice_label,
                                 response_rate=prepared.response_rate, warnings=[])
                    context_b = batch["propensity"].to_numpy().astype(np.float64)
                    raw = tilted_propensity(np.nan_to_num(np.where(organic, context_b, np.nan), nan=1.0), outcome_b, result.tilt, strata_b)
                    n_obs = int(observed.sum())
                    lo, hi = np.full(batch.height, np.nan), np.full(batch.height, np.nan)
                    lo[observed] = vote_lo[cursor[0]:cursor[0] + n_obs]
                    hi[observed] = vote_hi[cursor[0]:cursor[0] + n_obs]
                    cursor[0] += n_obs
                    out = _score_rows(batch["exposure_id"], rows, np.where(organic, context_b, np.nan), np.clip(raw, floor, 1.0), raw,
                                      None, folds_b, floor=floor, channel=cfg.channel, multilevel=multilevel, lo_hi=(lo, hi))
                    table = out.to_arrow(compat_level=pl.CompatLevel.oldest())
                    if writer is None:
                        writer = pq.ParquetWriter(path, table.schema, compression="zstd")
                        first.append(out.head(0))
                    writer.write_table(table.cast(writer.schema))
            finally:
                if writer is not None:
                    writer.close()
            if cursor[0] != len(vote_lo):
                raise WarehouseError(f"the feedback table changed during the fit ({len(vote_lo):,} organic votes, then {cursor[0]:,})",
                                     where=str(warehouse / "feedback"), fix="rerun after the ingest ends")

        _write_atomic(label_aware_scores_path(warehouse), write)
    return _write_outputs(warehouse, cfg, first[0] if first else pl.DataFrame(), report, prepared.slice_frame, result)


def _without_row_arrays(result: LabelAwareEstimate) -> LabelAwareEstimate:
    """``result`` without its per-row arrays (a streamed fit keeps the tilt and the estimates only)."""
    from dataclasses import replace

    n_labels = result.propensity_by_label.shape[1]
    return replace(result, propensity_by_label=np.empty((0, n_labels)), propensity_by_label_raw=np.empty((0, n_labels)),
                   interval_by_label=np.empty((0, n_labels, 2)))


# The refit's scores feed the tilt unclipped, as an in-memory refit's calibrated scores do; the
# label-aware floor clips afterwards. A case-control fit needs some floor: this one clips nothing real.
_REFIT_FLOOR = 1e-9


def _refit_context_streamed(warehouse: Path, cfg: LabelAwareConfig, context_cfg: Any, facts: Any, tmp: Path) -> tuple[list[Path], dict[str, Any]]:
    """Refit the context model on the organic rows of a table above the memory budget: a case-control
    propensity fit (:func:`propensity.models.casecontrol.fit_case_control`) with the context fit's
    config (model, features, side-feature files, calibration, folds, seed) under this fit's budget.
    It samples as ``propensity fit`` does: every organic vote (or a share when they alone would fill half
    the budget) and a uniform share of the organic unobserved rows, corrected exactly (logit shift,
    calibration weighted 1/rate); every exposure is then scored by its fold's model. Its scores and
    models go to ``tmp``, never over the context fit's.

    Returns (the score parts, the report's ``context`` entry).

    Raises
    ------
    ConfigError : the context fit used out-of-fold id encodings (a sampled fit cannot encode ids yet).
    """
    import shutil
    from dataclasses import replace

    from propensity.models.casecontrol import embedding_dim, fit_case_control, plan_rows
    from propensity.models.features import EMBEDDING_PREFIX
    from propensity.models.fit import _write_models

    if context_cfg.id_encodings:
        raise ConfigError(
            f"the context refit of a table above the memory budget is a case-control fit, which cannot encode ids out of fold "
            f"yet (the context fit used --id-encodings {','.join(context_cfg.id_encodings)})", where="--refit-context / --memory-limit",
            fix="rerun `causalrm propensity fit` (it leaves solicited rows out, so no refit is needed), or raise --memory-limit / --max-rows",
        )
    # PropensityConfig's smallest --max-rows is 1,000: a smaller label-aware budget still samples that many rows.
    max_rows = None if cfg.max_rows is None else max(cfg.max_rows, 1_000)
    refit_cfg = replace(context_cfg, max_rows=max_rows, memory_limit=cfg.memory_limit, batch_rows=cfg.batch_rows, clip=_REFIT_FLOOR)
    dim = embedding_dim(warehouse) if refit_cfg.use_embeddings else 0
    row_plan = plan_rows(facts.n_rows, max_rows=refit_cfg.max_rows, memory_limit=refit_cfg.memory_limit, embedding_dim=dim)
    scores_dir = tmp / "scores"
    scores_dir.mkdir()

    def keep(parts: list[Path]) -> Path:
        for part in parts:
            shutil.move(part, scores_dir / part.name)
        return scores_dir

    fit = fit_case_control(warehouse, refit_cfg, row_plan, write_models=lambda _wh, *args, **kw: _write_models(tmp, *args, **kw),
                           commit_scores=keep)
    log.info("label-aware: refitted the context model (%s) on a case-control sample of %d organic exposures of %d",
             refit_cfg.model, fit.sampling["n_sample"], facts.n_organic)
    info = {
        "source": "refit on organic exposures (solicited votes are not organic feedback)", "refit": True,
        "model": refit_cfg.model, "calibration": refit_cfg.calibration, "n_organic": int(facts.n_organic),
        "features": [n for n in fit.feature_names if not n.startswith(EMBEDDING_PREFIX)], "id_encodings": [],
        **({"id_embeddings": list(refit_cfg.id_embeddings)} if refit_cfg.id_embeddings else {}),
        "sampling": {k: fit.sampling[k] for k in ("method", "rate_observed", "rate_unobserved", "n_sample", "n_sample_observed",
                                                  "correction", "logit_shift", "max_rows")},
        "warnings": fit.warnings,
    }
    side_files = [path for path in (refit_cfg.user_features, refit_cfg.item_features) if path]
    if side_files:
        info["side_feature_files"] = side_files
    return sorted(scores_dir.glob("*.parquet")), info


def _duckdb_share(memory_limit_bytes: int) -> int:
    """DuckDB's memory limit in a streamed pass: half the budget, or half of what the process leaves of it."""
    from propensity.models.casecontrol import process_rss_bytes

    held = process_rss_bytes() or 0
    return int(max(64 * 2**20, min(memory_limit_bytes // 2, (memory_limit_bytes - held) // 2)))


def _outcome_info(model: str, y_obs: np.ndarray, m1_obs: np.ndarray) -> dict[str, Any]:
    """What ``label_aware.json`` records about the outcome model (as :func:`outcome_probabilities`)."""
    info: dict[str, Any] = {"model": model}
    if model == "none":
        return info
    from sklearn.metrics import roc_auc_score

    info["auc_organic_votes"] = float(roc_auc_score(y_obs, m1_obs)) if 0 < y_obs.sum() < len(y_obs) else None
    info["mean"] = float(m1_obs.mean())
    return info


def _slice_noise(slice_frame: pl.DataFrame, feedback: pl.DataFrame, confidence: float) -> dict[str, Any] | None:
    """Flip rates implied by the slice's gold labels against the users' votes (None without gold labels)."""
    from propensity.diagnostics import audit_rates

    gold = slice_frame.filter(pl.col("true_label").is_not_null()).select("exposure_id", "true_label")
    if gold.is_empty():
        return None
    pairs = gold.join(feedback.filter(pl.col("observed")).select("exposure_id", "label"), on="exposure_id", how="inner")
    if pairs.is_empty():
        return {"error": "no slice exposure with a gold label also has a vote"}
    try:
        rates = audit_rates(pairs["true_label"].to_numpy(), pairs["label"].to_numpy(), confidence=confidence, where="randomized slice")
    except IdentifiabilityError as exc:
        return {"error": exc.one_line(), "n": pairs.height}
    return {**rates, "n": pairs.height}
