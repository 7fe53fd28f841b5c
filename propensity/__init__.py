"""Propensities P(feedback | exposure), noise rates, the weighted-dataset export, the audit and the
randomized slice: one subpackage per job, imports running one way (models -> slice -> noise -> weights
-> audit; ``io`` and ``diagnostics`` are shared by all).

- :mod:`propensity.models`: fit, score, estimators, features, cross-fitting, calibration
- :mod:`propensity.noise`: flip rates rho01 / rho10 (anchors, gold audits, text proxy)
- :mod:`propensity.weights`: the weighted dataset and pairs handed to trainers
- :mod:`propensity.audit`: the selection-bias report and guardrails
- :mod:`propensity.slice`: label-aware propensities from a randomized feedback slice
- :mod:`propensity.diagnostics`: the shared statistics (ECE, Kish ESS, SMD, binomial intervals)
- :mod:`propensity.io`: reading and writing ``WH/propensity/``

Everything below is re-exported here as well, so ``from propensity import fit_propensity`` works.
"""

from __future__ import annotations

from propensity.models.calibration import ClipReport, clip_propensity, cross_calibrate
from propensity.models.crossfit import CrossFitResult, cross_fit, group_folds
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
from propensity.models.estimators import LightGBMPropensity, LogisticPropensity, MLPPropensity, make_estimator
from propensity.models.features import build_features, design_matrix
from propensity.models.fit import PropensityConfig, PropensityResult, fit_propensity, load_fold_models
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

# ---- the downstream jobs
from propensity.noise.estimate import NoiseConfig, estimate_noise, estimate_noise_frame, read_audit, read_noise  # noqa: E402

__all__ += ["NoiseConfig", "estimate_noise", "estimate_noise_frame", "read_audit", "read_noise"]

# Weighted-dataset handoff and audit (issue 5).
from propensity.weights.export import ExportConfig, export_weighted_dataset, read_manifest, read_pairs, read_weighted_dataset  # noqa: E402
from propensity.audit.report import AuditConfig, AuditResult, Thresholds, run_audit  # noqa: E402

__all__ += ["ExportConfig", "export_weighted_dataset", "read_manifest", "read_pairs", "read_weighted_dataset",
            "AuditConfig", "AuditResult", "Thresholds", "run_audit"]

# Randomized feedback slice: label-aware (MNAR) propensities (issue 11).
from propensity.slice.label_aware import LabelAwareConfig, fit_label_aware, read_label_aware_scores, read_slice  # noqa: E402

__all__ += ["LabelAwareConfig", "fit_label_aware", "read_label_aware_scores", "read_slice"]
