"""Custom context columns (issue 17): declared or extra raw-event columns -> typed feedback columns."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import polars as pl
import pytest

from feedback_etl.features import read_feature_frame
from feedback_etl.ingest import IngestConfig, ingest
from feedback_etl.io import read_events, read_feedback
from feedback_etl.mapping import load_mapping
from schemas.errors import ConfigError, InputFileError

T0 = datetime(2026, 1, 5, 12, 0, tzinfo=timezone.utc)


def _events(n: int, *, extra=lambda k: {}, prefix: str = "e") -> list[dict]:
    rows = []
    for k in range(n):
        rows.append({
            "event_id": f"{prefix}imp{k}", "event_time": (T0 + timedelta(minutes=k)).isoformat(), "event_type": "impression",
            "exposure_id": f"{prefix}x{k}", "user_id": f"u{k % 7}", "session_id": f"s{k % 7}", "prompt_id": f"p{k}",
            "response_id": f"r{k}", "model_id": "m", **extra(k),
        })
        if k % 3 == 0:
            rows.append({"event_id": f"{prefix}vote{k}", "event_time": (T0 + timedelta(minutes=k, seconds=5)).isoformat(),
                         "event_type": "thumbs_up" if k % 2 else "thumbs_down", "exposure_id": f"{prefix}x{k}"})
    return rows


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _mapping(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "mapping.toml"
    path.write_text(body)
    return path


def test_declared_features_reach_the_feedback_table_typed_and_the_manifest(tmp_path):
    logs = _write_jsonl(tmp_path / "a.jsonl", _events(
        30, extra=lambda k: {"plan": ["free", "pro"][k % 2], "meta": {"turn": k % 5}, "beta": k % 4 == 0}))
    mapping = _mapping(tmp_path, '[features]\nplan = "categorical"\nbeta = "boolean"\nturn = {type = "numeric", source = "meta.turn"}\n')
    run = ingest(IngestConfig(inputs=(str(logs),), warehouse=str(tmp_path / "wh"), mapping=str(mapping)))
    assert run["features"]["plan"]["type"] == "categorical" and run["features"]["turn"]["type"] == "numeric"
    assert run["mapping"]["features"]["turn"] == {"type": "numeric", "source": "meta.turn"}
    frame = read_feature_frame(tmp_path / "wh").sort("exposure_id")
    assert frame.schema["plan"] == pl.String and frame.schema["turn"] == pl.Float64 and frame.schema["beta"] == pl.Boolean
    by_id = {r["exposure_id"]: r for r in frame.to_dicts()}
    assert by_id["ex3"] == {"exposure_id": "ex3", "plan": "pro", "turn": 3.0, "beta": False}
    assert by_id["ex4"]["beta"] is True
    # The contract reader is unchanged (features are extra columns); the raw values live in WH/events.
    assert "plan" not in read_feedback(tmp_path / "wh").columns
    assert read_events(tmp_path / "wh").filter(pl.col("event_type") == "impression")["context"].null_count() == 0


def test_extra_columns_are_kept_with_inferred_types_and_absent_batches_are_null(tmp_path):
    first = _write_jsonl(tmp_path / "a.jsonl", _events(12, extra=lambda k: {"tier": f"t{k % 3}", "turn": k}))
    wh = tmp_path / "wh"
    run = ingest(IngestConfig(inputs=(str(first),), warehouse=str(wh), keep_extra_columns=True))
    assert {n: s["type"] for n, s in run["features"].items()} == {"tier": "categorical", "turn": "numeric"}
    second = _write_jsonl(tmp_path / "b.jsonl", _events(6, prefix="f"))  # a batch without the columns
    ingest(IngestConfig(inputs=(str(second),), warehouse=str(wh)))
    frame = read_feature_frame(wh)
    assert frame.height == 18
    later = frame.filter(pl.col("exposure_id").str.starts_with("f"))
    assert later["tier"].null_count() == 6 and later["turn"].null_count() == 6
    assert frame.filter(pl.col("exposure_id") == "ex5")["turn"].item() == 5.0


def test_without_features_nothing_changes(tmp_path):
    logs = _write_jsonl(tmp_path / "a.jsonl", _events(6, extra=lambda k: {"tier": "x"}))
    run = ingest(IngestConfig(inputs=(str(logs),), warehouse=str(tmp_path / "wh")))
    assert run["features"] == {}
    assert read_feature_frame(tmp_path / "wh") is None
    assert run["files"][0]["unknown_columns"] == ["tier"]


@pytest.mark.parametrize(
    ("body", "error", "message"),
    [
        ('[features]\nplan = "text"\n', ConfigError, "has type 'text'"),
        ('[features]\n"bad name" = "numeric"\n', ConfigError, "feature name 'bad name' is not allowed"),
        ('[features]\nlabel = "numeric"\n', ConfigError, "is a column of the feedback table already"),
        ('[features]\nplan = {type = "numeric", src = "x"}\n', ConfigError, "must be a type or"),
    ],
)
def test_bad_feature_declarations_are_one_clear_error(tmp_path, body, error, message):
    with pytest.raises(error, match=message):
        load_mapping(_mapping(tmp_path, body))


def test_a_declared_numeric_column_holding_text_names_file_row_and_column(tmp_path):
    logs = _write_jsonl(tmp_path / "a.jsonl", _events(5, extra=lambda k: {"turn": "seven" if k == 3 else k}))
    mapping = _mapping(tmp_path, '[features]\nturn = "numeric"\n')
    with pytest.raises(InputFileError) as info:
        ingest(IngestConfig(inputs=(str(logs),), warehouse=str(tmp_path / "wh"), mapping=str(mapping)))
    text = str(info.value)
    assert "declared numeric but holds 'seven'" in text and "a.jsonl, row 5, column turn" in text
    assert not (tmp_path / "wh" / "feedback").exists()


def test_cardinality_cap_names_the_column(tmp_path):
    logs = _write_jsonl(tmp_path / "a.jsonl", _events(12, extra=lambda k: {"trace": f"id{k}"}))
    mapping = _mapping(tmp_path, '[features]\ntrace = "categorical"\n')
    with pytest.raises(ConfigError, match="categorical feature 'trace' has 12 distinct values, more than the cap of 5"):
        ingest(IngestConfig(inputs=(str(logs),), warehouse=str(tmp_path / "wh"), mapping=str(mapping), max_feature_levels=5))
    # An extra column over the cap is dropped with a warning instead (it was not asked for by name).
    run = ingest(IngestConfig(inputs=(str(logs),), warehouse=str(tmp_path / "wh2"), keep_extra_columns=True, max_feature_levels=5))
    assert run["features"] == {} and any("'trace' has 12 distinct values" in w for w in run["warnings"])


def test_an_engine_without_features_refuses_them_in_one_line():
    """Both engines carry custom features (Spark: tests/feedback_etl/test_spark_features.py); an
    engine that does not refuses them instead of dropping them silently."""
    from feedback_etl.features import check_engine
    from feedback_etl.mapping import load_mapping

    for engine in ("duckdb", "spark"):
        check_engine(engine, load_mapping(None), True)
    with pytest.raises(ConfigError, match="not supported by the flink engine"):
        check_engine("flink", load_mapping(None), True)


def test_parquet_and_csv_inputs_carry_features(tmp_path):
    rows = _events(9, extra=lambda k: {"plan": ["a", "b", "c"][k % 3]})
    frame = pl.DataFrame(rows, infer_schema_length=None)
    frame.write_parquet(tmp_path / "a.parquet")
    mapping = _mapping(tmp_path, '[features]\nplan = "categorical"\n')
    ingest(IngestConfig(inputs=(str(tmp_path / "a.parquet"),), warehouse=str(tmp_path / "wh"), mapping=str(mapping)))
    assert read_feature_frame(tmp_path / "wh")["plan"].drop_nulls().sort().to_list() == ["a", "a", "a", "b", "b", "b", "c", "c", "c"]
    csv_dir = tmp_path / "csv"
    csv_dir.mkdir()
    frame.write_csv(csv_dir / "a.csv")
    ingest(IngestConfig(inputs=(str(csv_dir / "a.csv"),), warehouse=str(tmp_path / "wh_csv"), mapping=str(mapping)))
    assert read_feature_frame(tmp_path / "wh_csv")["plan"].null_count() == 0


def test_simulator_extra_context_is_off_by_default_and_ingests_when_on(tmp_path):
    from feedback_etl.simulator import SimulationConfig, simulate

    simulate(SimulationConfig(out=str(tmp_path / "plain"), n_exposures=1_000, seed=2))
    plain = pl.read_parquet(tmp_path / "plain" / "events" / "*.parquet")
    assert not {"plan_tier", "app_version", "turn"} & set(plain.columns)
    simulate(SimulationConfig(out=str(tmp_path / "ctx"), n_exposures=1_000, seed=2, extra_context=True))
    run = ingest(IngestConfig(inputs=(str(tmp_path / "ctx" / "events"),), warehouse=str(tmp_path / "wh"), keep_extra_columns=True))
    assert {n: s["type"] for n, s in run["features"].items()} == {"app_version": "numeric", "plan_tier": "categorical", "turn": "numeric"}
    frame = read_feature_frame(tmp_path / "wh").join(read_feedback(tmp_path / "wh").select("exposure_id", "user_id"), on="exposure_id")
    assert frame["plan_tier"].null_count() == 0 and set(frame["plan_tier"]) <= {"free", "plus", "pro"}
    assert frame.group_by("user_id").agg(pl.col("plan_tier").n_unique())["plan_tier"].max() == 1  # a user's tier is fixed
    assert frame["turn"].min() >= 1 and frame["turn"].max() <= 8


def test_all_null_and_constant_features_are_warnings_not_failures(tmp_path):
    logs = _write_jsonl(tmp_path / "a.jsonl", _events(6, extra=lambda k: {"arm": "control"}))
    mapping = _mapping(tmp_path, '[features]\narm = "categorical"\nmissing = {type = "numeric", source = "meta.nothing"}\n')
    run = ingest(IngestConfig(inputs=(str(logs),), warehouse=str(tmp_path / "wh"), mapping=str(mapping)))
    assert any("'missing' is null on every exposure" in w for w in run["warnings"])
    assert any("'arm' holds one value" in w for w in run["warnings"])
    assert read_feature_frame(tmp_path / "wh")["missing"].null_count() == 6


def test_adapter_sources_refuse_custom_features_in_one_line(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("user_id,item_id,rating\nu1,i1,4\n")
    with pytest.raises(ConfigError, match="read from canonical raw events, not --source ratings"):
        ingest(IngestConfig(inputs=(str(path),), warehouse=str(tmp_path / "wh"), source="ratings", keep_extra_columns=True))


def test_feature_columns_are_committed_as_a_validated_polars_batch_types_them():
    # The DuckDB engine writes feature columns itself (issue 19); the committed Arrow types must be
    # those the pandera path gave (features.validate_feedback, then io.to_arrow), or readers differ.
    import pyarrow as pa

    from feedback_etl import features

    types = {"plan": "categorical", "turn": "numeric", "beta": "boolean"}
    frame = pl.DataFrame({"plan": ["a", None], "turn": [1, None], "beta": [True, None]})
    from schemas.validation import validate_table

    validated = validate_table(frame, features.feature_schema(types), "features")
    expected = validated.to_arrow(compat_level=pl.CompatLevel.oldest()).schema
    assert pa.schema(features.feature_sql(types)[1]) == expected


def test_feature_columns_are_checked_in_sql_on_every_row(tmp_path):
    # The SQL form of the pandera feature schema: a numeric feature must be finite or null. The
    # ingest's own typing already nulls non-finite values, so this guards the files as written.
    import duckdb

    from feedback_etl import ingest as ingest_module
    from schemas.errors import TableValidationError

    logs = _write_jsonl(tmp_path / "a.jsonl", _events(12, extra=lambda k: {"turn": k, "plan": ["a", "b"][k % 2]}))
    mapping = _mapping(tmp_path, '[features]\nturn = "numeric"\nplan = "categorical"\n')
    ingest(IngestConfig(inputs=(str(logs),), warehouse=str(tmp_path / "wh"), mapping=str(mapping)))
    files = sorted(str(p) for p in (tmp_path / "wh" / "feedback").rglob("*.parquet"))
    conn = duckdb.connect()
    conn.execute(f"CREATE VIEW good AS SELECT * FROM read_parquet({files!r})")
    types = {"turn": "numeric", "plan": "categorical"}
    ingest_module._validate_relation(conn, "good", "feedback", types)  # as written: passes
    conn.execute("CREATE VIEW bad AS SELECT * REPLACE (CASE WHEN exposure_id = 'ex3' THEN 'inf'::DOUBLE ELSE turn END AS turn) FROM good")
    with pytest.raises(TableValidationError, match=r"custom features.*turn: finite.*1"):
        ingest_module._validate_relation(conn, "bad", "feedback", types)
    conn.execute("CREATE VIEW broken_contract AS SELECT * REPLACE (CASE WHEN exposure_id = 'ex3' THEN NULL ELSE observed END AS observed) FROM good")
    with pytest.raises(TableValidationError, match="feedback"):
        ingest_module._validate_relation(conn, "broken_contract", "feedback", types)
