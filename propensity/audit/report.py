"""Selection-bias audit: one self-contained HTML report (+ report.json) and guardrails that can stop a pipeline.

``run_audit(cfg)`` reads the feedback table, the channel's propensities, the propensity fit's
metrics and every noise estimate in the warehouse, computes (all on the final, calibrated and
clipped propensities the weights use):

* headline numbers: exposures, feedback rate, up-vote share, ESS and ESS / n_observed, max weight,
  clipped share, ECE, max |SMD| before and after weighting, noise rates;
* feedback rate (with the mean predicted propensity) and vote balance by model, platform, locale,
  position, response-length bucket and hour;
* propensity histograms by observed; the reliability diagram; the weight distribution;
* standardized mean differences of every feature, observed rows vs all exposures, before and after
  weighting by 1/p (a love plot);
* noise rates with intervals per channel and segment;
* naive vs IPS vs SNIPS estimates of the mean label, against the randomized slice when one exists;

evaluates the guardrails (:class:`Thresholds`), and writes the report. ``--strict`` turns breaches
into exit code 1 (the CLI prints one line per breach).
"""

from __future__ import annotations

import json
import logging
import math
import tomllib
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from propensity.diagnostics import wilson_interval, expected_calibration_error, kish_ess, reliability_table, standardized_mean_differences
from propensity.io import json_safe
from propensity.weights.export import _fit_clip, _read_metrics, _read_scores
from propensity.models.custom_features import select_features, with_custom_features
from propensity.models.features import build_features, design_matrix
from schemas.errors import ConfigError, InputFileError, WarehouseError
from schemas.feedback import CHANNELS

log = logging.getLogger(__name__)

SEGMENT_COLUMNS: tuple[str, ...] = ("model_id", "platform", "locale", "position", "response_length", "impression_hour")
N_RELIABILITY_BINS = 10
Z95 = 1.959963984540054


@dataclass(frozen=True, kw_only=True)
class Thresholds:
    """Guardrail thresholds; a TOML file maps onto these fields one to one (docs/audit.md "Guardrails").

    Each threshold is named after its guardrail in ``report.json`` (``min_`` / ``max_`` + the name):
    ``ess_fraction``, ``max_weight``, ``clipped_share``, ``balance_smd``, ``noise_ci_width``; the others
    say what they bound (``max_ece`` for ``calibration_ece``, ``noise_margin`` for
    ``noise_identifiable``, ``max_slice_z`` for ``slice_agreement``).

    Parameters
    ----------
    min_ess_fraction : Kish ESS of the observed rows' weights / number of observed rows, at least.
    max_weight : largest weight 1/p, at most (a weight of 50 means one row speaks for 50).
    max_clipped_share : share of observed rows whose propensity sits at the clipping floor, at most.
    max_ece : expected calibration error of the propensities (equal-mass bins), at most.
    max_balance_smd : largest |standardized mean difference| after weighting, at most
        (0.1 is the usual balance rule of thumb). ``max_abs_smd_after``, its former name, is still
        read from TOML files.
    noise_margin : rho01 + rho10 must stay <= 1 - noise_margin (the noise-corrected loss divides
        by 1 - rho01 - rho10), and the sum of the intervals' upper ends must stay < 1.
    max_noise_ci_width : width of each rate's confidence interval, at most.
    max_slice_z : where a randomized slice exists (issue 11): |SNIPS mean label - slice mean label| in
        standard errors of the difference, at most. A breach says the weights leave selection on the
        label itself: fit label-aware propensities.
    """

    min_ess_fraction: float = 0.10
    max_weight: float = 50.0
    max_clipped_share: float = 0.05
    max_ece: float = 0.05
    max_balance_smd: float = 0.10
    noise_margin: float = 0.20
    max_noise_ci_width: float = 0.20
    max_slice_z: float = 3.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"guardrail threshold {f.name} must be a number >= 0, got {value!r}", where="thresholds")
        for name in ("min_ess_fraction", "max_clipped_share", "noise_margin"):
            if getattr(self, name) > 1:
                raise ConfigError(f"guardrail threshold {name} must be in [0, 1], got {getattr(self, name)}", where="thresholds")

    @classmethod
    def from_toml(cls, path: str | Path) -> Thresholds:
        """Read thresholds from a TOML file: top-level keys or a ``[guardrails]`` table; missing keys keep defaults.

        Raises
        ------
        InputFileError : missing or unparseable file.
        ConfigError : unknown key or bad value.
        """
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise InputFileError("thresholds file not found", where=str(path), fix="pass an existing TOML file to --thresholds") from exc
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise InputFileError(f"cannot parse thresholds TOML: {exc}", where=str(path), fix="check the file's TOML syntax") from exc
        if isinstance(data.get("guardrails"), dict):
            data = data["guardrails"]
        data = dict(data)
        for old, new in _RENAMED_THRESHOLDS.items():
            if old in data:
                log.warning("guardrail threshold %s is now called %s (%s)", old, new, path)
                data.setdefault(new, data.pop(old))
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown guardrail threshold(s) {unknown}", where=str(path), fix=f"use only {sorted(known)}")
        return cls(**data)


