"""Label-noise rates per feedback channel: rho01 = P(r=0 | r*=1), rho10 = P(r=1 | r*=0) (issue 10).

Two estimators, both with confidence intervals:

* **Anchor points** (the CausalRM paper's method). A proxy preference model P(r=1 | x) is fitted on
  the observed rows with inverse-propensity weights 1/p and cross-fitted by user groups, so every
  exposure (observed or not) gets an out-of-fold score. Anchors are the exposures scored in the top
  ``1 - q`` (r* close to 1) and bottom ``1 - q`` (r* close to 0). Then

      rho01_hat = 1 - P(r=1 | top anchors),    rho10_hat = P(r=1 | bottom anchors),

  with P(r=1 | anchors) the self-normalised inverse-propensity-weighted mean of the *held-out
  observed labels* in the anchor set: sum(o r / p) / sum(o / p). The proxy's own scores are never
  used as probabilities: the rows it scores most extreme are where it is most overconfident, so
  its scores there understate the flip rates (winner's curse). Each side's quantile is widened,
  in steps of one exposure, until it holds ``min_anchors`` observed rows (never below
  ``min_quantile``); the quantile used is reported per side. Intervals: user-level (cluster)
  bootstrap of the anchor selection and the weighted means, *conditional on the proxy's scores*
  (refitting the proxy per replicate would multiply the cost by the number of replicates; the
  scores only choose the anchor set, the labels carry the sampling noise).

  Bias: anchors are only approximately pure. If the top anchors' clean-label rate is
  m = P(r*=1 | top) < 1, then E[rho01_hat] = rho01 + (1 - m)(1 - rho01 - rho10), and likewise
  rho10_hat is biased up by P(r*=1 | bottom)(1 - rho01 - rho10). Both are upward biases that grow
  as the quantile widens; benchmarks/noise/README.md measures them on simulated logs.

* **Audit set**: a gold-labelled sample (``exposure_id``, ``true_label``). Its observed rows give
  the confusion counts of (r*, r); rho01 = #(r*=1, r=0) / #(r*=1), rho10 = #(r*=0, r=1) / #(r*=0)
  with exact Clopper-Pearson (default) or Wilson intervals. The rates are those of the rows the
  audit sampled (unweighted): draw the audit uniformly from observed exposures.

Identifiability guard: rho01 + rho10 >= 1 (or a confidence interval of the sum reaching 1), an empty
anchor set, or a one-class channel raise :class:`~schemas.errors.IdentifiabilityError`; the
noise-aware loss divides by 1 - rho01 - rho10 and is meaningless there.

Channels: only ``vote`` carries an up/down label. The implicit channels (copy, regenerate, share)
are one-class: every observed row is the same signal, and not copying is not a thumbs-down, so no
pair of flip rates is defined for them and estimating one is refused (their reliability belongs
in their propensity P(signal | x), not in rho01 / rho10).

Outputs: ``WH/noise/<channel>.json`` and, for the vote channel, ``WH/noise.json`` (same content).
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import polars as pl

from propensity.diagnostics import INTERVALS, audit_rates, proportion_ci  # noqa: F401  (re-exported)
from propensity.noise._proxy import PROXY_MODELS, build_proxy_features, cross_fit_scores, proxy_sample, training_rows
from propensity.models.crossfit import group_folds
from propensity.models.custom_features import with_custom_features
from propensity.io import read_scores, scores_path
from schemas.errors import ConfigError, EstimationError, IdentifiabilityError, InputFileError, WarehouseError
from schemas.feedback import CHANNELS

log = logging.getLogger(__name__)

METHODS: tuple[str, ...] = ("anchor", "audit")
SEGMENT_COLUMNS: tuple[str, ...] = ("platform", "model_id", "locale")
LABELLED_CHANNELS: tuple[str, ...] = ("vote",)


@dataclass(frozen=True, kw_only=True)
class NoiseConfig:
    """How to estimate the flip rates. Mirrors ``causalrm noise estimate`` options one to one.

    Parameters
    ----------
    channel : feedback channel; only ``vote`` has an up/down label (see module docstring).
    method : ``anchor`` (proxy model + anchor points) or ``audit`` (gold-labelled sample).
    audit : path of an audit file (parquet, csv or jsonl with exposure_id, true_label), or ``"slice"``:
        the gold labels of the warehouse's randomized slice (``propensity.slice.label_aware.read_slice_audit``).
        Required by ``method="audit"``; with ``method="anchor"`` both estimates are reported and compared.
    quantile : requested anchor quantile q: anchors are the top and bottom 1 - q of exposures.
    min_anchors : each side is widened until it holds this many observed rows.
    min_quantile : the widening stops here (a side then keeps fewer anchors, with a warning).
    segment_by : also report rates per value of this column (platform, model_id or locale).
    bootstrap : number of user-level bootstrap replicates for the anchor intervals.
    confidence : two-sided confidence level of every interval.
    interval : audit interval, ``clopper-pearson`` (exact, conservative) or ``wilson``.
    use_weights : weight by 1/p from ``WH/propensity/scores.parquet``; False (``--no-weights``)
        treats feedback as missing at random, which biases the rates when selection depends on r*.
    proxy : proxy preference model, ``lightgbm`` or ``logistic`` (L2 logistic regression).
    n_folds : cross-fitting folds when the propensity scores carry no fold column.
    text_features : add a bag of word n-grams of response_text to the proxy's features.
    use_embeddings : add WH/embeddings to the proxy's features when present.
    max_ci_width : an interval wider than this is a warning in the output.
    seed : seed of folds, proxy model and bootstrap.
    max_rows : feedback rows the estimate may hold in memory (None: what ``memory_limit`` allows). A
        larger table is streamed: the proxy trains on the observed rows and every exposure is scored
        in batches into compact arrays, with the same estimate (issue 23, ``propensity.noise._streamed``)
        unless the observed rows' features exceed the budget: the proxies then train on a sample of them.
    memory_limit : memory budget (``4GB``, ``512MB``), turned into rows as ``propensity fit`` does.
    batch_rows : rows per batch when streaming.
    proxy_rows : at most this many observed rows train the proxies, a seeded uniform sample when
        there are more (None: all of them in memory; streamed, as many as ``memory_limit`` allows).
        Every exposure is still scored (``propensity.noise._proxy.proxy_sample``).
    """

    channel: str = "vote"
    method: str = "anchor"
    audit: str | None = None
    quantile: float = 0.97
    min_anchors: int = 300
    min_quantile: float = 0.75
    segment_by: str | None = None
    bootstrap: int = 200
    confidence: float = 0.95
    interval: str = "clopper-pearson"
    use_weights: bool = True
    proxy: str = "lightgbm"
    n_folds: int = 5
    text_features: bool = True
    use_embeddings: bool = True
    max_ci_width: float = 0.15
    seed: int = 0
    max_rows: int | None = None
    memory_limit: str = "4GB"
    batch_rows: int = 200_000
    proxy_rows: int | None = None

    def __post_init__(self) -> None:
        from feedback_etl.sizes import parse_memory

        parse_memory(self.memory_limit)
        checks = [
            (self.channel in CHANNELS, f"unknown channel {self.channel!r}", f"use one of {', '.join(CHANNELS)}"),
            (self.method in METHODS, f"unknown method {self.method!r}", "use anchor or audit"),
            (self.method != "audit" or self.audit is not None, "method audit needs an audit file", "pass --audit FILE"),
            (0.5 < self.quantile < 1, f"quantile must be in (0.5, 1), got {self.quantile}", "e.g. --quantile 0.97"),
            (0.5 <= self.min_quantile <= self.quantile, f"min_quantile must be in [0.5, quantile], got {self.min_quantile}", "e.g. 0.75"),
            (self.min_anchors >= 1, f"min_anchors must be >= 1, got {self.min_anchors}", "e.g. --min-anchors 300"),
            (self.segment_by is None or self.segment_by in SEGMENT_COLUMNS, f"cannot segment by {self.segment_by!r}", f"use one of {', '.join(SEGMENT_COLUMNS)}"),
            (self.bootstrap >= 20, f"bootstrap must be >= 20 replicates, got {self.bootstrap}", "e.g. --bootstrap 200"),
            (0 < self.confidence < 1, f"confidence must be in (0, 1), got {self.confidence}", "e.g. 0.95"),
            (self.interval in INTERVALS, f"unknown interval {self.interval!r}", f"use one of {', '.join(INTERVALS)}"),
            (self.proxy in PROXY_MODELS, f"unknown proxy model {self.proxy!r}", f"use one of {', '.join(PROXY_MODELS)}"),
            (self.n_folds >= 2, f"n_folds must be >= 2, got {self.n_folds}", "e.g. 5"),
            (0 < self.max_ci_width <= 1, f"max_ci_width must be in (0, 1], got {self.max_ci_width}", "e.g. 0.15"),
            (self.proxy_rows is None or self.proxy_rows >= 100, f"proxy_rows must be >= 100, got {self.proxy_rows}", "e.g. 1000000"),
        ]
        for ok, what, fix in checks:
            if not ok:
                raise ConfigError(what, where="noise config", fix=fix)


# ------------------------------------------------------------------------------------ anchor points


@dataclass(frozen=True)
class _Side:
    """One side's anchor set: count of exposures k from the extreme end, observed anchors, P(r=1)."""

    k: int
    n_observed: int
    p_label1: float
    quantile: float
    short: bool  # min_anchors not reached at min_quantile


