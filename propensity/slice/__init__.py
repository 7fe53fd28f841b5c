"""The randomized feedback slice: label-aware (MNAR) propensities checked against solicited votes.

Public API
- :class:`LabelAwareConfig`, :func:`fit_label_aware`, :func:`estimate_label_aware`
- :func:`read_slice`, :func:`read_label_aware_scores`, :func:`propensity_for_labels`
- ``coat.py``: the Coat MNAR/MAR check on public ratings data
"""

from __future__ import annotations

from propensity.slice.label_aware import (
    LabelAwareConfig,
    estimate_label_aware,
    fit_label_aware,
    propensity_for_labels,
    read_label_aware_scores,
    read_slice,
)

__all__ = [
    "LabelAwareConfig", "estimate_label_aware", "fit_label_aware", "propensity_for_labels",
    "read_label_aware_scores", "read_slice",
]
