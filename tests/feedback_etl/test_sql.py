"""Every transform in sql/ on tiny hand-built inputs in in-memory DuckDB: input rows -> expected rows."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from etl_factory import (
    STAGED_TYPES,
    T0,
    TYPED_TYPES,
    feedback,
    impression,
    make_table,
    staged,
    typed,
)

from feedback_etl.ingest import build_user_splits
from feedback_etl.mapping import FieldMapping
from feedback_etl.sources import CANONICAL_COLUMNS
from feedback_etl.sqlfiles import SQL_DIR, load_sql, run_sql

DAY = timedelta(hours=24)


def test_every_sql_file_has_a_header_with_grain_and_key():
    files = sorted(SQL_DIR.rglob("*.sql"))
    assert len(files) >= 11
    for path in files:
        header = path.read_text().split("WITH", 1)[0].split("SELECT", 1)[0]
        assert "Grain:" in header and "Key:" in header, path


# ---------------------------------------------------------------- stg_events_typed

RAW_TYPES = {
    "file_index": "INTEGER", "source_file": "VARCHAR", "row_number": "BIGINT", "parse_ok": "BOOLEAN",
    "payload_text": "VARCHAR", "payload": "VARCHAR", "nested_column": "VARCHAR", **{c: "VARCHAR" for c in CANONICAL_COLUMNS},
}
GOOD_IMPRESSION = {
    "event_id": "e1", "event_time": "2026-01-05T10:00:00Z", "event_type": "impression", "exposure_id": "x1",
    "user_id": "u1", "session_id": "s1", "prompt_id": "p1", "response_id": "r1", "model_id": "m1",
    "position": "2", "latency_ms": "12.5", "solicited": "true",
}


@pytest.mark.parametrize(
    ("row", "reason", "detail"),
    [
        (GOOD_IMPRESSION, None, None),
        ({"event_id": "e2", "event_time": "2026-01-05 10:00:00+02:00", "event_type": "thumbs_up", "exposure_id": "x1"}, None, None),
        ({"parse_ok": False, "payload_text": "{oops"}, "unparseable_row", "row is not a parseable record"),
        ({**GOOD_IMPRESSION, "event_id": None}, "missing_field", "missing event_id"),
        ({**GOOD_IMPRESSION, "event_id": "  "}, "missing_field", "missing event_id"),
        ({**GOOD_IMPRESSION, "exposure_id": ""}, "missing_field", "missing exposure_id"),
        ({**GOOD_IMPRESSION, "event_type": None}, "missing_field", "missing event_type"),
        ({**GOOD_IMPRESSION, "event_time": None}, "missing_field", "missing event_time"),
        ({**GOOD_IMPRESSION, "event_time": "2026-13-45T99:61:00Z"}, "bad_timestamp", None),
        ({**GOOD_IMPRESSION, "event_time": "yesterday"}, "bad_timestamp", None),
        ({**GOOD_IMPRESSION, "event_time": "infinity"}, "bad_timestamp", None),
        ({**GOOD_IMPRESSION, "event_time": "1900-01-01T00:00:00Z"}, "bad_timestamp", None),
        ({**GOOD_IMPRESSION, "event_type": "thumbs_sideways"}, "unknown_event_type", "event_type thumbs_sideways is not a known event type"),
        ({**GOOD_IMPRESSION, "model_id": None}, "missing_field", "impression without model_id"),
        ({**GOOD_IMPRESSION, "user_id": ""}, "missing_field", "impression without user_id"),
        ({**GOOD_IMPRESSION, "position": "-1"}, "bad_value", "bad value in position"),
        ({**GOOD_IMPRESSION, "position": "two"}, "bad_value", "bad value in position"),
        ({**GOOD_IMPRESSION, "latency_ms": "nan"}, "bad_value", "bad value in latency_ms"),
        ({**GOOD_IMPRESSION, "solicited": "maybe"}, "bad_value", "bad value in solicited"),
        # A feedback event needs no impression ids.
        ({"event_id": "e3", "event_time": "2026-01-05T10:00:00Z", "event_type": "copy", "exposure_id": "x1"}, None, None),
    ],
)
def test_stg_events_typed_reasons(duck, row, reason, detail):
    make_table(duck, "raw_events", RAW_TYPES, [{"file_index": 0, "source_file": "f", "row_number": 7, "parse_ok": True, "payload_text": "raw", **row}])
    make_table(duck, "event_type_map", {"source_value": "VARCHAR", "event_type": "VARCHAR"}, [
        {"source_value": t, "event_type": t} for t in ("impression", "thumbs_up", "thumbs_down", "vote_cleared", "copy", "regenerate", "share")
    ])
    out = run_sql(duck, "staging/stg_events_typed").pl().to_dicts()
    assert len(out) == 1
    assert out[0]["reject_reason"] == reason
    if detail:
        assert out[0]["reject_detail"] == detail
    # The raw payload is kept on rejected rows only.
    assert out[0]["payload"] == ((row.get("payload_text") or "raw") if reason else None)


def test_stg_events_typed_types_values_and_applies_event_type_map(duck):
    make_table(duck, "raw_events", RAW_TYPES, [
        {"file_index": 0, "source_file": "f", "row_number": 1, "parse_ok": True, **GOOD_IMPRESSION},
        {"file_index": 0, "source_file": "f", "row_number": 2, "parse_ok": True, "event_id": "e9",
         "event_time": "2026-01-05T12:00:00+02:00", "event_type": "like", "exposure_id": "x1"},
    ])
    rows = [(t, t) for t in FieldMapping(event_types={"like": "thumbs_up"}).event_type_rows()]
    make_table(duck, "event_type_map", {"source_value": "VARCHAR", "event_type": "VARCHAR"},
               [{"source_value": s, "event_type": e} for (s, e), _ in rows])
    out = run_sql(duck, "staging/stg_events_typed").pl().sort("row_number").to_dicts()
    assert out[0]["position"] == 2 and out[0]["latency_ms"] == 12.5 and out[0]["solicited"] is True
    assert out[0]["event_time"] == datetime(2026, 1, 5, 10, tzinfo=timezone.utc)
    assert out[1]["event_type"] == "thumbs_up" and out[1]["reject_reason"] is None
    assert out[1]["event_time"] == datetime(2026, 1, 5, 10, tzinfo=timezone.utc)  # offsets normalised to UTC


@pytest.mark.parametrize(
    ("raw", "sql_type", "expected"),
    [
        # Issue 18: a bare number is Unix epoch time, seconds below 1e11, milliseconds from there.
        ("1767607200", "VARCHAR", datetime(2026, 1, 5, 10, tzinfo=timezone.utc)),
        (" 1767607200.25 ", "VARCHAR", datetime(2026, 1, 5, 10, 0, 0, 250000, tzinfo=timezone.utc)),
        ("1767607200123", "VARCHAR", datetime(2026, 1, 5, 10, 0, 0, 123000, tzinfo=timezone.utc)),
        ("1.7676072e12", "VARCHAR", datetime(2026, 1, 5, 10, tzinfo=timezone.utc)),
        ("1767607200", "BIGINT", datetime(2026, 1, 5, 10, tzinfo=timezone.utc)),
        ("1767607200123", "BIGINT", datetime(2026, 1, 5, 10, 0, 0, 123000, tzinfo=timezone.utc)),
        ("1767607200.5", "DOUBLE", datetime(2026, 1, 5, 10, 0, 0, 500000, tzinfo=timezone.utc)),
        ("2026-01-05 10:00:00", "TIMESTAMP", datetime(2026, 1, 5, 10, tzinfo=timezone.utc)),
        ("99999999999999", "VARCHAR", None),  # >= 1e14: no epoch unit reads it as a time
        ("7258118400", "BIGINT", None),  # seconds of 2200-01-01: outside [1970, 2200)
        ("-5", "VARCHAR", None),
        ("nan", "DOUBLE", None),
    ],
)
def test_stg_events_typed_reads_epoch_seconds_and_milliseconds(duck, raw, sql_type, expected):
    types = {**RAW_TYPES, "event_time": sql_type}
    row = {"file_index": 0, "source_file": "f", "row_number": 1, "parse_ok": True, "payload_text": "raw",
           "event_id": "e1", "event_type": "copy", "exposure_id": "x1"}
    make_table(duck, "raw_events", types, [row])
    duck.execute(f"UPDATE raw_events SET event_time = CAST(CAST(? AS VARCHAR) AS {sql_type})", [raw])
    make_table(duck, "event_type_map", {"source_value": "VARCHAR", "event_type": "VARCHAR"}, [{"source_value": "copy", "event_type": "copy"}])
    out = run_sql(duck, "staging/stg_events_typed").pl().to_dicts()[0]
    assert out["event_time"] == expected
    assert out["reject_reason"] == (None if expected else "bad_timestamp")


def test_stg_events_typed_serialises_struct_payload_of_rejects(duck):
    duck.execute(
        """CREATE TEMP VIEW "raw_events" AS SELECT 0 AS "file_index", 'f' AS "source_file", CAST(3 AS BIGINT) AS "row_number",
        TRUE AS "parse_ok", CAST(NULL AS VARCHAR) AS "payload_text", STRUCT_PACK("event_id" := 'e1', "extra" := 5) AS "payload",
        CAST(NULL AS VARCHAR) AS "nested_column",
        'e1' AS "event_id", 'bad' AS "event_time", 'copy' AS "event_type", 'x' AS "exposure_id",
        """ + ", ".join(f'NULL AS "{c}"' for c in CANONICAL_COLUMNS[4:])
    )
    make_table(duck, "event_type_map", {"source_value": "VARCHAR", "event_type": "VARCHAR"}, [{"source_value": "copy", "event_type": "copy"}])
    out = run_sql(duck, "staging/stg_events_typed").fetchall()
    payload = [r for r in out][0][5]
    assert json.loads(payload) == {"event_id": "e1", "extra": 5}


# ---------------------------------------------------------------- duplicates, losers, orphans, new events, rejects


def _setup(duck, run_rows: list[dict], warehouse_rows: list[dict] | None = None) -> None:
    make_table(duck, "typed_events", TYPED_TYPES, run_rows)
    make_table(duck, "warehouse_events", STAGED_TYPES, staged(warehouse_rows or []))


def _run_staging(duck) -> None:
    for name, into in [
        ("reference/stg_duplicates", "duplicates"),
        ("reference/stg_impression_losers", "impression_losers"),
        ("reference/stg_orphans", "orphans"),
        ("staging/stg_new_events", "new_events"),
    ]:
        run_sql(duck, name, into=into)
    run_sql(duck, "staging/stg_rejects", {"run_id": "r1"}, into="rejects")


def test_stg_duplicates_keeps_warehouse_copy_then_first_in_input_order(duck):
    rows = typed([feedback("x1", "copy", minutes=1, event_id="a"), feedback("x1", "copy", minutes=1, event_id="b"),
                  feedback("x1", "copy", minutes=1, event_id="b"), feedback("x1", "copy", minutes=1, event_id="old")])
    rows.append({**rows[0], "row_number": 99, "reject_reason": "bad_timestamp"})  # a rejected copy never counts
    _setup(duck, rows, [feedback("x1", "copy", minutes=1, event_id="old")])
    out = run_sql(duck, "reference/stg_duplicates").fetchall()
    assert sorted(out) == [(0, 3, "b"), (0, 4, "old")]


def test_stg_impression_losers_repeat_vs_conflict(duck):
    rows = typed([
        impression("x1", minutes=5, event_id="i1-late"),   # later copy, same content but time -> conflict
        impression("x1", minutes=0, event_id="i1"),        # winner (earliest)
        impression("x2", minutes=0, event_id="i2-resend"),  # same content as the warehouse's -> repeat
        impression("x3", minutes=0, event_id="i3-other", user_id="u9"),  # differs from the warehouse's
        impression("x4", minutes=0),                        # uncontested
    ])
    _setup(duck, rows, [impression("x2", minutes=0, event_id="i2"), impression("x3", minutes=0, event_id="i3")])
    run_sql(duck, "reference/stg_duplicates", into="duplicates")
    out = {r[2]: r[4] for r in run_sql(duck, "reference/stg_impression_losers").fetchall()}
    assert out == {"i1-late": False, "i2-resend": True, "i3-other": False}


def test_stg_orphans_only_feedback_without_any_impression(duck):
    rows = typed([impression("x1"), feedback("x1", "thumbs_up", minutes=1), feedback("x2", "thumbs_up", minutes=1),
                  feedback("x3", "copy", minutes=1), feedback("x9", "copy", minutes=1)])
    _setup(duck, rows, [impression("x3")])
    run_sql(duck, "reference/stg_duplicates", into="duplicates")
    out = run_sql(duck, "reference/stg_orphans").fetchall()
    assert sorted(r[3] for r in out) == ["x2", "x9"]


def test_stg_new_events_and_rejects_partition_every_row(duck):
    rows = typed([
        impression("x1"), feedback("x1", "thumbs_up", minutes=1, event_id="v1"), feedback("x1", "thumbs_up", minutes=1, event_id="v1"),
        impression("x1", minutes=3, event_id="conflict"), feedback("nope", "copy", minutes=1),
    ])
    rows.append({"file_index": 0, "source_file": "f0", "row_number": 6, "reject_reason": "missing_field",
                 "reject_detail": "missing event_id", "payload": '{"a": 1}'})
    _setup(duck, rows)
    _run_staging(duck)
    new = sorted(r[0] for r in duck.execute('SELECT "event_id" FROM "new_events"').fetchall())
    assert new == ["imp-x1", "v1"]
    rejects = {r[3]: r for r in duck.execute('SELECT * FROM "rejects"').fetchall()}
    assert set(rejects) == {"missing_field", "conflicting_impression", "orphan_feedback"}
    assert rejects["missing_field"][7] == '{"a": 1}'
    assert json.loads(rejects["orphan_feedback"][7])["exposure_id"] == "nope"
    assert all(r[0] == "r1" for r in rejects.values())
    # reconciliation: 6 rows = 2 accepted + 3 rejected + 1 duplicate
    assert duck.execute('SELECT COUNT(*) FROM "duplicates"').fetchone()[0] == 1


def test_stg_late_events_counts_only_this_runs_late_feedback(duck):
    old = [impression("x1"), feedback("x1", "thumbs_up", minutes=25 * 60, event_id="old-late")]
    new = [feedback("x1", "thumbs_down", minutes=24 * 60, event_id="edge"), feedback("x1", "copy", minutes=30 * 60, event_id="late")]
    make_table(duck, "new_events", STAGED_TYPES, staged(new))
    make_table(duck, "all_events", STAGED_TYPES, staged(old + new))
    assert run_sql(duck, "staging/stg_late_events", {"window": DAY}).fetchall()[0][0] == 1


# ---------------------------------------------------------------- marts/feedback


def _mart(duck, events: list[dict], window: timedelta = DAY) -> dict[str, dict]:
    make_table(duck, "all_events", STAGED_TYPES, staged(events))
    build_user_splits(duck)  # the relation "user_splits" the mart reads (a first run: no earlier splits)
    return {r["exposure_id"]: r for r in run_sql(duck, "marts/feedback", {"window": window}).pl().to_dicts()}


def test_mart_last_vote_in_window_wins(duck):
    out = _mart(duck, [
        impression("toggle"), feedback("toggle", "thumbs_down", minutes=1), feedback("toggle", "thumbs_up", minutes=2),
        impression("cleared"), feedback("cleared", "thumbs_up", minutes=1), feedback("cleared", "vote_cleared", minutes=2),
        impression("late"), feedback("late", "thumbs_up", minutes=1), feedback("late", "thumbs_down", minutes=24 * 60 + 1),
        impression("edge"), feedback("edge", "thumbs_down", minutes=24 * 60),
        impression("tie"), feedback("tie", "thumbs_up", minutes=1, event_id="b"), feedback("tie", "thumbs_down", minutes=1, event_id="a"),
        impression("none"),
    ])
    assert (out["toggle"]["observed"], out["toggle"]["label"]) == (True, 1)
    assert (out["cleared"]["observed"], out["cleared"]["label"]) == (False, None)
    assert (out["late"]["observed"], out["late"]["label"], out["late"]["n_late_events"]) == (True, 1, 1)
    assert (out["edge"]["observed"], out["edge"]["label"]) == (True, 0)  # event_time <= impression + W counts
    assert out["tie"]["label"] == 1  # same time: the greater event_id is the later one
    assert (out["none"]["observed"], out["none"]["label"], out["none"]["feedback_delay_s"]) == (False, None, None)
    assert out["toggle"]["feedback_delay_s"] == 120.0
    assert out["toggle"]["n_events"] == 3 and out["late"]["n_events"] == 2 and out["none"]["n_events"] == 1


def test_mart_implicit_channels_and_window_parameter(duck):
    events = [impression("x"), feedback("x", "copy", minutes=10), feedback("x", "share", minutes=90), feedback("x", "regenerate", minutes=200)]
    out = _mart(duck, events, window=timedelta(hours=2))["x"]
    assert (out["copied"], out["shared"], out["regenerated"]) == (True, True, False)
    assert (out["n_events"], out["n_late_events"], out["observed"]) == (3, 1, False)


def test_mart_point_in_time_history(duck):
    out = _mart(duck, [
        impression("a", minutes=0), feedback("a", "thumbs_up", minutes=30),
        impression("b", minutes=10),                                           # a's vote not cast yet
        impression("c", minutes=60), impression("c2", minutes=60),             # same instant: not "before" each other
        feedback("c", "thumbs_down", minutes=61),
        impression("d", minutes=61),                                           # c's vote at the same instant: not before
        impression("e", minutes=62),
        impression("other", minutes=100, user="u2"),
    ])
    history = {k: (v["user_prior_exposures"], v["user_prior_votes"], v["user_prior_feedback_rate"]) for k, v in out.items()}
    assert history == {
        "a": (0, 0, None), "b": (1, 0, 0.0), "c": (2, 1, 0.5), "c2": (2, 1, 0.5),
        "d": (4, 1, 0.25), "e": (5, 2, 0.4), "other": (0, 0, None),
    }


def test_mart_columns_split_and_time_parts(duck):
    out = _mart(duck, [impression("x", minutes=0, user="alice", solicited=None)])["x"]
    assert out["impression_date"].isoformat() == "2026-01-05" and out["impression_hour"] == 12
    assert out["response_chars"] == len("hello there") and out["solicited"] is False
    # split: the user's row of "user_splits" (its rule: tests/feedback_etl/test_user_splits.py)
    assert out["split"] == duck.execute("""SELECT "split" FROM "user_splits" WHERE "user_id" = 'alice'""").fetchall()[0][0]
    other = "val" if out["split"] != "val" else "test"
    duck.execute(f"""UPDATE "user_splits" SET "split" = '{other}'""")
    assert run_sql(duck, "marts/feedback", {"window": DAY}).pl()["split"].to_list() == [other]


# ---------------------------------------------------------------- adapters

RECORD_TYPES = {"file_index": "INTEGER", "source_file": "VARCHAR", "file_tag": "VARCHAR", "row_number": "BIGINT",
                "parse_ok": "BOOLEAN", "record": "VARCHAR"}
BASE = {"base_time": T0, "threshold": 4.0}


def test_adapter_oasst_votes_majority_last(duck):
    tree = {"message_tree_id": "t1", "prompt": {"message_id": "p", "role": "prompter", "text": "Q?", "replies": [
        {"message_id": "a1", "parent_id": "p", "role": "assistant", "text": "A1", "lang": "en", "emojis": {"+1": 2, "-1": 1}, "replies": [
            {"message_id": "p2", "parent_id": "a1", "role": "prompter", "text": "more?", "replies": [
                {"message_id": "a2", "parent_id": "p2", "role": "assistant", "text": "A2", "emojis": {"+1": 1, "-1": 1}, "replies": []}]}]},
        {"message_id": "a3", "parent_id": "p", "role": "assistant", "text": "A3", "model_name": "bot", "replies": []},
    ]}}
    make_table(duck, "source_records", RECORD_TYPES, [
        {"file_index": 0, "source_file": "f", "file_tag": "f", "row_number": 1, "parse_ok": True, "record": json.dumps(tree)},
        {"file_index": 0, "source_file": "f", "file_tag": "f", "row_number": 2, "parse_ok": False, "record": "{broken"},
    ])
    out = run_sql(duck, "adapters/oasst", BASE).pl()
    imps = out.filter(out["event_type"] == "impression").sort("exposure_id")
    assert imps["exposure_id"].to_list() == ["a1", "a2", "a3"]
    assert imps["prompt_text"].to_list() == ["Q?", "more?", "Q?"] and imps["model_id"].to_list() == ["human", "human", "bot"]
    votes = out.filter(out["exposure_id"] == "a1").sort("event_time")["event_type"].to_list()
    assert votes == ["impression", "thumbs_down", "thumbs_up", "thumbs_up"]
    assert out.filter(out["exposure_id"] == "a2").sort("event_time")["event_type"].to_list()[-1] == "thumbs_down"
    assert out.filter(~out["parse_ok"])["payload"].to_list() == ["{broken"]


def test_adapter_ratings_matrix(duck):
    make_table(duck, "source_records", RECORD_TYPES, [
        {"file_index": 0, "source_file": "m", "file_tag": "train", "row_number": 1, "parse_ok": True, "record": "0 5 3"},
        {"file_index": 0, "source_file": "m", "file_tag": "train", "row_number": 2, "parse_ok": True, "record": " 4  0 x "},
    ])
    out = run_sql(duck, "adapters/ratings_matrix", BASE).pl()
    assert out.filter(out["event_type"] == "impression").height == 5
    votes = dict(out.filter(out["event_type"].is_in(["thumbs_up", "thumbs_down"])).select("exposure_id", "event_type").iter_rows())
    assert votes == {"train:u0:i1": "thumbs_up", "train:u0:i2": "thumbs_down", "train:u1:i0": "thumbs_up"}
    assert out.filter(~out["parse_ok"]).height == 1


def test_adapter_ratings_triples(duck):
    make_table(duck, "source_triples", {
        "file_index": "INTEGER", "source_file": "VARCHAR", "file_tag": "VARCHAR", "row_number": "BIGINT", "parse_ok": "BOOLEAN",
        "user_id": "VARCHAR", "item_id": "VARCHAR", "rating_text": "VARCHAR", "payload": "VARCHAR"}, [
        {"file_index": 0, "source_file": "t", "file_tag": "t", "row_number": 1, "parse_ok": True, "user_id": "a", "item_id": "i1", "rating_text": "5"},
        {"file_index": 0, "source_file": "t", "file_tag": "t", "row_number": 2, "parse_ok": True, "user_id": "b", "item_id": "i2", "rating_text": "2"},
        {"file_index": 0, "source_file": "t", "file_tag": "t", "row_number": 3, "parse_ok": True, "user_id": "b", "item_id": None, "rating_text": "2"},
    ])
    out = run_sql(duck, "adapters/ratings_triples", BASE).pl()
    assert out.filter(out["event_type"] == "impression").height == 4  # {a, b} x {i1, i2}
    assert sorted(out.filter(out["event_type"] != "impression").drop_nulls("event_type")["event_type"].to_list()) == ["thumbs_down", "thumbs_up"]
    assert out.filter(~out["parse_ok"]).height == 1


def _adapter(duck, source: str, records: list[dict], mapping: FieldMapping | None = None) -> dict[str, dict]:
    """Run a tracing adapter's three SQL files over hand-built records; its events by event_id."""
    from feedback_etl.sources import run_adapter_sql

    make_table(duck, "source_records", RECORD_TYPES, [
        {"file_index": 0, "source_file": "f", "file_tag": "f", "row_number": k + 1, "parse_ok": True, "record": json.dumps(r)}
        for k, r in enumerate(records)])
    run_adapter_sql(duck, source, mapping or FieldMapping())
    return {r["event_id"] or f"row{r['row_number']}": r for r in duck.sql('SELECT * FROM "adapter_events"').pl().to_dicts()}


