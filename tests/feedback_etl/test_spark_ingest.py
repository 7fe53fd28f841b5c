"""`causalrm ingest --engine spark` (issue 8): the same warehouse as the DuckDB engine, row for row.

One local Spark session for the module (a JVM start costs ~20 s). Each comparison ingests the same
logs with both engines and compares every table and the run's manifest counts.
"""

from __future__ import annotations

import gzip
import json
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import polars as pl
import pytest
from typer.testing import CliRunner

from feedback_etl.ingest import IngestConfig, ingest
from feedback_etl.io import read_events, read_feedback, read_rejects
from feedback_etl.simulator import SimulationConfig, simulate
from feedback_etl.sources import CANONICAL_COLUMNS
from feedback_etl.sql_translate import spark_sql, translate
from schemas.errors import ConfigError, TableValidationError

pytestmark = pytest.mark.spark

# Small-data settings for the test session: few shuffle partitions, no adaptive re-planning, no
# whole-stage code generation (compiling dominates on a few thousand rows).
TEST_CONF = {
    "spark.sql.shuffle.partitions": "2",
    "spark.sql.adaptive.enabled": "false",
    "spark.sql.codegen.wholeStage": "false",
}
T0 = datetime(2026, 1, 5, 12, 0, tzinfo=timezone.utc)
# Manifest record keys that legitimately differ between two runs.
RUN_SPECIFIC = {"run_id", "started_at", "finished_at", "committed_at", "timings_s", "engine", "spark", "files"}


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


def _ingest(inputs: list[Path], wh: Path, engine: str, **kwargs) -> dict:
    return ingest(IngestConfig(inputs=tuple(str(p) for p in inputs), warehouse=str(wh), engine=engine, threads=2, **kwargs))


def _both(inputs: list[Path], root: Path, **kwargs) -> tuple[tuple[Path, dict], tuple[Path, dict]]:
    return tuple((root / engine, _ingest(inputs, root / engine, engine, **kwargs)) for engine in ("duckdb", "spark"))


def _assert_same_run(duck: dict, spark: dict) -> None:
    assert duck["engine"] == "duckdb" and spark["engine"] == "spark" and spark["spark"]["version"].startswith("4")
    assert {k: v for k, v in duck.items() if k not in RUN_SPECIFIC} == {k: v for k, v in spark.items() if k not in RUN_SPECIFIC}
    strip = lambda entries: [{k: v for k, v in e.items() if k != "reason"} for e in entries]  # noqa: E731 - reason names the run
    assert strip(duck["files"]) == strip(spark["files"])


def _assert_same_warehouse(duck_wh: Path, spark_wh: Path, *, exact_payloads: bool) -> None:
    feedback_duck, feedback_spark = read_feedback(duck_wh), read_feedback(spark_wh)
    assert feedback_duck.schema == feedback_spark.schema
    assert feedback_duck.equals(feedback_spark), "feedback tables differ"
    events_duck, events_spark = (read_events(w).drop("run_id").sort("event_id") for w in (duck_wh, spark_wh))
    assert events_duck.equals(events_spark), "events differ"
    rejects_duck, rejects_spark = (read_rejects(w).drop("run_id").sort("source_file", "row_number") for w in (duck_wh, spark_wh))
    assert rejects_duck.group_by("reason").len().sort("reason").equals(rejects_spark.group_by("reason").len().sort("reason"))
    assert rejects_duck.drop("payload").equals(rejects_spark.drop("payload"))
    if exact_payloads:
        assert rejects_duck["payload"].equals(rejects_spark["payload"])
    else:  # Parquet rows rejected at typing: the same JSON object, Spark's spelling of it
        for a, b in zip(rejects_duck["payload"].to_list(), rejects_spark["payload"].to_list()):
            assert json.loads(a) == json.loads(b)
    for table in ("events", "rejects", "feedback"):
        files = {w: sorted((w / table).rglob("*.parquet")) for w in (duck_wh, spark_wh)}
        assert all(p.name.startswith("part-") for p in files[spark_wh])
        if files[duck_wh]:
            assert pl.read_parquet_schema(files[duck_wh][-1]) == pl.read_parquet_schema(files[spark_wh][-1]), table
    leftovers = [
        p for p in spark_wh.rglob("*")
        if "_delta_log" not in p.parts and (p.name.endswith(".crc") or p.name.startswith(("_", ".spark")))
    ]
    assert not leftovers


