"""Probability calibration of propensity scores, itself cross-fitted, and clipping.

Boosted trees and neural nets rank well but their probabilities drift (OBP #178): a weight 1/p
needs p to be a probability. Calibrating fold k's scores with a map fitted on fold k's own labels
would leak them back in, so :func:`cross_calibrate` fits fold k's map on the *other* folds'
out-of-fold scores and labels, the same discipline as the model itself.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from schemas.errors import ConfigError, EstimationError

log = logging.getLogger(__name__)

CALIBRATIONS: tuple[str, ...] = ("isotonic", "platt", "none")
_EPS = 1e-6


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1.0 - _EPS)
    return np.log(p) - np.log1p(-p)


class IsotonicCalibrator:
    """Monotone step map from score to probability (pool-adjacent-violators), linear between knots."""

    method = "isotonic"

    def fit(self, scores: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None) -> IsotonicCalibrator:
        from sklearn.isotonic import IsotonicRegression

        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip", increasing=True)
        iso.fit(np.asarray(scores, dtype=np.float64), np.asarray(y, dtype=np.float64), sample_weight=sample_weight)
        self.x_ = np.asarray(iso.X_thresholds_, dtype=np.float64)
        self.y_ = np.asarray(iso.y_thresholds_, dtype=np.float64)
        return self

    def predict(self, scores: np.ndarray) -> np.ndarray:
        return np.interp(np.asarray(scores, dtype=np.float64), self.x_, self.y_)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "x": self.x_.tolist(), "y": self.y_.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> IsotonicCalibrator:
        cal = cls()
        cal.x_, cal.y_ = np.asarray(d["x"]), np.asarray(d["y"])
        return cal


class PlattCalibrator:
    """Logistic map on the score's logit: p = sigmoid(a * logit(s) + b) (Platt, 1999)."""

    method = "platt"

    def fit(self, scores: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None) -> PlattCalibrator:
        from sklearn.linear_model import LogisticRegression

        # A very weak penalty: Platt scaling is an (almost) unpenalised 2-parameter fit.
        lr = LogisticRegression(C=1e6, max_iter=1000)
        lr.fit(_logit(scores).reshape(-1, 1), np.asarray(y).astype(int), sample_weight=sample_weight)
        self.a_ = float(lr.coef_[0, 0])
        self.b_ = float(lr.intercept_[0])
        return self

    def predict(self, scores: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(self.a_ * _logit(scores) + self.b_)))

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "a": self.a_, "b": self.b_}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PlattCalibrator:
        cal = cls()
        cal.a_, cal.b_ = float(d["a"]), float(d["b"])
        return cal


class IdentityCalibrator:
    """No calibration (``--calibration none``)."""

    method = "none"

    def fit(self, scores: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None) -> IdentityCalibrator:
        return self

    def predict(self, scores: np.ndarray) -> np.ndarray:
        return np.asarray(scores, dtype=np.float64)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> IdentityCalibrator:
        return cls()


_CALIBRATORS = {"isotonic": IsotonicCalibrator, "platt": PlattCalibrator, "none": IdentityCalibrator}
Calibrator = IsotonicCalibrator | PlattCalibrator | IdentityCalibrator


def make_calibrator(method: str) -> Calibrator:
    if method not in _CALIBRATORS:
        raise ConfigError(f"unknown calibration {method!r}", where="--calibration", fix=f"use one of {list(CALIBRATIONS)}")
    return _CALIBRATORS[method]()


def calibrator_from_dict(d: dict[str, Any]) -> Calibrator:
    return _CALIBRATORS[d["method"]].from_dict(d)


def cross_calibrate(
    scores: np.ndarray, y: np.ndarray, folds: np.ndarray, method: str, *, weights: np.ndarray | None = None
) -> tuple[np.ndarray, list[Calibrator]]:
    """Calibrate out-of-fold scores fold by fold, each fold with a map fitted on the other folds.

    Parameters
    ----------
    scores : array of shape (n_exposures,), out-of-fold raw propensities.
    y : array of shape (n_exposures,), 0/1 target.
    folds : int array of shape (n_exposures,).
    method : ``isotonic``, ``platt`` or ``none``.
    weights : optional array of shape (n_exposures,) of sampling weights (1/s for a row kept with
        probability s in a case-control sample, ``propensity.models.casecontrol``): each map is then
        fitted to the population the sample was drawn from, not to the sample. None: all 1.

    Returns
    -------
    calibrated : array of shape (n_exposures,) in [0, 1].
    calibrators : one fitted calibrator per fold (in ``np.unique(folds)`` order).

    Raises
    ------
    EstimationError : the other folds hold one class only (nothing to calibrate against).
    """
    make_calibrator(method)  # validates the name before any work
    scores = np.asarray(scores, dtype=np.float64)
    y = np.asarray(y).astype(np.int8)
    calibrated = np.empty_like(scores)
    calibrators: list[Calibrator] = []
    for k in np.unique(folds):
        held = folds == k
        rest_y = y[~held]
        if method != "none" and (rest_y.min() == rest_y.max()):
            raise EstimationError(
                f"cannot calibrate fold {k}: the other folds hold one class only", where="calibration", fix="use fewer folds or --calibration none"
            )
        cal = make_calibrator(method).fit(scores[~held], rest_y, None if weights is None else np.asarray(weights)[~held])
        calibrated[held] = cal.predict(scores[held])
        calibrators.append(cal)
    return np.clip(calibrated, 0.0, 1.0), calibrators


