"""Propensities P(feedback | exposure), noise rates, weights export and the selection-bias audit.

Public surface of the propensity-fitting part (issue 4):

- features: :func:`build_features`, :func:`design_matrix`
- folds and cross-fitting: :func:`group_folds`, :func:`cross_fit`
- artifacts: :func:`read_scores`, :func:`read_metrics`
"""

from __future__ import annotations

from propensity.crossfit import CrossFitResult, cross_fit, group_folds
from propensity.features import build_features, design_matrix
from propensity.io import read_metrics, read_scores

__all__ = [
    "CrossFitResult",
    "build_features",
    "cross_fit",
    "design_matrix",
    "group_folds",
    "read_metrics",
    "read_scores",
]

# ---- other propensity/ modules (noise, export, audit) append their re-exports below this line.
from propensity.noise import NoiseConfig, estimate_noise, estimate_noise_frame, read_audit, read_noise  # noqa: E402

__all__ += ["NoiseConfig", "estimate_noise", "estimate_noise_frame", "read_audit", "read_noise"]