# ---------------------------------------------------------------- translation and post-fixes


def test_translation_binds_parameters_and_applies_post_fixes(spark):
    rejects = spark_sql("staging/stg_rejects", {"run_id": "it's a \\ run"})
    assert "$run_id" not in rejects and "'it\\'s a \\\\ run'" in rejects
    assert spark.sql("SELECT 'it\\'s a \\\\ run' AS v").first()["v"] == "it's a \\ run"
    mart = spark_sql("marts/feedback", {"window": timedelta(hours=24)})
    assert "INTERVAL '86400' SECOND" in mart
    assert "CONV(SUBSTRING(MD5(`first_hash`), 1, 6), 16, 10)" in spark_sql("marts/user_splits")  # the split's offset
    assert "TIMESTAMP_LTZ" in spark_sql("staging/stg_events_typed") and spark_sql("staging/stg_events_typed") is spark_sql("staging/stg_events_typed")
    assert "INTERVAL '5400.500000' SECOND" in spark_sql("staging/stg_late_events", {"window": timedelta(seconds=5400.5)})
    with pytest.raises(KeyError, match="window"):
        spark_sql("marts/feedback")
    # DuckDB's CTE planning hints are not Spark syntax (issue 19): dropped, the CTEs kept.
    resolution = spark_sql("staging/stg_resolution")
    assert "MATERIALIZED" not in resolution.upper() and "duplicates AS (" in resolution


def test_one_pass_resolution_on_spark_gives_the_rows_of_the_three_files_on_duckdb(spark, tmp_path):
    """The Spark engine runs rules 1, 5 and 6 as sql/staging/stg_resolution.sql (issue 19): on the
    25 seeded messy runs of test_stg_resolution at once (ids prefixed per seed, so the runs never
    meet), its views hold exactly the rows DuckDB's three separate files give."""
    from etl_factory import STAGED_TYPES, TYPED_TYPES, make_table, staged
    from test_stg_resolution import _messy, _separate

    from feedback_etl.spark_ingest import _Cache, _resolve

    def prefixed(row: dict, seed: int) -> dict:
        return {**row, **{k: f"s{seed}-{row[k]}" for k in ("event_id", "exposure_id") if row.get(k) is not None}}

    run, warehouse = [], []
    for seed in range(25):
        rows, old = _messy(seed)
        run += [{**prefixed(row, seed), "file_index": row["file_index"] + 2 * seed} for row in rows]
        warehouse += [prefixed(row, seed) for row in old]
    duck = duckdb.connect()
    duck.execute("SET TimeZone = 'UTC'")
    make_table(duck, "typed_events", TYPED_TYPES, run)
    make_table(duck, "warehouse_events", STAGED_TYPES, staged(warehouse))
    expected = _separate(duck)
    for name in ("typed_events", "warehouse_events"):
        duck.execute(f"COPY \"{name}\" TO '{tmp_path / name}.parquet' (FORMAT parquet)")
        spark.read.parquet(f"file://{tmp_path / name}.parquet").createOrReplaceTempView(name)
    with _Cache(spark, tmp_path / "cache") as cache:
        _resolve(spark, cache)
        got = {name: {tuple(row) for row in spark.table(name).collect()} for name in expected}
    for view in ("typed_events", "typed_content", "warehouse_events", "resolution", *expected):
        spark.catalog.dropTempView(view)
    assert all(expected.values()) and got == expected


