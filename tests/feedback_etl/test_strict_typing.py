"""Strict typing of raw events (issue 16, section 3): a value of the wrong type is a reject naming its
column, never silently coerced (1.5 rounded to 2, "yes" read as true, "epoch" read as 1970), in the
SQL step itself, through ingest of JSON Lines, and on the Spark engine; invalid UTF-8 is one rule
(an ``unparseable_row`` at its line number) wherever the bad byte sits."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from etl_factory import make_table

from feedback_etl.sources import CANONICAL_COLUMNS
from feedback_etl.sqlfiles import run_sql

RAW_TYPES = {
    "file_index": "INTEGER", "source_file": "VARCHAR", "row_number": "BIGINT", "parse_ok": "BOOLEAN",
    "payload_text": "VARCHAR", "payload": "VARCHAR", "nested_column": "VARCHAR", **{c: "VARCHAR" for c in CANONICAL_COLUMNS},
}
IMPRESSION = {
    "event_id": "e1", "event_time": "2026-01-05T10:00:00Z", "event_type": "impression", "exposure_id": "x1",
    "user_id": "u1", "session_id": "s1", "prompt_id": "p1", "response_id": "r1", "model_id": "m1",
}
BAD_TIME = "bad_timestamp"

# (column, value as the reader hands it over (text), expected reason or None, expected typed value)
TEXT_CASES = [
    ("position", "2", None, 2),
    ("position", "2.0", None, 2),
    ("position", " 3 ", None, 3),
    ("position", "1.5", "bad_value", None),
    ("position", "-1", "bad_value", None),
    ("position", "true", "bad_value", None),
    ("position", "3000000000", "bad_value", None),
    ("position", "nan", "bad_value", None),
    ("solicited", "true", None, True),
    ("solicited", "FALSE", None, False),
    ("solicited", "yes", "bad_value", None),
    ("solicited", "t", "bad_value", None),
    ("solicited", "1", "bad_value", None),
    ("latency_ms", "12.5", None, 12.5),
    ("latency_ms", "true", "bad_value", None),
    ("latency_ms", "inf", "bad_value", None),
    ("event_time", "epoch", BAD_TIME, None),
    ("event_time", "infinity", BAD_TIME, None),
    ("event_time", "-infinity", BAD_TIME, None),
    ("event_id", "a\x00b", "bad_value", None),
    ("exposure_id", "x\x00", "bad_value", None),
    ("user_id", "\x00", "bad_value", None),
    ("model_id", "m\x00", "bad_value", None),
    ("event_id", "[1, 2]", None, "[1, 2]"),  # a *string* that looks like JSON is a fine id
]


def _type_one(duck, column: str, value: str) -> dict:
    make_table(duck, "raw_events", RAW_TYPES, [{"file_index": 0, "source_file": "f", "row_number": 1, "parse_ok": True,
                                                "payload_text": "raw", **IMPRESSION, column: value}])
    make_table(duck, "event_type_map", {"source_value": "VARCHAR", "event_type": "VARCHAR"}, [
        {"source_value": "impression", "event_type": "impression"}])
    (row,) = run_sql(duck, "staging/stg_events_typed").pl().to_dicts()
    return row


@pytest.mark.parametrize(("column", "value", "reason", "typed"), TEXT_CASES, ids=lambda v: repr(v)[:20])
def test_typing_step_is_strict(duck, column: str, value: str, reason: str | None, typed) -> None:
    row = _type_one(duck, column, value)
    assert row["reject_reason"] == reason
    if reason == "bad_value":
        assert row["reject_detail"] == f"bad value in {column}"
    elif reason is None:
        assert row[column] == typed


# ---------------------------------------------------------------- end to end: JSON Lines and Parquet

# (JSON value of the field, column, expected reason): the values a JSON reader used to turn into text.
JSON_CASES = [
    (1.5, "position", "bad_value"),
    ("1.5", "position", "bad_value"),
    (2, "position", None),
    (True, "position", "bad_value"),
    ("yes", "solicited", "bad_value"),
    (1, "solicited", "bad_value"),
    (True, "solicited", None),
    ("epoch", "event_time", BAD_TIME),
    ("a\u0000b", "event_id", "bad_value"),
    ("u\u0000", "user_id", "bad_value"),
    ("ok", "event_id", None),
    ({"a": 1}, "event_id", "bad_value"),
    ([1, 2], "event_id", "bad_value"),
    ([[[[[]]]]], "exposure_id", "bad_value"),
    ({"id": "u"}, "user_id", "bad_value"),
    (["hi"], "prompt_text", "bad_value"),
    ("{not an object}", "prompt_text", None),  # a string that starts with { is text
    ("[1, 2]", "event_id", None),
    (7, "user_id", None),  # a JSON number is an id spelled in digits
]


def _jsonl(tmp_path: Path, cases: list[tuple]) -> Path:
    path = tmp_path / "events.jsonl"
    lines = []
    for k, (value, column, _) in enumerate(cases):
        row = {**IMPRESSION, "event_id": f"e{k}", "exposure_id": f"x{k}", column: value}
        if column == "event_id":
            row["event_id"] = value if not isinstance(value, str) else f"{value}{k}"
        lines.append(json.dumps(row))
    path.write_text("\n".join(lines) + "\n")
    return path


def _rejects(wh: Path) -> dict[int, tuple[str, str]]:
    from feedback_etl.io import read_rejects

    rejects = read_rejects(wh)
    return {r["row_number"]: (r["reason"], r["detail"]) for r in rejects.to_dicts()}


def _expected(cases: list[tuple]) -> dict[int, tuple[str, str]]:
    out = {}
    for k, (_, column, reason) in enumerate(cases, start=1):
        if reason == "bad_value":
            out[k] = (reason, f"bad value in {column}")
        elif reason is not None:
            out[k] = (reason, None)
    return out


def _check(got: dict, expected: dict) -> None:
    assert sorted(got) == sorted(expected)
    for k, (reason, detail) in expected.items():
        assert got[k][0] == reason, (k, got[k])
        if detail:
            assert got[k][1] == detail


def test_json_lines_values_of_the_wrong_type_are_rejects(tmp_path: Path) -> None:
    from feedback_etl.ingest import IngestConfig, ingest

    run = ingest(IngestConfig(inputs=(str(_jsonl(tmp_path, JSON_CASES)),), warehouse=str(tmp_path / "wh")))
    expected = _expected(JSON_CASES)
    assert run["rejected_total"] == len(expected) and run["accepted"] == len(JSON_CASES) - len(expected)
    _check(_rejects(tmp_path / "wh"), expected)


def test_parquet_columns_of_the_wrong_type_are_rejects(tmp_path: Path) -> None:
    from feedback_etl.ingest import IngestConfig, ingest

    path = tmp_path / "events.parquet"
    pl.DataFrame({
        **{c: [IMPRESSION[c]] * 3 for c in IMPRESSION},
        "event_id": ["e1", "e2", "e3"], "exposure_id": ["x1", "x2", "x3"],
        "position": [2.0, 1.5, None], "solicited": [None, None, 1],
    }).write_parquet(path)
    ingest(IngestConfig(inputs=(str(path),), warehouse=str(tmp_path / "wh")))
    _check(_rejects(tmp_path / "wh"), {2: ("bad_value", "bad value in position"), 3: ("bad_value", "bad value in solicited")})
    # A struct column where a string belongs: every row with a value in it is a bad_value.
    nested = tmp_path / "nested.parquet"
    pl.DataFrame({**{c: [IMPRESSION[c]] * 2 for c in IMPRESSION}, "event_id": ["n1", "n2"], "exposure_id": ["y1", "y2"],
                  "platform": [{"os": "ios"}, None]}).write_parquet(nested)
    run = ingest(IngestConfig(inputs=(str(nested),), warehouse=str(tmp_path / "wh2")))
    assert run["accepted"] == 1
    _check(_rejects(tmp_path / "wh2"), {1: ("bad_value", "bad value in platform")})


# ---------------------------------------------------------------- invalid UTF-8: one rule at any line


@pytest.mark.parametrize("bad_line", [1, 6, 1_101])
def test_invalid_utf8_is_an_unparseable_row_at_its_line_wherever_it_sits(tmp_path: Path, bad_line: int) -> None:
    from feedback_etl.ingest import IngestConfig, ingest

    path = tmp_path / "events.jsonl"
    lines = [json.dumps({**IMPRESSION, "event_id": f"e{k}", "exposure_id": f"x{k}"}).encode() for k in range(1, 1_201)]
    lines[bad_line - 1] = lines[bad_line - 1].replace(b'"u1"', b'"u\xff1"')
    path.write_bytes(b"\n".join(lines) + b"\n")
    run = ingest(IngestConfig(inputs=(str(path),), warehouse=str(tmp_path / "wh")))
    assert run["rows_read"] == 1_200 and run["rejected"]["unparseable_row"] == 1 and run["accepted"] == 1_199
    assert list(_rejects(tmp_path / "wh")) == [bad_line]


# ---------------------------------------------------------------- Spark: identical rejects


@pytest.mark.spark
def test_spark_engine_gives_identical_rejects(tmp_path: Path) -> None:
    from feedback_etl.ingest import IngestConfig, ingest

    path = _jsonl(tmp_path, JSON_CASES)
    bad = tmp_path / "bad.jsonl"
    lines = [json.dumps({**IMPRESSION, "event_id": f"b{k}", "exposure_id": f"y{k}"}).encode() for k in range(1, 9)]
    lines[5] = lines[5].replace(b'"u1"', b'"u\xff1"')
    bad.write_bytes(b"\n".join(lines) + b"\n")
    tables = {}
    for engine in ("duckdb", "spark"):
        wh = tmp_path / f"wh-{engine}"
        ingest(IngestConfig(inputs=(str(path), str(bad)), warehouse=str(wh), engine=engine))
        from feedback_etl.io import read_rejects

        tables[engine] = read_rejects(wh).select("source_file", "row_number", "reason", "detail", "event_id").sort(
            "source_file", "row_number")
    assert tables["duckdb"].height == len(_expected(JSON_CASES)) + 1
    assert tables["spark"].equals(tables["duckdb"])