def test_adapter_langfuse(duck):
    trace = {"id": "tr1", "timestamp": "2026-01-05T10:00:00Z", "userId": "u1", "input": {"q": "hi"}, "output": "hello",
             "metadata": {"model": "gpt-x"}, "scores": [
                 {"id": "s1", "name": "user-feedback", "value": 1, "timestamp": "2026-01-05T10:01:00Z"},
                 {"id": "s2", "name": "user-feedback", "value": 0, "dataType": "NUMERIC", "timestamp": "2026-01-05T10:02:00Z"},
                 {"id": "s3", "name": "copied", "value": 1, "dataType": "BOOLEAN", "stringValue": "True"},
                 {"id": "s4", "name": "llm-judge", "value": 0.3},
                 {"id": "s5", "name": "user-feedback", "stringValue": "meh", "dataType": "CATEGORICAL"},
                 {"id": "s6", "name": "user-feedback", "value": 1, "source": "ANNOTATION"},
                 {"id": "s7", "name": "copied", "value": 0, "dataType": "BOOLEAN"}]}
    score_row = {"id": "s1", "traceId": "tr1", "name": "user-feedback", "value": 1, "dataType": "NUMERIC", "source": "API",
                 "timestamp": "2026-01-05T10:01:00Z"}  # the same score again, from a scores export
    observation = {"id": "o1", "traceId": "tr1", "type": "GENERATION", "startTime": "2026-01-05T10:00:00Z", "model": "gpt-y"}
    out = _adapter(duck, "langfuse", [trace, score_row, observation, [1, 2]],
                   FieldMapping(score_channels={"user-feedback": "vote", "copied": "copy"}))
    assert set(out) == {"langfuse:tr1:impression", "s1", "s2", "s3", "s5", "row6"}  # s4 unmapped, s6 not organic, s7 no copy
    imp = out["langfuse:tr1:impression"]
    assert (imp["session_id"], imp["model_id"], imp["response_text"]) == ("tr1", "gpt-y", "hello")  # the GENERATION's model
    assert json.loads(imp["prompt_text"]) == {"q": "hi"}
    assert [out[k]["event_type"] for k in ("s1", "s2", "s3")] == ["thumbs_up", "thumbs_down", "copy"]
    assert out["s3"]["event_time"] == "2026-01-05T10:00:00Z"  # no score time: the trace's
    assert out["s5"]["event_type"] == "score:user-feedback=meh"  # undecodable vote -> unknown type
    assert out["row6"]["parse_ok"] is False and sorted(r["row_number"] for r in out.values()) == [1, 2, 3, 4, 5, 6]
    assert duck.execute('SELECT COUNT(*) FROM "adapter_warnings"').fetchone()[0] == 0  # no trace lists score ids


