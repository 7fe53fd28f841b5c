"""Overlap, calibration and balance diagnostics of propensities (the numbers in metrics.json).

Notation: o observed indicator (the channel's target), p propensity, w = 1/p the weight an
observed row carries. Every function takes plain arrays so the audit report (issue 5) can call
them on any scores, e.g. a label-aware propensity (issue 11).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from schemas.errors import ConfigError, IdentifiabilityError

WEIGHT_QUANTILES: tuple[float, ...] = (0.5, 0.9, 0.95, 0.99)


def classification_metrics(observed: np.ndarray, propensity: np.ndarray) -> dict[str, float | None]:
    """AUC, log loss and Brier score of ``propensity`` as a prediction of ``observed``.

    Parameters
    ----------
    observed : bool or 0/1 array of shape (n_exposures,).
    propensity : array of shape (n_exposures,) in [0, 1].

    Returns
    -------
    dict with ``auc`` (None when one class only), ``log_loss``, ``brier``.
    """
    from sklearn.metrics import roc_auc_score

    o = np.asarray(observed, dtype=np.float64)
    p = np.asarray(propensity, dtype=np.float64)
    pc = np.clip(p, 1e-12, 1 - 1e-12)
    both = 0 < o.sum() < len(o)
    return {
        "auc": float(roc_auc_score(o, p)) if both else None,
        "log_loss": float(-np.mean(o * np.log(pc) + (1 - o) * np.log1p(-pc))) if len(o) else None,
        "brier": float(np.mean((p - o) ** 2)) if len(o) else None,
    }


def reliability_table(
    observed: np.ndarray, propensity: np.ndarray, *, n_bins: int = 10, strategy: str = "quantile"
) -> list[dict[str, float | int]]:
    """Reliability diagram data: per bin of propensity, the mean propensity and the observed rate.

    Parameters
    ----------
    n_bins : number of bins.
    strategy : ``quantile`` (equal-count bins: propensities pile up near the feedback rate, so
        equal-width bins would leave most bins empty) or ``uniform`` (equal width on [0, 1]).

    Returns
    -------
    list of dicts (empty bins dropped): ``bin``, ``lo``, ``hi``, ``n``, ``mean_propensity``,
    ``observed_rate``, ``se`` (binomial standard error of the observed rate at the mean propensity).
    """
    o = np.asarray(observed, dtype=np.float64)
    p = np.asarray(propensity, dtype=np.float64)
    if len(p) == 0:
        return []
    if strategy == "quantile":
        edges = np.unique(np.quantile(p, np.linspace(0, 1, n_bins + 1)))
    elif strategy == "uniform":
        edges = np.linspace(0, 1, n_bins + 1)
    else:
        raise ValueError(f"strategy must be 'quantile' or 'uniform', got {strategy!r}")
    if len(edges) < 2:
        edges = np.array([p.min(), p.max()])
    index = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, len(edges) - 2)
    table = []
    for b in range(len(edges) - 1):
        rows = index == b
        n = int(rows.sum())
        if n == 0:
            continue
        mean_p = float(p[rows].mean())
        table.append(
            {
                "bin": b,
                "lo": float(edges[b]),
                "hi": float(edges[b + 1]),
                "n": n,
                "mean_propensity": mean_p,
                "observed_rate": float(o[rows].mean()),
                "se": float(np.sqrt(max(mean_p * (1 - mean_p), 1e-12) / n)),
            }
        )
    return table


def expected_calibration_error(table: list[dict[str, Any]]) -> float:
    """ECE = sum over bins of (n_b / N) |observed rate_b - mean propensity_b|, from :func:`reliability_table`."""
    total = sum(row["n"] for row in table)
    if total == 0:
        return float("nan")
    return float(sum(row["n"] * abs(row["observed_rate"] - row["mean_propensity"]) for row in table) / total)


def kish_ess(weights: np.ndarray) -> float:
    """Kish effective sample size (sum w)^2 / sum w^2 of weights of shape (n,); n when all equal."""
    w = np.asarray(weights, dtype=np.float64)
    sq = float(np.sum(w * w))
    return float(np.sum(w) ** 2 / sq) if sq > 0 else 0.0


def weight_summary(observed: np.ndarray, propensity: np.ndarray) -> dict[str, Any]:
    """Distribution of the observed rows' inverse-propensity weights w = 1/p.

    Returns
    -------
    dict: ``n_observed``, ``ess`` (Kish), ``ess_ratio`` (ESS / n_observed), ``mean``, ``max``,
    ``quantiles`` ({"p50": ...}), ``sum_over_n_exposures`` (sum w / n_exposures; about 1 when the
    propensities are calibrated, since E[o / p] = 1).
    """
    o = np.asarray(observed, dtype=bool)
    w = 1.0 / np.asarray(propensity, dtype=np.float64)[o]
    n_obs = int(o.sum())
    if n_obs == 0:
        return {"n_observed": 0, "ess": 0.0, "ess_ratio": None, "mean": None, "max": None, "quantiles": {}, "sum_over_n_exposures": 0.0}
    ess = kish_ess(w)
    return {
        "n_observed": n_obs,
        "ess": ess,
        "ess_ratio": ess / n_obs,
        "mean": float(w.mean()),
        "max": float(w.max()),
        "quantiles": {f"p{round(q * 100)}": float(np.quantile(w, q)) for q in WEIGHT_QUANTILES},
        "sum_over_n_exposures": float(w.sum() / len(o)),
    }


def _masked_moments(X: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column weighted mean and variance over the finite entries of X (n, d).

    Column by column: a whole-matrix version needs several (n, d) temporaries, which at a million
    exposures and a few hundred embedding dimensions is gigabytes.
    """
    d = X.shape[1]
    mean = np.full(d, np.nan)
    var = np.full(d, np.nan)
    total = weights.sum()
    for j in range(d):
        values = np.asarray(X[:, j], dtype=np.float64)
        finite = np.isfinite(values)
        if finite.all():  # the common case: no masking copies
            w, wsum = weights, total
        else:
            w, values = weights[finite], values[finite]
            wsum = w.sum()
        if wsum <= 0:
            continue
        mean[j] = np.dot(w, values) / wsum
        var[j] = np.dot(w, (values - mean[j]) ** 2) / wsum
    return mean, var


