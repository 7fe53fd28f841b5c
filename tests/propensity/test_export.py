"""Weighted-dataset export (issue 5): weights, manifest, pairs, loaders, refusals.

Inputs: a copy of the session ``warehouse`` fixture with propensity scores and a noise estimate
written straight from the simulator's truth (documented shortcut: it pins the weights to known
propensities and keeps these tests independent of the propensity and noise estimators, whose
end-to-end run is covered in test_audit.py).
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from itertools import combinations
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from feedback_etl.io import read_feedback
from propensity.weights.export import (
    ExportConfig,
    build_pairs,
    compute_weights,
    export_weighted_dataset,
    pair_flip_probability,
    read_manifest,
    read_pairs,
    read_weighted_dataset,
)
from propensity.io import write_scores
from schemas.errors import ConfigError, IdentifiabilityError, InputFileError, TableValidationError, WarehouseError
from schemas.feedback import CONTEXT_CATEGORICAL, CONTEXT_NUMERIC
from schemas.weighted_dataset import SCHEMA_VERSION

NOISE = {
    "channel": "vote", "method": "anchor", "rho01": 0.2, "rho10": 0.1, "rho01_ci": [0.17, 0.23], "rho10_ci": [0.08, 0.12],
    "n_anchor": {"top": 300, "bottom": 300}, "quantile": 0.97, "warnings": [], "segments": [],
}


def prepare(warehouse: Path, root: Path, *, noise: dict | None = NOISE, floor: float = 0.02) -> Path:
    """Copy the fixture warehouse and write truth-based scores (clipped at ``floor``) and noise.json."""
    wh = root / "wh"
    shutil.copytree(warehouse, wh)
    truth = pl.read_parquet(warehouse.parent / "truth.parquet")
    scores = truth.select(
        "exposure_id", propensity=pl.col("propensity").clip(floor, 1.0), propensity_raw="propensity", fold=pl.lit(0, dtype=pl.Int32)
    )
    write_scores(wh, "vote", scores)
    if noise is not None:
        (wh / "noise.json").write_text(json.dumps(noise))
    return wh


@pytest.fixture(scope="module")
def wh(warehouse: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare(warehouse, tmp_path_factory.mktemp("export_wh"))


@pytest.fixture(scope="module")
def exported(wh: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("export") / "ds"
    manifest = export_weighted_dataset(ExportConfig(warehouse=str(wh), out=str(out), pairs=True))
    return out, manifest


def test_weights_are_inverse_propensity_on_observed_and_zero_elsewhere(wh: Path, exported: tuple[Path, dict]) -> None:
    out, _ = exported
    data = read_weighted_dataset(out)
    feedback = read_feedback(wh)
    assert data.height == feedback.height and data["exposure_id"].n_unique() == data.height
    scores = pl.read_parquet(wh / "propensity" / "scores.parquet").select("exposure_id", p="propensity")
    joined = data.join(scores, on="exposure_id")
    observed = joined.filter("observed")
    unobserved = joined.filter(~pl.col("observed"))
    assert observed.height > 500 and unobserved.height > 500
    np.testing.assert_allclose(observed["weight"].to_numpy(), 1.0 / observed["p"].to_numpy(), rtol=1e-12)
    assert (unobserved["weight"] == 0).all() and unobserved["label"].null_count() == unobserved.height
    assert observed["label"].null_count() == 0
    assert (data["rho01"] == 0.2).all() and (data["rho10"] == 0.1).all()
    expected = {"exposure_id", "user_id", "prompt_id", "response_id", "prompt_text", "response_text", "observed", "label",
                "propensity", "weight", "split", "channel", "rho01", "rho10", *CONTEXT_CATEGORICAL, *CONTEXT_NUMERIC}
    assert expected <= set(data.columns)


def test_compute_weights_schemes_on_a_hand_built_batch() -> None:
    p = np.array([0.5, 0.25, 0.01, 0.2, 0.1])
    o = np.array([True, True, True, False, True])
    split = np.array(["train", "train", "train", "train", "val"])
    np.testing.assert_allclose(compute_weights(p, o, scheme="ips"), [2, 4, 100, 0, 10])
    np.testing.assert_allclose(compute_weights(p, o, scheme="clipped-ips", clip=0.05), [2, 4, 20, 0, 10])
    # snips: a split's observed weights sum to its row count (train: 4 rows, val: 1 row).
    snips = compute_weights(p, o, split, scheme="snips")
    np.testing.assert_allclose(snips, np.array([2, 4, 100, 0, 0]) * 4 / 106 + np.array([0, 0, 0, 0, 1.0]))


@pytest.mark.parametrize("scheme", ["snips", "clipped-ips"])
def test_other_schemes_follow_their_formula(wh: Path, tmp_path: Path, scheme: str) -> None:
    manifest = export_weighted_dataset(ExportConfig(warehouse=str(wh), out=str(tmp_path / "ds"), scheme=scheme))
    data = read_weighted_dataset(tmp_path / "ds").filter("observed")
    p = data["propensity"].to_numpy()
    if scheme == "clipped-ips":
        np.testing.assert_allclose(data["weight"].to_numpy(), 1 / np.maximum(p, 0.05))
        assert manifest["weights"]["clip"] == 0.05 and data["weight"].max() <= 20 + 1e-9
    else:
        full = read_weighted_dataset(tmp_path / "ds")
        for split, rows in manifest["rows"]["by_split"].items():
            assert full.filter(pl.col("split") == split)["weight"].sum() == pytest.approx(rows["rows"])
    assert manifest["weights"]["scheme"] == scheme


def test_manifest_round_trips_and_describes_the_inputs(wh: Path, exported: tuple[Path, dict]) -> None:
    out, manifest = exported
    assert read_manifest(out) == json.loads(json.dumps(manifest))
    assert read_manifest(out / "data.parquet")["schema_version"] == SCHEMA_VERSION
    files = manifest["input"]["files"]
    assert files["propensity/scores.parquet"] == hashlib.sha256((wh / "propensity" / "scores.parquet").read_bytes()).hexdigest()
    assert files["noise.json"] == hashlib.sha256((wh / "noise.json").read_bytes()).hexdigest()
    assert sum(k.startswith("feedback/") for k in files) >= 1
    assert manifest["input"]["warehouse"] == str(wh.resolve())
    data = read_weighted_dataset(out)
    w = data.filter("observed")["weight"].to_numpy()
    assert manifest["weights"]["ess"] == pytest.approx(w.sum() ** 2 / (w**2).sum())
    assert manifest["weights"]["ess_over_n"] == pytest.approx(manifest["weights"]["ess"] / len(w))
    assert manifest["weights"]["max"] == pytest.approx(w.max())
    rows = manifest["rows"]
    assert rows["total"] == data.height and rows["observed"] == len(w)
    assert sum(s["rows"] for s in rows["by_split"].values()) == data.height
    assert sum(s["observed"] for s in rows["by_split"].values()) == len(w)
    noise = manifest["noise"]
    assert (noise["rho01"], noise["rho10"], noise["rho01_ci"], noise["assumed_zero"]) == (0.2, 0.1, [0.17, 0.23], False)
    assert manifest["files"] == {"data": "data.parquet", "pairs": "pairs.parquet"}
    assert manifest["format"] == "parquet" and manifest["propensity"]["source"] == "propensity/scores.parquet"


def test_dataset_loads_in_datasets_polars_and_pandas(exported: tuple[Path, dict], tmp_path: Path) -> None:
    import datasets
    import pandas as pd

    out, manifest = exported
    n = manifest["rows"]["total"]
    hf = datasets.load_dataset("parquet", data_files=str(out / "data.parquet"), split="train", cache_dir=str(tmp_path / "hf"))
    assert hf.num_rows == n and {"weight", "propensity", "rho01", "label"} <= set(hf.column_names)
    assert sum(hf["observed"]) == manifest["rows"]["observed"]
    frame = pd.read_parquet(out / "data.parquet")
    assert len(frame) == n and frame["weight"].dtype == np.float64
    assert pl.read_parquet(out / "data.parquet").height == n
    pairs = datasets.load_dataset("parquet", data_files=str(out / "pairs.parquet"), split="train", cache_dir=str(tmp_path / "hf2"))
    assert pairs.num_rows == manifest["pairs"]["rows"] and "flip_probability" in pairs.column_names


def test_jsonl_format_round_trips(wh: Path, exported: tuple[Path, dict], tmp_path: Path) -> None:
    manifest = export_weighted_dataset(ExportConfig(warehouse=str(wh), out=str(tmp_path / "ds"), format="jsonl", pairs=True))
    assert manifest["files"] == {"data": "data.jsonl", "pairs": "pairs.jsonl"} and manifest["format"] == "jsonl"
    from_jsonl = read_weighted_dataset(tmp_path / "ds")
    from_parquet = read_weighted_dataset(exported[0])
    assert from_jsonl.select(from_parquet.columns).equals(from_parquet.select(from_parquet.columns).cast(from_jsonl.select(from_parquet.columns).schema))
    assert read_pairs(tmp_path / "ds").height == manifest["pairs"]["rows"]


def test_pairs_follow_the_documented_formulas(exported: tuple[Path, dict]) -> None:
    out, manifest = exported
    data = read_weighted_dataset(out)
    pairs = read_pairs(out)
    assert pairs.height == manifest["pairs"]["rows"] > 20
    label = dict(zip(data["exposure_id"], data["label"]))
    p = dict(zip(data["exposure_id"], data["propensity"]))
    for row in pairs.iter_rows(named=True):
        assert label[row["chosen_exposure_id"]] == 1 and label[row["rejected_exposure_id"]] == 0
        assert row["weight"] == pytest.approx(1 / (p[row["chosen_exposure_id"]] * p[row["rejected_exposure_id"]]))
    # rho01 = 0.2, rho10 = 0.1 on every row, prior pi = (mean vote - 0.1) / 0.7: flip = P(reversed) + P(tied) / 2.
    pi = (data.filter("observed")["label"].mean() - 0.1) / 0.7
    right, reversed_ = pi * 0.8 * (1 - pi) * 0.9, (1 - pi) * 0.1 * pi * 0.2
    tied = pi * 0.8 * pi * 0.2 + (1 - pi) * 0.1 * (1 - pi) * 0.9
    np.testing.assert_allclose(pairs["flip_probability"].to_numpy(), (reversed_ + tied / 2) / (right + reversed_ + tied))
    total = right + reversed_ + tied
    assert manifest["pairs"]["expected_tied_share"] == pytest.approx(tied / total)
    assert manifest["pairs"]["expected_misordered_share"] == pytest.approx(reversed_ / total)
    # Brute force: candidate pairs = observed exposures of one prompt and split with different responses.
    observed = data.filter("observed")
    candidates = ties = differing = 0
    for _, group in observed.group_by("prompt_id", "split"):
        for a, b in combinations(group.iter_rows(named=True), 2):
            if a["response_id"] != b["response_id"]:
                candidates += 1
                ties += a["label"] == b["label"]
                differing += a["label"] != b["label"]
    assert (manifest["pairs"]["candidate_pairs"], manifest["pairs"]["tied_pairs_dropped"], pairs.height) == (candidates, ties, differing)


def test_pair_subsampling_keeps_the_weighted_total() -> None:
    """One prompt with 40 up and 30 down votes on distinct responses, cap 100: the kept pairs' weights
    (scaled by the inverse inclusion rate) sum to the full set's, 40 * 30 / (0.5 * 0.5)."""
    n1, n0 = 40, 30
    frame = pl.DataFrame({
        "exposure_id": [f"e{i:03d}" for i in range(n1 + n0)], "prompt_id": "q", "split": "train", "channel": "vote",
        "response_id": [f"r{i}" for i in range(n1 + n0)], "observed": True, "label": [1] * n1 + [0] * n0,
        "propensity": 0.5, "rho01": 0.2, "rho10": 0.1, "prompt_text": "q?", "response_text": "a",
    })
    pairs, summary = build_pairs(frame, scheme="ips", clip=None, max_pairs_per_prompt=100)
    assert 0 < pairs.height <= 100 and summary["prompts_subsampled"] == 1
    assert pairs["weight"].sum() == pytest.approx(n1 * n0 / 0.25)
    full, _ = build_pairs(frame, scheme="ips", clip=None, max_pairs_per_prompt=10_000)
    assert full.height == n1 * n0 and full["weight"].sum() == pytest.approx(n1 * n0 / 0.25)


