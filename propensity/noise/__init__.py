"""Noise rates rho01 = P(r=0 | r*=1) and rho10 = P(r=1 | r*=0) of the observed votes.

Public API
- :class:`NoiseConfig`, :func:`estimate_noise` (warehouse in, ``WH/noise/<channel>.json`` out),
  :func:`estimate_noise_frame` (the estimator on a frame), :func:`read_noise`, :func:`noise_path`
- gold audits: :func:`read_audit`, :func:`audit_rates` (flip rates from gold labels)
- anchors: :func:`anchor_rates`, :func:`segment_anchor_rates`; the text proxy lives in ``_proxy.py``
"""

from __future__ import annotations

from propensity.diagnostics import audit_rates, proportion_ci
from propensity.noise.estimate import (
    NoiseConfig,
    anchor_rates,
    estimate_noise,
    estimate_noise_frame,
    noise_path,
    read_audit,
    read_noise,
    segment_anchor_rates,
)

__all__ = [
    "NoiseConfig", "anchor_rates", "audit_rates", "estimate_noise", "estimate_noise_frame", "noise_path",
    "proportion_ci", "read_audit", "read_noise", "segment_anchor_rates",
]
