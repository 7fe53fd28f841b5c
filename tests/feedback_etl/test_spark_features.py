"""`causalrm ingest --engine spark` carries custom context columns (issue 17 item 1) and builds the
balanced, re-ingest-stable user split (issue 15 item 6) exactly as the DuckDB engine does.

Each test ingests the same small logs with both engines and compares the feedback table (contract
and feature columns), WH/events (its ``context`` column included) and the run's feature record.
One local Spark session for the module (a JVM start costs ~20 s).
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from feedback_etl.features import read_feature_frame
from feedback_etl.ingest import IngestConfig, ingest
from feedback_etl.io import read_events, read_feedback
from schemas.errors import InputFileError

pytestmark = [pytest.mark.spark, pytest.mark.slow]

TEST_CONF = {"spark.sql.shuffle.partitions": "2", "spark.sql.adaptive.enabled": "false", "spark.sql.codegen.wholeStage": "false"}
T0 = datetime(2026, 1, 5, 12, 0, tzinfo=timezone.utc)
MAPPING = '[features]\nplan = "categorical"\nbeta = "boolean"\nturn = {type = "numeric", source = "meta.turn"}\n'


@pytest.fixture(scope="module")
def spark():
    from feedback_etl.spark_session import get_spark

    session = get_spark(threads=2, conf=TEST_CONF)
    before = {key: session.conf.get(key, None) for key in TEST_CONF}
    for key, value in TEST_CONF.items():
        session.conf.set(key, value)
    yield session
    for key, value in before.items():
        session.conf.unset(key) if value is None else session.conf.set(key, value)


def _events(users: dict[str, int], *, prefix: str, extra) -> list[dict]:
    """Impressions (``users[u]`` per user) with ``extra(k)`` context fields, a vote on every third."""
    rows, k = [], 0
    for user, n in users.items():
        for _ in range(n):
            rows.append({
                "event_id": f"{prefix}imp{k}", "event_time": (T0 + timedelta(minutes=k)).isoformat(), "event_type": "impression",
                "exposure_id": f"{prefix}x{k}", "user_id": user, "session_id": f"s-{user}", "prompt_id": f"p{k}",
                "response_id": f"r{k}", "model_id": "m", **extra(k),
            })
            if k % 3 == 0:
                rows.append({"event_id": f"{prefix}vote{k}", "event_time": (T0 + timedelta(minutes=k, seconds=5)).isoformat(),
                             "event_type": "thumbs_up" if k % 2 else "thumbs_down", "exposure_id": f"{prefix}x{k}"})
            k += 1
    return rows


def _heavy_users(n: int, seed: int, prefix: str) -> dict[str, int]:
    counts = np.minimum(np.ceil(np.random.default_rng(seed).pareto(1.1, n) * 2 + 1), 60).astype(int)
    return {f"{prefix}{k}": int(c) for k, c in enumerate(counts)}


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _ingest(inputs: list[Path], wh: Path, engine: str, **kwargs) -> dict:
    return ingest(IngestConfig(inputs=tuple(str(p) for p in inputs), warehouse=str(wh), engine=engine, threads=2, **kwargs))


def _assert_same(duck_wh: Path, spark_wh: Path, duck_run: dict, spark_run: dict) -> None:
    assert read_feedback(duck_wh).equals(read_feedback(spark_wh)), "feedback tables differ"
    duck_features, spark_features = read_feature_frame(duck_wh), read_feature_frame(spark_wh)
    assert duck_features is not None and spark_features is not None
    assert duck_features.schema == spark_features.schema
    assert duck_features.sort("exposure_id").equals(spark_features.sort("exposure_id")), "feature columns differ"
    events = [read_events(w).drop("run_id").sort("event_id") for w in (duck_wh, spark_wh)]
    assert events[0].equals(events[1]), "events (context included) differ"
    assert duck_run["features"] == spark_run["features"]
    assert sorted(duck_run["warnings"]) == sorted(spark_run["warnings"])


def test_features_and_split_agree_across_engines_over_two_batches(spark, tmp_path):
    """Declared features (a nested source among them) and an extra column picked up by
    --keep-extra-columns; the second batch lacks ``beta`` and adds new users. Each engine runs
    both batches; the warehouses agree row for row, and the first batch's users keep their split."""
    first_users, new_users = _heavy_users(40, seed=7, prefix="a"), _heavy_users(40, seed=8, prefix="b")
    one = _events(first_users, prefix="e", extra=lambda k: {
        "plan": ["free", "pro", " team "][k % 3], "meta": {"turn": k % 5}, "beta": k % 4 == 0, "country": ["fr", "de"][k % 2]})
    two = _events({**dict(list(first_users.items())[:10]), **new_users}, prefix="f", extra=lambda k: {
        "plan": "pro" if k % 2 else None, "meta": {"turn": 1.5 * k}, "country": "it"})
    batches = [_write_jsonl(tmp_path / "in" / "one.jsonl", one), _write_jsonl(tmp_path / "in2" / "two.jsonl", two)]
    mapping = tmp_path / "mapping.toml"
    mapping.write_text(MAPPING)
    whs = {engine: tmp_path / engine for engine in ("duckdb", "spark")}
    runs: dict[str, list[dict]] = {engine: [] for engine in whs}
    splits_after_first = {}
    for batch in batches:
        for engine, wh in whs.items():
            runs[engine].append(_ingest([batch], wh, engine, mapping=str(mapping), keep_extra_columns=True))
            if batch is batches[0]:
                splits_after_first[engine] = dict(read_feedback(wh).select("user_id", "split").unique().iter_rows())
        _assert_same(whs["duckdb"], whs["spark"], runs["duckdb"][-1], runs["spark"][-1])
    assert splits_after_first["duckdb"] == splits_after_first["spark"]
    assert set(runs["spark"][-1]["features"]) == {"plan", "beta", "turn", "country"}
    assert runs["spark"][-1]["features"]["country"]["type"] == "categorical"
    frame = read_feature_frame(whs["spark"]).sort("exposure_id")
    assert frame.filter(pl.col("exposure_id") == "ex2")["plan"].to_list() == ["team"]  # trimmed, as DuckDB
    assert frame.filter(pl.col("exposure_id").str.starts_with("f"))["beta"].null_count() == len(two) - sum(
        r["event_type"] != "impression" for r in two)  # absent in the second batch: null
    final = dict(read_feedback(whs["spark"]).select("user_id", "split").unique().iter_rows())
    assert {u: final[u] for u in splits_after_first["spark"]} == splits_after_first["spark"]
    assert {"train", "val", "test"} == set(final.values())