def test_pair_flip_probability_closed_form() -> None:
    assert pair_flip_probability(0.0, 0.0, 0.0, 0.0) == 0.0
    # rho01_c, rho10_c, rho01_r, rho10_r, prior 1/2: reversed 0.3 * 0.4, right 0.9 * 0.8, tied 0.9 * 0.4 + 0.3 * 0.8.
    total = 0.3 * 0.4 + 0.9 * 0.8 + 0.9 * 0.4 + 0.3 * 0.8
    assert pair_flip_probability(0.1, 0.3, 0.4, 0.2) == pytest.approx((0.3 * 0.4 + (0.9 * 0.4 + 0.3 * 0.8) / 2) / total)
    grid = np.linspace(0, 0.49, 8)
    r01, r10 = np.meshgrid(grid, grid)
    assert (pair_flip_probability(r01, r10, r01, r10) < 0.5).all()


def test_no_noise_estimate_fails_unless_no_noise(warehouse: Path, tmp_path: Path) -> None:
    wh = prepare(warehouse, tmp_path, noise=None)
    with pytest.raises(WarehouseError, match="--no-noise"):
        export_weighted_dataset(ExportConfig(warehouse=str(wh), out=str(tmp_path / "ds")))
    manifest = export_weighted_dataset(ExportConfig(warehouse=str(wh), out=str(tmp_path / "ds"), no_noise=True))
    assert manifest["noise"]["assumed_zero"] is True and "--no-noise" in manifest["noise"]["note"]
    assert (manifest["noise"]["rho01"], manifest["noise"]["rho10"]) == (0.0, 0.0)
    data = read_weighted_dataset(tmp_path / "ds")
    assert (data["rho01"] == 0).all() and (data["rho10"] == 0).all()


