"""fit-label-aware above its budget with more organic votes than the budget holds with their features
(issue 23): the outcome model's fold models train on a uniform sample of the votes, every row's
m(x) comes from a second pass, and what was sampled is recorded.

Inputs: the ``mnar`` warehouse of test_label_aware.py (12,000 simulated exposures, label effect 3,
8% randomized slice, about 2,200 organic votes, ``propensity fit`` done). ``max_rows=1`` streams the
fit; ``max_votes`` forces the sample (30% of the votes) where a small table would never need one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from feedback_etl.io import read_feedback
from feedback_etl.sizes import parse_memory
from propensity.models.casecontrol import BASE_BYTES, BYTES_PER_ROW
from propensity.slice import _label_aware_streamed as streamed
from propensity.slice.label_aware import LabelAwareConfig, fit_label_aware, read_label_aware_scores
from schemas.errors import ConfigError
from tests.propensity.test_label_aware import mnar  # noqa: F401  (the shared simulated warehouse)
from tests.propensity.test_multilevel_label import rated  # noqa: F401  (a simulated warehouse with a 1-5 rating)
from tests.propensity.test_streamed_chain import _close

STREAMED = {"max_rows": 1, "batch_rows": 997}


def _votes(wh: Path) -> pl.DataFrame:
    feedback = read_feedback(wh)
    return feedback.filter(pl.col("observed") & ~pl.col("solicited")).select("exposure_id", "label")


def _fit(mnar: dict, wh: Path, **options):  # noqa: F811
    shutil.copytree(mnar["wh"], wh)
    cfg = LabelAwareConfig(slice=str(mnar["root"] / "logs" / "slice.parquet"), bootstrap=40, n_jobs=1, **STREAMED, **options)
    return fit_label_aware(wh, cfg)


@pytest.fixture(scope="module")
def fits(mnar: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:  # noqa: F811
    root = tmp_path_factory.mktemp("la_sampled")
    n_votes = _votes(mnar["wh"]).height
    used = int(0.3 * n_votes)
    return {"n_votes": n_votes, "used": used, "full": (root / "full", _fit(mnar, root / "full")),
            "sampled": (root / "sampled", _fit(mnar, root / "sampled", max_votes=used))}


def test_sampled_fit_records_its_sample_and_stays_close_to_the_full_fit(fits: dict) -> None:
    (wh_a, full), (wh_b, sampled) = fits["full"], fits["sampled"]
    assert "sampling" not in full.report["outcome_model"] and full.report["memory"]["votes"]["sampled"] is False
    record = sampled.report["outcome_model"]["sampling"]
    # (a) what was sampled: exactly max_votes of the votes, at the rate recorded, with the fit's seed
    assert record["votes_total"] == fits["n_votes"] > 2_000
    assert record["votes_used"] == fits["used"] == record["max_train"]
    assert record["rate"] == pytest.approx(fits["used"] / fits["n_votes"]) and 0.29 < record["rate"] < 0.31
    assert record["seed"] == 0 and sampled.report["memory"]["votes"]["sampled"] is True

    # (b) what does not involve m(x) is the same; the label-aware estimate moves by less than a
    # third of its own interval (a 30% sample of ~2,200 votes refits a weak outcome model)
    e_a, e_b = full.report["estimates"], sampled.report["estimates"]
    for key in ("naive", "context_snips", "slice"):
        assert e_b[key]["estimate"] == pytest.approx(e_a[key]["estimate"], rel=1e-12), key
    width = e_a["label_aware_snips"]["ci"][1] - e_a["label_aware_snips"]["ci"][0]
    assert 0 < width < 0.2
    assert abs(e_b["label_aware_snips"]["estimate"] - e_a["label_aware_snips"]["estimate"]) < width / 3
    f_a = full.report["label_factors"][0]["relative_propensity_up_vs_down"]
    f_b = sampled.report["label_factors"][0]["relative_propensity_up_vs_down"]
    assert abs(np.log(f_b / f_a)) < 0.1
    assert e_b["n_organic_observed"] == e_a["n_organic_observed"] == fits["n_votes"]  # every vote is still weighted

    # every exposure scored; rows that do not depend on m(x) are the same, the votes' weights close
    a, b = read_label_aware_scores(wh_a), read_label_aware_scores(wh_b)
    assert a.height == b.height == 12_000 and a["exposure_id"].equals(b["exposure_id"])
    assert_frame_equal(a.select("solicited", "propensity_context", "fold"), b.select("solicited", "propensity_context", "fold"))
    votes = (~a["solicited"]).to_numpy() & a["propensity_lo"].is_not_null().to_numpy()
    assert votes.sum() == fits["n_votes"] and b["propensity_lo"].is_not_null().to_numpy()[votes].all()
    ratio = b["propensity"].to_numpy()[votes] / a["propensity"].to_numpy()[votes]
    assert np.median(np.abs(np.log(ratio))) < 0.1


def test_second_pass_with_every_vote_equals_the_unsampled_fit(fits: dict, mnar: dict, tmp_path: Path,  # noqa: F811
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The sampled path with room for every vote: the fold models train on the same votes in the same
    order and every row's m(x) comes from the second pass; the result equals the unsampled fit."""
    plan = streamed.vote_plan

    def every_vote(**kw):
        return {**plan(**kw), "sampled": True, "max_train": kw["n_votes"] + 10}

    monkeypatch.setattr(streamed, "vote_plan", every_vote)
    result = _fit(mnar, tmp_path / "wh")
    assert result.report["outcome_model"]["sampling"]["votes_used"] == fits["n_votes"]
    assert result.report["outcome_model"]["sampling"]["rate"] == 1.0
    full = fits["full"][1]
    for key in ("estimates", "label_factors", "weights", "clipping"):
        assert _close(result.report[key], full.report[key]), key
    assert_frame_equal(read_label_aware_scores(fits["full"][0]), read_label_aware_scores(tmp_path / "wh"),
                       check_exact=False, rel_tol=1e-12, abs_tol=1e-15)


