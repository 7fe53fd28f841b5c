"""Embedding step: determinism on CPU, text de-duplication, shard resumption, both input kinds."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from feedback_etl import embed as embed_module
from feedback_etl.embed import EmbedConfig, embed
from feedback_etl.io import read_embeddings, read_feedback
from schemas.errors import ConfigError, InputFileError


@pytest.fixture(scope="module")
def tiny_encoder(tiny_backbone: Path) -> Path:
    """A randomly initialised 2-layer BERT (hidden 32) with the MiniLM tokenizer: fast, offline."""
    return tiny_backbone


@pytest.fixture()
def small_warehouse(warehouse: Path, tmp_path: Path) -> Path:
    """The first 300 exposures of the shared warehouse (a private, writable copy)."""
    from feedback_etl.io import write_feedback

    frame = read_feedback(warehouse).head(300)
    wh = tmp_path / "wh"
    write_feedback(frame, wh / "feedback")
    return wh


def _vectors(root: Path) -> pl.DataFrame:
    return pl.read_parquet(sorted(root.glob("part-*.parquet"))).sort("exposure_id")


def test_embed_writes_contract_and_is_deterministic(small_warehouse: Path, tiny_encoder: Path, tmp_path: Path) -> None:
    cfg = EmbedConfig(model=str(tiny_encoder), device="cpu", shard_size=64, batch_size=16)
    summary = embed(small_warehouse, cfg)
    first = read_embeddings(small_warehouse)
    assert first is not None and first.height == 300
    assert first.schema["embedding"] == pl.List(pl.Float32)
    assert first["exposure_id"].to_list() == sorted(read_feedback(small_warehouse)["exposure_id"].to_list())
    meta = json.loads((small_warehouse / "embeddings" / "meta.json").read_text())
    assert meta["complete"] and meta["dim"] == 32 and meta["pooling"] == "mean" and meta["n_exposures"] == 300
    # Identical texts were encoded once: fewer texts than exposures, and equal texts share a vector.
    assert summary["texts_encoded"] == meta["n_unique_texts"] < 300
    # A second run in a fresh folder gives bit-identical vectors.
    other = tmp_path / "again"
    embed(small_warehouse, EmbedConfig(model=str(tiny_encoder), device="cpu", shard_size=64, batch_size=16, out=str(other)))
    second = _vectors(other)
    np.testing.assert_array_equal(np.stack(first["embedding"].to_list()), np.stack(second["embedding"].to_list()))


def test_duplicate_texts_share_one_vector(small_warehouse: Path, tiny_encoder: Path) -> None:
    embed(small_warehouse, EmbedConfig(model=str(tiny_encoder), device="cpu", shard_size=50))
    frame = read_feedback(small_warehouse).join(read_embeddings(small_warehouse), on="exposure_id")
    repeated = frame.group_by("prompt_text", "response_text").agg(pl.col("embedding"), n=pl.len()).filter(pl.col("n") > 1)
    assert repeated.height > 0
    for vectors in repeated["embedding"].head(5).to_list():
        assert all(v == vectors[0] for v in vectors)


def test_crash_resumes_from_last_finished_shard(small_warehouse: Path, tiny_encoder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = EmbedConfig(model=str(tiny_encoder), device="cpu", shard_size=40, batch_size=8)
    real_encode = embed_module._Encoder.encode
    calls = {"n": 0}

    def crash_on_third_shard(self, texts, advance=None):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated crash")
        return real_encode(self, texts, advance)

    monkeypatch.setattr(embed_module._Encoder, "encode", crash_on_third_shard)
    with pytest.raises(KeyboardInterrupt):
        embed(small_warehouse, cfg)
    root = small_warehouse / "embeddings"
    assert sorted(p.name for p in root.glob("part-*.parquet")) == ["part-00000.parquet", "part-00001.parquet"]
    assert not json.loads((root / "meta.json").read_text())["complete"]
    monkeypatch.setattr(embed_module._Encoder, "encode", real_encode)
    summary = embed(small_warehouse, cfg)
    assert summary["shards_skipped"] == 2 and summary["shards_done"] == summary["n_shards"] - 2
    resumed = _vectors(root)
    fresh_out = small_warehouse.parent / "fresh"
    embed(small_warehouse, EmbedConfig(model=str(tiny_encoder), device="cpu", shard_size=40, batch_size=8, out=str(fresh_out)))
    assert resumed.equals(_vectors(fresh_out))
    # Nothing left to do: a rerun encodes nothing.
    assert embed(small_warehouse, cfg)["texts_encoded"] == 0


def test_changed_settings_start_over(small_warehouse: Path, tiny_encoder: Path) -> None:
    embed(small_warehouse, EmbedConfig(model=str(tiny_encoder), device="cpu", shard_size=40))
    summary = embed(small_warehouse, EmbedConfig(model=str(tiny_encoder), device="cpu", shard_size=40, pooling="cls"))
    assert summary["shards_skipped"] == 0 and summary["pooling"] == "cls"


def test_embed_accepts_exported_dataset(small_warehouse: Path, tiny_encoder: Path, tmp_path: Path) -> None:
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    read_feedback(small_warehouse).select("exposure_id", "prompt_text", "response_text").write_parquet(dataset / "data.parquet")
    embed(dataset, EmbedConfig(model=str(tiny_encoder), device="cpu", pooling="last"))
    assert _vectors(dataset / "embeddings").height == 300


def test_default_minilm_on_a_handful_of_texts(tmp_path: Path, small_warehouse: Path) -> None:
    from feedback_etl.io import write_feedback

    frame = read_feedback(small_warehouse).head(4)
    wh = tmp_path / "mini"
    write_feedback(frame, wh / "feedback")
    summary = embed(wh, EmbedConfig(device="cpu"))
    vectors = np.stack(read_embeddings(wh)["embedding"].to_list())
    assert summary["dim"] == 384 and summary["pooling"] == "mean" and summary["normalize"]
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"pooling": "max"}, ConfigError, "unknown pooling"),
        ({"device": "tpu"}, ConfigError, "unknown device"),
        ({"batch_size": 0}, ConfigError, "batch_size must be >= 1"),
        ({"template": "{response}"}, ConfigError, "template must contain"),
    ],
)
def test_bad_config(kwargs: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        EmbedConfig(**kwargs)


def test_bad_inputs(tmp_path: Path, tiny_encoder: Path) -> None:
    with pytest.raises(InputFileError, match="neither a warehouse"):
        embed(tmp_path, EmbedConfig(model=str(tiny_encoder)))
    (tmp_path / "wh" / "feedback" / "impression_date=2026-01-01").mkdir(parents=True)
    (tmp_path / "data.parquet").write_text("not parquet")
    with pytest.raises(InputFileError, match="cannot read"):
        embed(tmp_path, EmbedConfig(model=str(tiny_encoder)))
    with pytest.raises(InputFileError, match="cannot load embedding model"):
        shutil.copytree(tiny_encoder, tmp_path / "broken")
        (tmp_path / "broken" / "config.json").write_text("{}")
        embed_module._Encoder(str(tmp_path / "broken"), pooling=None, normalize=False, max_length=None, batch_size=1, device="cpu")


def test_cache_shares_texts_across_warehouses(small_warehouse: Path, tiny_encoder: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cfg = EmbedConfig(model=str(tiny_encoder), device="cpu", shard_size=64, batch_size=16, cache=str(cache))
    first = embed(small_warehouse, cfg)
    assert first["cache_hits"] == 0 and first["texts_encoded"] == first["n_unique_texts"]
    # A second warehouse with half of the same exposures: their texts come from the cache.
    other = tmp_path / "other"
    from feedback_etl.io import write_feedback

    write_feedback(read_feedback(small_warehouse).tail(150), other / "feedback")
    second = embed(other, cfg)
    assert second["texts_encoded"] == 0 and second["cache_hits"] == second["n_unique_texts"]
    joined = read_embeddings(other).join(read_embeddings(small_warehouse), on="exposure_id", suffix="_first")
    np.testing.assert_allclose(np.stack(joined["embedding"].to_list()), np.stack(joined["embedding_first"].to_list()), atol=1e-6)


def test_encode_texts_shares_the_embed_cache(small_warehouse: Path, tiny_encoder: Path, tmp_path: Path) -> None:
    """Texts encoded by `encode_texts` (the simulator's embedding teacher) are cache hits for `embed`."""
    from feedback_etl.embed import TEXT_TEMPLATE, encode_texts

    cfg = EmbedConfig(model=str(tiny_encoder), device="cpu", batch_size=16, max_length=64, cache=str(tmp_path / "cache"))
    frame = read_feedback(small_warehouse)
    texts = [TEXT_TEMPLATE.format(prompt=p, response=r) for p, r in zip(frame["prompt_text"], frame["response_text"])]
    vectors = encode_texts(texts, cfg)
    assert vectors.shape == (len(texts), 32) and np.isfinite(vectors).all()
    summary = embed(small_warehouse, cfg)
    assert summary["texts_encoded"] == 0 and summary["cache_hits"] == summary["n_unique_texts"]
    stored = read_embeddings(small_warehouse).sort("exposure_id")
    np.testing.assert_allclose(np.stack(stored["embedding"].to_list()), vectors, atol=1e-6)
    np.testing.assert_allclose(encode_texts(texts[:5], EmbedConfig(model=str(tiny_encoder), device="cpu", max_length=64)),
                               vectors[:5], atol=1e-5)


def test_failed_embed_keeps_previous_embeddings(small_warehouse: Path, tiny_encoder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 16: a typo in --model, or a crash with new settings, leaves the last embeddings byte-identical."""
    root = small_warehouse / "embeddings"
    cfg = EmbedConfig(model=str(tiny_encoder), device="cpu", shard_size=40, batch_size=16)
    embed(small_warehouse, cfg)
    before = {p.name: p.read_bytes() for p in root.iterdir()}
    with pytest.raises(InputFileError, match="cannot load embedding model"):
        embed(small_warehouse, EmbedConfig(model=str(small_warehouse / "no-such-model"), device="cpu"))
    assert {p.name: p.read_bytes() for p in root.iterdir()} == before
    assert sorted(p.name for p in small_warehouse.iterdir()) == ["embeddings", "feedback"]  # no building folder left

    # New settings that crash half way: the old vectors stay; the rerun resumes the building folder.
    real_encode = embed_module._Encoder.encode
    calls = {"n": 0}

    def crash_on_third_shard(self, texts, advance=None):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated crash")
        return real_encode(self, texts, advance)

    monkeypatch.setattr(embed_module._Encoder, "encode", crash_on_third_shard)
    cls = EmbedConfig(model=str(tiny_encoder), device="cpu", shard_size=40, batch_size=16, pooling="cls")
    with pytest.raises(KeyboardInterrupt):
        embed(small_warehouse, cls)
    assert {p.name: p.read_bytes() for p in root.iterdir()} == before
    assert read_embeddings(small_warehouse) is not None
    monkeypatch.setattr(embed_module._Encoder, "encode", real_encode)
    summary = embed(small_warehouse, cls)
    assert summary["shards_skipped"] == 2 and summary["pooling"] == "cls"
    assert json.loads((root / "meta.json").read_text())["pooling"] == "cls"
    assert sorted(p.name for p in small_warehouse.iterdir()) == ["embeddings", "feedback"]