def test_segment_noise_rates_go_to_their_rows(warehouse: Path, tmp_path: Path) -> None:
    segments = [
        {"segment_by": "platform", "segment": "web", "rho01": 0.3, "rho10": 0.05},
        {"segment_by": "platform", "segment": "ios", "rho01": 0.1, "rho10": 0.2},
        {"segment_by": "platform", "segment": "android", "rho01": None, "rho10": None, "error": "not identified"},
    ]
    wh = prepare(warehouse, tmp_path, noise={**NOISE, "segments": segments})
    manifest = export_weighted_dataset(ExportConfig(warehouse=str(wh), out=str(tmp_path / "ds")))
    data = read_weighted_dataset(tmp_path / "ds")
    rates = {k: (r01, r10) for k, r01, r10 in data.group_by("platform").agg(pl.col("rho01").first(), pl.col("rho10").first()).iter_rows()}
    assert rates == {"web": (0.3, 0.05), "ios": (0.1, 0.2), "android": (0.2, 0.1)}
    assert manifest["noise"]["per_row"]["segments_skipped"] == ["android"]
    flat = export_weighted_dataset(ExportConfig(warehouse=str(wh), out=str(tmp_path / "ds2"), segment_noise=False))
    assert flat["noise"]["per_row"] == "overall rates on every row"


