"""Streamed weights export (issue 23): a table larger than the export's memory budget is joined and
sorted out of core by DuckDB and written batch by batch; the dataset equals the in-memory export's.

Inputs: the ``prepare`` warehouse of test_export.py (8,000 exposures, truth-based scores, noise.json),
streamed with ``max_rows=1`` and batches of 997 rows so that batch boundaries fall mid-prompt and
mid-user. A streamed export writes the rows in DuckDB's scan order (no global sort), so frames are
compared sorted by exposure_id. Weights for ips / clipped-ips are the same floating-point operations
in both paths, so the frames are compared exactly; snips divides by per-split sums that DuckDB adds in another order, so its
weights agree to a relative 1e-12 (a few ulps on sums of ~2,000 terms).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from propensity.io import write_scores
from propensity.weights.export import ExportConfig, export_plan, export_weighted_dataset, read_pairs, read_weighted_dataset
from schemas.errors import ConfigError, WarehouseError
from tests.propensity.test_export import NOISE, prepare

STREAMED = {"max_rows": 1, "batch_rows": 997}


@pytest.fixture(scope="module")
def wh(warehouse: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    segments = [
        {"segment_by": "platform", "segment": "web", "rho01": 0.3, "rho10": 0.05},
        {"segment_by": "platform", "segment": "ios", "rho01": 0.1, "rho10": 0.2},
    ]
    wh = prepare(warehouse, tmp_path_factory.mktemp("export_stream_wh"), noise={**NOISE, "segments": segments})
    truth = pl.read_parquet(warehouse.parent / "truth.parquet")
    # The copy channel's scores: the vote propensity halved (any values in (0, 1] will do here).
    write_scores(wh, "copy", truth.select("exposure_id", propensity=(pl.col("propensity") / 2).clip(0.01, 1.0),
                                          propensity_raw="propensity", fold=pl.lit(0, dtype=pl.Int32)))
    ids = truth["exposure_id"]
    vectors = np.random.default_rng(0).normal(size=(len(ids), 3)).astype(np.float32)
    (wh / "embeddings").mkdir()
    pl.DataFrame({"exposure_id": ids, "embedding": vectors.tolist()},
                 schema={"exposure_id": pl.Utf8, "embedding": pl.List(pl.Float32)}).write_parquet(wh / "embeddings" / "part-0.parquet")
    return wh


def _both(wh: Path, root: Path, **options) -> tuple[tuple[Path, dict], tuple[Path, dict]]:
    whole = export_weighted_dataset(ExportConfig(warehouse=str(wh), out=str(root / "whole"), **options))
    streamed = export_weighted_dataset(ExportConfig(warehouse=str(wh), out=str(root / "streamed"), **options, **STREAMED))
    return (root / "whole", whole), (root / "streamed", streamed)


def _same_manifest(whole: dict, streamed: dict, *, rtol: float = 0.0) -> None:
    assert whole["memory"]["streamed"] is False and streamed["memory"]["streamed"] is True
    for key in ("rows", "columns", "noise", "input"):
        assert whole[key] == streamed[key], key
    w, s = whole["weights"], streamed["weights"]
    pairs = [(s[key], value, key) for key, value in w.items() if key != "by_split"]
    pairs += [(s["by_split"][split][k], v, (split, k)) for split, summary in w["by_split"].items() for k, v in summary.items()]
    for got, want, where in pairs:
        assert got == (pytest.approx(want, rel=rtol) if isinstance(want, float) else want), where


def test_streamed_export_equals_the_in_memory_export(wh: Path, tmp_path: Path) -> None:
    (whole_dir, whole), (streamed_dir, streamed) = _both(wh, tmp_path, pairs=True)
    data = read_weighted_dataset(streamed_dir)
    assert data.height == 8_000 and data["embedding"].list.len().unique().to_list() == [3]
    assert set(data["rho01"].unique().to_list()) == {0.3, 0.1, 0.2}  # segment rates, overall on android
    assert_frame_equal(read_weighted_dataset(whole_dir), data.sort("exposure_id"), check_exact=True)
    assert_frame_equal(read_pairs(whole_dir), read_pairs(streamed_dir), check_exact=True)
    _same_manifest(whole, streamed)
    assert whole["pairs"] == streamed["pairs"] and whole["pairs"]["rows"] > 100


def test_streamed_export_in_several_join_passes_equals_the_in_memory_export(wh: Path, tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A table whose scores would not fit DuckDB's share is joined in passes over hash(exposure_id) % K
    (casecontrol.join_partitions): every row comes once, with its own score and the last-written
    embedding of its exposure (100 exposures rewritten in a later file), as in memory."""
    import shutil

    import propensity.models.casecontrol as casecontrol

    copy = tmp_path / "wh"
    shutil.copytree(wh, copy)
    first = pl.read_parquet(copy / "embeddings" / "part-0.parquet")
    first.head(100).with_columns(pl.col("embedding").list.eval(pl.element() * -1)).write_parquet(copy / "embeddings" / "part-1.parquet")
    passes: list[str] = []
    predicate = casecontrol.partition_predicate
    monkeypatch.setattr(casecontrol, "join_partitions", lambda *args, **kwargs: 3)
    monkeypatch.setattr(casecontrol, "partition_predicate", lambda k, n: passes.append(predicate(k, n)) or predicate(k, n))
    (whole_dir, whole), (streamed_dir, streamed) = _both(copy, tmp_path, pairs=True)
    assert passes == [f"hash(exposure_id) % 3 = {k}" for k in range(3)]
    data = read_weighted_dataset(streamed_dir)
    assert data["exposure_id"].n_unique() == data.height == 8_000
    assert_frame_equal(read_weighted_dataset(whole_dir), data.sort("exposure_id"), check_exact=True)
    assert_frame_equal(read_pairs(whole_dir), read_pairs(streamed_dir), check_exact=True)
    _same_manifest(whole, streamed)


