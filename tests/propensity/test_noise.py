"""Noise-rate estimation (issue 10): anchor points, audit set, identifiability guard, JSON, CLI.

Test shortcut (documented): where a warehouse needs ``WH/propensity/scores.parquet``, the TRUE
propensities from the simulator's truth table are written in its layout, so these tests do not
depend on (or pay for) a propensity fit.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from feedback_etl.simulator import SimulationConfig, exposure_frame
from propensity.models.crossfit import group_folds
from propensity.io import write_scores
from propensity.noise.estimate import (
    NoiseConfig,
    anchor_rates,
    anchor_sets,
    audit_rates,
    estimate_noise,
    estimate_noise_frame,
    proportion_ci,
    read_audit,
    read_noise,
    segment_anchor_rates,
)
from schemas.errors import ConfigError, IdentifiabilityError, InputFileError, WarehouseError


# ------------------------------------------------------------------------------------ anchor_rates


def _ranked(n: int = 1000, *, top_zeros: int = 20, bottom_ones: int = 10, block: int = 100):
    """n exposures scored 0..n-1, all observed; the top block holds `top_zeros` down-votes, the
    bottom block `bottom_ones` up-votes; the middle is all up-votes (it must never be used)."""
    score = np.arange(n, dtype=float)
    label = np.ones(n, dtype=int)
    label[:block] = 0
    label[:bottom_ones] = 1
    label[n - top_zeros :] = 0
    return score, np.ones(n, bool), label, np.ones(n), np.arange(n) % 50


def test_anchor_rates_are_held_out_label_means_of_the_anchor_sets():
    score, observed, label, weight, user = _ranked()
    out = anchor_rates(score, observed, label, weight, user, quantile=0.9, min_anchors=1, n_bootstrap=50)
    assert out["rho01"] == pytest.approx(0.2)  # 20 down-votes among the top 100
    assert out["rho10"] == pytest.approx(0.1)  # 10 up-votes among the bottom 100
    assert out["n_anchor"] == {"top": 100, "bottom": 100}
    assert out["quantile_by_side"] == {"top": pytest.approx(0.9), "bottom": pytest.approx(0.9)}
    assert out["rho01_ci"][0] <= 0.2 <= out["rho01_ci"][1]
    assert out["warnings"] == []


def test_anchor_rates_use_self_normalised_inverse_propensity_weights():
    score, observed, label, weight, user = _ranked()
    weight[990:] = 4.0  # the 10 highest-scored rows, all down-votes, count 4 times
    out = anchor_rates(score, observed, label, weight, user, quantile=0.9, min_anchors=1, n_bootstrap=50)
    # top 100: 10 rows weight 4 (label 0), 10 rows weight 1 (label 0), 80 rows weight 1 (label 1)
    assert out["rho01"] == pytest.approx(1 - 80 / (40 + 10 + 80))


def test_quantile_widens_per_side_until_min_anchors_observed_rows():
    score, observed, label, weight, user = _ranked(2000, block=200)
    observed[::4] = False  # 3 in 4 rows observed
    out = anchor_rates(score, observed, label, weight, user, quantile=0.97, min_anchors=120, min_quantile=0.75, n_bootstrap=50)
    assert out["n_anchor"] == {"top": 120, "bottom": 120}
    # from the top the pattern is observed x3, unobserved: 159 rows hold 120 observed ones;
    # from the bottom it starts with the unobserved row: 160 rows
    assert out["quantile_by_side"] == {"top": pytest.approx(1 - 159 / 2000), "bottom": pytest.approx(1 - 160 / 2000)}
    assert out["quantile"] == pytest.approx(min(out["quantile_by_side"].values()))
    assert any("widened from 0.97" in w for w in out["warnings"])


def test_widening_stops_at_min_quantile_with_a_warning():
    score, observed, label, weight, user = _ranked()
    out = anchor_rates(score, observed, label, weight, user, quantile=0.97, min_anchors=500, min_quantile=0.8, n_bootstrap=50)
    assert out["n_anchor"] == {"top": 200, "bottom": 200}
    assert sum("only 200 observed rows" in w for w in out["warnings"]) == 2


def test_segment_rates_split_the_global_anchor_sets():
    score, observed, label, weight, user = _ranked()
    out = anchor_rates(score, observed, label, weight, user, quantile=0.9, min_anchors=1, n_bootstrap=50)
    top, bottom = anchor_sets(score, out["n_anchor_exposures"]["top"], out["n_anchor_exposures"]["bottom"])
    assert top.sum() == bottom.sum() == 100 and top[-100:].all() and bottom[:100].all()
    even = np.arange(score.size) % 2 == 0  # a segment: the even rows
    seg = segment_anchor_rates(top[even], bottom[even], observed[even], label[even], weight[even], user[even], n_bootstrap=50)
    assert seg["n_anchor"] == {"top": 50, "bottom": 50}
    assert seg["rho01"] == pytest.approx(10 / 50)  # the even half of the 20 top down-votes
    assert seg["rho10"] == pytest.approx(5 / 50)


def test_bootstrap_is_seeded():
    args = _ranked()
    a = anchor_rates(*args, quantile=0.9, min_anchors=1, n_bootstrap=50, seed=3)
    b = anchor_rates(*args, quantile=0.9, min_anchors=1, n_bootstrap=50, seed=3)
    assert a == b


def test_user_codes_strings_and_sparse_ids_give_the_same_bootstrap():
    # dense integer codes skip np.unique's sort (a streamed estimate's users); the bootstrap must
    # resample the same users in the same order as from their ids, and the unweighted, unlabelled
    # parts of unobserved rows (inf weights, any label) must not leak into the rates
    rng = np.random.default_rng(5)
    n = 3000
    score, observed = rng.random(n), rng.random(n) < 0.3
    label = np.where(observed, (rng.random(n) < score).astype(float), np.nan)
    weight = np.where(observed, 1 / rng.uniform(0.2, 0.9, n), np.inf)
    codes = rng.integers(0, 150, n)
    codes = np.unique(codes, return_inverse=True)[1].astype(np.int32)  # every code 0..n_users-1 present
    kw = {"quantile": 0.9, "min_anchors": 30, "n_bootstrap": 40, "seed": 1}
    dense = anchor_rates(score, observed, label, weight, codes, **kw)
    assert dense == anchor_rates(score, observed, label, weight, np.array([f"u{c:04d}" for c in codes]), **kw)
    assert dense == anchor_rates(score, observed, label, weight, codes.astype(np.int64) * 7 + 3, **kw)
    assert all(math.isfinite(dense[k]) for k in ("rho01", "rho10"))


# ------------------------------------------------------------------------------------ audit


@pytest.mark.parametrize(
    ("successes", "trials", "interval", "expected"),
    [
        (0, 10, "clopper-pearson", (0.0, 1 - 0.025 ** (1 / 10))),  # closed form at x = 0
        (10, 10, "clopper-pearson", (0.025 ** (1 / 10), 1.0)),
        (5, 10, "wilson", (0.2366, 0.7634)),
        (0, 10, "wilson", (0.0, 0.2775)),
    ],
)
def test_proportion_ci_closed_forms(successes, trials, interval, expected):
    lo, hi = proportion_ci(successes, trials, interval=interval)
    assert (lo, hi) == pytest.approx(expected, abs=1e-4)


def test_audit_rates_from_confusion_counts():
    true = np.array([1] * 10 + [0] * 5)
    seen = np.array([1] * 8 + [0] * 2 + [1] + [0] * 4)
    out = audit_rates(true, seen)
    assert (out["rho01"], out["rho10"]) == (0.2, 0.2)
    assert out["confusion"] == {"true1_r1": 8, "true1_r0": 2, "true0_r1": 1, "true0_r0": 4}


@pytest.mark.parametrize("interval", ["clopper-pearson", "wilson"])
def test_audit_intervals_cover_the_truth_at_nominal_rate(interval):
    """200 seeded audits of 150 good and 100 bad answers with rho01 = 0.2, rho10 = 0.1. Coverage
    of a 95% interval over 200 draws has sd 0.015; 0.91 is 2.5 sd below nominal."""
    covered = 0
    for seed in range(200):
        rng = np.random.default_rng(seed)
        true = np.array([1] * 150 + [0] * 100)
        flip = rng.random(true.size) < np.where(true == 1, 0.2, 0.1)
        out = audit_rates(true, np.where(flip, 1 - true, true), interval=interval)
        covered += (out["rho01_ci"][0] <= 0.2 <= out["rho01_ci"][1]) + (out["rho10_ci"][0] <= 0.1 <= out["rho10_ci"][1])
    assert covered / 400 >= 0.91


def _write(tmp_path: Path, name: str, frame: pl.DataFrame) -> Path:
    path = tmp_path / name
    {".csv": frame.write_csv, ".parquet": frame.write_parquet, ".jsonl": frame.write_ndjson}[path.suffix](path)
    return path


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl"])
def test_read_audit_formats(tmp_path, suffix):
    frame = pl.DataFrame({"exposure_id": ["a", "b", "b"], "true_label": [1, 0, 0], "note": ["x", "y", "y"]})
    audit = read_audit(_write(tmp_path, f"audit{suffix}", frame))
    assert audit.columns == ["exposure_id", "true_label"]
    assert sorted(audit.rows()) == [("a", 1), ("b", 0)]


@pytest.mark.parametrize(
    ("name", "frame", "message"),
    [
        ("a.csv", pl.DataFrame({"exposure_id": ["a"], "label": [1]}), "lacks column(s) true_label"),
        ("a.csv", pl.DataFrame({"exposure_id": ["a", "b"], "true_label": [1, 2]}), "other than 0/1"),
        ("a.csv", pl.DataFrame({"exposure_id": ["a", "b"], "true_label": ["1", "yes"]}), "other than 0/1"),
        ("a.csv", pl.DataFrame({"exposure_id": ["a", "a"], "true_label": [1, 0]}), "both true labels"),
        ("a.txt", pl.DataFrame({"exposure_id": ["a"], "true_label": [1]}), "unknown audit file format"),
    ],
)
def test_read_audit_rejects_bad_files(tmp_path, name, frame, message):
    path = tmp_path / name
    frame.write_csv(path)
    with pytest.raises(InputFileError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_audit(path)


# ------------------------------------------------------------------------------------ guards


def _frame(observed, label, n=200):
    return pl.DataFrame(
        {
            "exposure_id": [f"e{i}" for i in range(n)],
            "user_id": [f"u{i % 20}" for i in range(n)],
            "observed": observed,
            "label": pl.Series(label, dtype=pl.Int8),
            "position": np.arange(n) % 4,
        }
    )


def _anti_ranked():
    score, observed, label, weight, user = _ranked()
    return -score, observed, label, weight, user  # top anchors are the down-voted block


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: anchor_rates(*_anti_ranked(), quantile=0.9, min_anchors=1, n_bootstrap=50), "not identified"),
        (lambda: anchor_rates(np.arange(10.0), np.zeros(10, bool), np.zeros(10), np.ones(10), np.arange(10)), "no observed rows"),
        (
            lambda: anchor_rates(np.arange(100.0), np.r_[np.zeros(10), np.ones(80), np.zeros(10)].astype(bool), np.ones(100),
                                 np.ones(100), np.arange(100), quantile=0.95, min_quantile=0.95, n_bootstrap=50),
            "empty anchor set",
        ),
        (lambda: audit_rates(np.ones(20), np.ones(20)), "one-class audit"),
        (lambda: audit_rates(np.r_[np.ones(20), np.zeros(20)], np.r_[np.zeros(20), np.ones(20)]), "not identified"),
        (lambda: estimate_noise_frame(_frame([True] * 200, [1] * 200), NoiseConfig()), "one-class channel"),
        (lambda: estimate_noise_frame(_frame([True] * 200, [1] * 200), NoiseConfig(channel="copy")), "is one-class: an implicit signal"),
    ],
)
def test_identifiability_guard(call, message):
    with pytest.raises(IdentifiabilityError, match=message):
        call()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"quantile": 1.2}, "quantile must be in"),
        ({"method": "audit"}, "needs an audit file"),
        ({"segment_by": "user_id"}, "cannot segment by"),
        ({"channel": "likes"}, "unknown channel"),
        ({"min_quantile": 0.99}, "min_quantile must be in"),
        ({"bootstrap": 5}, "bootstrap must be"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        NoiseConfig(**kwargs)


# ------------------------------------------------------------------------------------ simulated logs


@pytest.mark.parametrize(("rho01", "rho10"), [(0.2, 0.1), (0.1, 0.2)])
def test_anchor_estimates_near_truth_on_simulated_logs(rho01, rho10):
    """Both paper scenarios on 20k simulated exposures (about 4k votes) with true propensities.

    Tolerance from the sample size: 3 binomial standard errors of a rate estimated from the
    observed anchors (300 per side), plus 0.03 for anchor impurity, the upward bias
    (1 - P(r*=1 | top)) (1 - rho01 - rho10) that the benchmark measures at these quantiles
    (benchmarks/noise/README.md)."""
    frame = exposure_frame(SimulationConfig(out="unused", n_exposures=20_000, rho01=rho01, rho10=rho10, seed=3))
    votes = frame.filter(pl.col("observed"))
    true01 = votes.filter(pl.col("y_true") == 1)["flipped"].mean()
    true10 = votes.filter(pl.col("y_true") == 0)["flipped"].mean()
    out = estimate_noise_frame(frame, NoiseConfig(bootstrap=100, seed=1), propensity=frame["propensity"].to_numpy())
    for name, truth, side in (("rho01", true01, "top"), ("rho10", true10, "bottom")):
        n = out["n_anchor"][side]
        tolerance = 3 * math.sqrt(truth * (1 - truth) / n) + 0.03
        assert abs(out[name] - truth) <= tolerance, (name, out[name], truth, tolerance)
    assert out["proxy"]["auc_observed"] > 0.65


# ------------------------------------------------------------------------------------ warehouse, JSON, CLI

KEYS = {"channel", "method", "rho01", "rho10", "rho01_ci", "rho10_ci", "n_anchor", "quantile", "quantile_requested", "warnings", "segments"}


@pytest.fixture(scope="module")
def noisy_warehouse(warehouse: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A copy of the `warehouse` fixture with the TRUE propensities written as scores.parquet (test
    shortcut, see module docstring) and an audit file of 400 observed exposures (gold = y_true)."""
    root = tmp_path_factory.mktemp("noise")
    wh = root / "wh"
    shutil.copytree(warehouse, wh)
    truth = pl.read_parquet(warehouse.parent / "truth.parquet")
    write_scores(
        wh, "vote",
        truth.select("exposure_id", "propensity", propensity_raw="propensity", fold=pl.Series(group_folds(truth["user_id"].to_numpy(), 5, 0))),
    )
    audit = truth.filter(pl.col("observed")).sample(400, seed=0).select("exposure_id", true_label="y_true")
    audit.write_csv(root / "audit.csv")
    return wh, root / "audit.csv"


