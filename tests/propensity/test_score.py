"""`causalrm propensity score` with the local engine (issue 8): fit on a sample warehouse (half the
users of the session fixture), score every exposure of the full one. Fitted exposures keep their
out-of-fold scores, the others get the fold average (fold -1); both layouts of scores.parquet."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from scipy.stats import spearmanr
from typer.testing import CliRunner

from cli import app
from feedback_etl.io import read_feedback, write_feedback
from propensity import build_features, load_fold_models, read_metrics, read_scores
from propensity.models.fit import PropensityConfig, fit_propensity
from propensity.io import scores_path, write_scores
from propensity.models.score import score_frame, score_propensity
from schemas.errors import ConfigError, WarehouseError

runner = CliRunner()
FLOOR = 0.05


def make_sample(warehouse: Path, root: Path) -> tuple[Path, Path]:
    """(full, sample): a copy of the fixture warehouse and a warehouse with the exposures of half
    its users, fitted for vote (LightGBM, 50 trees) and copy (logistic)."""
    full = root / "full"
    shutil.copytree(warehouse, full)
    feedback = read_feedback(warehouse)
    users = feedback["user_id"].unique().sort().sample(fraction=0.5, seed=1)
    sample = root / "sample"
    write_feedback(feedback.filter(pl.col("user_id").is_in(users.implode())), sample / "feedback")
    fit_propensity(sample, PropensityConfig(channel="vote", n_jobs=1, model_params={"n_estimators": 50}))
    fit_propensity(sample, PropensityConfig(channel="copy", model="logistic"))
    return full, sample


@pytest.fixture(scope="module")
def split(warehouse: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_sample(warehouse, tmp_path_factory.mktemp("score"))


@pytest.fixture(scope="module")
def scored(split: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory):
    """The full warehouse scored for vote with the sample's models (small chunks: several parts)."""
    full, sample = split
    wh = tmp_path_factory.mktemp("scored") / "wh"
    shutil.copytree(full, wh)
    result = score_propensity(wh, "vote", models_from=sample, chunk_rows=1_500)
    return wh, result


@pytest.mark.parametrize("channel", ["vote", "copy"])
def test_score_frame_reproduces_the_fits_out_of_fold_scores(split: tuple[Path, Path], channel: str) -> None:
    """Given the fit's folds, score_frame recomputes exactly what `propensity fit` wrote (LightGBM
    and logistic), from polars and from pandas input."""
    _, sample = split
    spec, models, calibrators = load_fold_models(sample, channel)
    fit = read_scores(sample, channel)
    feedback = read_feedback(sample).join(fit, on="exposure_id", how="inner", maintain_order="left")
    assert feedback.height == fit.height
    for frame in (feedback, feedback.to_pandas()):
        out = score_frame(frame, spec, models, calibrators, folds=feedback["fold"].to_numpy())
        assert out["exposure_id"].to_list() == feedback["exposure_id"].to_list()
        np.testing.assert_allclose(out["propensity"].to_numpy(), feedback["propensity"].to_numpy(), rtol=0, atol=1e-12)
        np.testing.assert_allclose(out["propensity_raw"].to_numpy(), feedback["propensity_raw"].to_numpy(), rtol=0, atol=1e-12)
        assert out["fold"].to_list() == feedback["fold"].to_list()