def test_join_partitions_grow_with_the_rows_and_the_tables() -> None:
    from propensity.models.casecontrol import JOIN_BYTES_PER_ROW, join_partitions

    share = 2 * 2**30
    assert join_partitions(10_000_000, share) == 1  # 1.2 GB of scores fit a 2GB share
    assert join_partitions(30_000_000, share) == 2  # 3.6 GB: two passes (one spilled, measured)
    assert join_partitions(30_000_000, share, tables=2) == 4
    assert join_partitions(1_000, share, embedding_dim=384) == 1
    assert join_partitions(10_000_000, share, embedding_dim=384) == -(-10_000_000 * (2 * JOIN_BYTES_PER_ROW + 8 * 384) // share)


@pytest.mark.parametrize("options", [{"scheme": "snips", "format": "jsonl"}, {"scheme": "clipped-ips", "clip": 0.1, "channel": "copy"}])
def test_streamed_export_equals_in_memory_for_other_schemes_formats_and_channels(wh: Path, tmp_path: Path, options: dict) -> None:
    (whole_dir, whole), (streamed_dir, streamed) = _both(wh, tmp_path, **options)
    a, b = read_weighted_dataset(whole_dir), read_weighted_dataset(streamed_dir).sort("exposure_id")
    snips = options["scheme"] == "snips"
    assert_frame_equal(a, b, check_exact=not snips, rel_tol=1e-12, abs_tol=0)
    _same_manifest(whole, streamed, rtol=1e-12 if snips else 0.0)
    if snips:  # the documented normalisation holds on the streamed rows: observed weights of a split sum to its rows
        sums = b.group_by("split").agg(pl.col("weight").sum(), pl.len())
        np.testing.assert_allclose(sums["weight"].to_numpy(), sums["len"].to_numpy().astype(float), rtol=1e-12)


def test_streamed_export_refuses_missing_propensities_like_the_in_memory_one(wh: Path, tmp_path: Path) -> None:
    scores = pl.read_parquet(wh / "propensity" / "scores.parquet").filter(pl.col("channel") == "vote")
    broken = tmp_path / "wh"
    import shutil

    shutil.copytree(wh, broken)
    write_scores(broken, "vote", scores.slice(5))
    messages = []
    for options in ({}, STREAMED):
        with pytest.raises(WarehouseError, match="5 of 8,000 exposures have no 'vote' propensity") as info:
            export_weighted_dataset(ExportConfig(warehouse=str(broken), out=str(tmp_path / "ds"), **options))
        messages.append(str(info.value))
    assert messages[0] == messages[1]
    assert not (tmp_path / "ds").exists()



def test_streamed_export_refuses_rows_without_an_embedding_like_the_in_memory_one(wh: Path, tmp_path: Path) -> None:
    """Embeddings missing for 5 exposures: both paths refuse with the same line (mutant
    _stream._Joined.counts__mutmut_2 never counted the missing ones, so the streamed export went on)."""
    import shutil

    broken = tmp_path / "wh"
    shutil.copytree(wh, broken)
    part = broken / "embeddings" / "part-0.parquet"
    pl.read_parquet(part).slice(5).write_parquet(part)
    messages = []
    for options in ({}, STREAMED):
        with pytest.raises(WarehouseError, match="5 of 8,000 exposures have no embedding") as info:
            export_weighted_dataset(ExportConfig(warehouse=str(broken), out=str(tmp_path / "ds"), **options))
        messages.append(str(info.value))
    assert messages[0] == messages[1]


def test_streamed_export_names_the_propensities_outside_0_1() -> None:
    """A zero propensity: the streamed export's refusal gives the count and the bad value (mutant
    _stream._Joined.check_scores__mutmut_8 wrote 'e.g. None')."""
    import duckdb

    from propensity.weights._stream import _Joined
    from schemas.errors import InputFileError

    con = duckdb.connect()
    con.execute("CREATE TABLE scores AS SELECT CAST(p AS DOUBLE) AS propensity FROM (VALUES (0.5), (0.0), (0.25)) t(p)")
    with pytest.raises(InputFileError, match=r"1 propensities outside \(0, 1\] \(e.g. \[0.0\]\)"):
        _Joined(con, has_embeddings=False, label_aware=False).check_scores("propensity/scores.parquet")

def test_export_plan_uses_the_fit_memory_model() -> None:
    cfg = ExportConfig(warehouse="wh", out="ds")
    assert not export_plan(4_000_000, cfg).streamed and export_plan(6_000_000, cfg).streamed  # 4GB: ~4.8M rows whole
    assert export_plan(1_001, ExportConfig(warehouse="wh", out="ds", max_rows=1_000)).streamed
    with pytest.raises(ConfigError, match="memory limit"):
        ExportConfig(warehouse="wh", out="ds", memory_limit="lots")