def test_embeddings_travel_with_the_rows(warehouse: Path, tmp_path: Path) -> None:
    wh = prepare(warehouse, tmp_path)
    ids = pl.read_parquet(warehouse.parent / "truth.parquet")["exposure_id"]
    vectors = np.random.default_rng(0).normal(size=(len(ids), 4)).astype(np.float32)
    (wh / "embeddings").mkdir()
    pl.DataFrame({"exposure_id": ids, "embedding": vectors.tolist()}, schema={"exposure_id": pl.Utf8, "embedding": pl.List(pl.Float32)}).write_parquet(
        wh / "embeddings" / "part-0.parquet")
    manifest = export_weighted_dataset(ExportConfig(warehouse=str(wh), out=str(tmp_path / "ds")))
    data = read_weighted_dataset(tmp_path / "ds")
    assert manifest["columns"]["embedding_dim"] == 4 and data["embedding"].list.len().unique().to_list() == [4]
    first = data.filter(pl.col("exposure_id") == ids[0])["embedding"][0].to_numpy()
    np.testing.assert_allclose(first, vectors[0])
    assert "embeddings/part-0.parquet" in manifest["input"]["files"]


def test_implicit_channel_exports_its_flag_with_constant_label(warehouse: Path, tmp_path: Path) -> None:
    wh = prepare(warehouse, tmp_path)
    feedback = read_feedback(wh).select("exposure_id", "copied")
    # Any valid propensity will do to check the mapping; these are not a model of copying.
    write_scores(wh, "copy", feedback.select("exposure_id", propensity=pl.lit(0.2), propensity_raw=pl.lit(0.2), fold=pl.lit(0, dtype=pl.Int32)))
    manifest = export_weighted_dataset(ExportConfig(warehouse=str(wh), out=str(tmp_path / "ds"), channel="copy"))
    data = read_weighted_dataset(tmp_path / "ds").join(feedback, on="exposure_id")
    assert (data["observed"] == data["copied"]).all() and set(data.filter("observed")["label"].to_list()) == {1}
    assert manifest["noise"]["assumed_zero"] and "one-class" in manifest["noise"]["note"]
    assert (data["channel"] == "copy").all()


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        ({"scheme": "ipw"}, ConfigError, "unknown weighting scheme"),
        ({"clip": 0.1}, ConfigError, "only applies to --scheme clipped-ips"),
        ({"scheme": "clipped-ips", "clip": 1.5}, ConfigError, "clip must be in"),
        ({"format": "csv"}, ConfigError, "unknown format"),
        ({"channel": "like"}, ConfigError, "unknown channel"),
        ({"max_pairs_per_prompt": 0}, ConfigError, "max_pairs_per_prompt"),
    ],
)
def test_config_refusals(overrides: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        ExportConfig(warehouse="wh", out="ds", **overrides)


def test_warehouse_refusals(warehouse: Path, tmp_path: Path) -> None:
    wh = prepare(warehouse, tmp_path, noise={**NOISE, "rho01": 0.6, "rho10": 0.45})
    with pytest.raises(IdentifiabilityError, match="rho01 \\+ rho10 = 1.050"):
        export_weighted_dataset(ExportConfig(warehouse=str(wh), out=str(tmp_path / "ds")))
    (wh / "noise.json").write_text(json.dumps(NOISE))
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty"):
        export_weighted_dataset(ExportConfig(warehouse=str(wh), out=str(tmp_path / "busy")))
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
    with pytest.raises(WarehouseError, match="no propensity scores for channel 'share'"):
        export_weighted_dataset(ExportConfig(warehouse=str(wh), out=str(tmp_path / "ds"), channel="share"))
    (wh / "propensity" / "scores.parquet").unlink()
    with pytest.raises(WarehouseError, match="propensity fit"):
        export_weighted_dataset(ExportConfig(warehouse=str(wh), out=str(tmp_path / "ds")))


def test_reader_revalidates(exported: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = exported
    copy = tmp_path / "ds"
    shutil.copytree(out, copy)
    data = pl.read_parquet(copy / "data.parquet")
    # A weight on an unobserved row breaks the contract.
    tampered = data.with_columns(weight=pl.when(~pl.col("observed")).then(1.0).otherwise(pl.col("weight")))
    tampered.write_parquet(copy / "data.parquet")
    with pytest.raises(TableValidationError, match="weighted_dataset"):
        read_weighted_dataset(copy)
    data.write_parquet(copy / "data.parquet")
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**manifest, "schema_version": SCHEMA_VERSION + 1}))
    with pytest.raises(InputFileError, match="schema_version"):
        read_weighted_dataset(copy)
    with pytest.raises(InputFileError, match="no data.parquet"):
        read_weighted_dataset(tmp_path / "nowhere")