def test_adapter_langfuse_checks_count_listed_score_ids_no_score_carries(duck):
    page_trace = {"id": "tr2", "timestamp": "2026-01-05T10:00:00Z", "userId": "u1", "scores": ["s1", "s9", "s9", "s8"]}
    score = {"id": "s1", "traceId": "tr2", "name": "user-feedback", "value": 1, "dataType": "NUMERIC", "source": "API"}
    _adapter(duck, "langfuse", [page_trace, score])
    messages = [m for (m,) in duck.execute('SELECT "message" FROM "adapter_warnings"').fetchall()]
    assert len(messages) == 1 and messages[0].startswith("2 score id(s) listed by the traces are in no score read")


def test_adapter_langsmith(duck):
    root = {"id": "r1", "trace_id": "r1", "parent_run_id": None, "run_type": "chain", "name": "Chain", "start_time": "2026-01-05T10:00:00",
            "inputs": {"q": "hi"}, "outputs": {"a": "yo"}, "extra": {"metadata": {"user_id": "u1"}}}
    child = {**root, "id": "c1", "parent_run_id": "r1", "run_type": "llm", "extra": {"invocation_params": {"model": "m-1"}}}
    feedback = [{"id": "f1", "run_id": "c1", "trace_id": None, "key": "user_score", "score": 0, "comment": "no",
                 "correction": {"a": "better"}, "created_at": "2026-01-05T10:01:00+00:00"},
                {"id": "f2", "run_id": "r1", "key": "user_score", "value": "meh"},
                {"id": "f3", "run_id": "r1", "key": "user_score", "score": 1, "feedback_source": {"type": "model"}}]
    out = _adapter(duck, "langsmith", [root, child, *feedback])
    assert set(out) == {"langsmith:r1:impression", "f1", "f2"}  # the child run is no exposure; model feedback is no vote
    assert (out["langsmith:r1:impression"]["model_id"], out["langsmith:r1:impression"]["user_id"]) == ("m-1", "u1")
    assert (out["f1"]["exposure_id"], out["f1"]["event_type"]) == ("r1", "thumbs_down")  # logged on the child: its trace
    assert out["f2"]["event_type"] == "feedback:user_score=meh" and out["f2"]["event_time"] == "2026-01-05T10:00:00"
    correction = duck.execute('SELECT "correction" FROM "source_feedback" WHERE "feedback_id" = ?', ["f1"]).fetchone()[0]
    assert json.loads(correction) == {"a": "better"}


