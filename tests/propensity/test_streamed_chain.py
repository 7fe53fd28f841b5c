"""fit-label-aware, weights export and audit above their memory budget (issue 23) on simulated MNAR
logs. fit-label-aware: the estimator runs on the organic votes and the slice rows, every exposure
is scored in batches, and the results equal the in-memory fit's. audit: every number over all
exposures equals the in-memory audit's; balance and segments come from a stated uniform sample.

Inputs: the ``mnar`` warehouse of test_label_aware.py (12,000 simulated exposures, label effect 3,
8% randomized slice, ``propensity fit`` done), fitted once whole and once with ``max_rows=1`` and
batches of 997 rows. The two fits train the same outcome models on the same votes, so the scores
and the estimates agree to floating-point rounding (1e-12).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from propensity.slice.label_aware import LabelAwareConfig, fit_label_aware, read_label_aware_scores
from propensity.weights.export import ExportConfig, export_weighted_dataset, read_weighted_dataset
from tests.propensity.test_label_aware import mnar  # noqa: F401  (the shared simulated warehouse)

STREAMED = {"max_rows": 1, "batch_rows": 997}


@pytest.fixture(scope="module")
def fits(mnar: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:  # noqa: F811
    root = tmp_path_factory.mktemp("la_stream")
    out = {}
    for name, options in (("whole", {}), ("streamed", STREAMED)):
        wh = root / name
        shutil.copytree(mnar["wh"], wh)
        cfg = LabelAwareConfig(slice=str(mnar["root"] / "logs" / "slice.parquet"), bootstrap=40, n_jobs=1, **options)
        out[name] = (wh, fit_label_aware(wh, cfg))
    return out


def test_streamed_label_aware_fit_equals_the_in_memory_fit(fits: dict) -> None:
    (wh_a, whole), (wh_b, streamed) = fits["whole"], fits["streamed"]
    assert whole.report["memory"]["streamed"] is False and streamed.report["memory"]["streamed"] is True
    # the estimator saw the votes and the slice only, not the 12,000 rows
    assert streamed.report["memory"]["core_rows"] < 0.5 * 12_000
    a, b = read_label_aware_scores(wh_a), read_label_aware_scores(wh_b)
    assert a.height == b.height == 12_000
    assert_frame_equal(a, b, check_exact=False, rel_tol=1e-12, abs_tol=1e-15)
    for key in ("estimates", "label_factors", "slice", "weights", "clipping", "outcome_model", "noise_from_slice"):
        assert _close(streamed.report[key], whole.report[key]), key
    assert streamed.report["warnings"] == whole.report["warnings"]
    assert (wh_a / "propensity" / "slice.parquet").read_bytes() == (wh_b / "propensity" / "slice.parquet").read_bytes() or \
        pl.read_parquet(wh_a / "propensity" / "slice.parquet").equals(pl.read_parquet(wh_b / "propensity" / "slice.parquet"))


def _close(x, y) -> bool:
    """Nested dicts / lists equal, floats to a relative 1e-12."""
    if isinstance(x, dict):
        return x.keys() == y.keys() and all(_close(x[k], y[k]) for k in x)
    if isinstance(x, list):
        return len(x) == len(y) and all(_close(u, v) for u, v in zip(x, y))
    if isinstance(x, float) and isinstance(y, float):
        return x == pytest.approx(y, rel=1e-12, abs=1e-15) or (np.isnan(x) and np.isnan(y))
    return x == y


def test_streamed_export_of_label_aware_weights_equals_the_in_memory_one(fits: dict, tmp_path: Path) -> None:
    wh, _ = fits["streamed"]
    options = {"propensity": "label-aware", "no_noise": True}
    export_weighted_dataset(ExportConfig(warehouse=str(wh), out=str(tmp_path / "whole"), **options))
    export_weighted_dataset(ExportConfig(warehouse=str(wh), out=str(tmp_path / "streamed"), **options, **STREAMED))
    streamed = read_weighted_dataset(tmp_path / "streamed").sort("exposure_id")  # streamed: scan order
    assert_frame_equal(read_weighted_dataset(tmp_path / "whole"), streamed, check_exact=True)


def test_streamed_fit_regroups_context_scores_without_folds_as_in_memory(mnar: dict, tmp_path: Path) -> None:  # noqa: F811
    """Context scores of exposures scored after the fit (`propensity score`, fold -1): both fits regroup
    every exposure by user with the fit's number of folds (the streamed one from the users' counts)
    and agree to rounding; the folds written are the regrouped ones, not -1."""
    from propensity.io import read_scores, write_scores

    results = {}
    for name, options in (("whole", {}), ("streamed", STREAMED)):
        wh = tmp_path / name
        shutil.copytree(mnar["wh"], wh)
        scores = read_scores(wh)
        write_scores(wh, "vote", scores.with_columns(fold=pl.when(pl.int_range(pl.len()) < 500).then(-1).otherwise(pl.col("fold"))))
        cfg = LabelAwareConfig(slice=str(mnar["root"] / "logs" / "slice.parquet"), bootstrap=20, n_jobs=1, **options)
        results[name] = (fit_label_aware(wh, cfg), read_label_aware_scores(wh))
    (whole, a), (streamed, b) = results["whole"], results["streamed"]
    assert streamed.report["memory"]["streamed"] is True and a["fold"].min() == 0 and a["fold"].n_unique() == 3
    assert_frame_equal(a, b, check_exact=False, rel_tol=1e-12, abs_tol=1e-15)
    for key in ("estimates", "label_factors", "context"):
        assert _close(streamed.report[key], whole.report[key]), key
    assert streamed.report["context"]["folds"].startswith("regrouped by user (3 folds)")


@pytest.mark.slow  # two audits with their plots: about 12 s on 2 busy cores
def test_streamed_audit_matches_the_in_memory_audit_and_states_its_sample(fits: dict, tmp_path: Path) -> None:
    from propensity.audit.report import AuditConfig, run_audit

    wh, _ = fits["whole"]
    reports = {}
    for name, options in (("whole", {}), ("streamed", {"max_rows": 3_000, "batch_rows": 997})):
        cfg = AuditConfig(warehouse=str(wh), out=str(tmp_path / name / "report.html"), propensity="label-aware", **options)
        reports[name] = run_audit(cfg).report
    whole, streamed = reports["whole"], reports["streamed"]
    assert whole["sample"] is None and streamed["memory"]["streamed"] is True
    # every full-table section is the same numbers
    for key in ("headline", "reliability", "weights", "estimates", "slice_comparison"):
        if key == "headline":
            skip = {"max_abs_smd_before", "max_abs_smd_after", "worst_smd_feature"}  # balance: sample
            assert _close({k: v for k, v in streamed[key].items() if k not in skip},
                          {k: v for k, v in whole[key].items() if k not in skip}), key
        else:
            assert _close(streamed[key], whole[key]), key
    assert _close(streamed["propensity"]["histogram"], whole["propensity"]["histogram"])
    # balance and segments: a uniform sample of ~3,000 of 12,000 (binomial sd ~47), said in the report and the HTML
    sample = streamed["sample"]
    assert sample["sections"] == ["balance", "segments"] and abs(sample["n"] - 3_000) < 5 * 47
    assert "uniform sample" in (tmp_path / "streamed" / "report.html").read_text()
    assert {b["feature"] for b in streamed["balance"]} == {b["feature"] for b in whole["balance"]}
    n_segment = sum(row["n"] for row in streamed["segments"]["platform"])
    assert n_segment == sample["n"]
    # a sampled SMD is close to the full one: within 0.1 (sd of an SMD on ~3,000 rows is ~0.02-0.04)
    full = {b["feature"]: b["after"] for b in whole["balance"]}
    assert max(abs(b["after"] - full[b["feature"]]) for b in streamed["balance"]) < 0.1


def test_streamed_audit_in_several_join_passes_gives_the_same_numbers(fits: dict, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The audit's join with the context and label-aware scores in three passes over
    hash(exposure_id) % 3 (casecontrol.join_partitions) reads every exposure once: every number over
    all exposures equals the one-pass streamed audit's (to 1e-12: sums in another order)."""
    import propensity.models.casecontrol as casecontrol
    from propensity.audit.report import AuditConfig, run_audit

    wh, _ = fits["whole"]
    options = {"max_rows": 3_000, "batch_rows": 997, "propensity": "label-aware"}
    one = run_audit(AuditConfig(warehouse=str(wh), out=str(tmp_path / "one" / "report.html"), **options)).report
    calls: list[int] = []
    monkeypatch.setattr(casecontrol, "join_partitions", lambda n, share, **kw: calls.append(kw.get("tables", 1)) or 3)
    three = run_audit(AuditConfig(warehouse=str(wh), out=str(tmp_path / "three" / "report.html"), **options)).report
    assert calls == [2]  # the context and the label-aware scores
    for key in ("headline", "reliability", "weights", "estimates", "slice_comparison"):
        assert _close(three[key], one[key]), key
    assert three["sample"]["n"] == one["sample"]["n"]  # the sample is a hash of exposure_id, whatever the pass