def test_translated_expressions_answer_as_duckdb(spark):
    """The post-fixed expressions (guarded TRY_CASTs, timestamp text, DATE_DIFF, hex cast) give
    DuckDB's answer on Spark for each value."""
    values = [
        "2026-01-05T10:00:00Z", "2026-01-05 10:00:00+02:00", "2026-01-05", "2026-01-05 10:00", "2026", "2026-01",
        "2026-01-05T10", "yesterday", "now", "2026-13-45T99:61:00Z", " 2026-01-05T10:00:00Z", "2026-01-05T10:00:00.1234567Z",
        "2026-01-05T10:00:00.5Z", "2", "2.0", "2.5", "-1.5", "1e3", " 7 ", "two", "12.5", "nan", "inf", "1d", "1f", "true",
        "T", "yes", "0", " true", "maybe", None,
    ]
    select = """SELECT v, CAST(ts AS VARCHAR) AS ts_text, TRY_CAST(v AS INTEGER) AS i, TRY_CAST(v AS DOUBLE) AS d,
            TRY_CAST(v AS BOOLEAN) AS b,
            DATE_DIFF('microsecond', TIMESTAMP WITH TIME ZONE '2026-01-05 10:00:00+00', ts) AS us,
            CAST(('0x' || SUBSTRING(MD5(COALESCE(v, '')), 1, 8)) AS BIGINT) % 10 AS bucket
        FROM (SELECT v, TRY_CAST(v AS TIMESTAMP WITH TIME ZONE) AS ts FROM "probe") AS typed
        ORDER BY v NULLS LAST"""
    conn = duckdb.connect()
    conn.execute("SET TimeZone = 'UTC'")
    conn.execute('CREATE TABLE "probe" (v VARCHAR)')
    conn.executemany('INSERT INTO "probe" VALUES (?)', [[v] for v in values])
    # DuckDB reads 'inf' as the infinite timestamp, Spark as none: typing rejects both (outside [1970, 2200)).
    duck = [(v, None if text in ("infinity", "-infinity") else text, *rest) for v, text, *rest in conn.execute(select).fetchall()]
    spark.createDataFrame([(v,) for v in values], "v STRING").createOrReplaceTempView("probe")
    got = [tuple(row) for row in spark.sql(translate(select)).collect()]
    same = lambda a, b: a == b or (isinstance(a, float) and isinstance(b, float) and a != a and b != b)  # noqa: E731 - NaN
    for want, row in zip(duck, got):
        assert all(same(a, b) for a, b in zip(want, row)), (want, row)
    assert len(got) == len(duck) == len(values)


def test_stg_events_typed_agrees_with_duckdb_row_by_row(spark):
    """Typing (reasons, details, values) of edge-case raw rows on both engines."""
    good = {"event_id": "e1", "event_time": "2026-01-05T10:00:00Z", "event_type": "impression", "exposure_id": "x1",
            "user_id": "u1", "session_id": "s1", "prompt_id": "p1", "response_id": "r1", "model_id": "m1"}
    variants = [
        {}, {"event_id": "  "}, {"exposure_id": ""}, {"event_time": None}, {"event_time": "yesterday"}, {"event_time": "2026"},
        {"event_time": "1900-01-01T00:00:00Z"}, {"event_time": "2026-01-05 10:00:00+02:00"}, {"event_type": "like"},
        {"event_type": "thumbs_sideways"}, {"model_id": None}, {"position": "2.0"}, {"position": "2.5"}, {"position": "-1"},
        {"position": "two"}, {"latency_ms": "nan"}, {"latency_ms": "1d"}, {"latency_ms": "12.5"}, {"solicited": " true"},
        {"solicited": "yes"}, {"solicited": "maybe"},
        # Epoch seconds and milliseconds (issue 18), and numbers that are no time.
        {"event_time": "1767607200"}, {"event_time": "1767607200.123456"}, {"event_time": "1767607200123"},
        {"event_time": " 1.7676072E12 "}, {"event_time": "99999999999999"}, {"event_time": "-5"}, {"event_time": "12d"},
    ]
    rows = [{"file_index": 0, "source_file": "f", "row_number": k + 1, "parse_ok": True, "payload_text": f"line {k}",
             **{c: None for c in CANONICAL_COLUMNS}, **good, **v} for k, v in enumerate(variants)]
    rows.append({**rows[0], "row_number": len(rows) + 1, "parse_ok": False, "payload_text": "{oops"})
    type_map = [(t, t) for t in ("impression", "thumbs_up", "copy")] + [("like", "thumbs_up")]
    columns = ["file_index", "source_file", "row_number", "parse_ok", "payload_text", *CANONICAL_COLUMNS]
    frame = pl.DataFrame(rows).select(columns)
    conn = duckdb.connect()
    conn.execute("SET TimeZone = 'UTC'")
    conn.register("raw_frame", frame)
    conn.execute('CREATE TEMP VIEW "raw_events" AS SELECT *, CAST(NULL AS VARCHAR) AS "payload", CAST(NULL AS VARCHAR) AS "nested_column" FROM "raw_frame"')
    conn.execute('CREATE TEMP TABLE "event_type_map" ("source_value" VARCHAR, "event_type" VARCHAR)')
    conn.executemany('INSERT INTO "event_type_map" VALUES (?, ?)', type_map)
    from feedback_etl.sqlfiles import run_sql

    duck = run_sql(conn, "staging/stg_events_typed").pl().sort("row_number")
    schema = "file_index INT, source_file STRING, row_number BIGINT, parse_ok BOOLEAN, payload_text STRING, " + ", ".join(
        f"{c} STRING" for c in CANONICAL_COLUMNS
    )
    raw = spark.createDataFrame([tuple(r[c] for c in columns) for r in rows], schema)
    raw.selectExpr("*", "CAST(NULL AS STRUCT<none: STRING>) AS payload", "CAST(NULL AS STRING) AS nested_column").createOrReplaceTempView("raw_events")
    spark.createDataFrame(type_map, "source_value STRING, event_type STRING").createOrReplaceTempView("event_type_map")
    got = pl.from_arrow(spark.sql(spark_sql("staging/stg_events_typed")).toArrow()).sort("row_number")
    got = got.with_columns(pl.col("event_time").dt.convert_time_zone("UTC"), pl.col("file_index").cast(duck["file_index"].dtype))
    assert got.columns == duck.columns
    assert got.equals(duck.with_columns(pl.col("event_time").dt.convert_time_zone("UTC")))