@dataclass(frozen=True, kw_only=True)
class AuditConfig:
    """What ``causalrm audit`` does. Mirrors its options one to one.

    Parameters
    ----------
    warehouse : warehouse folder (feedback table and propensity scores required).
    out : report HTML path; ``report.json`` goes beside it (same stem, ``.json``).
    channel : the channel whose propensities and weights are audited (noise rates: every channel).
    clip : optional propensity floor for the audited weights 1/max(p, clip) (match the export's).
    thresholds : guardrail thresholds.
    propensity : the propensities of the audited weights (match the export's ``--propensity``):
        ``context`` or ``label-aware`` (weights, balance, estimates and guardrails use P(o=1 | x, r);
        the calibration checks stay on the context model, the only one predicting o from x alone).
    max_rows : feedback rows the audit may hold in memory (None: what ``memory_limit`` allows). Above
        it the audit streams: every number over all exposures from narrow columns, the balance table
        and the segment tables on a uniform sample of at most ``max_rows`` exposures, as many as the
        budget leaves (``report["sample"]``; issue 23).
    memory_limit : memory budget (``4GB``, ``512MB``), turned into rows as ``propensity fit`` does.
    batch_rows : rows per batch when streaming.
    seed : seed of the sample's hash draw.
    """

    warehouse: str
    out: str
    channel: str = "vote"
    clip: float | None = None
    thresholds: Thresholds = field(default_factory=Thresholds)
    propensity: str = "context"
    max_rows: int | None = None
    memory_limit: str = "4GB"
    batch_rows: int = 200_000
    seed: int = 0

    def __post_init__(self) -> None:
        from feedback_etl.sizes import parse_memory

        parse_memory(self.memory_limit)
        if self.max_rows is not None and self.max_rows < 1:
            raise ConfigError(f"max_rows must be >= 1, got {self.max_rows}", where="--max-rows", fix="use e.g. --max-rows 2000000")
        if self.propensity not in ("context", "label-aware"):
            raise ConfigError(f"unknown propensity kind {self.propensity!r}", where="audit config", fix="use context or label-aware")
        if self.propensity == "label-aware" and self.channel != "vote":
            raise ConfigError("label-aware propensities exist for the vote channel only", where="audit config", fix="use --propensity context")
        if self.channel not in CHANNELS:
            raise ConfigError(f"unknown channel {self.channel!r}", where="audit config", fix=f"use one of {', '.join(CHANNELS)}")
        if self.clip is not None and not 0 < self.clip < 1:
            raise ConfigError(f"clip must be in (0, 1), got {self.clip}", where="audit config", fix="pass e.g. --clip 0.05")
        if not str(self.out).endswith((".html", ".htm")):
            raise ConfigError(f"report path must end in .html, got {self.out}", where="audit config", fix="pass --out report.html")

    @property
    def json_path(self) -> Path:
        return Path(self.out).with_suffix(".json")


@dataclass(frozen=True)
class GuardrailResult:
    """One guardrail's outcome: ``status`` is ``pass``, ``breach`` or ``skipped`` (not computable)."""

    name: str
    status: str
    value: float | None
    threshold: float | None
    message: str


@dataclass
class AuditResult:
    """What :func:`run_audit` produced."""

    html_path: Path
    json_path: Path
    report: dict[str, Any]
    guardrails: list[GuardrailResult]

    @property
    def breaches(self) -> list[GuardrailResult]:
        return [g for g in self.guardrails if g.status == "breach"]

    @property
    def verdict(self) -> str:
        return "FAIL" if self.breaches else "PASS"


# --------------------------------------------------------------------------- statistics (pure)


def reliability_with_intervals(propensity: np.ndarray, observed: np.ndarray, n_bins: int = N_RELIABILITY_BINS) -> tuple[list[dict[str, Any]], float]:
    """``propensity.diagnostics.reliability_table`` on equal-mass bins, each bin with a 95% Wilson
    interval of its observed rate, and the expected calibration error.

    Equal-mass bins, because propensities crowd into a narrow range where equal-width bins would
    leave most bins empty. ECE = sum_b n_b / N * |mean p_b - observed rate_b|.
    """
    table = reliability_table(observed, propensity, n_bins=n_bins, strategy="quantile")
    for row in table:
        lo, hi = wilson_interval(round(row["observed_rate"] * row["n"]), row["n"])
        row["ci_lo"], row["ci_hi"] = lo, hi
    return table, expected_calibration_error(table)


