"""`causalrm propensity score --engine spark` (issue 8): Spark scoring equals local scoring of the
same exposures, for LightGBM, logistic and an MLP on embeddings; both layouts; `weights export`
after Spark scoring. One local[2] Spark session for the module, three scoring jobs.

Tolerance: the engines run the same Python function on the same Arrow data, so the scores are
expected to be identical; the assertions allow 1e-9 (LightGBM, logistic: float64 throughout) and
1e-6 for the MLP, whose float32 matrix products may block differently for other batch sizes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from cli import app
from feedback_etl.io import read_feedback, write_feedback
from propensity import read_scores, read_weighted_dataset
from propensity.models.fit import PropensityConfig, fit_propensity
from propensity.io import scores_path
from propensity.models.score import score_propensity

pytestmark = pytest.mark.spark
runner = CliRunner()


@pytest.fixture(scope="module")
def spark():
    """The module's one local[2] session (stopped at the end unless it was already running)."""
    from pyspark.sql import SparkSession

    from propensity.models.spark_score import spark_session

    existing = SparkSession.getActiveSession()
    session = spark_session(threads=2)
    session.conf.set("spark.sql.shuffle.partitions", "2")
    yield session
    if existing is None:
        session.stop()


def _embed(wh: Path, ids: pl.Series, dim: int = 8) -> None:
    """Stand-in embeddings (seeded normal vectors per exposure) with the `causalrm embed` layout."""
    rng = np.random.default_rng(7)
    (wh / "embeddings").mkdir(exist_ok=True)
    frame = pl.DataFrame({"exposure_id": ids, "embedding": rng.normal(size=(len(ids), dim)).astype(np.float32).tolist()})
    frame.with_columns(pl.col("embedding").cast(pl.List(pl.Float32))).write_parquet(wh / "embeddings" / "part-00000.parquet")
    (wh / "embeddings" / "meta.json").write_text(json.dumps({"model": "test", "pooling": "mean", "dim": dim, "max_length": 8}))


@pytest.fixture(scope="module")
def split(warehouse: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, Path]:
    """(full, sample, full_emb, sample_emb): the fixture warehouse and half of its users, fitted for
    vote (LightGBM, 50 trees) and copy (logistic); and the same pair with 8-dimensional embeddings,
    fitted for vote with a small MLP."""
    root = tmp_path_factory.mktemp("spark_score")
    full, sample = root / "full", root / "sample"
    shutil.copytree(warehouse, full)
    feedback = read_feedback(warehouse)
    users = feedback["user_id"].unique().sort().sample(fraction=0.5, seed=1)
    write_feedback(feedback.filter(pl.col("user_id").is_in(users.implode())), sample / "feedback")
    fit_propensity(sample, PropensityConfig(channel="vote", n_jobs=1, model_params={"n_estimators": 50}))
    fit_propensity(sample, PropensityConfig(channel="copy", model="logistic"))

    full_emb, sample_emb = root / "full_emb", root / "sample_emb"
    shutil.copytree(warehouse, full_emb)
    shutil.copytree(sample, sample_emb, ignore=shutil.ignore_patterns("propensity"))
    _embed(full_emb, feedback["exposure_id"])
    _embed(sample_emb, feedback["exposure_id"])  # a superset: the fit joins by exposure_id
    fit_propensity(
        sample_emb,
        PropensityConfig(channel="vote", model="mlp", device="cpu", model_params={"hidden_sizes": (16,), "max_epochs": 3}),
    )
    return full, sample, full_emb, sample_emb


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _assert_same_scores(local: pl.DataFrame, spark: pl.DataFrame, atol: float) -> None:
    assert spark["exposure_id"].to_list() == local["exposure_id"].to_list()
    assert spark["fold"].to_list() == local["fold"].to_list()
    for column in ("propensity", "propensity_raw"):
        np.testing.assert_allclose(spark[column].to_numpy(), local[column].to_numpy(), rtol=0, atol=atol)


def test_spark_equals_local_lightgbm_and_export_works(spark, split, tmp_path: Path) -> None:
    full, sample, _, _ = split
    local_wh, spark_wh = _copy(full, tmp_path / "local"), _copy(full, tmp_path / "spark")
    local = score_propensity(local_wh, "vote", models_from=sample, threads=1)
    result = score_propensity(spark_wh, "vote", models_from=sample, engine="spark")
    assert (result.n_exposures, result.n_fit, result.n_new) == (local.n_exposures, local.n_fit, local.n_new) == (8_000, local.n_fit, 8_000 - local.n_fit)
    assert result.unseen_levels == local.unseen_levels
    assert scores_path(spark_wh).is_file() and result.layout == "file"
    _assert_same_scores(read_scores(local_wh, "vote"), read_scores(spark_wh, "vote"), atol=1e-9)
    assert not [p for p in (spark_wh / "propensity").rglob("*") if p.name.startswith(".")]

    exported = runner.invoke(app, ["weights", "export", str(spark_wh), "--out", str(tmp_path / "dataset"), "--no-noise"])
    assert exported.exit_code == 0, exported.output
    dataset = read_weighted_dataset(tmp_path / "dataset")
    assert dataset.height == 8_000
    joined = dataset.join(read_scores(spark_wh, "vote"), on="exposure_id")
    assert joined.height == 8_000 and joined["propensity"].equals(joined["propensity_right"], check_names=False)


def test_spark_equals_local_logistic_partitioned(spark, split, tmp_path: Path) -> None:
    """The copy channel (logistic) into the partitioned layout: the vote rows already in the file
    move into their own partition; read_scores reads both; no .crc or _SUCCESS files."""
    full, sample, _, _ = split
    local_wh, spark_wh = _copy(full, tmp_path / "local"), _copy(full, tmp_path / "spark")
    score_propensity(local_wh, "copy", models_from=sample, threads=1)
    vote = pl.DataFrame({"exposure_id": read_feedback(full)["exposure_id"], "propensity": 0.5, "propensity_raw": 0.5, "fold": -1})
    from propensity.io import write_scores

    write_scores(spark_wh, "vote", vote)
    result = score_propensity(spark_wh, "copy", models_from=sample, engine="spark", layout="partitioned")
    path = scores_path(spark_wh)
    assert result.layout == "partitioned" and path.is_dir()
    files = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())
    assert files and all(f.split("/")[0] in ("channel=copy", "channel=vote") and f.split("/")[1].startswith("part-") and f.endswith(".parquet") for f in files)
    _assert_same_scores(read_scores(local_wh, "copy"), read_scores(spark_wh, "copy"), atol=1e-9)
    assert read_scores(spark_wh, "vote").equals(vote.with_columns(pl.col("fold").cast(pl.Int32)).sort("exposure_id"))


def test_spark_equals_local_mlp_with_embeddings(spark, split, tmp_path: Path) -> None:
    _, _, full_emb, sample_emb = split
    local_wh, spark_wh = _copy(full_emb, tmp_path / "local"), _copy(full_emb, tmp_path / "spark")
    local = score_propensity(local_wh, "vote", models_from=sample_emb, threads=1)
    result = score_propensity(spark_wh, "vote", models_from=sample_emb, engine="spark")
    assert local.n_new == result.n_new > 3_000
    _assert_same_scores(read_scores(local_wh, "vote"), read_scores(spark_wh, "vote"), atol=1e-6)


def test_spark_refuses_missing_embeddings_before_any_job(spark, split) -> None:
    from schemas.errors import WarehouseError

    full, _, _, sample_emb = split
    with pytest.raises(WarehouseError, match="8-dimensional text embeddings and the warehouse has none"):
        score_propensity(full, "vote", models_from=sample_emb, engine="spark")