# ---------------------------------------------------------------- whole runs, both engines


@pytest.fixture(scope="module")
def parquet_runs(spark, messy_logs, tmp_path_factory):
    return _both([messy_logs / "events"], tmp_path_factory.mktemp("spark_parquet"))


def test_messy_parquet_logs_give_the_same_warehouse(parquet_runs):
    (duck_wh, duck), (spark_wh, spark_run) = parquet_runs
    _assert_same_run(duck, spark_run)
    assert duck["rejected_total"] > 0 and duck["duplicates"] > 0 and duck["late_events"] > 0
    _assert_same_warehouse(duck_wh, spark_wh, exact_payloads=False)
    manifest = json.loads((spark_wh / "manifest.json").read_text())
    assert manifest["runs"][-1]["engine"] == "spark" and manifest["tables"] == json.loads((duck_wh / "manifest.json").read_text())["tables"]


def _line(row: dict) -> str:
    return json.dumps(row)


def _impression(exposure_id: str, minutes: float = 0, **extra) -> dict:
    return {"event_id": f"imp-{exposure_id}", "event_time": (T0 + timedelta(minutes=minutes)).isoformat(), "event_type": "impression",
            "exposure_id": exposure_id, "user_id": "u1", "session_id": "s1", "prompt_id": "p1", "response_id": f"r-{exposure_id}",
            "model_id": "m1", "prompt_text": "q", "response_text": "a", "position": 0, **extra}


def _feedback(exposure_id: str, kind: str, minutes: float, event_id: str | None = None) -> dict:
    return {"event_id": event_id or f"{kind}-{exposure_id}-{minutes}", "event_time": (T0 + timedelta(minutes=minutes)).isoformat(),
            "event_type": kind, "exposure_id": exposure_id}