@pytest.fixture(scope="module")
def estimated(noisy_warehouse):
    wh, audit = noisy_warehouse
    cfg = NoiseConfig(audit=str(audit), min_anchors=150, segment_by="platform", bootstrap=100)
    return estimate_noise(wh, cfg)


def test_estimate_writes_json_in_the_contract_shape(noisy_warehouse, estimated):
    wh, _ = noisy_warehouse
    on_disk = json.loads((wh / "noise.json").read_text())
    assert on_disk == json.loads((wh / "noise" / "vote.json").read_text()) == read_noise(wh)
    assert KEYS <= set(on_disk)
    assert on_disk["channel"] == "vote" and on_disk["method"] == "anchor"
    assert set(on_disk["n_anchor"]) == {"top", "bottom"} and min(on_disk["n_anchor"].values()) > 0
    assert on_disk["quantile_requested"] == 0.97 and on_disk["quantile"] <= 0.97
    for name in ("rho01", "rho10"):
        lo, hi = on_disk[f"{name}_ci"]
        assert 0 <= lo <= on_disk[name] <= hi <= 1
    assert sorted(row["segment"] for row in on_disk["segments"]) == ["android", "ios", "web"]
    # segments split the global anchor sets (same purity), they do not re-select their own
    for side in ("top", "bottom"):
        assert sum(row["n_anchor"][side] for row in on_disk["segments"]) == on_disk["n_anchor"][side]
    assert on_disk["propensity_source"].endswith("scores.parquet")