def test_cli_export(wh: Path, tmp_path: Path) -> None:
    from cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["weights", "export", str(wh), "--out", str(tmp_path / "ds"), "--scheme", "snips", "--pairs"])
    assert result.exit_code == 0, result.output
    assert "observed" in result.output and "pairs" in result.output and "manifest.json" in result.output
    assert (tmp_path / "ds" / "pairs.parquet").exists()
    bad = runner.invoke(app, ["weights", "export", str(wh), "--out", str(tmp_path / "ds"), "--clip", "0.1"])
    assert bad.exit_code == 1 and "clipped-ips" in bad.output and "Traceback" not in bad.output
    assert math.isfinite(read_manifest(tmp_path / "ds")["weights"]["ess"])


def test_as_of_rebuilds_a_past_dataset_exactly(warehouse: Path, tmp_path: Path) -> None:
    """Issue 16: the manifest records the table versions read; --as-of VERSION or TIMESTAMP
    exports from that version of the feedback table, after a newer one was committed."""
    from cli import app
    from feedback_etl.io import table_version, write_feedback

    wh = prepare(warehouse, tmp_path)
    first = export_weighted_dataset(ExportConfig(warehouse=str(wh), out=str(tmp_path / "first")))
    versions = first["input"]["table_versions"]
    assert versions["feedback"] == table_version(wh, "feedback") and first["input"]["as_of"] is None
    assert any(name.startswith("feedback/") for name in first["input"]["files"])
    feedback = read_feedback(wh)
    flipped = feedback.with_columns(label=pl.when(pl.col("observed")).then(1 - pl.col("label")).otherwise(pl.col("label")))
    write_feedback(flipped, wh / "feedback")  # a newer committed version
    assert table_version(wh, "feedback") == versions["feedback"] + 1
    now = export_weighted_dataset(ExportConfig(warehouse=str(wh), out=str(tmp_path / "now")))
    assert not read_weighted_dataset(tmp_path / "now").equals(read_weighted_dataset(tmp_path / "first"))
    committed_at = json.loads((wh / "manifest.json").read_text())["runs"][-1]["committed_at"]
    result = CliRunner().invoke(app, ["weights", "export", str(wh), "--out", str(tmp_path / "past"), "--as-of", str(versions["feedback"])])
    assert result.exit_code == 0, result.output
    assert read_weighted_dataset(tmp_path / "past").equals(read_weighted_dataset(tmp_path / "first"))
    past = read_manifest(tmp_path / "past")
    assert past["input"]["table_versions"] == versions and past["input"]["as_of"] == str(versions["feedback"])
    assert now["input"]["table_versions"]["feedback"] == versions["feedback"] + 1
    by_time = export_weighted_dataset(ExportConfig(warehouse=str(wh), out=str(tmp_path / "by_time"), as_of=committed_at))
    assert read_weighted_dataset(tmp_path / "by_time").equals(read_weighted_dataset(tmp_path / "first"))
    assert by_time["input"]["table_versions"] == versions
    bad = CliRunner().invoke(app, ["weights", "export", str(wh), "--out", str(tmp_path / "bad"), "--as-of", "last tuesday"])
    assert bad.exit_code == 1 and "neither a table version nor an ISO timestamp" in bad.output


