"""A failing step never destroys earlier results (issue 16): `causalrm embed` with a bad model keeps
the embeddings the propensity fit uses, a failing fit keeps the previous scores and models, and a fit
that falls back to no embeddings says so."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from feedback_etl.embed import EmbedConfig, embed
from feedback_etl.io import read_feedback
from propensity.models import fit as fit_module
from propensity.models.fit import PropensityConfig, fit_propensity
from schemas.errors import EstimationError, InputFileError

FAST = {"model": "logistic", "n_jobs": 1}


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture()
def wh_with_embeddings(warehouse: Path, tmp_path: Path) -> Path:
    wh = tmp_path / "wh"
    shutil.copytree(warehouse, wh, ignore=shutil.ignore_patterns("propensity", "embeddings"))
    ids = read_feedback(wh, validate=False)["exposure_id"]
    vectors = np.random.default_rng(0).normal(size=(len(ids), 8)).astype(np.float32)
    (wh / "embeddings").mkdir()
    pl.DataFrame({"exposure_id": ids, "embedding": vectors.tolist()}).with_columns(
        pl.col("embedding").cast(pl.List(pl.Float32))).write_parquet(wh / "embeddings" / "part-00000.parquet")
    return wh


def test_bad_embed_model_keeps_the_embeddings_the_fit_uses(wh_with_embeddings: Path) -> None:
    wh = wh_with_embeddings
    first = fit_propensity(wh, PropensityConfig(**FAST))
    assert first.metrics["embedding_dim"] == 8
    before = _tree(wh / "embeddings")
    with pytest.raises(InputFileError, match="cannot load embedding model"):
        embed(wh, EmbedConfig(model=str(wh / "typo-model"), device="cpu"))
    assert _tree(wh / "embeddings") == before
    again = fit_propensity(wh, PropensityConfig(**FAST))
    assert again.metrics["embedding_dim"] == 8 and not any("without embeddings" in w for w in again.metrics["warnings"])
    np.testing.assert_array_equal(again.scores["propensity"].to_numpy(), first.scores["propensity"].to_numpy())


def test_fit_that_loses_its_embeddings_warns(wh_with_embeddings: Path) -> None:
    wh = wh_with_embeddings
    fit_propensity(wh, PropensityConfig(**FAST))
    shutil.rmtree(wh / "embeddings")
    result = fit_propensity(wh, PropensityConfig(**FAST))
    assert result.metrics["embedding_dim"] == 0
    assert any("without embeddings although the last vote fit used 8-dim embeddings" in w for w in result.metrics["warnings"])
    # On purpose (--no-embeddings): no warning.
    quiet = fit_propensity(wh, PropensityConfig(**FAST, use_embeddings=False))
    assert not any("without embeddings" in w for w in quiet.metrics["warnings"])


def test_failing_fit_keeps_the_previous_scores_and_models(wh_with_embeddings: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wh = wh_with_embeddings
    fit_propensity(wh, PropensityConfig(**FAST))
    before = _tree(wh / "propensity")

    def failing_cross_fit(*args, **kwargs):
        raise EstimationError("a fold has one class")

    monkeypatch.setattr(fit_module, "cross_fit", failing_cross_fit)
    with pytest.raises(EstimationError):
        fit_propensity(wh, PropensityConfig(**FAST, clip=0.02))
    assert _tree(wh / "propensity") == before
    assert sorted(p.name for p in (wh / "propensity").iterdir() if p.name.startswith(".")) == []


def test_export_and_noise_warn_when_embeddings_vanish_and_a_failing_export_keeps_the_dataset(
    wh_with_embeddings: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from propensity.noise.estimate import NoiseConfig, estimate_noise
    from propensity.weights import export as export_module
    from propensity.weights.export import ExportConfig, export_weighted_dataset

    wh, out = wh_with_embeddings, tmp_path / "dataset"
    fit_propensity(wh, PropensityConfig(**FAST))
    assert estimate_noise(wh, NoiseConfig(bootstrap=20, proxy="logistic", n_folds=2))["embeddings"] is True
    first = export_weighted_dataset(ExportConfig(warehouse=str(wh), out=str(out)))
    assert first["columns"]["embedding_dim"] == 8 and "warnings" not in first
    before = _tree(out)

    def failing_write(*args, **kwargs):
        raise OSError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(export_module, "_write_table", failing_write)
        with pytest.raises(OSError):
            export_weighted_dataset(ExportConfig(warehouse=str(wh), out=str(out)))
    assert _tree(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["dataset", "wh"]

    shutil.rmtree(wh / "embeddings")
    noise = estimate_noise(wh, NoiseConfig(bootstrap=20, proxy="logistic", n_folds=2))
    assert any("without embeddings although the last vote estimate used them" in w for w in noise["warnings"])
    fit_propensity(wh, PropensityConfig(**FAST))
    second = export_weighted_dataset(ExportConfig(warehouse=str(wh), out=str(out)))
    assert second["columns"]["embedding_dim"] is None
    assert "had 8-dim embeddings" in second["warnings"][0]
    assert json.loads((out / "manifest.json").read_text())["warnings"] == second["warnings"]


def test_failing_score_keeps_the_previous_scores(wh_with_embeddings: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from propensity.models import score as score_module
    from propensity.models.score import score_propensity

    wh = wh_with_embeddings
    fit_propensity(wh, PropensityConfig(**FAST))
    before = _tree(wh / "propensity")
    calls = {"n": 0}
    real = score_module.score_batch

    def failing_after_one_batch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise MemoryError("killed half way")
        return real(*args, **kwargs)

    monkeypatch.setattr(score_module, "score_batch", failing_after_one_batch)
    with pytest.raises(MemoryError):
        score_propensity(wh, "vote", chunk_rows=1_000)
    assert calls["n"] == 2 and _tree(wh / "propensity") == before
    assert [p.name for p in (wh / "propensity").rglob(".*")] == []