def test_estimate_compares_anchor_with_audit(estimated, warehouse):
    truth = pl.read_parquet(warehouse.parent / "truth.parquet").filter(pl.col("observed"))
    true01 = truth.filter(pl.col("y_true") == 1)["flipped"].mean()
    comparison = estimated["comparison"]
    audit = comparison["audit"]
    assert audit["n_audit"]["used"] == 400
    assert audit["rho01_ci"][0] <= true01 <= audit["rho01_ci"][1]
    # Gold labels give the reported rates (issue 15); the anchors' are kept under "anchor".
    assert estimated["rates_source"] == "audit" and estimated["rho01"] == audit["rho01"]
    anchor = estimated["anchor"]
    assert comparison["distance"]["rho01"] == pytest.approx(anchor["rho01"] - audit["rho01"])
    # 8k exposures and 150 anchors a side: wide tolerance (3 standard errors plus impurity at the
    # widened quantile, about 0.05 here)
    assert abs(anchor["rho01"] - true01) < 3 * math.sqrt(0.2 * 0.8 / 150) + 0.05


def test_audit_method_with_segments(noisy_warehouse):
    wh, audit = noisy_warehouse
    out = estimate_noise(wh, NoiseConfig(method="audit", audit=str(audit), segment_by="model_id", interval="wilson"))
    assert out["method"] == "audit" and out["n_anchor"] is None
    assert out["confusion"]["true1_r0"] + out["confusion"]["true1_r1"] + out["confusion"]["true0_r1"] + out["confusion"]["true0_r0"] == 400
    assert {row["segment"] for row in out["segments"]} == {"m-small", "m-base", "m-large"}
    assert read_noise(wh)["method"] == "audit"