def _core(wh: Path, cap: int, n_votes: int, *, seed: int = 0, batch_rows: int = 997) -> streamed.CoreRows:
    columns = ["observed", "label", "solicited", "propensity", "fold"]
    plan = {"sampled": True, "max_train": cap, "n_votes": n_votes}
    with streamed.streamed_inputs(wh, channel="vote", embeddings=False, slice_ids=None, memory_limit_bytes=256 * 2**20) as inputs:
        return streamed.read_core(inputs, batch_rows=batch_rows, columns=columns, plan=plan, seed=seed, strata=None,
                                  strata_levels=["all"], label_column=None,
                                  features=lambda frame: frame.select("exposure_id").to_pandas())


def test_vote_sample_is_uniform_of_exact_size_and_independent_of_batches(fits: dict, mnar: dict) -> None:  # noqa: F811
    votes = _votes(mnar["wh"]).sort("exposure_id")
    n, cap = votes.height, fits["used"]
    core = _core(mnar["wh"], cap, n)
    # exactly cap rows, all organic votes, in row order, their features those of the held rows
    assert len(core.held) == cap and core.sampling["votes_used"] == cap
    assert core.observed[core.held].all() and (np.diff(core.held) > 0).all()
    assert core.observed.sum() == n and set(core.X["exposure_id"]) <= set(votes["exposure_id"])
    # the same rows whatever the batch size; another seed draws another sample
    assert np.array_equal(_core(mnar["wh"], cap, n, batch_rows=5_000).held, core.held)
    other = _core(mnar["wh"], cap, n, seed=1).held
    assert len(other) == cap and 0.2 < len(np.intersect1d(other, core.held)) / cap < 0.45  # ~30% overlap by chance
    # uniform: a simple random sample without replacement of the votes, so each fold's share of the
    # sample and the sample's up-vote share are hypergeometric around the votes' (5 sd bounds)
    rate = cap / n
    fpc = (n - cap) / (n - 1)
    labels = core.label[core.observed]
    held_labels = core.label[core.held]
    p = labels.mean()
    assert abs(held_labels.mean() - p) < 5 * np.sqrt(p * (1 - p) / cap * fpc)
    for k in np.unique(core.folds[core.observed]):
        in_fold = int((core.folds[core.observed] == k).sum())
        drawn = int((core.folds[core.held] == k).sum())
        assert abs(drawn - rate * in_fold) < 5 * np.sqrt(in_fold * rate * (1 - rate)), k