def _hostile_files(folder: Path) -> list[Path]:
    """Hand-written JSONL: unparseable lines, bad timestamps and values, orphans, conflicting and
    repeated impressions, duplicates, blank lines, a BOM; and a gzip file whose lines after the
    first 1,200 hold a NUL byte, invalid UTF-8, a bare CR and CRLF endings (DuckDB's slow reader).

    The BOM file has LF endings only: DuckDB's slow reader (mixed endings, NUL bytes) keeps a BOM
    its fast reader drops; the Spark engine drops it, as the fast reader does."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = [
        "\ufeff" + _line(_impression("h1")),
        "",
        "   \t ",
        '{"event_id": "broken", "event_time": ',
        _line(_feedback("h1", "thumbs_up", 1, "dup-1")),
        _line(_feedback("h1", "thumbs_up", 1, "dup-1")),
        '{"event_id": "trailing"} and more',
        "[1, 2]",
        _line({**_feedback("h1", "copy", 2), "event_time": "2026-13-45T99:61:00Z"}),
        _line({**_feedback("h1", "copy", 3), "event_time": "yesterday"}),
        _line({**_feedback("h1", "copy", 4), "event_time": "2026"}),
        _line(_feedback("nowhere", "thumbs_down", 5)),
        _line({**_impression("h1", 10), "event_id": "imp-h1-conflict", "response_id": "other"}),
        _line({**_impression("h1"), "event_id": "imp-h1-repeat"}),
        _line(_impression("h2", 20, position="2.0", latency_ms=12.5, solicited="true")),
        _line(_impression("h3", 30, position=3, platform="web\rapp")),  # an escaped CR inside a JSON string
        _line(_impression("h7", 70, position=2.5)),  # strict typing (issue 16): a bad_value, not rounded to 3
        _line({**_impression("h8", 80), "user_id": {"id": "u"}}),  # an object where an id belongs: bad_value
        _line({**_impression("h9", 90), "prompt_text": "[a string, not an array]"}),
        _line(_impression("h4", 40, latency_ms="1d")),
        _line(_impression("h5", 50, solicited=" true")),
        _line({**_feedback("h2", "thumbs_sideways", 21)}),
        _line({**_feedback("h2", "thumbs_down", 22), "exposure_id": None}),
        _line({**_impression("h6", 60), "model_id": ""}),
        _line(_feedback("h2", "thumbs_down", 23)),
        _line(_feedback("h2", "copy", 60 * 30)),  # late
    ]
    plain = folder / "hostile.jsonl"
    plain.write_bytes(("\n".join(lines) + "\n").encode("utf-8"))
    # Past the 1,000 lines preflight samples, and past its decoder's read-ahead: bad bytes there are rows, not an error.
    filler = [_line(_feedback("h3", "copy", 31 + k / 1000, f"fill-{k}")) for k in range(1_200)]
    tail = [
        b'{"event_id": "nul\x00", "event_time": "2026-01-05T12:00:00Z"}',
        b'{"event_id": "\xff\xfe"}',
        b'{"event_id": "cr-1",\r "event_time": "2026-01-05T12:40:00+00:00", "event_type": "copy", "exposure_id": "h3"}',  # bare CR
        _line(_feedback("h3", "thumbs_down", 34)).encode() + b"\r",  # CRLF
        _line(_feedback("h1", "thumbs_up", 1, "dup-1")).encode() + b"\r",  # CRLF, a duplicate of the first file's
        _line(_feedback("h3", "share", 33)).encode(),
    ]
    packed = folder / "hostile_tail.jsonl.gz"
    with gzip.open(packed, "wb") as handle:
        handle.write(b"\n".join([line.encode() for line in filler] + tail) + b"\n")
    return [plain, packed]


@pytest.fixture(scope="module")
def jsonl_runs(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("spark_jsonl")
    simulate(SimulationConfig(out=str(root / "logs"), format="jsonl", messiness=0.6, n_exposures=1_500, seed=3))
    inputs = [root / "logs" / "events", *_hostile_files(root / "hand")]
    # Small splits: the simulated file is read as several partitions, so line numbers must follow file order.
    spark.conf.set("spark.sql.files.maxPartitionBytes", str(128 * 1024))
    try:
        return inputs, _both(inputs, root)
    finally:
        spark.conf.unset("spark.sql.files.maxPartitionBytes")


def test_messy_and_hostile_jsonl_give_the_same_warehouse(jsonl_runs):
    inputs, ((duck_wh, duck), (spark_wh, spark_run)) = jsonl_runs
    _assert_same_run(duck, spark_run)
    rejected = duck["rejected"]
    assert rejected["unparseable_row"] >= 5 and rejected["bad_timestamp"] >= 3 and rejected["bad_value"] == 4
    assert rejected["conflicting_impression"] == 1 and rejected["orphan_feedback"] >= 1 and rejected["missing_field"] >= 2
    _assert_same_warehouse(duck_wh, spark_wh, exact_payloads=True)
    hand = read_feedback(spark_wh).filter(pl.col("exposure_id").str.starts_with("h")).sort("exposure_id")
    assert hand.select("exposure_id", "position", "observed", "label").rows() == [
        ("h1", 0, True, 1), ("h2", 2, True, 0), ("h3", 3, True, 0), ("h9", 0, False, None),
    ]
    assert hand["prompt_text"].to_list()[3] == "[a string, not an array]"
    assert hand["platform"].to_list()[2] == "web\rapp" and hand["n_late_events"].to_list()[1] == 1


def test_incremental_second_run_is_the_same_on_both_engines_and_each_continues_the_others(jsonl_runs, tmp_path):
    inputs, ((duck_wh, _), (spark_wh, _)) = jsonl_runs
    later = tmp_path / "later.jsonl"
    later.write_text("".join(_line(r) + "\n" for r in [
        _feedback("h3", "thumbs_up", 32),  # updates an earlier exposure
        _feedback("h2", "thumbs_down", 23),  # duplicate of an event already in the warehouse
        _impression("h1"),  # impression already in the warehouse: a repeat
        {**_impression("h1"), "event_id": "imp-h1-v2", "response_id": "changed"},  # conflicts with the warehouse's
        _feedback("h7", "copy", 70),  # its impression comes in the same run
        _impression("h7", 69),
        _feedback("h8", "copy", 70),  # orphan
        _feedback("h1", "thumbs_down", 24 * 60 + 1),  # late
    ]))
    runs = {}
    # Crossed over: each engine continues the other's warehouse (the files are interchangeable).
    for engine, base in (("duckdb", spark_wh), ("spark", duck_wh)):
        wh = tmp_path / engine
        shutil.copytree(base, wh)
        if engine == "duckdb":
            runs[engine] = _ingest([*inputs, later], wh, engine)
            continue
        from cli import app  # the Spark run goes through `causalrm ingest --engine spark`

        argv = ["ingest", *map(str, inputs), str(later), "--warehouse", str(wh), "--engine", "spark", "--threads", "2"]
        result = CliRunner().invoke(app, argv)
        assert result.exit_code == 0, result.output
        assert "3 already ingested, skipped" in result.output
        runs[engine] = json.loads((wh / "manifest.json").read_text())["runs"][-1]
    _assert_same_run(runs["duckdb"], runs["spark"])
    files = runs["spark"]["files"]
    assert [f["status"] for f in files] == ["skipped"] * len(inputs) + ["ingested"]
    assert runs["spark"]["duplicates"] == 2 and runs["spark"]["late_events"] == 1
    assert runs["spark"]["rejected"]["conflicting_impression"] == 1 and runs["spark"]["rejected"]["orphan_feedback"] == 1
    _assert_same_warehouse(tmp_path / "duckdb", tmp_path / "spark", exact_payloads=True)
    # Nothing new but another window: both rebuild the feedback table from the warehouse's events alone.
    rebuilt = {engine: _ingest([later], tmp_path / engine, engine, window="2d") for engine in ("duckdb", "spark")}
    _assert_same_run(rebuilt["duckdb"], rebuilt["spark"])
    assert rebuilt["spark"]["rows_read"] == 0 and rebuilt["spark"]["feedback"]["rebuilt"]
    assert read_feedback(tmp_path / "spark").equals(read_feedback(tmp_path / "duckdb"))


# ---------------------------------------------------------------- validation


def test_full_data_checks_cover_every_model_check_and_catch_breaks(spark):
    from feedback_etl.spark_ingest import DATAFRAME_CHECKS, _validate, aggregate_checks
    from schemas.feedback import FeedbackTable
    from schemas.rejects import RejectsTable
    from schemas.staged_event import StagedEvent

    for model in (FeedbackTable, StagedEvent, RejectsTable):
        assert {c.name for c in model.to_schema().checks} <= set(DATAFRAME_CHECKS)
    names = [name for name, _ in aggregate_checks(FeedbackTable)]
    assert "exposure_id unique" in names and "label_iff_observed" in names and any(n.startswith("split isin") for n in names)
    bad = spark.createDataFrame(
        [("r", "f", 1, "orphan_feedback", None, None, None, None), ("r", "f", -1, "no_such_reason", None, None, None, None)],
        "run_id STRING, source_file STRING, row_number BIGINT, reason STRING, detail STRING, event_id STRING, exposure_id STRING, payload STRING",
    )
    with pytest.raises(TableValidationError, match=r"rejects.*row_number greater_than_or_equal_to.*reason isin"):
        _validate(bad, RejectsTable, "rejects")


def test_a_check_failing_on_the_written_files_leaves_no_file_behind(spark, tmp_path, monkeypatch):
    """Issue 19: each table is checked on the files Spark has just written, before they are handed
    over; when a check fails, the run fails and removes every table's new files (the events were
    written and checked before the feedback table was)."""
    from feedback_etl import spark_ingest
    from schemas.feedback import FeedbackTable

    real = spark_ingest.aggregate_checks
    monkeypatch.setattr(spark_ingest, "aggregate_checks", lambda model: real(model) + (
        [("every row breaks this", "COUNT_IF(TRUE)")] if model is FeedbackTable else []))
    logs = tmp_path / "in.jsonl"
    logs.write_text(_line(_impression("x1")) + "\n" + _line(_feedback("x1", "thumbs_up", 1)) + "\n")
    with pytest.raises(TableValidationError, match=r"'feedback'.*every row breaks this': 1"):
        _ingest([logs], tmp_path / "wh", "spark")
    assert not list((tmp_path / "wh").rglob("*.parquet"))


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_epoch_times_and_dotted_mapping_paths_give_the_same_warehouse(spark, tmp_path, fmt):
    """Issue 18 on both engines: event_time as epoch seconds / milliseconds, fields behind dotted paths."""
    base = {"session_id": "s", "prompt_id": "p", "response_id": "r", "model_id": "m"}
    rows = [
        {"id": "i1", "ts": 1767607200, "kind": "impression", "ctx": {"exposure": "x1"}, "extra": {"metadata": {"user_id": "u-7"}}, **base},
        {"id": "v1", "ts": 1767607260123, "kind": "thumbs_up", "ctx": {"exposure": "x1"}, "extra": {"metadata": {"user_id": None}}, **base},
        {"id": "i2", "ts": 1767607300, "kind": "impression", "ctx": {"exposure": "x2"}, "extra": {"metadata": {"user_id": None}}, **base},
        {"id": "i3", "ts": 99999999999999, "kind": "impression", "ctx": {"exposure": "x3"}, "extra": {"metadata": {"user_id": "u"}}, **base},
    ]
    path = tmp_path / f"logs.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        pl.DataFrame(rows).write_parquet(path)
    mapping = tmp_path / "map.toml"
    mapping.write_text('[fields]\nevent_id = "id"\nevent_time = "ts"\nevent_type = "kind"\nexposure_id = "ctx.exposure"\n'
                       'user_id = "extra.metadata.user_id"\n')
    (duck_wh, duck), (spark_wh, spark_run) = _both([path], tmp_path, mapping=str(mapping))
    commit_keys = ("committed_at", "table_versions")  # when each run committed: run-specific
    _assert_same_run(*({k: v for k, v in r.items() if k not in commit_keys} for r in (duck, spark_run)))
    _assert_same_warehouse(duck_wh, spark_wh, exact_payloads=fmt == "jsonl")
    assert duck["accepted_by_type"] == {"impression": 1, "thumbs_up": 1}
    assert duck["rejected"]["missing_field"] == 1 and duck["rejected"]["bad_timestamp"] == 1


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"source": "oasst"}, "canonical logs only, not --source oasst"),
        ({"engine": "flink"}, "engine must be one of duckdb, spark"),
    ],
)
def test_config_refusals(kwargs, message):
    with pytest.raises(ConfigError, match=message) as info:
        IngestConfig(inputs=("x",), warehouse="wh", **{"engine": "spark", **kwargs})
    assert info.value.where in ("--engine", "--engine spark")


def test_privacy_hook_and_csv_are_refused_before_the_warehouse_is_touched(spark, tmp_path):
    good = tmp_path / "in.jsonl"
    good.write_text(_line(_impression("x1")) + "\n")
    with pytest.raises(ConfigError, match="privacy options .* not supported by the Spark engine") as info:
        ingest(IngestConfig(inputs=(str(good),), warehouse=str(tmp_path / "wh"), engine="spark"), typed_hook=lambda conn: {})
    assert info.value.where == "--engine spark" and "--engine duckdb" in info.value.fix
    csv = tmp_path / "in.csv"
    csv.write_text("event_id,event_time,event_type,exposure_id\ne1,2026-01-05T10:00:00Z,copy,x1\n")
    with pytest.raises(ConfigError, match="reads Parquet and JSON Lines, not CSV"):
        _ingest([csv], tmp_path / "wh", "spark")
    assert not (tmp_path / "wh").exists()


def test_cli_engine_spark_with_text_hash_is_one_red_line(tmp_path):
    from cli import app

    good = tmp_path / "in.jsonl"
    good.write_text(_line(_impression("x1")) + "\n")
    result = CliRunner().invoke(app, ["ingest", str(good), "--warehouse", str(tmp_path / "wh"), "--engine", "spark", "--text", "hash"])
    assert result.exit_code == 1 and "not supported by the Spark engine" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "wh").exists()


def test_missing_java_is_a_clear_error_not_a_skip(monkeypatch, tmp_path):
    import feedback_etl.spark_session as spark_session
    from pyspark.sql import SparkSession

    monkeypatch.setattr(SparkSession, "getActiveSession", classmethod(lambda cls: None))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setattr(spark_session.shutil, "which", lambda *args, **kwargs: None)
    good = tmp_path / "in.jsonl"
    good.write_text(_line(_impression("x1")) + "\n")
    with pytest.raises(ConfigError, match="needs Java 17 or newer") as info:
        _ingest([good], tmp_path / "wh", "spark")
    assert info.value.where == "--engine spark" and not (tmp_path / "wh").exists()


def test_hostile_file_and_warehouse_names_are_read_literally(spark, tmp_path):
    """Issue 16: Spark globbed every path (Hadoop patterns); names with [ ] * ? { } and spaces are
    now read as themselves, for inputs (JSON Lines, Parquet) and for the warehouse, and the
    second run reads the warehouse's events through the Delta table's literal file list."""
    logs = tmp_path / "in"
    logs.mkdir()
    neighbours = []
    for name in ("bc.jsonl", "starX.parquet", "qz x.jsonl"):
        rows = [_impression(f"{name}-{k}") for k in range(3)]
        neighbours.append(logs / name)
        pl.DataFrame(rows).write_parquet(logs / name) if name.endswith(".parquet") else (logs / name).write_text("".join(_line(r) + "\n" for r in rows))
    own = {}
    for k, name in enumerate(("b[c] {a,b}.jsonl", "star*.parquet", "q? x.jsonl")):
        own[name] = logs / name
        rows = [_impression(f"own-{k}"), _feedback(f"own-{k}", "thumbs_up", 1)]
        pl.DataFrame(rows).write_parquet(own[name]) if name.endswith(".parquet") else own[name].write_text("".join(_line(r) + "\n" for r in rows))
    _ingest(neighbours, tmp_path / "whh1", "duckdb")
    neighbour = read_feedback(tmp_path / "whh1")
    # One file per run: later runs read the warehouse's events (Delta file list) through links too.
    runs = {engine: [_ingest([path], tmp_path / wh, engine) for path in own.values()]
            for engine, wh in (("spark", "whh[1]"), ("duckdb", "w h*?{x}"))}
    assert [r["accepted"] for r in runs["spark"]] == [2, 2, 2] and [r["duplicates"] for r in runs["spark"]] == [0, 0, 0]
    spark_wh, duck_wh = tmp_path / "whh[1]", tmp_path / "w h*?{x}"
    assert sorted(read_feedback(spark_wh)["exposure_id"]) == [f"own-{k}" for k in range(3)]
    assert read_feedback(spark_wh).equals(read_feedback(duck_wh))
    assert sorted(set(read_events(spark_wh)["source_file"])) == sorted(str(p.resolve()) for p in own.values())
    assert read_feedback(tmp_path / "whh1").equals(neighbour)