def covariate_balance(
    feedback: pl.DataFrame, observed: np.ndarray, propensity: np.ndarray, *, features: tuple[tuple[str, ...], tuple[str, ...]] | None = None
) -> list[dict[str, Any]]:
    """SMDs (``propensity.diagnostics.standardized_mean_differences``) of the context features, one-hot
    categoricals included, between observed rows (unweighted, then weighted by 1/p) and all exposures.

    ``features`` = (categorical, numeric) columns; None: the contract's context columns only
    (:func:`propensity.models.custom_features.select_features` adds the custom ones, issue 17)."""
    X, _, categorical = build_features(feedback) if features is None else build_features(
        feedback, categorical=features[0], numeric=features[1])
    matrix, names = design_matrix(X, categorical)
    rows = standardized_mean_differences(matrix, names, observed, propensity)
    return [r for r in rows if r["before"] is not None and r["after"] is not None]


def mean_label_estimates(
    label: np.ndarray, observed: np.ndarray, propensity: np.ndarray, solicited: np.ndarray | None,
    *, rho01: float | None = None, rho10: float | None = None,
) -> dict[str, Any]:
    """Naive, IPS and SNIPS estimates of the mean label with 95% intervals, and the randomized-slice mean.

    When solicited (randomized) rows exist, naive / IPS / SNIPS use the organic (unsolicited) rows
    only, so the slice is an independent benchmark: its mean label is unbiased for the population's
    mean label because feedback there was asked for at random.

    IPS = (1/N) sum o r / p; SNIPS = sum o r / p / sum o / p; intervals are normal approximations
    (delta method for SNIPS). With flip rates, each estimate m of P(r=1) also gets the implied
    mean true preference P(r*=1) = (m - rho10) / (1 - rho01 - rho10) (``noise_corrected``; the
    slice's labels are noisy too, so compare like with like).
    """
    r = np.nan_to_num(np.asarray(label, dtype=np.float64))
    o = np.asarray(observed, dtype=bool)
    p = np.asarray(propensity, dtype=np.float64)
    sol = np.zeros(len(o), dtype=bool) if solicited is None else np.asarray(solicited, dtype=bool)
    organic = ~sol
    r_o, o_o, p_o = r[organic], o[organic], p[organic]
    n = len(o_o)
    k, m = int((r_o * o_o).sum()), int(o_o.sum())
    naive = k / m if m else math.nan
    naive_ci = wilson_interval(k, m)
    terms = np.where(o_o, r_o / p_o, 0.0)
    ips = float(terms.mean()) if n else math.nan
    ips_se = float(terms.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    inv = np.where(o_o, 1.0 / p_o, 0.0)
    snips = float(terms.sum() / inv.sum()) if inv.sum() > 0 else math.nan
    snips_se = float(np.std(inv * (r_o - snips), ddof=1) / inv.mean() / math.sqrt(n)) if n > 1 and inv.sum() > 0 else math.nan
    estimates = {
        "rows": "the organic (unsolicited) rows" if sol.any() else "all rows",
        "n_exposures": n,
        "n_observed": m,
        "naive": {"estimate": naive, "ci": list(naive_ci)},
        "ips": {"estimate": ips, "ci": [ips - Z95 * ips_se, ips + Z95 * ips_se]},
        "snips": {"estimate": snips, "ci": [snips - Z95 * snips_se, snips + Z95 * snips_se]},
        "randomized_slice": None,
    }
    slice_rows = sol & o
    if slice_rows.any():
        k_s, n_s = int(r[slice_rows].sum()), int(slice_rows.sum())
        truth = k_s / n_s
        estimates["randomized_slice"] = {"estimate": truth, "ci": list(wilson_interval(k_s, n_s)), "n": n_s,
                                         "n_solicited": int(sol.sum())}
        for name in ("naive", "ips", "snips"):
            estimates[name]["error_vs_slice"] = estimates[name]["estimate"] - truth
    if rho01 is not None and rho10 is not None and rho01 + rho10 < 1:
        def correct(x: float) -> float:
            return (x - rho10) / (1 - rho01 - rho10)

        for name in ("naive", "ips", "snips", "randomized_slice"):
            if estimates[name]:
                estimates[name]["noise_corrected"] = correct(estimates[name]["estimate"])
                estimates[name]["noise_corrected_ci"] = [correct(c) for c in estimates[name]["ci"]]
    return estimates


def _label_aware_propensity(warehouse: Path, feedback: pl.DataFrame, frame: pl.DataFrame) -> np.ndarray | None:
    """Label-aware propensities aligned with ``frame``'s rows (issue 11), or None when not fitted."""
    from propensity.slice.label_aware import label_aware_scores_path, propensity_for_labels, read_label_aware_scores

    if not label_aware_scores_path(warehouse).is_file():
        return None
    chosen = propensity_for_labels(read_label_aware_scores(warehouse), feedback)
    aligned = frame.select("exposure_id").join(chosen, on="exposure_id", how="left", maintain_order="left")
    return aligned["propensity"].to_numpy()


def _read_label_aware_report(warehouse: Path) -> dict[str, Any] | None:
    from propensity.slice.label_aware import read_label_aware_report

    return read_label_aware_report(warehouse)


def slice_comparison(
    label: np.ndarray, observed: np.ndarray, solicited: np.ndarray | None, propensities: dict[str, np.ndarray | None], *,
    audited: str, floor: float | None, label_aware_report: dict[str, Any] | None = None,
    rho01: float | None = None, rho10: float | None = None,
) -> dict[str, Any] | None:
    """Context vs label-aware propensities against the randomized slice (issue 11), side by side.

    For each kind present: naive / IPS / SNIPS mean label of the organic rows (as
    :func:`mean_label_estimates`), the weights' ESS / n, max and clipped share, the SNIPS error vs the
    slice's mean label and its z = error / sqrt(se_snips^2 + se_slice^2). For the label-aware kind the
    SNIPS interval is the fit's bootstrap one when ``label_aware_report`` has it (it includes the
    slice's uncertainty about the label factor, which the delta method conditional on p ignores).
    Returns None when there is neither a slice nor label-aware propensities.
    """
    sol = np.zeros(len(observed), dtype=bool) if solicited is None else np.asarray(solicited, dtype=bool)
    has_slice = bool((sol & observed).any())
    if not has_slice and propensities.get("label-aware") is None:
        return None
    o = np.asarray(observed, dtype=bool)
    organic_obs = o & ~sol
    kinds: dict[str, Any] = {}
    for kind, p in propensities.items():
        if p is None:
            continue
        est = mean_label_estimates(label, o, p, sol, rho01=rho01, rho10=rho10)
        w = 1.0 / p[organic_obs]
        ess = kish_ess(w)
        entry = {
            "naive": est["naive"], "ips": est["ips"], "snips": est["snips"],
            "snips_interval": "delta method, conditional on p",
            "ess_over_n": ess / max(1, int(organic_obs.sum())), "max_weight": float(w.max()) if len(w) else None,
            "clipped_share": float((p[organic_obs] <= floor * (1 + 1e-9)).mean()) if floor else None,
        }
        boot = ((label_aware_report or {}).get("estimates") or {}).get("label_aware_snips") if kind == "label-aware" else None
        if boot and boot.get("ci") and None not in boot["ci"]:
            # Same organic rows and (clip aside) the same propensities: the bootstrap interval is the honest one.
            entry["snips"] = {**entry["snips"], "ci": list(boot["ci"])}
            entry["snips_interval"] = "bootstrap over the slice and the organic rows (label_aware.json)"
        if est["randomized_slice"]:
            truth = est["randomized_slice"]
            se_snips = (entry["snips"]["ci"][1] - entry["snips"]["ci"][0]) / (2 * Z95)
            se_slice = math.sqrt(max(truth["estimate"] * (1 - truth["estimate"]), 1e-12) / truth["n"])
            entry["error_vs_slice"] = entry["snips"]["estimate"] - truth["estimate"]
            entry["z_vs_slice"] = entry["error_vs_slice"] / math.sqrt(se_snips**2 + se_slice**2)
        kinds[kind] = entry
    slice_est = mean_label_estimates(label, o, np.ones(len(o)), sol, rho01=rho01, rho10=rho10)["randomized_slice"]
    registered = ((label_aware_report or {}).get("estimates") or {}).get("slice")
    if slice_est is None and registered and registered.get("estimate") is not None:
        # A slice given as a file (no solicited flags): its mean label from the label-aware fit.
        n_slice = int((label_aware_report or {}).get("estimates", {}).get("n_slice") or 0)
        slice_est = {"estimate": registered["estimate"], "ci": registered["ci"], "n": n_slice, "n_solicited": n_slice}
        for entry in kinds.values():
            if n_slice:
                se_snips = (entry["snips"]["ci"][1] - entry["snips"]["ci"][0]) / (2 * Z95)
                se_slice = (registered["ci"][1] - registered["ci"][0]) / (2 * Z95)
                entry["error_vs_slice"] = entry["snips"]["estimate"] - registered["estimate"]
                entry["z_vs_slice"] = entry["error_vs_slice"] / math.sqrt(se_snips**2 + se_slice**2)
    factors = (label_aware_report or {}).get("label_factors")
    return {
        "audited": audited if audited in kinds else None,
        "kinds": kinds,
        "randomized_slice": slice_est,
        "label_factors": factors,
        "label_aware_fit": None if label_aware_report is None else {
            k: label_aware_report.get(k) for k in ("estimator", "assumptions", "context", "outcome_model", "slice", "noise_from_slice", "warnings")
        },
    }


def _length_buckets(chars: pl.Series) -> pl.Series:
    """Response length in 5 equal-count buckets with readable edges ("90-163 chars")."""
    values = chars.cast(pl.Float64).drop_nulls().to_numpy()
    if len(values) == 0:
        return pl.Series(["(missing)"] * len(chars))
    edges = np.unique(np.quantile(values, [0.2, 0.4, 0.6, 0.8]).round())
    lows = [float(values.min()), *(edges + 1)]
    highs = [*edges, float(values.max())]
    labels = [f"{int(lo)}-{int(hi)} chars" for lo, hi in zip(lows, highs)]
    codes = np.searchsorted(edges, chars.cast(pl.Float64).fill_null(math.nan).to_numpy(), side="left")
    out = np.array([labels[min(c, len(labels) - 1)] for c in codes], dtype=object)
    out[chars.is_null().to_numpy()] = "(missing)"
    return pl.Series(out, dtype=pl.Utf8)


def segment_tables(frame: pl.DataFrame, *, with_labels: bool) -> dict[str, list[dict[str, Any]]]:
    """Per segment column: rows {level, n, observed, rate, rate_ci, mean_propensity, up_share, up_share_ci}."""
    frame = frame.with_columns(response_length=_length_buckets(frame["response_chars"]))
    tables: dict[str, list[dict[str, Any]]] = {}
    for column in SEGMENT_COLUMNS:
        if column not in frame.columns:
            continue
        grouped = (
            frame.group_by(pl.col(column).cast(pl.Utf8).fill_null("(missing)").alias("level"))
            .agg(n=pl.len(), observed=pl.col("observed").sum(), positive=(pl.col("label") == 1).sum(),
                 mean_propensity=pl.col("propensity").mean(),
                 _order=pl.col("response_chars" if column == "response_length" else column).min())
            .sort("_order", nulls_last=True)
        )
        rows = []
        for rec in grouped.iter_rows(named=True):
            n, k, pos = int(rec["n"]), int(rec["observed"]), int(rec["positive"] or 0)
            row = {"level": rec["level"], "n": n, "observed": k, "rate": k / n, "rate_ci": list(wilson_interval(k, n)),
                   "mean_propensity": float(rec["mean_propensity"])}
            if with_labels:
                row |= {"positive": pos, "up_share": pos / k if k else math.nan, "up_share_ci": list(wilson_interval(pos, k))}
            rows.append(row)
        tables[column] = rows
    return tables


def _histogram(values: np.ndarray, edges: np.ndarray) -> list[int]:
    return [int(c) for c in np.histogram(values, bins=edges)[0]]


# --------------------------------------------------------------------------- guardrails

# Former threshold names still read from TOML files (issue 20: one name per guardrail).
_RENAMED_THRESHOLDS = {"max_abs_smd_after": "max_balance_smd"}


def balance_advice(feature: str | None, model_features: list[str] | None) -> str:
    """What to do about the worst-balanced feature, given the propensity model's own features.

    ``feature`` is a balance column: a context column, or ``column=level`` for a categorical level.
    Advising to add a column the model already uses would send the user in a circle: there, the
    model fits the column's effect poorly, or clipping caps the weights that would balance it.
    """
    column = feature.split("=", 1)[0] if feature else None
    if column is None:
        return "refit the propensity model"
    if model_features is None:
        return f"check that the propensity model uses `{column}` (metrics.json lists its features) and fits it well"
    if column not in model_features:
        return f"add `{column}` to the propensity model's features"
    return (f"`{column}` is already a feature of the propensity model, so the fit captures its effect poorly or the "
            "clipping floor caps the weights that would balance it: refit with a more flexible model (`--model lightgbm`), "
            "a lower `--clip` (see clipped_share), or check whether selection depends on something the logs do not record "
            "(a randomized slice tells)")


def evaluate_guardrails(report: dict[str, Any], thresholds: Thresholds) -> list[GuardrailResult]:
    """Check the report's numbers against the thresholds; one result per guardrail (noise: per channel)."""
    t = thresholds
    h = report["headline"]
    results: list[GuardrailResult] = []

    def check(name: str, value: float | None, threshold: float, ok: bool, breach: str, skipped: str = "") -> None:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            results.append(GuardrailResult(name, "skipped", None, threshold, skipped or f"{name}: not computable"))
        else:
            results.append(GuardrailResult(name, "pass" if ok else "breach", float(value), threshold, breach))

    ess = h["ess_over_n"]
    check("ess_fraction", ess, t.min_ess_fraction, ess >= t.min_ess_fraction,
          f"ESS/N = {ess:.3f} < {t.min_ess_fraction} (min_ess_fraction): the weights keep the information of only "
          f"{ess:.1%} of the observed rows; fix: refit propensities with a higher clip floor or more features")
    mw = h["max_weight"]
    check("max_weight", mw, t.max_weight, mw <= t.max_weight,
          f"max weight = {mw:.1f} > {t.max_weight:g} (max_weight): one row speaks for {mw:.0f} exposures; "
          "fix: raise the clip floor (`--clip`) or use --scheme snips")
    cs = h["clipped_share"]
    check("clipped_share", cs, t.max_clipped_share, cs is not None and cs <= t.max_clipped_share,
          f"clipped share = {cs if cs is None else f'{cs:.3f}'} > {t.max_clipped_share} (max_clipped_share): many observed rows "
          "sit at the propensity floor, so their weights are capped and the estimate is biased; fix: add features or lower the floor",
          "clipped_share: the clipping floor is unknown (no metrics.json and no --clip)")
    ece = h["ece"]
    check("calibration_ece", ece, t.max_ece, ece <= t.max_ece,
          f"ECE = {ece:.3f} > {t.max_ece} (max_ece): propensities are miscalibrated; fix: refit with --calibration isotonic")
    smd = h["max_abs_smd_after"]
    feature = h.get("worst_smd_feature")
    check("balance_smd", smd, t.max_balance_smd, smd is not None and smd <= t.max_balance_smd,
          f"max |SMD| after weighting = {smd if smd is None else f'{smd:.3f}'} > {t.max_balance_smd} (max_balance_smd) on {feature}: "
          f"weighting does not balance the covariates; fix: {balance_advice(feature, (report.get('propensity') or {}).get('features'))}",
          "balance_smd: no context feature varies across exposures")
    for noise in report["noise"]:
        ch = noise["channel"]
        total = noise["rho01"] + noise["rho10"]
        hi01, hi10 = (noise.get("rho01_ci") or [None, None])[1], (noise.get("rho10_ci") or [None, None])[1]
        # The estimator's interval of the sum when it gives one (tighter), else the sum of the upper ends.
        sum_ci = noise.get("rho_sum_ci")
        if isinstance(sum_ci, list) and len(sum_ci) == 2 and isinstance(sum_ci[1], (int, float)):
            upper = float(sum_ci[1])
        else:
            upper = hi01 + hi10 if hi01 is not None and hi10 is not None else total
        limit = 1 - t.noise_margin
        ok = total <= limit and upper < 1
        check(f"noise_identifiable[{ch}]", total, limit, ok,
              f"{ch}: rho01 + rho10 = {total:.3f} (upper confidence bound {upper:.3f}); needs <= {limit:.2f} and < 1 "
              "(noise_margin): the noise-corrected loss divides by 1 - rho01 - rho10; fix: re-estimate with an audit set or larger anchor quantile")
        widths = [b - a for a, b in (noise.get("rho01_ci") or [None, None], noise.get("rho10_ci") or [None, None]) if a is not None and b is not None]
        width = max(widths) if widths else None
        check(f"noise_ci_width[{ch}]", width, t.max_noise_ci_width, width is not None and width <= t.max_noise_ci_width,
              f"{ch}: noise-rate interval width = {width if width is None else f'{width:.3f}'} > {t.max_noise_ci_width} (max_noise_ci_width): "
              "rates are too uncertain; fix: more anchor rows or a larger audit set",
              f"noise_ci_width[{ch}]: the estimate has no intervals")
    comparison = report.get("slice_comparison")
    if comparison and comparison.get("audited"):
        kind = comparison["audited"]
        z = comparison["kinds"][kind].get("z_vs_slice")
        err = comparison["kinds"][kind].get("error_vs_slice")
        fix = ("fit label-aware propensities (`causalrm propensity fit-label-aware WH`) and audit/export with --propensity label-aware"
               if kind == "context" else "check the label-aware fit's assumptions (strata, slice size) in label_aware.json")
        check("slice_agreement", None if z is None else abs(z), t.max_slice_z, z is not None and abs(z) <= t.max_slice_z,
              f"{kind} SNIPS mean label differs from the randomized slice's by {err if err is None else f'{err:+.3f}'} "
              f"({z if z is None else f'{abs(z):.1f}'} standard errors > {t.max_slice_z:g}, max_slice_z): the weights leave "
              f"selection on the label itself; fix: {fix}", "slice_agreement: no answered solicited exposure")
    # Only the vote channel has flip rates: implicit channels are one-class (propensity.noise.estimate refuses them).
    if report["channel"] == "vote" and not any(n["channel"] == "vote" for n in report["noise"]):
        results.append(GuardrailResult(f"noise_identifiable[{report['channel']}]", "skipped", None, 1 - t.noise_margin,
                                       f"no noise estimate for channel {report['channel']!r}: run `causalrm noise estimate`"))
    return results


# --------------------------------------------------------------------------- orchestration


def _read_all_noise(warehouse: Path) -> list[dict[str, Any]]:
    """Every noise estimate in the warehouse (``noise.json`` for vote, ``noise/<channel>.json``), vote first."""
    found: dict[str, dict[str, Any]] = {}
    # noise/<channel>.json first: the file propensity.noise.estimate.read_noise prefers (noise.json is its vote copy).
    paths = sorted((warehouse / "noise").glob("*.json")) + ([warehouse / "noise.json"] if (warehouse / "noise.json").exists() else [])
    for path in paths:
        try:
            noise = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise InputFileError(f"cannot read noise estimate: {exc}", where=str(path), fix="rerun `causalrm noise estimate`") from exc
        channel = noise.get("channel") or ("vote" if path.name == "noise.json" else path.stem)
        if not all(isinstance(noise.get(k), (int, float)) for k in ("rho01", "rho10")):
            raise InputFileError("noise estimate lacks rho01 / rho10", where=str(path), fix="rerun `causalrm noise estimate`")
        found.setdefault(channel, {**noise, "channel": channel, "source": str(path.relative_to(warehouse))})
    return sorted(found.values(), key=lambda n: (n["channel"] != "vote", n["channel"]))


def build_report(cfg: AuditConfig) -> dict[str, Any]:
    """Compute every number of the report (no files written).

    Raises
    ------
    WarehouseError : no feedback table, no propensity scores for the channel, or no observed rows.
    """
    from feedback_etl.io import feedback_dataset, read_feedback

    warehouse = Path(cfg.warehouse)
    plan = audit_plan(feedback_dataset(warehouse).count_rows(), cfg)
    is_vote = cfg.channel == "vote"
    metrics = _read_metrics(warehouse, cfg.channel)
    sample_note = None
    if plan["streamed"]:
        # Issue 23: every number over all exposures from a narrow streamed read; balance and segments on a sample.
        from propensity.audit._streamed import read_audit_inputs

        inputs = read_audit_inputs(warehouse, cfg.channel, plan, label_aware=is_vote, seed=cfg.seed, batch_rows=cfg.batch_rows)
        frame, label_aware, sample, sample_note = inputs.frame, inputs.label_aware, inputs.sample, inputs.sample_note
    else:
        feedback = read_feedback(warehouse)
        scores = _read_scores(warehouse, cfg.channel)
        frame = feedback.join(scores.select("exposure_id", "propensity"), on="exposure_id", how="left")
    missing = frame["propensity"].null_count()
    if missing:
        raise WarehouseError(
            f"{missing:,} of {frame.height:,} exposures have no {cfg.channel!r} propensity", where="propensity/scores.parquet",
            fix=f"rerun `causalrm propensity fit {warehouse} --channel {cfg.channel}` after the latest ingest",
        )
    if not is_vote and not plan["streamed"]:
        frame = frame.with_columns(observed=pl.col(CHANNELS[cfg.channel]), label=pl.lit(None, dtype=pl.Int8))
    observed = frame["observed"].to_numpy().astype(bool)
    if not observed.any():
        raise WarehouseError(f"channel {cfg.channel!r} has no observed rows", where=str(warehouse), fix="check the channel and the ingest")
    p = frame["propensity"].to_numpy()
    fit_clip = _fit_clip(metrics)
    if not plan["streamed"]:
        label_aware = _label_aware_propensity(warehouse, feedback, frame) if is_vote else None
    if cfg.propensity == "label-aware" and label_aware is None:
        raise WarehouseError("warehouse has no label-aware propensities", where=str(warehouse / "propensity"),
                             fix=f"run `causalrm propensity fit-label-aware {warehouse}` first, or audit --propensity context")
    p_audited = label_aware if cfg.propensity == "label-aware" else p
    p_weights = np.maximum(p_audited, cfg.clip) if cfg.clip else p_audited
    weights = np.where(observed, 1.0 / p_weights, 0.0)
    floor = max([c for c in (fit_clip, cfg.clip) if c is not None], default=None)
    w_obs = weights[observed]
    ess = kish_ess(w_obs)
    clipped_share = float((p_audited[observed] <= floor * (1 + 1e-9)).mean()) if floor else None

    reliability, ece = reliability_with_intervals(p, observed)
    # Every context column, custom ones included (issue 17): balance is checked on what selection may depend on.
    # Chosen on the feedback columns alone: the frame also holds the propensity, which is no covariate.
    if plan["streamed"]:
        # The sample's weights as the full table's: the same propensity kind and clip.
        p_sample = sample["label_aware_propensity"].to_numpy() if cfg.propensity == "label-aware" else sample["propensity"].to_numpy()
        p_sample = np.maximum(p_sample, cfg.clip) if cfg.clip else p_sample
        chosen = select_features(sample.select(inputs.feedback_columns))
        smd = covariate_balance(sample, sample["observed"].to_numpy().astype(bool), p_sample, features=chosen)
    else:
        chosen = select_features(with_custom_features(feedback, warehouse))
        smd = covariate_balance(with_custom_features(frame, warehouse), observed, p_weights, features=chosen)
    worst = max(smd, key=lambda s: abs(s["after"])) if smd else None
    noise = _read_all_noise(warehouse)
    own_noise = next((n for n in noise if n["channel"] == cfg.channel), None)
    solicited = frame["solicited"].to_numpy().astype(bool) if "solicited" in frame.columns else None
    estimates = None
    comparison = None
    if is_vote:
        estimates = mean_label_estimates(
            frame["label"].to_numpy(), observed, p_weights, solicited,
            rho01=own_noise["rho01"] if own_noise else None, rho10=own_noise["rho10"] if own_noise else None,
        )
        comparison = slice_comparison(
            frame["label"].to_numpy(), observed, solicited, {"context": np.maximum(p, cfg.clip) if cfg.clip else p,
                                                             "label-aware": None if label_aware is None else (np.maximum(label_aware, cfg.clip) if cfg.clip else label_aware)},
            audited=cfg.propensity, floor=floor, label_aware_report=_read_label_aware_report(warehouse) if label_aware is not None else None,
            rho01=own_noise["rho01"] if own_noise else None, rho10=own_noise["rho10"] if own_noise else None,
        )

    p_edges = np.linspace(0.0, float(max(p.max(), 1e-6)), 41)
    w_edges = np.geomspace(max(w_obs.min(), 1e-6), max(w_obs.max(), w_obs.min() * 1.0001, 1.0), 41)
    n_obs = int(observed.sum())
    headline = {
        "exposures": frame.height,
        "propensity_kind": cfg.propensity,
        "observed": n_obs,
        "feedback_rate": n_obs / frame.height,
        "up_share": float(np.nanmean(frame["label"].to_numpy()[observed].astype(float))) if is_vote else None,
        "mean_propensity": float(p.mean()),
        "ess": ess,
        "ess_over_n": ess / n_obs,
        "max_weight": float(w_obs.max()),
        "clipped_share": clipped_share,
        "ece": ece,
        "max_abs_smd_before": max((abs(s["before"]) for s in smd), default=None),
        "max_abs_smd_after": abs(worst["after"]) if worst else None,
        "worst_smd_feature": worst["feature"] if worst else None,
        "rho01": own_noise["rho01"] if own_noise else None,
        "rho10": own_noise["rho10"] if own_noise else None,
        "naive": estimates["naive"]["estimate"] if estimates else None,
        "snips": estimates["snips"]["estimate"] if estimates else None,
        "randomized_slice": estimates["randomized_slice"]["estimate"] if estimates and estimates["randomized_slice"] else None,
    }
    return {
        "schema": "causalrm.audit/1",
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "warehouse": str(warehouse.resolve()),
        "channel": cfg.channel,
        "headline": headline,
        "thresholds": asdict(cfg.thresholds),
        "propensity": {
            "fit_clip": fit_clip,
            "audit_clip": cfg.clip,
            "floor": floor,
            "model": (metrics or {}).get("model") or ((metrics or {}).get("config") or {}).get("model"),
            "fit_metrics": {k: v for k, v in (metrics or {}).items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)},
            # The fit's context features (embeddings aside): the balance advice depends on them.
            "features": (metrics or {}).get("features"),
            "histogram": {"edges": p_edges.tolist(), "observed": _histogram(p[observed], p_edges), "unobserved": _histogram(p[~observed], p_edges)},
        },
        "reliability": {"ece": ece, "bins": reliability, "binning": f"{N_RELIABILITY_BINS} equal-mass bins"},
        "weights": {
            "formula": ("1 / max(p, clip)" if cfg.clip else "1 / p") + (", p = P(o=1 | x, r)" if cfg.propensity == "label-aware" else ""),
            "n_observed": n_obs, "ess": ess, "ess_over_n": ess / n_obs, "max": float(w_obs.max()), "mean": float(w_obs.mean()),
            "quantiles": {q: float(np.quantile(w_obs, float(q))) for q in ("0.5", "0.9", "0.99")},
            "clipped_share": clipped_share,
            "histogram": {"edges": w_edges.tolist(), "counts": _histogram(w_obs, w_edges)},
        },
        "segments": segment_tables(sample if plan["streamed"] else frame, with_labels=is_vote),
        "balance": smd,
        # Issue 23: None when every section covers every exposure; else which sections used a sample.
        "sample": sample_note,
        "memory": {k: v for k, v in plan.items() if k != "memory_limit_bytes"},
        "noise": noise,
        "estimates": estimates,
        "slice_comparison": comparison,
    }