def test_adapter_openai_chat(duck):
    q1, a1, q2 = {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}
    completion = {"id": "cc1", "created": 1767607200, "model": "m", "user": "u", "messages": [q1, a1, q2],
                  "choices": [{"index": 0, "message": {"role": "assistant", "content": "d"}}, {"index": 1, "message": {"role": "assistant", "content": "e"}}]}
    transcript = {"id": "tx", "created": 1767607300, "model": "m", "user": "u", "messages": [q1, a1, q2, {"role": "assistant", "content": "f"}]}
    feedback = [{"completion_id": "cc1", "choice_index": 1, "rating": "down"}, {"completion_id": "tx", "turn": 1, "rating": 1, "created": 5}]
    out = _adapter(duck, "openai-chat", [completion, transcript, *feedback])
    imps = {v["exposure_id"]: v for v in out.values() if v["event_type"] == "impression"}
    assert set(imps) == {"cc1", "cc1:1", "tx:turn1", "tx:turn2"}
    assert json.loads(imps["cc1:1"]["prompt_text"]) == [q1, a1, q2] and imps["cc1:1"]["response_text"] == "e"
    assert json.loads(imps["tx:turn2"]["prompt_text"]) == [q1, a1, q2] and json.loads(imps["tx:turn1"]["prompt_text"]) == [q1]
    votes = {v["exposure_id"]: (v["event_type"], v["event_time"]) for v in out.values() if v["event_type"] != "impression"}
    assert votes == {"cc1:1": ("thumbs_down", "1767607200"), "tx:turn1": ("thumbs_up", "5")}


def test_sql_files_quote_identifiers_and_bind_values():
    """No f-string placeholders in sql/: values come in as $parameters."""
    for path in SQL_DIR.rglob("*.sql"):
        text = load_sql(str(path.relative_to(SQL_DIR).with_suffix("")))
        assert "{" not in text.replace("{'", "").replace("'}", ""), path
