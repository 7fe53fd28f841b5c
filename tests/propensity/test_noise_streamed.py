"""noise estimate above its memory budget (issue 23): the proxy trains on the observed rows, every
exposure is scored in batches into compact arrays, and the estimate equals the in-memory one.

Inputs: the session ``warehouse`` fixture (8,000 simulated exposures) with truth-based scores
(test_export.py's ``prepare``), estimated whole and with ``max_rows=1`` and batches of 997 rows.
The feature map is fitted on the whole table's statistics and the fold proxies on the same votes,
so the rates, intervals and segments agree to floating-point rounding.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from propensity.noise.estimate import NoiseConfig, estimate_noise
from tests.propensity.test_export import prepare
from tests.propensity.test_streamed_chain import _close

STREAMED = {"max_rows": 1, "batch_rows": 997}
VOLATILE = {"created_at", "config", "memory", "warehouse"}


@pytest.mark.parametrize("options", [{"segment_by": "platform"}, {"proxy": "logistic", "use_weights": False, "bootstrap": 20}])
def test_streamed_noise_estimate_equals_the_in_memory_one(warehouse: Path, tmp_path: Path, options: dict) -> None:
    wh = prepare(warehouse, tmp_path, noise=None)
    base = {"bootstrap": 40, "min_anchors": 100, **options}
    whole = estimate_noise(wh, NoiseConfig(**base))
    streamed = estimate_noise(wh, NoiseConfig(**base, **STREAMED))
    assert whole["memory"]["streamed"] is False and streamed["memory"]["streamed"] is True
    assert whole.keys() == streamed.keys()
    for key in whole.keys() - VOLATILE:
        assert _close(streamed[key], whole[key]), key
    assert streamed["rho01"] is not None and (streamed["segments"] or not options.get("segment_by"))
