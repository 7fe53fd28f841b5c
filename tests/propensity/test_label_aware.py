"""Label-aware propensities from a randomized slice (issue 11): the estimator's identities, its
recovery of a known label effect, the bias it removes on simulated MNAR logs, and the slice's flow
through the CLI (fit-label-aware, noise --audit slice, weights export, audit)."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from feedback_etl.io import read_feedback
from propensity.slice.label_aware import (
    LabelAwareConfig,
    build_slice,
    fit_label_aware,
    fit_tilt,
    read_label_aware_scores,
    read_slice,
    read_slice_file,
    tilted_propensity,
)
from schemas.errors import ConfigError, IdentifiabilityError, InputFileError, WarehouseError

RHO01, RHO10 = 0.2, 0.1
LABEL_EFFECT = 3.0


# --------------------------------------------------------------------------- the estimator on arrays


def _population(n: int, seed: int, effect: float) -> dict[str, np.ndarray]:
    """x ~ U(0, 1); P(r=1 | x) = 0.2 + 0.6 x; P(o=1 | x, r) = 0.1 (1 + x) effect^r (log-linear, A1)."""
    rng = np.random.default_rng(seed)
    x = rng.random(n)
    q1 = 0.2 + 0.6 * x
    r = (rng.random(n) < q1).astype(np.int64)
    c = 0.1 * (1 + x)
    context = c * (1 - q1 + q1 * effect)  # P(o=1 | x) = sum_r P(r | x) P(o=1 | x, r)
    m1 = q1 * effect / (1 - q1 + q1 * effect)  # P(r=1 | x, o=1) by Bayes
    return {"x": x, "q1": q1, "r": r, "c": c, "context": context, "outcome": np.column_stack([1 - m1, m1])}


def test_tilt_recovers_a_known_label_effect_from_a_random_slice() -> None:
    """With the exact context and outcome models, the slice alone pins the label factor down."""
    pop = _population(200_000, seed=0, effect=LABEL_EFFECT)
    slice_rows = np.random.default_rng(1).choice(len(pop["x"]), 4_000, replace=False)
    tilt = fit_tilt(pop["outcome"][slice_rows], pop["r"][slice_rows], np.zeros(4_000, dtype=np.int64), 1)
    assert tilt.converged
    # log-factor standard error ~ sqrt(1/n1 + 1/n0) of the slice's label counts: ~0.032 here.
    assert math.log(tilt.relative_propensity[0, 1]) == pytest.approx(math.log(LABEL_EFFECT), abs=4 * 0.032)
    # And the propensities follow: p(x, r) = c(x) effect^r up to the factor's error.
    p = tilted_propensity(pop["context"], pop["outcome"], tilt, np.zeros(len(pop["x"]), dtype=np.int64))
    truth = pop["c"][:, None] * np.array([1.0, LABEL_EFFECT])
    assert np.abs(np.log(p / truth)).max() < 4 * 0.032


def test_label_aware_propensity_marginalises_to_the_context_one() -> None:
    """sum_r P(r | x) p(x, r) = p(x) exactly, with P(r | x) = q_r(x) of the fitted tilt (any gamma)."""
    pop = _population(5_000, seed=2, effect=2.0)
    strata = (pop["x"] > 0.5).astype(np.int64)
    tilt = fit_tilt(pop["outcome"][:800], pop["r"][:800], strata[:800], 2)
    p = tilted_propensity(pop["context"], pop["outcome"], tilt, strata)
    q = pop["outcome"] * tilt.gamma[strata]
    q /= q.sum(axis=1, keepdims=True)
    np.testing.assert_allclose((q * p).sum(axis=1), pop["context"], rtol=1e-12)


def test_constant_outcome_model_is_the_naive_bayes_estimator() -> None:
    """label_model none: p(x, r) = p(x) P(r | o=1) / P(r), the Coat estimator of Schnabel et al."""
    rng = np.random.default_rng(3)
    n_slice, p_up_voters, slice_labels = 500, 0.7, (rng.random(500) < 0.45).astype(np.int64)
    outcome = np.tile([1 - p_up_voters, p_up_voters], (n_slice, 1))
    tilt = fit_tilt(outcome, slice_labels, np.zeros(n_slice, dtype=np.int64), 1)
    context = rng.uniform(0.05, 0.4, n_slice)
    p = tilted_propensity(context, outcome, tilt, np.zeros(n_slice, dtype=np.int64))
    share = slice_labels.mean()
    np.testing.assert_allclose(p[:, 1], context * p_up_voters / share, rtol=1e-8)
    np.testing.assert_allclose(p[:, 0], context * (1 - p_up_voters) / (1 - share), rtol=1e-8)


def test_several_label_values_solve_the_moment_equations() -> None:
    """A 1-5 rating (Coat): mean q_r over the slice equals the slice's share of every value."""
    rng = np.random.default_rng(4)
    outcome = rng.dirichlet(np.ones(5), 600)
    labels = rng.choice(5, 600, p=[0.3, 0.25, 0.2, 0.15, 0.1])
    tilt = fit_tilt(outcome, labels, np.zeros(600, dtype=np.int64), 1)
    q = outcome * tilt.gamma[0]
    q /= q.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(q.mean(axis=0), np.bincount(labels, minlength=5) / 600, atol=1e-8)