def test_parquet_features_and_a_bad_declared_value_answer_as_duckdb(spark, tmp_path):
    rows = _events({f"u{k}": 3 for k in range(12)}, prefix="e", extra=lambda k: {
        "plan": ["a", "b", "c"][k % 3], "meta": {"turn": k}, "beta": ["true", "0", "FALSE"][k % 3]})
    frame = pl.DataFrame(rows, infer_schema_length=None)
    frame.write_parquet(tmp_path / "a.parquet")
    mapping = tmp_path / "mapping.toml"
    mapping.write_text(MAPPING)
    runs = {engine: _ingest([tmp_path / "a.parquet"], tmp_path / engine, engine, mapping=str(mapping)) for engine in ("duckdb", "spark")}
    _assert_same(tmp_path / "duckdb", tmp_path / "spark", runs["duckdb"], runs["spark"])
    # A declared numeric feature holding a word: the same one line on both engines, nothing written.
    bad = _write_jsonl(tmp_path / "bad" / "b.jsonl", _events({"u": 6}, prefix="e", extra=lambda k: {
        "meta": {"turn": "seven" if k == 4 else k}, "plan": "a", "beta": True}))
    messages = {}
    for engine in ("duckdb", "spark"):
        with pytest.raises(InputFileError) as caught:
            _ingest([bad], tmp_path / f"bad-{engine}", engine, mapping=str(mapping))
        messages[engine] = str(caught.value)
        assert not (tmp_path / f"bad-{engine}" / "feedback").exists()
    assert messages["duckdb"] == messages["spark"]
    assert "declared numeric but holds 'seven'" in messages["spark"] and "b.jsonl, row 7, column meta.turn" in messages["spark"]