@dataclass(frozen=True, kw_only=True)
class ClipReport:
    """What clipping changed. ``n_clipped = n_clipped_low + n_clipped_high``; shares are of all exposures."""

    floor: float
    ceiling: float
    n_exposures: int
    n_clipped_low: int
    n_clipped_high: int
    n_clipped: int
    share_clipped: float
    n_clipped_observed: int
    share_clipped_observed: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def clip_propensity(
    propensity: np.ndarray, floor: float, ceiling: float = 1.0, *, observed: np.ndarray | None = None
) -> tuple[np.ndarray, ClipReport]:
    """Clip propensities to [floor, ceiling] and count what moved (never silently: callers log it).

    Parameters
    ----------
    propensity : array of shape (n_exposures,).
    floor : lower bound in (0, 1); weights 1/p are then at most 1/floor. There is no "off": a
        calibrated propensity can be exactly 0 and 1/0 is no weight (use e.g. 1e-4 to clip little).
    ceiling : upper bound (default 1.0).
    observed : optional bool array of shape (n_exposures,); reports how many observed rows (the
        ones that carry weights) were clipped.

    Returns
    -------
    clipped : array of shape (n_exposures,)
    report : :class:`ClipReport`
    """
    if not 0.0 < floor < ceiling <= 1.0:
        raise ConfigError(
            f"need 0 < clip floor < ceiling <= 1, got floor={floor}, ceiling={ceiling}",
            where="--clip",
            fix="use e.g. --clip 0.05 (a tiny floor such as 1e-4 clips almost nothing; 0 would allow infinite weights)",
        )
    p = np.asarray(propensity, dtype=np.float64)
    low = p < floor
    high = p > ceiling
    clipped = np.clip(p, floor, ceiling)
    n = len(p)
    moved = low | high
    n_obs_clipped = int((moved & np.asarray(observed, dtype=bool)).sum()) if observed is not None else 0
    n_obs = int(np.asarray(observed, dtype=bool).sum()) if observed is not None else 0
    report = ClipReport(
        floor=float(floor),
        ceiling=float(ceiling),
        n_exposures=n,
        n_clipped_low=int(low.sum()),
        n_clipped_high=int(high.sum()),
        n_clipped=int(moved.sum()),
        share_clipped=float(moved.mean()) if n else 0.0,
        n_clipped_observed=n_obs_clipped,
        share_clipped_observed=n_obs_clipped / n_obs if n_obs else 0.0,
    )
    return clipped, report


# The floor of a fit without --clip (issue 17): derived from the data, never above the observed rate.
MAX_DEFAULT_FLOOR = 0.05
FLOOR_QUANTILE = 0.01


def default_floor(propensity: np.ndarray, observed: np.ndarray) -> float:
    """The propensity floor a fit uses when none is given.

    ``min(0.05, rate / 2, max(rate / 100, q))`` where ``rate`` is the observed feedback rate and
    ``q`` the 1% quantile of the calibrated propensities of observed rows (the rows that carry
    weights). So about 1% of observed rows at most are clipped (more only on ties, e.g. an
    isotonic plateau), the floor is at most half the observed rate (a fixed 0.05 above a 2.4%
    rate clipped every row and made the weights constant: issue 17), weights are at most 100
    times the mean weight 1/rate, and on common rates (>= 10%) with good overlap it is the
    former fixed default 0.05.

    Parameters
    ----------
    propensity : calibrated, unclipped propensities, array of shape (n_rows,).
    observed : bool array of shape (n_rows,).
    """
    p = np.asarray(propensity, dtype=np.float64)
    o = np.asarray(observed, dtype=bool)
    rate = float(o.mean()) if len(o) else 0.0
    if rate <= 0.0:
        return MAX_DEFAULT_FLOOR
    quantile = float(np.quantile(p[o], FLOOR_QUANTILE))
    floor = min(MAX_DEFAULT_FLOOR, rate / 2, max(rate / 100, quantile))
    return float(max(floor, 1e-6))
