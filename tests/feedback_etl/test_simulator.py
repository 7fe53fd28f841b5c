"""The simulator honours its parameters and its bookkeeping is exact."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from cli import app
from feedback_etl.simulator import SimulationConfig, simulate
from schemas.errors import ConfigError


@pytest.fixture(scope="module")
def big_sim(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim")
    summary = simulate(SimulationConfig(out=str(out), n_exposures=60_000, alpha=0.5, rho01=0.2, rho10=0.1, messiness=0.5, seed=3, chunk_size=25_000))
    return out, summary


def test_observation_and_flip_rates_match_request(big_sim):
    out, _ = big_sim
    truth = pl.read_parquet(out / "truth.parquet")
    n = truth.height
    obs = truth.filter(pl.col("observed"))
    rate = obs.height / n
    assert abs(rate - 0.2) < 4 * math.sqrt(0.2 * 0.8 / n) + 0.01  # pilot-sample scale error allowed
    pos, neg = obs.filter(pl.col("y_true") == 1), obs.filter(pl.col("y_true") == 0)
    rho01 = pos["flipped"].mean()
    rho10 = neg["flipped"].mean()
    assert abs(rho01 - 0.2) < 4 * math.sqrt(0.2 * 0.8 / pos.height)
    assert abs(rho10 - 0.1) < 4 * math.sqrt(0.1 * 0.9 / neg.height)
    # label = y_true xor flipped on observed rows, null elsewhere
    assert (obs["label"] == np.where(obs["flipped"], 1 - obs["y_true"], obs["y_true"])).all()
    assert truth.filter(~pl.col("observed"))["label"].null_count() == n - obs.height


def test_propensity_follows_alpha_power_of_reward(big_sim):
    out, _ = big_sim
    truth = pl.read_parquet(out / "truth.parquet")
    rho = truth.select(pl.corr("r_star", "propensity", method="spearman")).item()
    assert rho > 0.5
    # without context effects, log p is exactly linear in r* with slope -log(alpha)
    out2 = out.parent / "nocontext"
    simulate(SimulationConfig(out=str(out2), n_exposures=5_000, alpha=0.2, context_effects=False, seed=1))
    t2 = pl.read_parquet(out2 / "truth.parquet").filter(pl.col("propensity").is_between(0.0011, 0.979))
    slope = np.polyfit(t2["r_star"].to_numpy(), np.log(t2["propensity"].to_numpy()), 1)[0]
    assert slope == pytest.approx(-math.log(0.2), rel=1e-6)


def test_messiness_counts_match_truth_and_files(big_sim):
    out, summary = big_sim
    counts = summary["counts"]
    truth = pl.read_parquet(out / "truth.parquet")
    events = pl.read_parquet(out / "events" / "*.parquet")
    assert events.height == counts["rows_written"]
    assert counts["late_events"] == truth["n_late_events"].sum() > 0
    assert counts["duplicates"] == truth["n_duplicate_events"].sum() > 0
    assert counts["toggled_exposures"] == truth["toggled"].sum() > 0
    assert counts["cleared_exposures"] == truth["cleared"].sum() > 0
    assert events.filter(pl.col("exposure_id").str.starts_with("orphan-")).height == counts["orphan_feedback"] > 0
    assert events.filter(pl.col("event_type") == "thumbs_sideways").height == counts["malformed"]["unknown_event_type"] > 0
    assert events.filter(pl.col("event_time").str.starts_with("2026-13")).height == counts["malformed"]["bad_timestamp"] > 0
    ids = events.filter(pl.col("event_id").is_not_null())
    assert ids.height - ids["event_id"].n_unique() == counts["duplicates"]
    assert events.filter(pl.col("event_type") == "impression").unique("event_id").height == truth.height
    assert json.loads((out / "simulation.json").read_text())["counts"] == counts


def test_deterministic_for_a_seed(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        simulate(SimulationConfig(out=str(d), n_exposures=3_000, messiness=0.4, seed=5))
    assert pl.read_parquet(a / "events" / "*.parquet").equals(pl.read_parquet(b / "events" / "*.parquet"))
    assert pl.read_parquet(a / "truth.parquet").equals(pl.read_parquet(b / "truth.parquet"))


def test_jsonl_output_with_unparseable_lines(tmp_path):
    summary = simulate(SimulationConfig(out=str(tmp_path), n_exposures=20_000, messiness=1.0, format="jsonl", seed=2))
    lines = (tmp_path / "events" / "part-00000.jsonl").read_text().splitlines()
    assert len(lines) == summary["counts"]["rows_written"]
    bad = 0
    for line in lines:
        try:
            json.loads(line)
        except json.JSONDecodeError:
            bad += 1
    assert bad == summary["counts"]["malformed"]["unparseable_row"] > 0


@pytest.mark.parametrize("texts", ["hh_rlhf", "oasst", "finegrained"])
def test_real_text_sources_give_reward_tied_to_human_labels(tmp_path, texts, shared_dataset):
    from feedback_etl.texts import load_text_pool

    folder = {"finegrained": "finegrained_rlhf"}.get(texts, texts)
    pool = load_text_pool(texts, shared_dataset(folder).parent)
    assert len(pool) > 600
    assert ((pool.r_star >= 0) & (pool.r_star <= 1)).all()
    assert np.corrcoef(pool.r_star, pool.human_target)[0, 1] > 0.3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"alpha": 0.0}, "alpha"),
        ({"rho01": 0.6, "rho10": 0.5}, "rho01 + rho10"),
        ({"texts": "reddit"}, "texts must be"),
        ({"messiness": 2.0}, "messiness"),
    ],
)
def test_bad_config_is_one_clear_error(kwargs, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        SimulationConfig(out="x", **kwargs)


def test_cli_simulate(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["simulate", "--out", str(tmp_path), "--n-exposures", "2000", "--seed", "1"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "truth.parquet").exists()
    bad = runner.invoke(app, ["simulate", "--out", str(tmp_path), "--rho01", "0.7", "--rho10", "0.6"])
    assert bad.exit_code == 1
    assert "rho01 + rho10" in bad.output
    assert "Traceback" not in bad.output


def test_label_effect_makes_selection_depend_on_the_label(tmp_path):
    """label_effect > 1: among exposures with the same r*, liked ones are observed more often."""
    simulate(SimulationConfig(out=str(tmp_path), n_exposures=40_000, label_effect=3.0, context_effects=False, seed=4))
    truth = pl.read_parquet(tmp_path / "truth.parquet")
    by_label = truth.group_by("y_true").agg(pl.col("propensity").mean()).sort("y_true")["propensity"].to_list()
    assert by_label[1] > 2.0 * by_label[0]
    ratio = truth.filter(pl.col("propensity").is_between(0.0011, 0.979)).with_columns(
        base=0.5 ** (pl.col("r_star").max() - pl.col("r_star"))
    ).with_columns(k=pl.col("propensity") / pl.col("base"))
    ks = ratio.group_by("y_true").agg(pl.col("k").mean()).sort("y_true")["k"].to_list()
    assert ks[1] / ks[0] == pytest.approx(3.0, rel=1e-6)


def test_randomized_slice_is_always_observed(tmp_path):
    simulate(SimulationConfig(out=str(tmp_path), n_exposures=5_000, randomized_slice=0.1, seed=4))
    truth = pl.read_parquet(tmp_path / "truth.parquet")
    sliced = truth.filter(pl.col("solicited"))
    assert abs(sliced.height / truth.height - 0.1) < 4 * math.sqrt(0.09 / truth.height)
    assert sliced["observed"].all()


def test_randomized_slice_file_lists_each_solicited_vote_with_a_careful_rating(tmp_path):
    """DIR/slice.parquet (issue 11): one row per solicited exposure, its vote (label) and gold true_label = y_true."""
    summary = simulate(SimulationConfig(out=str(tmp_path), n_exposures=3_000, randomized_slice=0.1, seed=6, chunk_size=1_000))
    truth = pl.read_parquet(tmp_path / "truth.parquet").filter(pl.col("solicited")).sort("exposure_id")
    sliced = pl.read_parquet(tmp_path / "slice.parquet").sort("exposure_id")
    assert sliced.columns == ["exposure_id", "label", "true_label"]
    assert sliced["exposure_id"].to_list() == truth["exposure_id"].to_list()
    assert (sliced["label"] == truth["label"]).all() and (sliced["true_label"] == truth["y_true"]).all()
    assert summary["counts"]["solicited"] == sliced.height > 0
    assert 0 < (sliced["label"] != sliced["true_label"]).sum() < sliced.height / 2  # votes are noisy, ratings are not
    simulate(SimulationConfig(out=str(tmp_path), n_exposures=1_000, seed=6))
    assert not (tmp_path / "slice.parquet").exists()  # a stale slice of an earlier run is removed


def test_embedding_teacher_is_learnable_and_cached(tmp_path, monkeypatch) -> None:
    """The embedding teacher: r* in (0, 1), standardised spread, follows the human target where the
    embedding can see it (synthetic texts), reports a held-out AUC, and a second call with the same
    cache encodes nothing."""
    from scipy.stats import spearmanr

    from feedback_etl import embed as embed_module
    from feedback_etl.texts import _embedding_teacher, _synthetic

    prompts, responses, target = _synthetic(n_responses=120, seed=3)
    target = np.asarray(target)
    r_star, auc = _embedding_teacher(prompts, responses, target, cache=str(tmp_path / "cache"), max_length=64)
    assert r_star.shape == (120,) and ((r_star > 0) & (r_star < 1)).all()
    assert 0.25 < r_star.std() < 0.45  # sigmoid(2.5 z): a wide, fixed spread
    assert spearmanr(r_star, target).statistic > 0.6
    assert auc is not None and auc > 0.7

    def refuse(self, texts, advance=None):
        raise AssertionError(f"encoded {len(texts)} texts despite the cache")

    monkeypatch.setattr(embed_module._Encoder, "encode", refuse)
    again, _ = _embedding_teacher(prompts, responses, target, cache=str(tmp_path / "cache"), max_length=64)
    np.testing.assert_allclose(again, r_star, atol=1e-6)


def test_unknown_teacher_is_a_config_error(tmp_path) -> None:
    with pytest.raises(ConfigError, match="teacher"):
        SimulationConfig(out=str(tmp_path), teacher="oracle")