@pytest.mark.parametrize("limit", ["1GB", "4GB", "16GB"])
@pytest.mark.parametrize("n_core,n_votes", [(40_000, 36_000), (3_600_000, 3_300_000), (7_100_000, 6_500_000)])
def test_vote_plan_never_holds_more_than_the_budget(limit: str, n_core: int, n_votes: int) -> None:
    """The plan's arithmetic: interpreter + DuckDB's share + every core row's compact arrays + the
    training rows' features fit the budget whenever the minimum sample does; nothing is sampled
    when every core row's features fit."""
    budget = parse_memory(limit)
    plan = streamed.vote_plan(memory_limit_bytes=budget, n_core=n_core, n_votes=n_votes)
    duck = streamed.duckdb_bytes(budget)
    fixed = BASE_BYTES + duck + n_core * streamed.BYTES_PER_CORE_ROW
    assert plan["max_train"] == max(streamed.MIN_TRAIN_VOTES, (budget - fixed) // BYTES_PER_ROW)
    if plan["max_train"] > streamed.MIN_TRAIN_VOTES:
        assert fixed + plan["max_train"] * BYTES_PER_ROW <= budget
    held = n_core if not plan["sampled"] else min(plan["max_train"], n_votes)
    assert (fixed + held * BYTES_PER_ROW <= budget) or held == streamed.MIN_TRAIN_VOTES
    assert plan["sampled"] == (fixed + n_core * BYTES_PER_ROW > budget)
    capped = streamed.vote_plan(memory_limit_bytes=budget, n_core=n_core, n_votes=n_votes, max_votes=1_000)
    assert capped["sampled"] and capped["max_train"] == 1_000


def test_max_votes_is_checked() -> None:
    with pytest.raises(ConfigError, match="max_votes"):
        LabelAwareConfig(max_votes=5)


def test_sampled_multilevel_fit_trains_on_the_sample_and_weights_every_rated_row(rated, tmp_path: Path) -> None:  # noqa: F811
    """A multi-level label (``rating``, 5 values) with 40% of the rated rows as the multiclass fold
    models' training set: the sample is recorded, every rated row is still weighted, and the mean
    rating moves by less than half its interval."""
    from tests.propensity.test_multilevel_label import _slice

    wh, truth = rated
    _slice(truth, tmp_path / "slice.csv", 400, seed=2)
    n_votes = _votes(wh).height
    reports = {}
    for name, options in (("full", {}), ("sampled", {"max_votes": int(0.4 * n_votes)})):
        copy = tmp_path / name
        shutil.copytree(wh, copy)
        cfg = LabelAwareConfig(slice=str(tmp_path / "slice.csv"), label_column="rating", bootstrap=20, clip=0.01, n_jobs=1, **STREAMED,
                               **options)
        reports[name] = fit_label_aware(copy, cfg).report
    full, sampled = reports["full"], reports["sampled"]
    assert "sampling" not in full["outcome_model"]
    assert sampled["outcome_model"]["sampling"]["votes_used"] == int(0.4 * n_votes) < n_votes == sampled["outcome_model"]["sampling"]["votes_total"]
    assert sampled["outcome_model"]["n_labels"] == 5 and sampled["estimates"]["n_organic_observed"] == n_votes
    e_a, e_b = full["estimates"]["label_aware_snips"], sampled["estimates"]["label_aware_snips"]
    assert abs(e_b["estimate"] - e_a["estimate"]) < (e_a["ci"][1] - e_a["ci"][0]) / 2


def test_cli_max_votes_option_samples_and_says_so(fits: dict, mnar: dict, tmp_path: Path) -> None:  # noqa: F811
    from typer.testing import CliRunner

    from cli import app

    wh = tmp_path / "wh"
    shutil.copytree(mnar["wh"], wh)
    args = ["propensity", "fit-label-aware", str(wh), "--slice", str(mnar["root"] / "logs" / "slice.parquet"), "--bootstrap", "20",
            "--threads", "1", "--max-rows", "1000", "--max-votes", str(fits["used"])]
    run = CliRunner().invoke(app, args)
    assert run.exit_code == 0, run.output
    assert f"uniform sample of {fits['used']:,} of {fits['n_votes']:,} votes" in run.output.replace("\n", " ")
    report = json.loads((wh / "propensity" / "label_aware.json").read_text())
    assert report["outcome_model"]["sampling"]["votes_used"] == fits["used"]