def test_fitted_exposures_keep_their_scores_and_new_ones_get_the_fold_average(split, scored) -> None:
    full, sample = split
    wh, result = scored
    scores = read_scores(wh, "vote")
    fit = read_scores(sample, "vote")
    assert scores.height == result.n_exposures == 8_000
    assert (result.n_fit, result.n_new) == (fit.height, 8_000 - fit.height)
    assert result.unseen_levels == {"model_id": 0, "platform": 0, "locale": 0}

    kept = scores.join(fit, on="exposure_id", how="inner", suffix="_fit")
    assert kept.height == fit.height
    for column in ("propensity", "propensity_raw", "fold"):
        assert kept[column].equals(kept[f"{column}_fit"], check_names=False)

    # New exposures: recompute the documented formula by hand from the saved models.
    new = scores.filter(pl.col("fold") == -1).sort("exposure_id")
    assert new.height == result.n_new
    feedback = read_feedback(full).filter(pl.col("exposure_id").is_in(new["exposure_id"].implode())).sort("exposure_id")
    _, models, calibrators = load_fold_models(sample, "vote")
    X, _, _ = build_features(feedback)
    raw = np.stack([m.predict_propensity(X) for m in models])
    calibrated = np.stack([np.clip(c.predict(r), 0, 1) for c, r in zip(calibrators, raw)])
    np.testing.assert_allclose(new["propensity_raw"].to_numpy(), raw.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(new["propensity"].to_numpy(), np.clip(calibrated.mean(axis=0), FLOOR, 1.0), rtol=1e-12)
    assert new["propensity"].min() >= FLOOR and new["propensity"].max() <= 1.0


def test_fold_average_ranks_new_exposures_like_the_truth(warehouse: Path, scored) -> None:
    """3,712 exposures no model saw: their rank correlation with the simulator's true propensity is
    as good as the fit's own out-of-fold one (averaging K models only smooths; se ~ 1/sqrt(n) = 0.02)."""
    wh, _ = scored
    truth = pl.read_parquet(warehouse.parent / "truth.parquet").select("exposure_id", true_p="propensity")
    joined = read_scores(wh, "vote").join(truth, on="exposure_id")
    new, fitted = joined.filter(pl.col("fold") == -1), joined.filter(pl.col("fold") >= 0)
    rho_new = spearmanr(new["propensity"], new["true_p"]).statistic
    rho_fit = spearmanr(fitted["propensity"], fitted["true_p"]).statistic
    assert rho_new > 0.5
    assert rho_new > rho_fit - 0.05


def test_scoring_is_recorded_and_repeatable(split, scored) -> None:
    """The warehouse adopts the sample's models and metrics, records the scoring, and scoring it
    again with its own (adopted) models changes nothing: fold -1 rows are recomputed identically."""
    _, sample = split
    wh, result = scored
    assert (wh / "propensity" / "models" / "vote" / "config.json").read_text() == (
        sample / "propensity" / "models" / "vote" / "config.json"
    ).read_text()
    scoring = read_metrics(wh, "vote")["scoring"]
    assert scoring["engine"] == "local" and (scoring["n_fit"], scoring["n_new"]) == (result.n_fit, result.n_new)
    assert read_metrics(wh, "vote")["auc"] == read_metrics(sample, "vote")["auc"]
    before = read_scores(wh, "vote")
    again = score_propensity(wh, "vote", chunk_rows=5_000)
    assert (again.n_fit, again.n_new) == (result.n_fit, result.n_new)
    assert read_scores(wh, "vote").equals(before)
    assert not [p.name for p in (wh / "propensity").iterdir() if p.name.startswith(".")]


def test_an_unseen_level_is_scored_as_missing(split, caplog) -> None:
    """A categorical level the fit never saw gets exactly the score of a null (as at fit time)."""
    full, sample = split
    spec, models, calibrators = load_fold_models(sample, "vote")
    rows = read_feedback(full).head(50)
    unseen = rows.with_columns(model_id=pl.lit("model-never-seen"))
    null = rows.with_columns(model_id=pl.lit(None, dtype=pl.String))
    with caplog.at_level(logging.WARNING, logger="propensity.models.score"):
        a = score_frame(unseen, spec, models, calibrators)
    b = score_frame(null, spec, models, calibrators)
    assert a.equals(b)
    assert "50 exposure(s) have a model_id level the fit never saw" in caplog.text
    assert not a.equals(score_frame(rows, spec, models, calibrators))


def test_both_layouts_round_trip(scored, tmp_path: Path) -> None:
    """file -> partitioned -> file: every channel reads back the same; write_scores keeps the form."""
    wh = tmp_path / "wh"
    shutil.copytree(scored[0], wh)
    ids = read_scores(wh, "vote").select("exposure_id")
    copy = ids.with_columns(propensity=pl.lit(0.3), propensity_raw=pl.lit(0.25), fold=pl.lit(2, dtype=pl.Int32))
    write_scores(wh, "copy", copy)
    vote = read_scores(wh, "vote")

    score_propensity(wh, "vote", layout="partitioned")
    path = scores_path(wh)
    assert path.is_dir()
    assert sorted(p.name for p in path.iterdir()) == ["channel=copy", "channel=vote"]
    assert all(p.name.startswith("part-") and p.suffix == ".parquet" for p in path.rglob("*") if p.is_file())
    assert read_scores(wh, "vote").equals(vote) and read_scores(wh, "copy").equals(copy.sort("exposure_id"))

    write_scores(wh, "share", copy)  # a fit into the partitioned form adds a partition
    assert path.is_dir() and read_scores(wh, "share").equals(copy.sort("exposure_id"))
    with pytest.raises(WarehouseError, match=r"no propensity scores for channel 'regenerate' \(fitted: \['copy', 'share', 'vote'\]\)"):
        read_scores(wh, "regenerate")

    score_propensity(wh, "vote", layout="file")
    assert path.is_file()
    assert pl.read_parquet(path).columns == ["exposure_id", "channel", "propensity", "propensity_raw", "fold"]
    assert pl.read_parquet(path)["channel"].to_list() == sorted(pl.read_parquet(path)["channel"].to_list())
    for channel, expected in (("vote", vote), ("copy", copy), ("share", copy)):
        assert read_scores(wh, channel).equals(expected.sort("exposure_id"))


def test_models_with_embeddings_need_embeddings(split, tmp_path: Path) -> None:
    full, sample = split
    fitted = tmp_path / "sample"
    shutil.copytree(sample, fitted)
    ids = read_feedback(fitted)["exposure_id"]
    rng = np.random.default_rng(0)
    (fitted / "embeddings").mkdir()
    pl.DataFrame({"exposure_id": ids, "embedding": rng.normal(size=(len(ids), 4)).astype(np.float32).tolist()}).with_columns(
        pl.col("embedding").cast(pl.List(pl.Float32))
    ).write_parquet(fitted / "embeddings" / "part-00000.parquet")
    fit_propensity(fitted, PropensityConfig(channel="vote", n_jobs=1, model_params={"n_estimators": 10}))
    with pytest.raises(WarehouseError, match="fitted with 4-dimensional text embeddings and the warehouse has none"):
        score_propensity(full, "vote", models_from=fitted)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"channel": "regenerate"}, WarehouseError, "no saved propensity models for channel 'regenerate'"),
        ({"engine": "dask"}, ConfigError, "unknown engine 'dask'"),
        ({"layout": "csv"}, ConfigError, "unknown scores layout 'csv'"),
        ({"channel": "likes"}, ConfigError, "unknown channel 'likes'"),
        ({"threads": 0}, ConfigError, "threads must be >= 1"),
    ],
)
def test_refusals(split, kwargs, error, message) -> None:
    _, sample = split
    with pytest.raises(error, match=message):
        score_propensity(sample, **kwargs)