def standardized_mean_differences(
    X: np.ndarray, feature_names: list[str], observed: np.ndarray, propensity: np.ndarray
) -> list[dict[str, Any]]:
    """Covariate balance of the observed rows against all exposures, before and after weighting.

    SMD_j = (mean_j(observed rows) - mean_j(all exposures)) / s_j with s_j = sqrt((var_obs + var_all) / 2)
    of the unweighted samples (the same denominator before and after, so the two are comparable).
    ``before`` weighs observed rows equally; ``after`` weighs them by 1/p. With correct
    propensities, E[o x / p] = E[x], so ``after`` should be near 0 (|SMD| < 0.1 is the usual bar).

    Parameters
    ----------
    X : array of shape (n_exposures, n_features), numeric (one-hot categoricals; NaN = missing,
        skipped per column).
    feature_names : list of n_features names.
    observed : bool array of shape (n_exposures,).
    propensity : array of shape (n_exposures,).

    Returns
    -------
    list of dicts ``feature``, ``mean_all``, ``mean_observed``, ``mean_observed_weighted``,
    ``before``, ``after`` (None where the column is constant or unobserved).
    """
    X = np.asarray(X, dtype=np.float64)
    o = np.asarray(observed, dtype=bool)
    p = np.asarray(propensity, dtype=np.float64)
    ones = np.ones(len(X))
    mean_all, var_all = _masked_moments(X, ones)
    mean_obs, var_obs = _masked_moments(X[o], ones[o])
    mean_wobs, _ = _masked_moments(X[o], 1.0 / p[o])
    sd = np.sqrt((var_all + var_obs) / 2.0)
    rows = []
    for j, name in enumerate(feature_names):
        ok = np.isfinite(sd[j]) and sd[j] > 1e-12
        rows.append(
            {
                "feature": name,
                "mean_all": _num(mean_all[j]),
                "mean_observed": _num(mean_obs[j]),
                "mean_observed_weighted": _num(mean_wobs[j]),
                "before": _num((mean_obs[j] - mean_all[j]) / sd[j]) if ok else None,
                "after": _num((mean_wobs[j] - mean_all[j]) / sd[j]) if ok else None,
            }
        )
    return rows