def test_pair_loss_is_unbiased_for_the_clean_order_over_pairs_built_from_votes() -> None:
    """Issue 15.4: Monte Carlo over pairs built by :func:`build_pairs` from simulated votes, tied clean
    labels included (clean target y* = (r*_c - r*_r + 1) / 2). The exported flip_probability eps makes
    the pair loss l(Delta, 1 - eps) unbiased for l(Delta, y*): exactly for bce, and 1 - eps is the
    posterior mean of y* (the mse gradient's target). The old export (eps = the reversed share given
    that the clean labels differ, 0.027 here) with the forward correction [(1 - eps) l(+) - eps l(-)] /
    (1 - 2 eps) ignored the ~29% tied pairs: it weighted l(+) by 1.03 and l(-) by -0.03 (a target
    above 1) against E[y*] = 0.84, hundreds of standard errors away."""
    import torch

    from rm_train.losses import base_loss, pair_loss

    rng = np.random.default_rng(15)
    n_prompts, per_prompt, pi, rho01, rho10 = 3_000, 8, 0.6, 0.2, 0.1
    n = n_prompts * per_prompt
    r_star = (rng.random(n) < pi).astype(np.int8)
    flip = rng.random(n) < np.where(r_star == 1, rho01, rho10)
    observed = rng.random(n) < 0.5
    frame = pl.DataFrame({
        "exposure_id": [f"e{i:06d}" for i in range(n)], "prompt_id": [f"q{i // per_prompt}" for i in range(n)],
        "split": "train", "channel": "vote", "response_id": [f"r{i}" for i in range(n)], "observed": observed,
        "label": pl.Series(np.where(flip, 1 - r_star, r_star).astype(np.int8)).set(pl.Series(~observed), None),
        "propensity": 0.5, "rho01": rho01, "rho10": rho10, "prompt_text": "q?", "response_text": "a",
    })
    pairs, summary = build_pairs(frame, scheme="ips", clip=None)
    clean = dict(zip(frame["exposure_id"], r_star.tolist()))
    target = np.array([(clean[c] - clean[r] + 1) / 2 for c, r in zip(pairs["chosen_exposure_id"], pairs["rejected_exposure_id"])])
    eps = pairs["flip_probability"].to_numpy()
    assert len(target) > 10_000 and 0.2 < (target == 0.5).mean() < 0.4  # ties are common
    delta = torch.tensor(rng.normal(0.5, 1.5, len(target)))  # any scores: the claim holds for each
    surrogate = pair_loss(delta, torch.zeros_like(delta), kind="bce", flip=torch.tensor(eps)).numpy()
    truth = base_loss(delta, torch.tensor(target), "bce").numpy()
    difference = surrogate - truth
    assert abs(difference.mean()) < 4 * difference.std() / np.sqrt(len(difference))
    error = (1 - eps) - target  # the mse gradient 2 (q - y): its target's error
    assert abs(error.mean()) < 4 * error.std() / np.sqrt(len(error))
    assert summary["expected_tied_share"] == pytest.approx((target == 0.5).mean(), abs=0.02)
    assert summary["expected_misordered_share"] == pytest.approx((target == 0).mean(), abs=0.01)


