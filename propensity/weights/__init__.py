"""The weighted dataset: the handoff from propensities and noise rates to any trainer.

Public API
- :class:`ExportConfig`, :func:`export_weighted_dataset` (writes ``dataset.parquet``, ``pairs.parquet``
  and ``manifest.json``), :func:`read_weighted_dataset`, :func:`read_pairs`, :func:`read_manifest`
- the formulas: :func:`compute_weights`, :func:`pair_flip_probability`
The table contracts are ``schemas/weighted_dataset.py`` and ``schemas/pairs.py``.
"""

from __future__ import annotations

from propensity.weights.export import (
    ExportConfig,
    compute_weights,
    export_weighted_dataset,
    pair_flip_probability,
    read_manifest,
    read_pairs,
    read_weighted_dataset,
)

__all__ = [
    "ExportConfig", "compute_weights", "export_weighted_dataset", "pair_flip_probability", "read_manifest",
    "read_pairs", "read_weighted_dataset",
]
