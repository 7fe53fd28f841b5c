"""Propensity models: P(feedback | exposure) for every shown response.

Public API
- fit and score: :class:`PropensityConfig`, :func:`fit_propensity`, :func:`load_fold_models`,
  :func:`score_propensity` (engine ``local`` here; ``spark`` is a plug-in, ``models/spark_score.py``)
- estimators (scikit-learn contract): :class:`LightGBMPropensity`, :class:`MLPPropensity`,
  :class:`LogisticPropensity`, :func:`make_estimator`
- features: :func:`build_features`, :func:`design_matrix`
- folds, cross-fitting, calibration, clipping: :func:`group_folds`, :func:`cross_fit`,
  :func:`cross_calibrate`, :func:`clip_propensity`
"""

from __future__ import annotations

from propensity.models.calibration import ClipReport, clip_propensity, cross_calibrate
from propensity.models.crossfit import CrossFitResult, cross_fit, group_folds
from propensity.models.estimators import LightGBMPropensity, LogisticPropensity, MLPPropensity, make_estimator
from propensity.models.features import build_features, design_matrix
from propensity.models.fit import PropensityConfig, PropensityResult, fit_propensity, load_fold_models
from propensity.models.score import ScoreConfig, ScoreResult, score_propensity

__all__ = [
    "ClipReport", "CrossFitResult", "LightGBMPropensity", "LogisticPropensity", "MLPPropensity",
    "PropensityConfig", "PropensityResult", "ScoreConfig", "ScoreResult", "build_features", "clip_propensity",
    "cross_calibrate", "cross_fit", "design_matrix", "fit_propensity", "group_folds", "load_fold_models",
    "make_estimator", "score_propensity",
]