# ---------------------------------------------------------------- found by mutation testing (issue 22)


def test_pair_prior_is_kept_inside_001_099() -> None:
    """pi = (mean vote - rho10) / (1 - rho01 - rho10) per noise segment, clipped to [0.01, 0.99]:
    a segment voting up more often than 1 - rho01 would give pi > 1 (and a degenerate posterior)."""
    from propensity.weights.export import _clean_positive_rate

    observed = pl.DataFrame({"label": [1, 1, 1, 1, 0, 0, 0, 1], "rho01": [0.2] * 4 + [0.1] * 4, "rho10": [0.1] * 4 + [0.3] * 4})
    prior = dict(_clean_positive_rate(observed).select("rho01", "prior").iter_rows())
    assert prior[0.2] == pytest.approx(0.99)  # (1 - 0.1) / 0.7 = 1.29, clipped
    assert prior[0.1] == pytest.approx(0.01)  # (0.25 - 0.3) / 0.6 < 0, clipped


@pytest.mark.parametrize("bad", [0.0, 1.5, None])
def test_propensities_outside_0_1_are_refused(wh: Path, tmp_path: Path, bad) -> None:
    from propensity.io import read_scores
    from propensity.weights.export import _read_scores

    copy = tmp_path / "wh"
    shutil.copytree(wh, copy)
    scores = read_scores(copy, "vote")
    write_scores(copy, "vote", scores.with_columns(propensity=pl.when(pl.int_range(pl.len()) == 0).then(bad).otherwise(pl.col("propensity"))))
    with pytest.raises(InputFileError, match=r"outside \(0, 1\]"):
        _read_scores(copy, "vote")