def audit_plan(n_rows: int, cfg: AuditConfig) -> dict[str, Any]:
    """Whether the audit reads the table whole or streams it: the threshold of ``propensity fit``
    (:func:`propensity.models.casecontrol.plan_rows`), ``cfg.max_rows`` capping it; a streamed audit
    computes its balance table and segments on a uniform sample of ``max_rows`` exposures."""
    from propensity.models.casecontrol import stream_plan

    return stream_plan(n_rows, max_rows=cfg.max_rows, memory_limit=cfg.memory_limit)


def run_audit(cfg: AuditConfig) -> AuditResult:
    """Build the report, evaluate the guardrails, write ``cfg.out`` (HTML) and its ``.json`` twin."""
    from propensity.audit._html import render_html

    report = build_report(cfg)
    guardrails = evaluate_guardrails(report, cfg.thresholds)
    report["guardrails"] = [asdict(g) for g in guardrails]
    report["verdict"] = "FAIL" if any(g.status == "breach" for g in guardrails) else "PASS"
    report = json_safe(report)
    html_path = Path(cfg.out)
    html_path.parent.mkdir(parents=True, exist_ok=True)
    html_path.write_text(render_html(report), encoding="utf-8")
    cfg.json_path.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    log.info("audit %s: wrote %s and %s", report["verdict"], html_path, cfg.json_path)
    return AuditResult(html_path=html_path, json_path=cfg.json_path, report=report, guardrails=guardrails)