def test_read_noise_without_estimate(tmp_path):
    with pytest.raises(WarehouseError, match="no noise estimate for channel 'vote'"):
        read_noise(tmp_path)


def test_cli_noise_estimate(noisy_warehouse, warehouse, tmp_path):
    from cli import app

    runner = CliRunner()
    wh, _ = noisy_warehouse
    ok = runner.invoke(app, ["noise", "estimate", str(wh), "--min-anchors", "150", "--bootstrap", "50"])
    assert ok.exit_code == 0, ok.output
    assert "rho01" in ok.output and "noise/vote.json" in ok.output.replace("\n", "")

    bare = tmp_path / "bare"
    shutil.copytree(warehouse, bare)
    missing = runner.invoke(app, ["noise", "estimate", str(bare)])
    assert missing.exit_code == 1
    assert "--no-weights" in missing.output and "propensity fit" in missing.output

    refused = runner.invoke(app, ["noise", "estimate", str(bare), "--channel", "copy"])
    assert refused.exit_code == 1 and "one-class" in refused.output

    unweighted = runner.invoke(app, ["noise", "estimate", str(bare), "--no-weights", "--min-anchors", "150", "--bootstrap", "50"])
    assert unweighted.exit_code == 0, unweighted.output
    assert any("--no-weights" in w for w in read_noise(bare)["warnings"])