def _side_point(obs: np.ndarray, wy: np.ndarray, w: np.ndarray, *, quantile: float, min_anchors: int, min_quantile: float) -> _Side:
    """Anchor set of one side. Arrays are sorted from the extreme end (shape (n,))."""
    n = obs.size
    k_req = max(1, math.ceil(round((1 - quantile) * n, 9)))
    k_max = max(k_req, math.floor(round((1 - min_quantile) * n, 9)))
    cum_obs = np.cumsum(obs)
    k_need = int(np.searchsorted(cum_obs, min_anchors, side="left")) + 1  # first k with >= min_anchors
    k = min(max(k_req, k_need), k_max, n)
    n_observed = int(cum_obs[k - 1])
    denominator = float(w[:k].sum())
    p_label1 = float(wy[:k].sum() / denominator) if denominator > 0 else float("nan")
    return _Side(k=k, n_observed=n_observed, p_label1=p_label1, quantile=1 - k / n, short=k_need > k)


def _side_bootstrap(obs: np.ndarray, wy: np.ndarray, w: np.ndarray, counts: np.ndarray, user: np.ndarray, total: float, *,
                    quantile: float, min_anchors: int, min_quantile: float) -> float:
    """P(r=1 | anchors) in one bootstrap replicate: arrays sorted from the extreme end (shape (n,)),
    ``counts`` the replicate's draws of each user, ``user`` the user index of each sorted exposure
    (an exposure's multiplicity m is its user's count) and ``total`` = sum(m); the same widening rule
    as the point estimate, applied to the resampled exposures.

    The cumulative sums are taken over a growing prefix only, until the anchor set's end is known (the
    sets are the top few percent, issue 23): they are integers, so every prefix sum equals the whole
    array's, and the result is the whole-array computation's.
    """
    n = user.size
    t_req, t_cap = (1 - quantile) * total, (1 - min_quantile) * total
    i_req = i_need = i_cap = None
    parts: list[np.ndarray] = []
    start, cm_end, co_end, step = 0, 0.0, 0.0, max(1 << 16, n // 16)
    while start < n:
        stop = min(n, start + step)
        m = counts[user[start:stop]]
        cm = np.cumsum(m)
        cm += cm_end
        co = np.cumsum(m * obs[start:stop])
        co += co_end
        if i_req is None and cm[-1] >= t_req:
            i_req = start + int(np.searchsorted(cm, t_req, side="left"))
        if i_need is None and co[-1] >= min_anchors:
            i_need = start + int(np.searchsorted(co, min_anchors, side="left"))
        if i_cap is None and cm[-1] >= t_cap:
            i_cap = start + int(np.searchsorted(cm, t_cap, side="left"))
        parts.append(m)
        start, cm_end, co_end, step = stop, float(cm[-1]), float(co[-1]), 2 * step
        if i_cap is not None or (i_req is not None and i_need is not None):
            break  # a side not found yet lies past the scanned prefix and cannot be the minimum
    i = min(max(i_req, n if i_need is None else i_need), n if i_cap is None else i_cap, n - 1)
    m = parts[0] if len(parts) == 1 else np.concatenate(parts)
    den = float(np.dot(m[: i + 1], w[: i + 1]))
    return float(np.dot(m[: i + 1], wy[: i + 1]) / den) if den > 0 else float("nan")


def _sensitivity(wy: np.ndarray, w: np.ndarray, k: int) -> tuple[float, dict[str, float]]:
    """Quantile-sensitivity term of one side (issue 15): the spread (max - min) of P(r=1 | anchors)
    over the anchor sets of k / 2, k and 2 k exposures from the extreme end (arrays sorted from it).

    Impure anchors bias the rate upward by an amount that grows with the anchor set; if the impurity
    grows linearly in the anchor fraction, the spread over (k / 2, 2 k) is 1.5 times the bias at k, so
    widening the bootstrap interval by it on both sides covers the bias that the interval, conditional
    on the anchor set, leaves out. Pure anchors give a spread of sampling noise only.
    """
    n = w.size
    sizes = {"half": max(1, k // 2), "used": k, "double": min(n, 2 * k)}
    cum_w, cum_wy = np.cumsum(w[: sizes["double"]]), np.cumsum(wy[: sizes["double"]])
    values = {name: float(cum_wy[size - 1] / cum_w[size - 1]) for name, size in sizes.items() if cum_w[size - 1] > 0}
    spread = max(values.values()) - min(values.values()) if len(values) > 1 else 0.0
    return float(spread), values


def _percentile_ci(values: np.ndarray, confidence: float) -> list[float]:
    alpha = 1 - confidence
    lo, hi = np.nanquantile(values, [alpha / 2, 1 - alpha / 2])
    return [float(np.clip(lo, 0, 1)), float(np.clip(hi, 0, 1))]


def anchor_rates(
    score: np.ndarray,
    observed: np.ndarray,
    label: np.ndarray,
    weight: np.ndarray,
    user: np.ndarray,
    *,
    quantile: float = 0.97,
    min_anchors: int = 300,
    min_quantile: float = 0.75,
    n_bootstrap: int = 200,
    confidence: float = 0.95,
    seed: int = 0,
    where: str = "noise estimate",
) -> dict:
    """Anchor-point flip rates from scores of every exposure and the held-out observed labels.

    Parameters
    ----------
    score : array of shape (n_exposures,), out-of-fold proxy score of P(r*=1 | x); only its order matters.
    observed : bool array of shape (n_exposures,), o.
    label : int array of shape (n_exposures,), r (any value where o = 0).
    weight : array of shape (n_exposures,), 1/p (any value where o = 0).
    user : array of shape (n_exposures,), the bootstrap's resampling unit (user_id).

    Returns
    -------
    dict with rho01, rho10, rho01_ci, rho10_ci, rho_sum_ci, p_label1, n_anchor, n_anchor_exposures
    (the anchor sets' sizes; :func:`anchor_sets` gives their members), quantile, quantile_by_side,
    warnings.

    Raises
    ------
    IdentifiabilityError : no observed anchors on a side, or rho01 + rho10 (or its interval) >= 1.
    """
    observed = np.asarray(observed, dtype=bool)
    n = observed.size
    if n == 0 or not observed.any():
        raise IdentifiabilityError("no observed rows, so no anchor can carry a label", where=where, fix="check the channel and the warehouse")
    # Stable sorts on (score, position): ties are broken the same way in every run. Only the sorted
    # arrays are kept, one side built and its order freed before the other side is sorted (a streamed
    # estimate has tens of millions of exposures, issue 23): about 60 bytes per exposure beyond the inputs.
    score = np.asarray(score, dtype=np.float64)
    user_index, n_users = _user_index(user)
    # exposures per user: sum(m) of a replicate is counts @ user_sizes (integers, so exactly cumsum(m)[-1])
    user_sizes = np.bincount(user_index, minlength=n_users).astype(np.float64)
    index_type = np.int32 if n_users < np.iinfo(np.int32).max else np.int64
    user_index = user_index.astype(index_type, copy=False)
    weight, label = np.asarray(weight, dtype=np.float64), np.asarray(label)

    def sorted_side(order: np.ndarray) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], np.ndarray]:
        # obs stays bool (its cumulative sums are integers either way); w = 1/p and wy = w * r on
        # observed rows, 0 elsewhere, the same products as on the unsorted arrays
        obs = observed[order]
        unobserved = ~obs
        w = weight[order]
        np.putmask(w, unobserved, 0.0)
        wy = label[order].astype(np.float64)
        np.putmask(wy, unobserved, 0.0)
        np.multiply(w, wy, out=wy)
        return (obs, wy, w), user_index[order]

    top_arrays, user_top = sorted_side(np.argsort(-score, kind="stable"))
    bottom_arrays, user_bottom = sorted_side(np.argsort(score, kind="stable"))
    del user_index
    params = {"quantile": quantile, "min_anchors": min_anchors, "min_quantile": min_quantile}
    top = _side_point(*top_arrays, **params)
    bottom = _side_point(*bottom_arrays, **params)
    for name, side in (("top", top), ("bottom", bottom)):
        if side.n_observed == 0:
            raise IdentifiabilityError(
                f"empty anchor set: the {name} {1 - side.quantile:.0%} of exposures by proxy score hold no observed row",
                where=where,
                fix="collect more feedback, lower --min-quantile, or use --method audit",
            )
    rng = np.random.default_rng(seed)
    top_b, bottom_b = np.empty(n_bootstrap), np.empty(n_bootstrap)
    for b in range(n_bootstrap):
        # Cluster bootstrap: users are drawn with replacement and bring all their exposures.
        counts = rng.multinomial(n_users, np.full(n_users, 1.0 / n_users)).astype(np.float64)
        total = float(counts @ user_sizes)
        top_b[b] = _side_bootstrap(*top_arrays, counts, user_top, total, **params)
        bottom_b[b] = _side_bootstrap(*bottom_arrays, counts, user_bottom, total, **params)
    out = _rates(top.p_label1, bottom.p_label1, top_b, bottom_b, confidence=confidence, where=where)
    # Quantile sensitivity (issue 15): the bootstrap is conditional on the anchor set and leaves out the
    # impurity bias; widen each rate's interval by the spread of its estimate across anchor quantiles.
    spread_top, by_size_top = _sensitivity(top_arrays[1], top_arrays[2], top.k)
    spread_bottom, by_size_bottom = _sensitivity(bottom_arrays[1], bottom_arrays[2], bottom.k)
    out["rho01_ci_bootstrap"], out["rho10_ci_bootstrap"] = out["rho01_ci"], out["rho10_ci"]
    out["rho01_ci"] = [max(0.0, out["rho01_ci"][0] - spread_top), min(1.0, out["rho01_ci"][1] + spread_top)]
    out["rho10_ci"] = [max(0.0, out["rho10_ci"][0] - spread_bottom), min(1.0, out["rho10_ci"][1] + spread_bottom)]
    out["quantile_sensitivity"] = {
        "rho01": spread_top, "rho10": spread_bottom,
        "p_label1_by_anchor_size": {"top": by_size_top, "bottom": by_size_bottom},
        "interval": "user bootstrap (conditional on the anchor set) widened on both sides by the spread of the "
                    "estimate over anchor sets of half and double the size",
    }
    for name, side in (("top", top), ("bottom", bottom)):
        if side.short:
            out["warnings"].append(
                f"{name} anchors: only {side.n_observed} observed rows at the widest quantile {side.quantile:.3f} "
                f"(min_anchors {min_anchors}); the rate is imprecise"
            )
        elif side.quantile < quantile - 1e-9:
            out["warnings"].append(
                f"{name} anchors: quantile widened from {quantile} to {side.quantile:.4f} to reach {min_anchors} observed rows; "
                "wider anchor sets are less pure and bias the rate upward"
            )
    out.update(
        n_anchor={"top": top.n_observed, "bottom": bottom.n_observed},
        n_anchor_exposures={"top": top.k, "bottom": bottom.k},
        quantile=float(min(top.quantile, bottom.quantile)),
        quantile_by_side={"top": float(top.quantile), "bottom": float(bottom.quantile)},
    )
    return out


def anchor_sets(score: np.ndarray, n_top: int, n_bottom: int) -> tuple[np.ndarray, np.ndarray]:
    """Membership (bool arrays of shape (n_exposures,)) of the top n_top and bottom n_bottom
    exposures by score, with the same tie-breaking as :func:`anchor_rates`."""
    score = np.asarray(score, dtype=np.float64)
    top, bottom = np.zeros(score.size, bool), np.zeros(score.size, bool)
    top[np.argsort(-score, kind="stable")[:n_top]] = True
    bottom[np.argsort(score, kind="stable")[:n_bottom]] = True
    return top, bottom


def _user_index(user: np.ndarray) -> tuple[np.ndarray, int]:
    user = np.asarray(user)
    if np.issubdtype(user.dtype, np.integer) and user.size and user.min() == 0:
        # Dense codes 0..n_users-1, every one present (a streamed estimate's): they are their own
        # index, as np.unique would return it, without its sort.
        n_users = int(user.max()) + 1
        if n_users <= user.size and np.bincount(user, minlength=n_users).all():
            return user, n_users
    # Integer user codes (a streamed estimate's, issue 23) are already in user-id order.
    _, index = np.unique(user if np.issubdtype(user.dtype, np.integer) else user.astype(str), return_inverse=True)
    return index, int(index.max()) + 1 if index.size else 0


def _rates(p_top: float, p_bottom: float, p_top_b: np.ndarray, p_bottom_b: np.ndarray, *, confidence: float, where: str) -> dict:
    """rho01 = 1 - P(r=1 | top), rho10 = P(r=1 | bottom), their bootstrap intervals and the guard."""
    rho01, rho10 = 1.0 - p_top, p_bottom
    rho01_b, rho10_b = 1.0 - p_top_b, p_bottom_b
    sum_b = rho01_b + rho10_b
    n_bootstrap = sum_b.size
    warnings: list[str] = []
    failed = int(np.isnan(sum_b).sum())
    if failed == n_bootstrap:
        raise IdentifiabilityError(
            "empty anchor set in every bootstrap replicate: too few observed rows at the extremes",
            where=where,
            fix="collect more feedback, lower --min-quantile, or use --method audit",
        )
    if failed > 0.05 * n_bootstrap:
        warnings.append(f"{failed} of {n_bootstrap} bootstrap replicates had an empty anchor side; intervals are unreliable")
    alpha = 1 - confidence
    sum_ci = [float(v) for v in np.nanquantile(sum_b, [alpha / 2, 1 - alpha / 2])]
    if rho01 + rho10 >= 1 or sum_ci[1] >= 1:
        raise IdentifiabilityError(
            f"flip rates not identified: rho01 + rho10 = {rho01 + rho10:.3f} ({confidence:.0%} interval "
            f"{sum_ci[0]:.3f}..{sum_ci[1]:.3f}) reaches 1, i.e. top anchors are not more often up-voted than bottom "
            f"anchors (P(r=1|top) = {p_top:.3f}, P(r=1|bottom) = {p_bottom:.3f})",
            where=where,
            fix="the proxy model cannot rank answers: add text features or embeddings (`causalrm embed`), or use --method audit",
        )
    return {
        "rho01": float(rho01),
        "rho10": float(rho10),
        "rho01_ci": _percentile_ci(rho01_b, confidence),
        "rho10_ci": _percentile_ci(rho10_b, confidence),
        "rho_sum_ci": sum_ci,
        "p_label1": {"top": float(p_top), "bottom": float(p_bottom)},
        "warnings": warnings,
    }


def segment_anchor_rates(
    top_anchor: np.ndarray,
    bottom_anchor: np.ndarray,
    observed: np.ndarray,
    label: np.ndarray,
    weight: np.ndarray,
    user: np.ndarray,
    *,
    n_bootstrap: int = 200,
    confidence: float = 0.95,
    seed: int = 0,
    where: str = "noise estimate segment",
) -> dict:
    """Flip rates of one segment from its share of the GLOBAL anchor sets.

    Anchors are exposures with r* near 0 or 1, a property of the answer, not of the segment: the
    segment's rows inside the global top and bottom sets keep the global anchors' purity, so segment
    rates are comparable with each other and with the overall rate (re-selecting anchors within a
    small segment would widen its quantile and bias it upward). Arrays have shape (n_segment_rows,).

    Raises
    ------
    IdentifiabilityError : the segment has no observed row in an anchor set, or rho01 + rho10 >= 1.
    """
    observed = np.asarray(observed, dtype=bool)
    w = np.where(observed, np.asarray(weight, dtype=np.float64), 0.0)
    wy = w * np.where(observed, np.asarray(label, dtype=np.float64), 0.0)
    sides = {}
    for name, member in (("top", np.asarray(top_anchor, bool)), ("bottom", np.asarray(bottom_anchor, bool))):
        n_obs = int((member & observed).sum())
        if n_obs == 0:
            raise IdentifiabilityError(
                f"empty anchor set: no observed row of this segment is among the {name} anchors", where=where,
                fix="drop --segment-by for this column or collect more feedback",
            )
        sides[name] = (member, n_obs, float(wy[member].sum() / w[member].sum()))
    rng = np.random.default_rng(seed)
    user_index, n_users = _user_index(user)
    boot = {"top": np.empty(n_bootstrap), "bottom": np.empty(n_bootstrap)}
    for b in range(n_bootstrap):
        m = rng.multinomial(n_users, np.full(n_users, 1.0 / n_users)).astype(np.float64)[user_index]
        for name, (member, _, _) in sides.items():
            den = float(np.dot(m[member], w[member]))
            boot[name][b] = float(np.dot(m[member], wy[member]) / den) if den > 0 else np.nan
    out = _rates(sides["top"][2], sides["bottom"][2], boot["top"], boot["bottom"], confidence=confidence, where=where)
    out["n_anchor"] = {"top": sides["top"][1], "bottom": sides["bottom"][1]}
    out["n_anchor_exposures"] = {"top": int(sides["top"][0].sum()), "bottom": int(sides["bottom"][0].sum())}
    return out


# ------------------------------------------------------------------------------------ audit set


def read_audit(path: str | Path) -> pl.DataFrame:
    """Read an audit file (parquet, csv or jsonl/ndjson) as (exposure_id str, true_label int8).

    Raises
    ------
    InputFileError : missing file, unknown format, missing column, labels not 0/1, conflicting duplicates.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError("audit file not found", where=str(path), fix="pass --audit with a parquet, csv or jsonl file")
    suffix = "".join(path.suffixes[-2:]) if path.suffix == ".gz" else path.suffix
    # Literal paths (issue 16): glob=False, and read_ndjson (no such option) reads the bytes.
    readers = {".parquet": lambda p: pl.read_parquet(p, glob=False), ".csv": lambda p: pl.read_csv(p, glob=False),
               ".jsonl": lambda p: pl.read_ndjson(p.read_bytes()), ".ndjson": lambda p: pl.read_ndjson(p.read_bytes()),
               ".json": lambda p: pl.read_ndjson(p.read_bytes())}
    if suffix not in readers:
        raise InputFileError(f"unknown audit file format {suffix!r}", where=str(path), fix="use .parquet, .csv or .jsonl")
    try:
        frame = readers[suffix](path)
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise InputFileError(f"cannot read audit file: {exc}", where=str(path), fix="check the file's format") from exc
    missing = [c for c in ("exposure_id", "true_label") if c not in frame.columns]
    if missing:
        raise InputFileError(
            f"audit file lacks column(s) {', '.join(missing)} (has {', '.join(frame.columns)})",
            where=str(path),
            fix="the audit needs exposure_id and true_label (1 = the answer is good, 0 = bad)",
        )
    frame = frame.select(pl.col("exposure_id").cast(pl.Utf8), pl.col("true_label"))
    if frame["true_label"].dtype == pl.Boolean:
        frame = frame.with_columns(pl.col("true_label").cast(pl.Int8))
    labels = frame["true_label"].cast(pl.Float64, strict=False)
    bad = frame.filter(~labels.is_in([0.0, 1.0]).fill_null(False) | pl.col("exposure_id").is_null())
    if bad.height:
        raise InputFileError(
            f"{bad.height} audit rows have a null exposure_id or a true_label other than 0/1, e.g. {bad.head(3).to_dicts()}",
            where=str(path),
            fix="true_label must be 0 or 1",
        )
    frame = frame.with_columns(pl.col("true_label").cast(pl.Float64).cast(pl.Int8)).unique()
    dup = frame.group_by("exposure_id").len().filter(pl.col("len") > 1)
    if dup.height:
        raise InputFileError(
            f"{dup.height} exposure_id(s) appear with both true labels, e.g. {dup['exposure_id'].head(3).to_list()}",
            where=str(path),
            fix="keep one gold label per exposure",
        )
    return frame


def _audit_join(feedback: pl.DataFrame, audit: pl.DataFrame, segment_by: str | None) -> tuple[pl.DataFrame, dict, list[str]]:
    cols = ["exposure_id", "observed", "label"] + ([segment_by] if segment_by else [])
    joined = audit.join(feedback.select(cols), on="exposure_id", how="left")
    not_in_wh = int(joined["observed"].is_null().sum())
    used = joined.filter(pl.col("observed").fill_null(False))
    counts = {"rows": audit.height, "used": used.height, "not_in_warehouse": not_in_wh, "not_observed": audit.height - not_in_wh - used.height}
    warnings = []
    if not_in_wh:
        warnings.append(f"{not_in_wh} audit rows name exposures absent from the warehouse; ignored")
    if counts["not_observed"]:
        warnings.append(f"{counts['not_observed']} audit rows have no vote to compare with; ignored")
    return used, counts, warnings


# ------------------------------------------------------------------------------------ orchestration


def _width_warnings(result: dict, max_width: float, prefix: str = "") -> list[str]:
    out = []
    for name in ("rho01", "rho10"):
        lo, hi = result[f"{name}_ci"]
        if hi - lo > max_width:
            out.append(f"{prefix}{name} interval [{lo:.3f}, {hi:.3f}] is wider than {max_width}; collect more feedback or audit labels")
    return out


def _require_labelled_channel(channel: str) -> None:
    if channel not in LABELLED_CHANNELS:
        raise IdentifiabilityError(
            f"channel {channel!r} is one-class: an implicit signal ({CHANNELS[channel]}) is only ever positive, and its "
            "absence is not a thumbs-down, so rho01 / rho10 are not defined for it",
            where=f"noise estimate --channel {channel}",
            fix="estimate noise on --channel vote; an implicit channel's reliability is carried by its propensity",
        )


def proxy_scores(
    feedback: pl.DataFrame,
    config: NoiseConfig,
    *,
    weight: np.ndarray,
    fold: np.ndarray | None = None,
    embeddings: pl.DataFrame | None = None,
    custom: dict[str, str] | None = None,
) -> tuple[np.ndarray, dict]:
    """Cross-fitted proxy scores of P(r=1 | x) for every exposure, and the proxy's diagnostics.

    Parameters
    ----------
    feedback : one row per exposure (see :func:`estimate_noise_frame`).
    weight : array of shape (n_exposures,), 1/p (ones without weights).
    fold : int array of shape (n_exposures,) or None (folds by user_id hash).

    Returns
    -------
    (score, info): score of shape (n_exposures,); info = model, n_features, n_folds and
    auc_observed (inverse-propensity-weighted AUC of the held-out scores against observed labels).
    """
    from sklearn.metrics import roc_auc_score

    observed = feedback["observed"].to_numpy().astype(bool)
    label = feedback["label"].fill_null(0).to_numpy().astype(np.int64)
    users = feedback["user_id"].to_numpy()
    fold = group_folds(users, config.n_folds, config.seed) if fold is None else np.asarray(fold)
    features, names = build_proxy_features(
        feedback, embeddings if config.use_embeddings else None, text=config.text_features, standardize=config.proxy == "logistic",
        custom=custom,
    )
    log.info("noise proxy: %s on %d features, %d folds, %d observed rows", config.proxy, len(names), len(np.unique(fold)), observed.sum())
    n_observed = int(observed.sum())
    sample = proxy_sample(n_observed, config.proxy_rows, config.seed)
    train = observed
    if sample is not None:  # the same rows a streamed estimate samples (positions among the observed rows)
        train = np.zeros_like(observed)
        train[np.flatnonzero(observed)[sample]] = True
    score = cross_fit_scores(features, train, label, weight, fold, users, kind=config.proxy, seed=config.seed)
    auc = float(roc_auc_score(label[observed], score[observed], sample_weight=weight[observed]))
    return score, {"model": config.proxy, "n_features": len(names), "n_folds": int(len(np.unique(fold))), "auc_observed": auc,
                   "training_rows": training_rows(n_observed, sample, config.seed)}


def estimate_noise_frame(
    feedback: pl.DataFrame,
    config: NoiseConfig,
    *,
    propensity: np.ndarray | None = None,
    fold: np.ndarray | None = None,
    embeddings: pl.DataFrame | None = None,
    audit: pl.DataFrame | None = None,
    custom: dict[str, str] | None = None,
    precomputed: tuple[np.ndarray, dict] | None = None,
    audit_rows: pl.DataFrame | None = None,
) -> dict:
    """Estimate rho01 / rho10 from an in-memory feedback frame (no file I/O).

    ``custom`` names the custom context columns of ``feedback`` the proxy model uses (name ->
    categorical | numeric | boolean; issue 17); other extra columns of the frame are never features.

    Parameters
    ----------
    feedback : one row per exposure with at least exposure_id, user_id, observed, label and, for
        the anchor method, feature columns (context columns, response_text); see
        ``propensity.noise._proxy.build_proxy_features``.
    config : what to estimate.
    propensity : array of shape (n_exposures,), p aligned with ``feedback`` rows; None = no weights.
    fold : int array of shape (n_exposures,), cross-fitting folds (e.g. the propensity model's);
        None = folds by user_id hash.
    embeddings : optional (exposure_id, embedding) frame for the proxy.
    audit : optional (exposure_id, true_label) frame (see :func:`read_audit`).
    precomputed : (score, proxy info) of every row, already computed (a streamed estimate scores
        batch by batch, ``propensity.noise._streamed``; ``feedback`` then holds observed, label,
        user_id as integer codes in id order and the segment column); None: fit the proxy here.
    audit_rows : the feedback rows of the audit's exposures (exposure_id, observed, label, segment);
        None: looked up in ``feedback``.

    Returns
    -------
    dict in the ``WH/noise.json`` layout (see docs/noise.md).
    """
    _require_labelled_channel(config.channel)
    where = f"noise estimate --channel {config.channel}"
    observed = feedback["observed"].to_numpy().astype(bool)
    labels = feedback.filter(pl.col("observed"))["label"]
    if labels.n_unique() < 2:
        value = labels.unique().to_list()
        raise IdentifiabilityError(
            f"one-class channel: all {labels.len()} observed labels are {value}, so flip rates are not identified",
            where=where,
            fix="check the ETL's vote mapping (thumbs_up=1, thumbs_down=0)",
        )
    result: dict = {
        "channel": config.channel,
        "method": config.method,
        "rho01": None, "rho10": None, "rho01_ci": None, "rho10_ci": None,
        "confidence": config.confidence,
        "n_anchor": None, "n_anchor_exposures": None,
        "quantile": None, "quantile_requested": None, "quantile_by_side": None, "min_anchors": None,
        "n_exposures": feedback.height,
        "n_observed": int(observed.sum()),
        "warnings": [],
        "segments": [],
        "comparison": None,
        "config": asdict(config),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if config.method == "audit" and audit is None:
        raise ConfigError("method audit needs the audit frame", where="estimate_noise_frame", fix="pass audit=read_audit(path)")
    audit_used = None
    if audit is not None:
        audit_used, audit_counts, audit_warnings = _audit_join(feedback if audit_rows is None else audit_rows, audit, config.segment_by)
        if audit_used.height == 0:
            raise IdentifiabilityError(
                f"none of the {audit.height} audit rows is an observed exposure of this warehouse",
                where=config.audit or "audit set",
                fix="audit exposures that received a vote (observed = true)",
            )
        audit_result = audit_rates(
            audit_used["true_label"].to_numpy(), audit_used["label"].to_numpy(), confidence=config.confidence,
            interval=config.interval, where=config.audit or "audit set",
        )
        audit_result["n_audit"] = audit_counts
        audit_result["interval"] = config.interval
        audit_result["warnings"] = audit_warnings + _width_warnings(audit_result, config.max_ci_width, "audit ")

    if config.method == "anchor":
        if propensity is None:
            weight = np.ones(feedback.height)
            result["warnings"].append("no inverse-propensity weights (--no-weights): rates assume feedback is missing at random")
        else:
            weight = 1.0 / np.asarray(propensity, dtype=np.float64)
        label = feedback["label"].fill_null(0).to_numpy().astype(np.int64)
        score, result["proxy"] = precomputed or proxy_scores(feedback, config, weight=weight, fold=fold, embeddings=embeddings,
                                                             custom=custom)
        auc = result["proxy"]["auc_observed"]
        if auc < 0.6:
            result["warnings"].append(
                f"proxy model separates up- from down-votes poorly (held-out AUC {auc:.3f}); anchors are impure and both rates biased upward"
            )
        users = feedback["user_id"].to_numpy()
        anchor_kw = {
            "quantile": config.quantile, "min_anchors": config.min_anchors, "min_quantile": config.min_quantile,
            "n_bootstrap": config.bootstrap, "confidence": config.confidence, "seed": config.seed,
        }
        main = anchor_rates(score, observed, label, weight, users, where=where, **anchor_kw)
        top_anchor, bottom_anchor = anchor_sets(score, main["n_anchor_exposures"]["top"], main["n_anchor_exposures"]["bottom"])
        result.update({k: v for k, v in main.items() if k != "warnings"})
        result["quantile_requested"] = config.quantile
        result["min_anchors"] = config.min_anchors
        result["warnings"] += main["warnings"] + _width_warnings(main, config.max_ci_width)
        if config.segment_by:
            # Integer codes of the sorted values (no Python string per row: a streamed estimate has millions).
            values = feedback[config.segment_by].cast(pl.Utf8).fill_null("<null>")
            levels = sorted(values.unique().to_list())
            codes = values.replace_strict(levels, list(range(len(levels))), return_dtype=pl.Int32).to_numpy()
            for code, value in enumerate(levels):
                mask = codes == code
                row = {"segment_by": config.segment_by, "segment": value, "n_exposures": int(mask.sum()), "n_observed": int(observed[mask].sum())}
                try:
                    seg = segment_anchor_rates(
                        top_anchor[mask], bottom_anchor[mask], observed[mask], label[mask], weight[mask], users[mask],
                        n_bootstrap=config.bootstrap, confidence=config.confidence, seed=config.seed,
                        where=f"{where} segment {config.segment_by}={value}",
                    )
                    row.update(seg)
                    row["warnings"] = seg["warnings"] + _width_warnings(seg, config.max_ci_width)
                    row["error"] = None
                except IdentifiabilityError as exc:
                    row.update({"rho01": None, "rho10": None, "rho01_ci": None, "rho10_ci": None, "warnings": [], "error": exc.one_line()})
                    result["warnings"].append(f"segment {config.segment_by}={value}: {exc.what}")
                result["segments"].append(row)
        result["rates_source"] = "anchor"
        if audit_used is not None:
            result["comparison"] = {
                "audit": {k: audit_result[k] for k in ("rho01", "rho10", "rho01_ci", "rho10_ci", "n_audit", "interval", "confusion")},
                "distance": _distance(result, audit_result),
            }
            result["warnings"] += audit_result["warnings"]
            # Issue 15: gold labels measure the flip rates directly, without the anchors' impurity bias, so
            # they give the default estimate; the anchor estimate stays under "anchor" for comparison.
            result["anchor"] = {k: result[k] for k in ("rho01", "rho10", "rho01_ci", "rho10_ci", "rho_sum_ci", "quantile_sensitivity")}
            result.update({k: audit_result[k] for k in ("rho01", "rho10", "rho01_ci", "rho10_ci", "rho_sum_ci", "confusion", "n_audit", "interval")})
            result["rates_source"] = "audit"
            result["warnings"].append(
                f"gold labels present ({audit_result['n_audit']['used']} audited votes): rho01 / rho10 are the audit set's "
                f"({result['rho01']:.3f}, {result['rho10']:.3f}); the anchor estimate ({result['anchor']['rho01']:.3f}, "
                f"{result['anchor']['rho10']:.3f}) is kept under 'anchor'"
                + ("; per-segment rates below are the anchors'" if config.segment_by else "")
            )
    else:
        result["rates_source"] = "audit"
        result.update({k: audit_result[k] for k in ("rho01", "rho10", "rho01_ci", "rho10_ci", "rho_sum_ci", "confusion", "n_audit", "interval")})
        result["warnings"] += audit_result["warnings"]
        if config.segment_by:
            for value in sorted(set(audit_used[config.segment_by].cast(pl.Utf8).fill_null("<null>").to_list())):
                part = audit_used.filter(pl.col(config.segment_by).cast(pl.Utf8).fill_null("<null>") == value)
                row = {"segment_by": config.segment_by, "segment": value, "n_audit": part.height}
                try:
                    seg = audit_rates(part["true_label"].to_numpy(), part["label"].to_numpy(), confidence=config.confidence,
                                      interval=config.interval, where=f"audit segment {config.segment_by}={value}")
                    row.update(seg)
                    row["warnings"] = _width_warnings(seg, config.max_ci_width)
                    row["error"] = None
                except IdentifiabilityError as exc:
                    row.update({"rho01": None, "rho10": None, "rho01_ci": None, "rho10_ci": None, "warnings": [], "error": exc.one_line()})
                    result["warnings"].append(f"segment {config.segment_by}={value}: {exc.what}")
                result["segments"].append(row)
    for message in result["warnings"]:
        log.warning("noise %s: %s", config.channel, message)
    return result


def _distance(anchor: dict, audit: dict) -> dict:
    def overlap(a: list[float], b: list[float]) -> bool:
        return a[0] <= b[1] and b[0] <= a[1]

    d01 = anchor["rho01"] - audit["rho01"]
    d10 = anchor["rho10"] - audit["rho10"]
    return {
        "rho01": float(d01),
        "rho10": float(d10),
        "max_abs": float(max(abs(d01), abs(d10))),
        "intervals_overlap": bool(overlap(anchor["rho01_ci"], audit["rho01_ci"]) and overlap(anchor["rho10_ci"], audit["rho10_ci"])),
    }


# ------------------------------------------------------------------------------------ warehouse I/O


def _load_scores(warehouse: Path, channel: str) -> pl.DataFrame:
    """(exposure_id, propensity, propensity_raw, fold) of a channel, with a hint about --no-weights."""
    try:
        return read_scores(warehouse, channel=channel)
    except WarehouseError as exc:
        raise WarehouseError(
            exc.what,
            where=exc.where,
            fix=f"run `causalrm propensity fit {warehouse} --channel {channel}` first, or pass --no-weights to estimate "
            "without inverse-propensity weights (biased when feedback depends on the answer's quality)",
        ) from exc


def noise_path(warehouse: str | Path, channel: str = "vote") -> Path:
    """``WH/noise/<channel>.json``."""
    return Path(warehouse) / "noise" / f"{channel}.json"


def _write_json_atomic(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _slice_gold_labels(warehouse: Path) -> pl.DataFrame | None:
    """The registered slice's gold labels when the warehouse has them (issue 15: the default estimate
    uses gold labels when they exist), else None."""
    from propensity.slice.label_aware import read_slice_audit, slice_path

    if not slice_path(warehouse).is_file():
        return None
    try:
        return read_slice_audit(warehouse)
    except WarehouseError:  # a slice without true_label: no gold labels
        return None


def estimate_noise(warehouse: str | Path, config: NoiseConfig) -> dict:
    """Estimate the flip rates of a warehouse's channel and write ``WH/noise/<channel>.json``
    (and ``WH/noise.json`` for the vote channel).

    Reads ``WH/feedback``, ``WH/propensity/scores.parquet`` (anchor method, unless
    ``use_weights=False``), ``WH/embeddings`` (optional) and the audit file.

    Returns
    -------
    The dict written (see :func:`estimate_noise_frame`).

    Raises
    ------
    IdentifiabilityError, WarehouseError, InputFileError, EstimationError.
    """
    from feedback_etl.io import read_embeddings, read_feedback

    warehouse = Path(warehouse)
    _require_labelled_channel(config.channel)
    if config.audit == "slice":
        # Issue 11: the randomized slice's gold labels (``propensity.slice.label_aware.read_slice_audit``).
        from propensity.slice.label_aware import read_slice_audit

        audit = read_slice_audit(warehouse)
    else:
        audit = read_audit(config.audit) if config.audit else _slice_gold_labels(warehouse)
    from feedback_etl.io import feedback_dataset

    plan = noise_plan(feedback_dataset(warehouse).count_rows(), config)
    if plan["streamed"]:
        from propensity.noise._streamed import estimate_streamed

        result = estimate_streamed(warehouse, config, plan, audit, estimate_frame=estimate_noise_frame)
        return _finish(warehouse, config, result, str(scores_path(warehouse)) if config.method == "anchor" and config.use_weights else None,
                       config.method == "anchor" and config.use_embeddings and any((warehouse / "embeddings").glob("*.parquet")), plan)
    feedback = with_custom_features(read_feedback(warehouse), warehouse)  # custom context columns (issue 17)
    propensity = fold = None
    source = None
    if config.method == "anchor" and config.use_weights:
        scores = _load_scores(warehouse, config.channel)
        keep = ["exposure_id", "propensity"] + (["fold"] if "fold" in scores.columns else [])
        joined = feedback.select("exposure_id").join(scores.select(keep), on="exposure_id", how="left", maintain_order="left")
        missing = int(joined["propensity"].is_null().sum())
        if missing:
            raise WarehouseError(
                f"{missing} of {feedback.height} exposures have no {config.channel} propensity",
                where=str(scores_path(warehouse)),
                fix=f"refit: `causalrm propensity fit {warehouse} --channel {config.channel}` after the last ingest",
            )
        propensity = joined["propensity"].to_numpy()
        if (propensity <= 0).any():
            raise EstimationError("propensities must be > 0", where=str(scores_path(warehouse)), fix="refit the propensity model (it clips)")
        # Exposures scored after the fit (`propensity score`) carry fold -1: no cross-fitting fold,
        # so the proxy model regroups every exposure by user instead.
        usable = "fold" in joined.columns and joined["fold"].null_count() == 0 and joined["fold"].min() >= 0
        fold = joined["fold"].to_numpy() if usable else None
        source = str(scores_path(warehouse))
    embeddings = read_embeddings(warehouse) if (config.method == "anchor" and config.use_embeddings) else None
    from feedback_etl.features import feature_types

    custom = feature_types(dict(feedback.schema))  # the contract's columns plus custom ones only, here
    result = estimate_noise_frame(feedback, config, propensity=propensity, fold=fold, embeddings=embeddings, audit=audit,
                                  custom=custom)
    return _finish(warehouse, config, result, source, embeddings is not None, plan)


def noise_plan(n_rows: int, config: NoiseConfig) -> dict:
    """Whether ``noise estimate`` reads the table whole or streams it: the threshold of ``propensity
    fit`` (:func:`propensity.models.casecontrol.plan_rows`), ``config.max_rows`` capping it."""
    from propensity.models.casecontrol import stream_plan

    return stream_plan(n_rows, max_rows=config.max_rows, memory_limit=config.memory_limit)


def _finish(warehouse: Path, config: NoiseConfig, result: dict, source: str | None, used_embeddings: bool, plan: dict) -> dict:
    """Record the inputs, warn about lost embeddings, write the JSON file(s)."""
    result["warehouse"] = str(warehouse)
    result["propensity_source"] = source
    result["embeddings"] = used_embeddings
    result["memory"] = {k: v for k, v in plan.items() if k != "memory_limit_bytes"}
    if not used_embeddings and config.method == "anchor" and config.use_embeddings and _had_embeddings(noise_path(warehouse, config.channel)):
        # Issue 16: a failed or deleted `causalrm embed` must not silently weaken the proxy model.
        message = (f"estimated without embeddings although the last {config.channel} estimate used them (WH/embeddings "
                   f"is missing); run `causalrm embed {warehouse}` again, or pass --no-embeddings to do without on purpose")
        log.warning("noise %s: %s", config.channel, message)
        result["warnings"].append(message)
    _write_json_atomic(noise_path(warehouse, config.channel), result)
    if config.channel == "vote":
        _write_json_atomic(warehouse / "noise.json", result)
    return result


def _had_embeddings(path: Path) -> bool:
    try:
        return bool(json.loads(path.read_text(encoding="utf-8")).get("embeddings")) if path.is_file() else False
    except (OSError, ValueError):
        return False


def read_noise(warehouse: str | Path, channel: str = "vote") -> dict:
    """The last noise estimate of a channel (``WH/noise/<channel>.json``; ``WH/noise.json`` for vote).

    Raises
    ------
    WarehouseError : no estimate for this channel yet.
    """
    path = noise_path(warehouse, channel)
    if not path.is_file() and channel == "vote" and (Path(warehouse) / "noise.json").is_file():
        path = Path(warehouse) / "noise.json"
    if not path.is_file():
        raise WarehouseError(
            f"no noise estimate for channel {channel!r}", where=str(path), fix=f"run `causalrm noise estimate {warehouse} --channel {channel}`"
        )
    return json.loads(path.read_text(encoding="utf-8"))