def test_a_slice_without_some_label_is_not_identified() -> None:
    outcome = np.tile([0.4, 0.6], (100, 1))
    with pytest.raises(IdentifiabilityError, match="every label needs slice rows"):
        fit_tilt(outcome, np.ones(100, dtype=np.int64), np.zeros(100, dtype=np.int64), 1)


# --------------------------------------------------------------------------- simulated MNAR logs, end to end


@pytest.fixture(scope="module")
def mnar(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """12,000 simulated exposures with label-dependent selection (users who like an answer react 3x as
    often) and an 8% randomized slice: simulate -> ingest -> propensity fit -> fit-label-aware."""
    from feedback_etl.ingest import IngestConfig, ingest
    from feedback_etl.simulator import SimulationConfig, simulate
    from propensity.models.fit import PropensityConfig, fit_propensity

    root = tmp_path_factory.mktemp("mnar")
    simulate(SimulationConfig(out=str(root / "logs"), n_exposures=12_000, seed=21, randomized_slice=0.08,
                              label_effect=LABEL_EFFECT, rho01=RHO01, rho10=RHO10))
    wh = root / "wh"
    ingest(IngestConfig(inputs=(str(root / "logs" / "events"),), warehouse=str(wh), threads=1))
    fit_propensity(wh, PropensityConfig(folds=3, n_jobs=1, model_params={"n_estimators": 60}))
    result = fit_label_aware(wh, LabelAwareConfig(slice=str(root / "logs" / "slice.parquet"), label_model="none", bootstrap=100, n_jobs=1))
    return {"root": root, "wh": wh, "result": result, "truth": pl.read_parquet(root / "logs" / "truth.parquet")}


def _clean(estimate: float) -> float:
    """Mean vote -> mean clean label: P(r=1) = rho10 + (1 - rho01 - rho10) P(r*=1)."""
    return (estimate - RHO10) / (1 - RHO01 - RHO10)


def test_label_aware_weights_remove_the_bias_context_weights_leave(mnar: dict) -> None:
    """The issue's check: SNIPS mean of the true label y_true, label-aware within its interval of the
    truth, context-only off by far more than its interval."""
    truth = mnar["truth"].filter(~pl.col("solicited"))["y_true"].mean()
    est = mnar["result"].report["estimates"]
    lo, hi = (_clean(v) for v in est["label_aware_snips"]["ci"])
    assert lo <= truth <= hi, (lo, truth, hi)
    ctx_lo, ctx_hi = (_clean(v) for v in est["context_snips"]["ci"])
    assert ctx_lo - truth > 0.1, (ctx_lo, truth)  # people who liked the answer voted 3x as often
    assert abs(_clean(est["naive"]["estimate"]) - truth) > 0.1
    # The label factor is attenuated by the flips (the vote, not y_true, is conditioned on) but clearly > 1.
    factor = mnar["result"].report["label_factors"][0]
    assert 1.5 < factor["relative_propensity_up_vs_down"] < LABEL_EFFECT and factor["ci"][0] > 1.5


def test_scores_file_follows_its_contract(mnar: dict) -> None:
    scores = read_label_aware_scores(mnar["wh"])
    feedback = read_feedback(mnar["wh"])
    frame = feedback.select("exposure_id", "observed", "label", "solicited").join(scores, on="exposure_id", suffix="_s")
    assert frame.height == feedback.height == 12_000
    assert frame.filter(pl.col("solicited"))["propensity"].to_list() == [1.0] * int(feedback["solicited"].sum())
    votes = frame.filter(pl.col("observed") & ~pl.col("solicited"))
    own = np.where(votes["label"].to_numpy() == 1, votes["propensity_label1"].to_numpy(), votes["propensity_label0"].to_numpy())
    np.testing.assert_allclose(votes["propensity"].to_numpy(), own)
    assert (votes["propensity_label1"] >= votes["propensity_label0"]).all()  # up-votes are the likelier reaction (equal when clipped)
    assert ((votes["propensity_lo"] <= votes["propensity"] + 1e-12) & (votes["propensity"] <= votes["propensity_hi"] + 1e-12)).all()
    unvoted = frame.filter(~pl.col("observed"))
    assert unvoted["propensity_lo"].null_count() == unvoted.height
    np.testing.assert_allclose(unvoted["propensity"].to_numpy(), unvoted["propensity_context"].to_numpy())
    assert scores["propensity"].min() >= 0.05 and scores["propensity"].max() <= 1.0
    report = json.loads((mnar["wh"] / "propensity" / "label_aware.json").read_text())
    # `propensity fit` already left the solicited rows out (issue 15): no refit needed.
    assert report["context"]["refit"] is False and report["context"]["source"] == "propensity/scores.parquet"
    assert report["slice"]["response_rate"] == 1.0  # simulated solicitations are always answered
    assert report["estimator"].endswith("(label model none: naive Bayes p(x) P(r | o=1, s) / P(r | s))")
    assert report["slice"]["labelled"] == int(feedback["solicited"].sum()) == report["slice"]["with_gold_label"]


def test_slice_gold_labels_give_the_flip_rates(mnar: dict) -> None:
    """The slice's careful ratings against the users' votes: an audit set for rho01 / rho10."""
    from propensity.noise.estimate import NoiseConfig, estimate_noise

    wh = mnar["root"] / "noise_wh"
    shutil.copytree(mnar["wh"], wh)
    result = estimate_noise(wh, NoiseConfig(method="audit", audit="slice"))
    assert result["rho01_ci"][0] <= RHO01 <= result["rho01_ci"][1]
    assert result["rho10_ci"][0] <= RHO10 <= result["rho10_ci"][1]
    assert result["n_audit"]["used"] == mnar["result"].report["slice"]["with_gold_label"]
    assert mnar["result"].report["noise_from_slice"]["rho01"] == pytest.approx(result["rho01"])


def test_cli_slice_flows_to_weights_and_audit(mnar: dict, tmp_path: Path) -> None:
    from cli import app

    wh = tmp_path / "wh"
    shutil.copytree(mnar["wh"], wh)
    for name in ("scores_label_aware.parquet", "label_aware.json", "slice.parquet"):
        (wh / "propensity" / name).unlink()
    runner = CliRunner()
    fit = runner.invoke(app, ["propensity", "fit-label-aware", str(wh), "--label-model", "none", "--bootstrap", "40", "--threads", "1"])
    assert fit.exit_code == 0, fit.output
    assert re.search(r"label factor P\(vote \| x, up\) / P\(vote \| x, down\) = \d\.\d\d", fit.output)
    assert "label-aware SNIPS" in fit.output

    export = runner.invoke(app, ["weights", "export", str(wh), "--out", str(tmp_path / "ds"), "--propensity", "label-aware", "--no-noise"])
    assert export.exit_code == 0, export.output
    data = pl.read_parquet(tmp_path / "ds" / "data.parquet")
    chosen = read_label_aware_scores(wh).select("exposure_id", p="propensity")
    data = data.join(chosen, on="exposure_id")
    np.testing.assert_allclose(data["propensity"].to_numpy(), data["p"].to_numpy())
    np.testing.assert_allclose(data["weight"].to_numpy(), np.where(data["observed"].to_numpy(), 1 / data["p"].to_numpy(), 0.0))
    manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert manifest["propensity"]["kind"] == "label-aware" and manifest["propensity"]["label_aware"]["label_factors"]
    assert manifest["propensity"]["source"] == "propensity/scores_label_aware.parquet"

    report = runner.invoke(app, ["audit", str(wh), "--out", str(tmp_path / "report.html"), "--strict"])
    assert report.exit_code == 1 and "differs from the randomized slice" in report.output, report.output
    numbers = json.loads((tmp_path / "report.json").read_text())
    status = {g["name"]: g["status"] for g in numbers["guardrails"]}
    assert status["slice_agreement"] == "breach"  # context weights leave the label selection
    kinds = numbers["slice_comparison"]["kinds"]
    assert abs(kinds["label-aware"]["z_vs_slice"]) < 3 < abs(kinds["context"]["z_vs_slice"])
    text = (tmp_path / "report.html").read_text()
    assert "Randomized slice: context vs label-aware propensities" in text and "relative propensity up / down" in text


def test_slice_file_contract_and_merge(tmp_path: Path) -> None:
    feedback = pl.DataFrame({
        "exposure_id": ["a", "b", "c", "d"], "solicited": [True, True, False, False],
        "observed": [True, False, True, False], "label": pl.Series([1, None, 0, None], dtype=pl.Int8),
    })
    path = tmp_path / "slice.csv"
    path.write_text("exposure_id,label,true_label\na,1,1\nc,1,0\nz,0,0\n")
    merged, counts = build_slice(feedback, read_slice_file(path))
    rows = {r["exposure_id"]: r for r in merged.to_dicts()}
    assert set(rows) == {"a", "b", "c"}  # z is not in the warehouse
    assert rows["a"] == {"exposure_id": "a", "label": 1, "true_label": 1, "source": "flag"}
    assert rows["b"]["label"] is None  # solicited, unanswered
    assert rows["c"] == {"exposure_id": "c", "label": 1, "true_label": 0, "source": "file"}  # organic vote 0 stays in the warehouse
    assert counts == {"flagged": 2, "flagged_answered": 1, "file_rows": 3, "file_not_in_warehouse": 1, "file_disagreeing_with_vote": 0}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("exposure_id,true_label\na,1\n", "lacks column"),
        ("exposure_id,label\na,2\n", "other than 0/1"),
        ("exposure_id,label\na,1\na,0\n", "more than once"),
    ],
)
def test_bad_slice_files_are_one_clear_error(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "slice.csv"
    path.write_text(content)
    with pytest.raises(InputFileError, match=message):
        read_slice_file(path)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"channel": "copy"}, ConfigError, "vote channel"),
        ({"label_model": "forest"}, ConfigError, "unknown label model"),
        ({"bootstrap": 5}, ConfigError, "bootstrap"),
        ({"strata": "no_such_column"}, ConfigError, "unknown strata column"),
        ({"strata": "locale", "min_slice": 400}, IdentifiabilityError, "too few labelled slice rows"),
    ],
)
def test_bad_options_are_one_clear_error(mnar: dict, kwargs: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        fit_label_aware(mnar["wh"], LabelAwareConfig(bootstrap=kwargs.pop("bootstrap", 20), **kwargs))


def test_warehouse_without_a_slice_says_how_to_get_one(warehouse: Path) -> None:
    with pytest.raises(WarehouseError, match="no randomized slice"):
        read_slice(warehouse)


def test_scored_exposures_without_a_fold_are_regrouped_by_user(mnar: dict, tmp_path: Path) -> None:
    """Exposures scored after the fit (`propensity score`) carry fold -1; the label-aware fit then
    regroups every exposure by user (the fit's fold count) and gives the same kind of answer."""
    from propensity.io import read_scores, write_scores

    wh = tmp_path / "wh"
    shutil.copytree(mnar["wh"], wh)
    scores = read_scores(wh, "vote")
    write_scores(wh, "vote", scores.with_columns(fold=pl.when(pl.int_range(pl.len()) % 3 == 0).then(-1).otherwise(pl.col("fold")).cast(pl.Int32)))
    result = fit_label_aware(wh, LabelAwareConfig(slice=str(mnar["root"] / "logs" / "slice.parquet"), label_model="none", bootstrap=20, n_jobs=1))
    folds = pl.read_parquet(wh / "propensity" / "scores_label_aware.parquet")["fold"]
    assert folds.min() >= 0 and folds.n_unique() == 3
    baseline = mnar["result"].report["estimates"]["label_aware_snips"]["estimate"]
    assert abs(result.report["estimates"]["label_aware_snips"]["estimate"] - baseline) < 0.05


# --------------------------------------------------------------------------- the default outcome model (LightGBM), value-checked


def test_outcome_model_column_one_is_the_up_vote_probability() -> None:
    """Catches issue 22 bug 3 at its source: the LightGBM outcome model returning its two label
    columns swapped. Column r of m(x) is P(r | x, o=1): column 1 averages to the up-vote share of
    the organic votes and ranks up-votes above down-votes (out of fold)."""
    from propensity.slice.label_aware import outcome_probabilities

    rng = np.random.default_rng(5)
    n = 4_000
    x = rng.normal(size=(n, 3))
    label = (rng.random(n) < 1 / (1 + np.exp(-(1.0 + 2.0 * x[:, 0])))).astype(np.int64)  # ~70% up-votes
    observed = rng.random(n) < 0.6
    folds = np.arange(n) % 3
    strata = np.zeros(n, dtype=np.int64)
    m, info = outcome_probabilities(x, label, np.flatnonzero(observed), folds, model="lightgbm", strata=strata, n_strata=1, n_jobs=1)
    assert m.shape == (n, 2)
    np.testing.assert_allclose(m.sum(axis=1), 1.0)
    assert m[observed, 1].mean() == pytest.approx(label[observed].mean(), abs=0.03)
    assert info["auc_organic_votes"] > 0.75
    # the constant model has the same orientation
    m_none, _ = outcome_probabilities(x, label, np.flatnonzero(observed), folds, model="none", strata=strata, n_strata=1)
    assert m_none[0, 1] == pytest.approx(label[observed].mean())


def test_default_label_model_removes_the_bias_on_mnar_logs(mnar: dict, tmp_path: Path) -> None:
    """Catches issue 22 bug 3: the default label-aware path (label_model lightgbm) value-checked on
    the simulated MNAR logs, as the naive-Bayes path is above (every other value-checking test uses
    label_model none). With the outcome columns swapped it answered 0.885 against a truth of 0.501
    and a label factor of 0.71."""
    wh = tmp_path / "wh"
    shutil.copytree(mnar["wh"], wh)
    result = fit_label_aware(wh, LabelAwareConfig(slice=str(mnar["root"] / "logs" / "slice.parquet"), bootstrap=60, n_jobs=1))
    assert result.report["config"]["label_model"] == "lightgbm"
    truth = mnar["truth"].filter(~pl.col("solicited"))["y_true"].mean()
    est = result.report["estimates"]
    lo, hi = (_clean(v) for v in est["label_aware_snips"]["ci"])
    assert lo <= truth <= hi, (lo, truth, hi)
    assert abs(_clean(est["label_aware_snips"]["estimate"]) - truth) < 0.05
    factor = result.report["label_factors"][0]
    assert 1.5 < factor["relative_propensity_up_vs_down"] < LABEL_EFFECT and factor["ci"][0] > 1.2
    # The context features barely predict the vote here (the simulator's reward lives in the text):
    # m_1(x) stays near the organic up-vote share, on the right side of it.
    assert result.report["outcome_model"]["mean"] > 0.5


def test_refit_context_always_refits_on_organic_rows(mnar: dict, tmp_path: Path) -> None:
    """refit_context="always" refits the context model on the organic rows (mutation testing found
    the refit branch unexercised once `propensity fit` left solicited rows out by itself), and the
    estimate stays on the truth's side of the context-only one."""
    wh = tmp_path / "wh"
    shutil.copytree(mnar["wh"], wh)
    result = fit_label_aware(wh, LabelAwareConfig(slice=str(mnar["root"] / "logs" / "slice.parquet"), label_model="none",
                                                  refit_context="always", bootstrap=20, n_jobs=1))
    assert result.report["context"]["refit"] is True and result.report["context"]["n_organic"] == int((~mnar["truth"]["solicited"]).sum())
    truth = mnar["truth"].filter(~pl.col("solicited"))["y_true"].mean()
    est = result.report["estimates"]
    assert abs(_clean(est["label_aware_snips"]["estimate"]) - truth) < abs(_clean(est["context_snips"]["estimate"]) - truth)