def _num(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def _max_abs(values: list[float | None]) -> float | None:
    finite = [abs(v) for v in values if v is not None]
    return max(finite) if finite else None


def balance_summary(smd: list[dict[str, Any]], *, group_prefix: str | None = None) -> dict[str, Any]:
    """Max and mean |SMD| before and after weighting (optionally over features starting with a prefix)."""
    rows = [r for r in smd if group_prefix is None or r["feature"].startswith(group_prefix)]
    before = [r["before"] for r in rows]
    after = [r["after"] for r in rows]
    finite_b = [abs(v) for v in before if v is not None]
    finite_a = [abs(v) for v in after if v is not None]
    return {
        "n_features": len(rows),
        "max_abs_before": _max_abs(before),
        "max_abs_after": _max_abs(after),
        "mean_abs_before": float(np.mean(finite_b)) if finite_b else None,
        "mean_abs_after": float(np.mean(finite_a)) if finite_a else None,
    }


def propensity_histogram(observed: np.ndarray, propensity: np.ndarray, *, n_bins: int = 20) -> dict[str, list]:
    """Counts of propensities in ``n_bins`` equal-width bins on [0, 1], split by observed (overlap plot)."""
    o = np.asarray(observed, dtype=bool)
    p = np.asarray(propensity, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return {
        "edges": edges.tolist(),
        "observed": np.histogram(p[o], bins=edges)[0].tolist(),
        "unobserved": np.histogram(p[~o], bins=edges)[0].tolist(),
    }


def propensity_diagnostics(
    observed: np.ndarray,
    propensity: np.ndarray,
    *,
    propensity_raw: np.ndarray | None = None,
    folds: np.ndarray | None = None,
    X: np.ndarray | None = None,
    feature_names: list[str] | None = None,
    n_bins: int = 10,
    embedding_prefix: str = "emb_",
) -> dict[str, Any]:
    """Every diagnostic of metrics.json for one channel (the caller adds clipping and the config).

    Parameters
    ----------
    observed : bool array of shape (n_exposures,).
    propensity : final (calibrated, clipped) propensities of shape (n_exposures,).
    propensity_raw : optional uncalibrated scores (same shape): their metrics go under ``raw``.
    folds : optional fold index per row: per-fold AUC and sizes under ``folds``.
    X, feature_names : optional numeric design matrix (n_exposures, n_features) for balance.
        Embedding dimensions (names starting with ``embedding_prefix``) are summarised, not listed.
    n_bins : reliability bins.

    Returns
    -------
    dict with keys ``n_exposures``, ``n_observed``, ``observed_rate``, ``mean_propensity``, ``auc``,
    ``log_loss``, ``brier``, ``ece``, ``reliability``, ``raw``, ``folds``, ``weights``,
    ``histogram``, ``balance`` (``smd`` list, ``summary``, ``embeddings`` summary or None).
    """
    o = np.asarray(observed, dtype=bool)
    p = np.asarray(propensity, dtype=np.float64)
    table = reliability_table(o, p, n_bins=n_bins)
    out: dict[str, Any] = {
        "n_exposures": int(len(o)),
        "n_observed": int(o.sum()),
        "observed_rate": float(o.mean()) if len(o) else None,
        "mean_propensity": float(p.mean()) if len(p) else None,
        **classification_metrics(o, p),
        "ece": expected_calibration_error(table),
        "ece_strategy": "quantile",
        "reliability": table,
    }
    if propensity_raw is not None:
        raw_table = reliability_table(o, propensity_raw, n_bins=n_bins)
        out["raw"] = {**classification_metrics(o, propensity_raw), "ece": expected_calibration_error(raw_table)}
    if folds is not None:
        folds = np.asarray(folds)
        out["folds"] = [
            {"fold": int(k), "n": int((folds == k).sum()), "n_observed": int(o[folds == k].sum()),
             **classification_metrics(o[folds == k], p[folds == k])}
            for k in np.unique(folds)
        ]
    out["weights"] = weight_summary(o, p)
    out["histogram"] = propensity_histogram(o, p)
    if X is not None and feature_names is not None:
        smd = standardized_mean_differences(X, feature_names, o, p)
        context = [r for r in smd if not r["feature"].startswith(embedding_prefix)]
        has_embeddings = len(context) < len(smd)
        out["balance"] = {
            "smd": context,
            "summary": balance_summary(context),
            "embeddings": balance_summary(smd, group_prefix=embedding_prefix) if has_embeddings else None,
        }
    return out


# ---------------------------------------------------------------- binomial intervals and audit rates

INTERVALS: tuple[str, ...] = ("clopper-pearson", "wilson")


def proportion_ci(successes: int, trials: int, *, confidence: float = 0.95, interval: str = "clopper-pearson") -> list[float]:
    """Two-sided interval for a binomial proportion successes / trials.

    Clopper-Pearson inverts the exact binomial test (coverage >= nominal for every true rate);
    Wilson inverts the score test (coverage close to nominal on average, narrower).
    """
    from scipy import stats

    if trials == 0:
        return [0.0, 1.0]
    alpha = 1 - confidence
    if interval == "clopper-pearson":
        lo = 0.0 if successes == 0 else float(stats.beta.ppf(alpha / 2, successes, trials - successes + 1))
        hi = 1.0 if successes == trials else float(stats.beta.ppf(1 - alpha / 2, successes + 1, trials - successes))
        return [lo, hi]
    if interval == "wilson":
        z = float(stats.norm.ppf(1 - alpha / 2))
        p = successes / trials
        center = (p + z * z / (2 * trials)) / (1 + z * z / trials)
        half = z / (1 + z * z / trials) * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials))
        return [max(0.0, center - half), min(1.0, center + half)]
    raise ConfigError(f"unknown interval {interval!r}", where="noise config", fix=f"use one of {', '.join(INTERVALS)}")