def test_cli(split, tmp_path: Path) -> None:
    full, sample = split
    wh = tmp_path / "wh"
    shutil.copytree(full, wh)
    result = runner.invoke(app, ["propensity", "score", str(wh), "--models-from", str(sample), "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert "vote: scored 8,000 exposures with local" in result.output and "(file)" in result.output
    assert json.loads((wh / "propensity" / "metrics.json").read_text())["vote"]["scoring"]["n_exposures"] == 8_000

    missing = runner.invoke(app, ["propensity", "score", str(full), "--channel", "share"])
    assert missing.exit_code == 1
    assert "error:" in missing.output and "no saved propensity models for channel 'share'" in missing.output
    assert "Traceback" not in missing.output


def test_downstream_steps_accept_scored_exposures(scored, tmp_path: Path) -> None:
    """After scoring, exposures outside the fit carry fold -1: noise estimation regroups them by
    user instead of failing, and export hashes a partitioned scores folder."""
    from propensity.weights.export import ExportConfig, export_weighted_dataset
    from propensity.noise.estimate import NoiseConfig, estimate_noise

    wh = tmp_path / "wh"
    shutil.copytree(scored[0], wh)
    assert read_scores(wh, "vote")["fold"].min() == -1
    result = estimate_noise(wh, NoiseConfig(bootstrap=20))
    assert 0 <= result["rho01"] < 1 and 0 <= result["rho10"] < 1
    score_propensity(wh, "vote", layout="partitioned")
    manifest = export_weighted_dataset(ExportConfig(warehouse=str(wh), out=str(tmp_path / "ds")))
    assert any("channel=vote" in name for name in manifest["input"]["files"])
