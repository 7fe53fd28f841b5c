"""Propensities P(feedback | exposure), noise rates, weights export and the selection-bias audit.

Public surface of the propensity-fitting part (issue 4):

- fitting: :class:`PropensityConfig`, :func:`fit_propensity`, :func:`load_fold_models`
- estimators (scikit-learn contract): :class:`LightGBMPropensity`, :class:`MLPPropensity`,
  :class:`LogisticPropensity`, :func:`make_estimator`
- features: :func:`build_features`, :func:`design_matrix`
- folds, cross-fitting, calibration: :func:`group_folds`, :func:`cross_fit`, :func:`cross_calibrate`,
  :func:`clip_propensity`
- diagnostics: :func:`propensity_diagnostics` and its parts (reliability, ECE, Kish ESS, SMD)
- artifacts: :func:`read_scores`, :func:`read_metrics`
"""

from __future__ import annotations

from propensity.calibration import ClipReport, clip_propensity, cross_calibrate
from propensity.crossfit import CrossFitResult, cross_fit, group_folds
from propensity.diagnostics import (
    balance_summary,
    classification_metrics,
    expected_calibration_error,
    kish_ess,
    propensity_diagnostics,
    propensity_histogram,
    reliability_table,
    standardized_mean_differences,
    weight_summary,
)
from propensity.estimators import LightGBMPropensity, LogisticPropensity, MLPPropensity, make_estimator
from propensity.features import build_features, design_matrix
from propensity.fit import PropensityConfig, PropensityResult, fit_propensity, load_fold_models
from propensity.io import read_metrics, read_scores

__all__ = [
    "ClipReport",
    "CrossFitResult",
    "LightGBMPropensity",
    "LogisticPropensity",
    "MLPPropensity",
    "PropensityConfig",
    "PropensityResult",
    "balance_summary",
    "build_features",
    "classification_metrics",
    "clip_propensity",
    "cross_calibrate",
    "cross_fit",
    "design_matrix",
    "expected_calibration_error",
    "fit_propensity",
    "group_folds",
    "kish_ess",
    "load_fold_models",
    "make_estimator",
    "propensity_diagnostics",
    "propensity_histogram",
    "read_metrics",
    "read_scores",
    "reliability_table",
    "standardized_mean_differences",
    "weight_summary",
]

# ---- other propensity/ modules (noise, export, audit) append their re-exports below this line.
from propensity.noise import NoiseConfig, estimate_noise, estimate_noise_frame, read_audit, read_noise  # noqa: E402

__all__ += ["NoiseConfig", "estimate_noise", "estimate_noise_frame", "read_audit", "read_noise"]

# Weighted-dataset handoff and audit (issue 5).
from propensity.export import ExportConfig, export_weighted_dataset, read_manifest, read_pairs, read_weighted_dataset  # noqa: E402
from propensity.audit import AuditConfig, AuditResult, Thresholds, run_audit  # noqa: E402

__all__ += ["ExportConfig", "export_weighted_dataset", "read_manifest", "read_pairs", "read_weighted_dataset",
            "AuditConfig", "AuditResult", "Thresholds", "run_audit"]

# Randomized feedback slice: label-aware (MNAR) propensities (issue 11).
from propensity.label_aware import LabelAwareConfig, fit_label_aware, read_label_aware_scores, read_slice  # noqa: E402

__all__ += ["LabelAwareConfig", "fit_label_aware", "read_label_aware_scores", "read_slice"]