def _sum_ci(x1: int, n1: int, x0: int, n0: int, confidence: float) -> list[float]:
    """Interval of rho01 + rho10 from two independent binomials (normal approximation on
    Agresti-Caffo adjusted proportions, (x + 0.5) / (n + 1), so that 0 or n flips keep a variance)."""
    from scipy import stats

    z = float(stats.norm.ppf(1 - (1 - confidence) / 2))
    a1, a0 = (x1 + 0.5) / (n1 + 1), (x0 + 0.5) / (n0 + 1)
    se = math.sqrt(a1 * (1 - a1) / (n1 + 1) + a0 * (1 - a0) / (n0 + 1))
    total = x1 / n1 + x0 / n0
    return [max(0.0, total - z * se), total + z * se]


def audit_rates(
    true_label: np.ndarray, observed_label: np.ndarray, *, confidence: float = 0.95, interval: str = "clopper-pearson", where: str = "audit set"
) -> dict:
    """Flip rates from gold labels r* and observed labels r on the same exposures.

    Parameters
    ----------
    true_label : int array of shape (n_audited,), r* in {0, 1}.
    observed_label : int array of shape (n_audited,), r in {0, 1}.

    Returns
    -------
    dict with rho01, rho10, rho01_ci, rho10_ci, confusion counts and warnings.

    Raises
    ------
    IdentifiabilityError : the audit holds one class only, or rho01 + rho10 (upper bounds) >= 1.
    """
    true_label = np.asarray(true_label, dtype=np.int64)
    observed_label = np.asarray(observed_label, dtype=np.int64)
    n1 = int((true_label == 1).sum())
    n0 = int((true_label == 0).sum())
    if n1 == 0 or n0 == 0:
        raise IdentifiabilityError(
            f"one-class audit: the {n1 + n0} audited observed rows all have true_label={1 if n1 else 0}, so "
            f"{'rho10' if n1 else 'rho01'} has no denominator",
            where=where,
            fix="audit a uniform sample of observed exposures with both good and bad answers",
        )
    n10 = int(((true_label == 1) & (observed_label == 0)).sum())  # r*=1 but r=0
    n01 = int(((true_label == 0) & (observed_label == 1)).sum())  # r*=0 but r=1
    rho01, rho10 = n10 / n1, n01 / n0
    rho01_ci = proportion_ci(n10, n1, confidence=confidence, interval=interval)
    rho10_ci = proportion_ci(n01, n0, confidence=confidence, interval=interval)
    sum_ci = _sum_ci(n10, n1, n01, n0, confidence)
    if rho01 + rho10 >= 1 or sum_ci[1] >= 1:
        raise IdentifiabilityError(
            f"flip rates not identified: rho01 + rho10 = {rho01 + rho10:.3f} ({confidence:.0%} interval "
            f"{sum_ci[0]:.3f}..{sum_ci[1]:.3f}) reaches 1: observed labels carry no information about r*",
            where=where,
            fix="audit more rows, or check that true_label uses the same coding as the vote (1 = good)",
        )
    return {
        "rho01": rho01,
        "rho10": rho10,
        "rho01_ci": rho01_ci,
        "rho10_ci": rho10_ci,
        "rho_sum_ci": sum_ci,
        "confusion": {"true1_r1": n1 - n10, "true1_r0": n10, "true0_r1": n01, "true0_r0": n0 - n01},
        "warnings": [],
    }


def wilson_interval(successes: int, n: int, *, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion, (nan, nan) when n = 0 (the audit's tables)."""
    if n == 0:
        return (math.nan, math.nan)
    lo, hi = proportion_ci(successes, n, confidence=confidence, interval="wilson")
    return (lo, hi)
