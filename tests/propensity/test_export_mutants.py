"""Weights-export rules that mutation testing found unguarded (issue 22, benchmarks/mutation/).

Pure calls on hand-built frames (fast); each test names the mutants it kills, each seen red with
that mutant applied.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from propensity.weights.export import DEFAULT_CLIP, build_pairs, compute_weights, segment_noise_rates


def test_clipped_ips_floors_at_the_default_clip_unless_one_is_given() -> None:
    """clipped-ips weights are o / max(p, clip) with clip 0.05 when none is given (mutant
    compute_weights__mutmut_30 swapped the default and the given clip)."""
    p, o = np.array([0.01, 0.3, 0.1]), np.array([True, True, False])
    np.testing.assert_allclose(compute_weights(p, o, scheme="clipped-ips"), [1 / DEFAULT_CLIP, 1 / 0.3, 0.0])
    np.testing.assert_allclose(compute_weights(p, o, scheme="clipped-ips", clip=0.2), [5.0, 1 / 0.3, 0.0])


def _one_pair(p_chosen: float, p_rejected: float) -> pl.DataFrame:
    return pl.DataFrame({
        "exposure_id": ["e0", "e1"], "prompt_id": "q", "split": "train", "channel": "vote", "response_id": ["r0", "r1"],
        "observed": True, "label": [1, 0], "propensity": [p_chosen, p_rejected], "rho01": 0.0, "rho10": 0.0,
        "prompt_text": "q?", "response_text": ["a", "b"],
    })


@pytest.mark.parametrize(("clip", "floor"), [(None, DEFAULT_CLIP), (0.2, 0.2)])
def test_clipped_ips_pair_weight_clips_each_side_at_the_floor(clip: float | None, floor: float) -> None:
    """A pair's clipped-ips weight is 1 / (max(p_chosen, floor) max(p_rejected, floor)), floor 0.05
    unless a clip is given: the chosen side (p 0.01) is clipped, the rejected side (p 0.5) keeps its
    own propensity (mutants build_pairs__mutmut_229, the default and given clip swapped, and _240,
    the rejected side's propensity replaced by the floor)."""
    pairs, _ = build_pairs(_one_pair(0.01, 0.5), scheme="clipped-ips", clip=clip)
    assert pairs.height == 1
    assert pairs["weight"][0] == pytest.approx(1 / (floor * 0.5), rel=1e-12)


def _rows() -> pl.DataFrame:
    return pl.DataFrame({"exposure_id": ["a", "b", "c"], "platform": ["web", "ios", None]})


def test_segment_rates_fall_back_to_the_overall_rates_on_both_columns() -> None:
    """Without usable segments every row gets the overall rho01 and rho10 (mutant
    segment_noise_rates__mutmut_47 dropped the rho01 column)."""
    frame, summary = segment_noise_rates(_rows(), {"segments": []}, 0.2, 0.1)
    assert summary is None
    assert frame["rho01"].to_list() == [0.2] * 3 and frame["rho10"].to_list() == [0.1] * 3


def test_a_segment_entry_without_segment_by_is_ignored() -> None:
    """An entry lacking ``segment_by`` is no segment: the platform segments still apply (mutant
    segment_noise_rates__mutmut_7 let any dict through, so the estimate looked segmented two ways
    and every row fell back to the overall rates)."""
    noise = {"segments": [
        {"segment_by": "platform", "segment": "web", "rho01": 0.3, "rho10": 0.05},
        {"segment": "ios", "rho01": 0.1, "rho10": 0.2},
    ]}
    frame, summary = segment_noise_rates(_rows(), noise, 0.2, 0.1)
    assert summary is not None and summary["segments_used"] == ["web"] and summary["rows_on_overall_rates"] == 2
    assert frame["rho01"].to_list() == [0.3, 0.2, 0.2] and frame["rho10"].to_list() == [0.05, 0.1, 0.1]
