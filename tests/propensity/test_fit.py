"""`causalrm propensity fit` end to end on the simulated warehouse: files, reproducibility from the
saved models, agreement with the simulator's true propensities, and clean failures on bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from scipy.stats import spearmanr
from typer.testing import CliRunner

from cli import app
from feedback_etl.io import read_feedback, write_feedback
from propensity import build_features, group_folds, load_fold_models, read_metrics, read_scores
from propensity.models.fit import PropensityConfig, fit_propensity
from schemas.errors import CausalRMError, ConfigError, WarehouseError

runner = CliRunner()


@pytest.fixture(scope="module")
def fitted_wh(warehouse: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the warehouse after `causalrm propensity fit WH` (vote, LightGBM, defaults, 1 thread)."""
    wh = tmp_path_factory.mktemp("prop") / "wh"
    shutil.copytree(warehouse, wh)
    result = runner.invoke(app, ["propensity", "fit", str(wh), "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert "vote: 8,000 exposures" in result.output and "clipped" in result.output
    return wh


@pytest.fixture(scope="module")
def joined(fitted_wh: Path, warehouse: Path) -> pl.DataFrame:
    truth = pl.read_parquet(warehouse.parent / "truth.parquet").select("exposure_id", "user_id", true_p="propensity")
    return read_scores(fitted_wh).join(truth, on="exposure_id", how="inner")


def test_writes_documented_files(fitted_wh: Path) -> None:
    root = fitted_wh / "propensity"
    scores = pl.read_parquet(root / "scores.parquet")
    assert scores.columns == ["exposure_id", "channel", "propensity", "propensity_raw", "fold"]
    assert scores["exposure_id"].n_unique() == scores.height == 8_000
    assert scores["channel"].unique().to_list() == ["vote"]
    metrics = json.loads((root / "metrics.json").read_text())["vote"]
    for key in ["auc", "log_loss", "brier", "ece", "reliability", "weights", "clipping", "balance", "config", "warnings"]:
        assert key in metrics
    for key in ["ess", "ess_ratio", "quantiles", "max"]:
        assert key in metrics["weights"]
    assert metrics["config"]["clip"] == 0.05 and metrics["config"]["model"] == "lightgbm"
    models = root / "models" / "vote"
    assert sorted(p.name for p in models.iterdir()) == sorted(
        ["config.json", "calibration.json"] + [f"fold_{k}.{ext}" for k in range(5) for ext in ("txt", "json")]
    )
    assert not any(p.suffix in {".pkl", ".pickle", ".pt"} for p in root.rglob("*"))


def test_scores_come_from_the_saved_out_of_fold_models(fitted_wh: Path) -> None:
    """Re-scoring each fold with its saved model reproduces propensity_raw, and calibrating and
    clipping reproduces propensity; the clipping count in metrics.json matches."""
    feedback = read_feedback(fitted_wh)
    scores = read_scores(fitted_wh)
    assert scores["exposure_id"].to_list() == feedback["exposure_id"].to_list()
    folds = scores["fold"].to_numpy()
    np.testing.assert_array_equal(folds, group_folds(feedback["user_id"].to_numpy(), 5, 0))
    spec, models, calibrators = load_fold_models(fitted_wh)
    X, _, _ = build_features(feedback)
    n_low = 0
    for k, (model, cal) in enumerate(zip(models, calibrators)):
        rows = np.flatnonzero(folds == k)
        raw = model.predict_propensity(X.iloc[rows])
        np.testing.assert_allclose(raw, scores["propensity_raw"].to_numpy()[rows], rtol=1e-9)
        calibrated = cal.predict(raw)
        n_low += int((calibrated < 0.05).sum())
        np.testing.assert_allclose(np.clip(calibrated, 0.05, 1.0), scores["propensity"].to_numpy()[rows], rtol=1e-9)
    clipping = read_metrics(fitted_wh, "vote")["clipping"]
    assert clipping["n_clipped_low"] == n_low and clipping["share_clipped"] == pytest.approx(n_low / 8_000)
    assert scores["propensity"].min() >= 0.05 and scores["propensity"].max() <= 1.0


def test_agrees_with_the_true_propensities(joined: pl.DataFrame) -> None:
    """Against the simulator's truth. True p = c * alpha^(max r* - r*) * context effects: the r*
    part is text-only, so a context-only model's ceiling is the rank correlation of the context
    part with the truth (0.75 on this seed). With n = 8,000 the Spearman's standard error is about
    0.01; we require 0.5, far above noise and within reach of the ceiling."""
    est, true = joined["propensity"].to_numpy(), joined["true_p"].to_numpy()
    assert spearmanr(est, true).statistic > 0.5
    # Calibration: overall and in 5 quantile bins of the estimate, the mean true propensity is
    # within 4 binomial standard errors of the mean estimate (the estimate is fitted to o ~ Bernoulli(p)).
    n = len(est)
    assert abs(est.mean() - true.mean()) < 4 * np.sqrt(true.mean() * (1 - true.mean()) / n)
    edges = np.quantile(est, np.linspace(0, 1, 6))
    bins = np.clip(np.searchsorted(edges, est, side="right") - 1, 0, 4)
    for b in range(5):
        rows = bins == b
        if rows.sum() < 200:
            continue  # ties at the clip floor can leave a thin bin
        se = np.sqrt(true[rows].mean() * (1 - true[rows].mean()) / rows.sum())
        assert abs(est[rows].mean() - true[rows].mean()) < 4 * se + 0.01, f"bin {b}"


def test_weighting_improves_balance(fitted_wh: Path) -> None:
    m = read_metrics(fitted_wh, "vote")
    summary = m["balance"]["summary"]
    assert summary["max_abs_after"] < summary["max_abs_before"]
    # platform and position drive selection in the simulator: before weighting they are imbalanced
    smd = {r["feature"]: r for r in m["balance"]["smd"]}
    assert abs(smd["platform=web"]["before"]) > 0.1 and abs(smd["platform=web"]["after"]) < 0.1
    assert summary["max_abs_after"] < 0.15  # ~5 SE of an SMD over ~1,500 observed rows
    assert 0.5 < m["weights"]["ess_ratio"] <= 1.0
    assert m["weights"]["sum_over_n_exposures"] == pytest.approx(1.0, abs=0.1)


def test_other_channel_keeps_vote_rows(fitted_wh: Path, tmp_path: Path) -> None:
    wh = tmp_path / "wh"
    shutil.copytree(fitted_wh, wh)
    before = read_scores(wh, "vote")
    fit_propensity(wh, PropensityConfig(channel="copy", model="logistic", clip=0.01))
    scores = pl.read_parquet(wh / "propensity" / "scores.parquet")
    assert scores.group_by("channel").len().sort("channel").rows() == [("copy", 8_000), ("vote", 8_000)]
    assert read_scores(wh, "vote").equals(before)
    assert set(read_metrics(wh)) == {"copy", "vote"}
    assert read_metrics(wh, "copy")["target"] == "copied"
    # refitting vote replaces its rows only
    fit_propensity(wh, PropensityConfig(model="logistic"))
    assert pl.read_parquet(wh / "propensity" / "scores.parquet").height == 16_000
    assert not read_scores(wh, "vote").equals(before)
    assert read_metrics(wh, "vote")["config"]["model"] == "logistic"


def test_mlp_with_embeddings(fitted_wh: Path, tmp_path: Path) -> None:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny net: threads only add contention on a shared CI box
    try:
        _fit_mlp_with_embeddings(fitted_wh, tmp_path)
    finally:
        torch.set_num_threads(threads)


def _fit_mlp_with_embeddings(fitted_wh: Path, tmp_path: Path) -> None:
    wh = tmp_path / "wh"
    shutil.copytree(fitted_wh, wh, ignore=shutil.ignore_patterns("propensity"))
    ids = read_feedback(wh, validate=False)["exposure_id"]
    rng = np.random.default_rng(0)
    (wh / "embeddings").mkdir()
    pl.DataFrame({"exposure_id": ids, "embedding": rng.normal(size=(len(ids), 8)).astype(np.float32).tolist()}).with_columns(
        pl.col("embedding").cast(pl.List(pl.Float32))
    ).write_parquet(wh / "embeddings" / "part-0.parquet")
    cfg = PropensityConfig(model="mlp", device="cpu", model_params={"max_epochs": 3, "hidden_sizes": (16,)})
    result = fit_propensity(wh, cfg)
    assert result.metrics["embedding_dim"] == 8
    assert result.metrics["balance"]["embeddings"]["n_features"] == 8
    assert "emb_000" not in result.metrics["features"]
    assert sorted(p.suffix for p in result.models_path.glob("fold_0.*")) == [".json", ".safetensors"]
    spec, models, _ = load_fold_models(wh)
    assert spec["model"] == "mlp" and len(spec["design_names"]) == models[0].n_features_in_


# ------------------------------------------------------------------------------------ bad input
def _write_variant(source: Path, target: Path, change) -> Path:
    frame = change(read_feedback(source))
    write_feedback(frame, target / "feedback")
    return target


def _no_feedback(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.with_columns(observed=pl.lit(False), label=pl.lit(None, dtype=pl.Int8))


def _all_feedback(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.with_columns(observed=pl.lit(True), label=pl.col("label").fill_null(0))


BAD_INPUT = [
    ("empty_warehouse", lambda src, dst: dst.mkdir() or dst, [], "warehouse has no feedback table"),
    ("no_observed_rows", lambda src, dst: _write_variant(src, dst, _no_feedback), [], "no exposure has 'vote' feedback"),
    ("one_class_only", lambda src, dst: _write_variant(src, dst, _all_feedback), [], "one class only"),
    ("no_share_events", lambda src, dst: _write_variant(src, dst, lambda f: f.with_columns(shared=pl.lit(False))), ["--channel", "share"], "no exposure has 'share' feedback"),
    ("missing_feature_column", lambda src, dst: _write_variant(src, dst, lambda f: f.drop("platform")), [], "lacks contract column(s) platform"),
    ("bad_clip", lambda src, dst: src, ["--clip", "0"], "clip must be in (0, 1)"),
    ("too_many_folds", lambda src, dst: src, ["--folds", "100000"], "distinct user(s) cannot fill"),
]


@pytest.mark.parametrize(("name", "make", "args", "message"), BAD_INPUT, ids=[case[0] for case in BAD_INPUT])
def test_bad_input_fails_cleanly(name, make, args, message, warehouse: Path, tmp_path: Path) -> None:
    wh = make(warehouse, tmp_path / "wh")
    result = runner.invoke(app, ["propensity", "fit", str(wh), "--threads", "1", *args])
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # typer.Exit, not a crash
    assert "Traceback" not in result.output
    assert message in result.output.replace("\n", "")
    assert not (wh / "propensity").exists() or wh == warehouse


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{tmp}/nope"], "'{tmp}/nope' does not exist"),
        (["{wh}", "--channel", "thumbs"], "'thumbs' is not one of"),
        (["{wh}", "--model", "forest"], "'forest' is not one of"),
        (["{wh}", "--calibration", "beta"], "'beta' is not one of"),
    ],
)
def test_bad_options_are_usage_errors(args: list[str], message: str, warehouse: Path, tmp_path: Path) -> None:
    """The parser refuses them (exit 2) before anything is fitted; the configs refuse them too (below)."""
    result = runner.invoke(app, ["propensity", "fit", *(a.format(tmp=tmp_path, wh=warehouse) for a in args)], env={"COLUMNS": "400"})
    assert result.exit_code == 2
    assert message.format(tmp=tmp_path) in " ".join(result.output.replace("│", " ").split())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"channel": "thumbs"}, "unknown channel 'thumbs'"),
        ({"model": "forest"}, "unknown propensity model 'forest'"),
        ({"calibration": "beta"}, "unknown calibration 'beta'"),
    ],
)
def test_config_refuses_unknown_names(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        PropensityConfig(**kwargs)


def test_missing_warehouse_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CausalRMError, match="warehouse folder does not exist"):
        fit_propensity(tmp_path / "nope", PropensityConfig(n_jobs=1))


def test_stale_embeddings_are_refused(warehouse: Path, tmp_path: Path) -> None:
    wh = tmp_path / "wh"
    shutil.copytree(warehouse, wh)
    (wh / "embeddings").mkdir(exist_ok=True)
    pl.DataFrame({"exposure_id": ["exp-x"], "embedding": [[0.1, 0.2]]}).write_parquet(wh / "embeddings" / "part-0.parquet")
    with pytest.raises(WarehouseError, match="embeddings cover 0 of 8,000"):
        fit_propensity(wh, PropensityConfig(n_jobs=1))
    # --no-embeddings fits without them
    assert fit_propensity(wh, PropensityConfig(model="logistic", use_embeddings=False)).metrics["embedding_dim"] == 0


def test_read_scores_errors(warehouse: Path, fitted_wh: Path) -> None:
    with pytest.raises(WarehouseError, match="no propensity scores.*fix: run `causalrm propensity fit"):
        read_scores(warehouse)
    with pytest.raises(WarehouseError, match="no propensity scores for channel 'share'"):
        read_scores(fitted_wh, "share")


def test_config_rejects_unknown_model_params() -> None:
    with pytest.raises(ConfigError, match="unknown lightgbm parameter"):
        PropensityConfig(model_params={"trees": 3})
