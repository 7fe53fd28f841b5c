"""Deferred content (issue 19): on Parquet and CSV inputs the DuckDB engine keeps only the key
columns in typed_events and reads the content columns (texts, the impression's other ids and
attributes) from the input again when it writes. The warehouse must be the one the plain path
(every column kept) writes, the privacy hook must see and rewrite what it names, and the mart's
content expressions must stay those of sql/marts/feedback.sql."""

from __future__ import annotations

import re
from pathlib import Path

import duckdb
import polars as pl
import pytest

from feedback_etl.ingest import CONTENT_COLUMNS, MART_CONTENT, IngestConfig, ingest
from feedback_etl.io import read_events, read_feedback, read_rejects
from feedback_etl.sqlfiles import load_sql

TEXT = {"prompt_text": "write to ada@example.org please", "response_text": "sure, done"}


def _impression(k: int, exposure: str, *, minutes: int = 0, **extra) -> dict:
    return {
        "event_id": f"imp-{k}", "event_time": f"2026-01-05T10:{minutes:02d}:00Z", "event_type": "impression",
        "exposure_id": exposure, "user_id": f"u{k % 3}", "session_id": f"s{k % 4}", "prompt_id": f"p{k}",
        "response_id": f"r{k}", "model_id": "m1", **TEXT, "position": str(k % 3), "platform": "web",
        "locale": "en-US", "latency_ms": str(10.5 + k), "solicited": "true" if k % 2 else "false", **extra,
    }


def _vote(event_id: str, exposure: str, kind: str = "thumbs_up", minutes: int = 5) -> dict:
    return {"event_id": event_id, "event_time": f"2026-01-05T10:{minutes:02d}:00Z", "event_type": kind, "exposure_id": exposure}


def _write(rows: list[dict], path: Path) -> Path:
    columns = list(_impression(0, "x"))
    frame = pl.DataFrame([{c: r.get(c) for c in columns} for r in rows], schema={c: pl.Utf8 for c in columns})
    frame.write_parquet(path) if path.suffix == ".parquet" else frame.write_csv(path)
    return path


@pytest.fixture
def batches(tmp_path: Path) -> dict[str, tuple[str, ...]]:
    """Two runs of Parquet and CSV files: repeats, a conflicting impression, an orphan, rows
    rejected at typing, and a second run that conflicts with and repeats the first's impressions."""
    first = [
        _impression(1, "x1"), _impression(2, "x2", minutes=1), _vote("v1", "x1"), _vote("v2", "x2", "copy"),
        _impression(3, "x1", minutes=2, response_text="another answer"),  # conflicts with imp-1
        _impression(1, "x1"),  # a repeated event id
        _vote("ghost", "x-none"),  # orphan feedback
        _impression(4, "x4", event_time="yesterday"),  # bad timestamp
    ]
    csv = [_impression(5, "x5", minutes=3), _impression(6, "x2", minutes=4), _vote("v5", "x5", "thumbs_down", 9)]
    second = [
        _impression(7, "x1", minutes=7, prompt_text="edited"),  # conflicts with the warehouse's x1
        {**_impression(2, "x2", minutes=1), "event_id": "imp-2-resend"},  # repeats the warehouse's x2 (same content)
        _impression(9, "x9", minutes=8), _vote("v9", "x9", "thumbs_down", 12),
    ]
    return {
        "first": (str(_write(first, tmp_path / "a.parquet")), str(_write(csv, tmp_path / "b.csv"))),
        "second": (str(_write(second, tmp_path / "c.parquet")),),
    }


def _tables(wh: Path) -> dict[str, pl.DataFrame]:
    keys = {"events": ["event_id"], "rejects": ["source_file", "row_number", "reason"], "feedback": ["exposure_id"]}
    read = {"events": read_events, "rejects": read_rejects, "feedback": read_feedback}
    return {name: read[name](wh).drop("run_id", strict=False).sort(key) for name, key in keys.items()}


def _every_column(conn: duckdb.DuckDBPyConnection) -> dict:
    """A hook without ``columns``: ingest keeps every column in typed_events for it."""
    return {}


def test_deferred_content_writes_the_warehouse_the_plain_path_writes(batches, tmp_path):
    deferred_wh, plain_wh = tmp_path / "deferred", tmp_path / "plain"
    for step in ("first", "second"):
        deferred = ingest(IngestConfig(inputs=batches[step], warehouse=str(deferred_wh), window="1d"))
        plain = ingest(IngestConfig(inputs=batches[step], warehouse=str(plain_wh), window="1d"), typed_hook=_every_column)
        assert "late_content" in deferred["timings_s"] and "late_content" not in plain["timings_s"]
        assert {k: deferred[k] for k in ("rows_read", "accepted", "rejected", "duplicates", "feedback")} == {
            k: plain[k] for k in ("rows_read", "accepted", "rejected", "duplicates", "feedback")}
    assert deferred["rejected"]["conflicting_impression"] == 1 and deferred["duplicates"] == 1
    got, want = _tables(deferred_wh), _tables(plain_wh)
    for name in want:
        assert got[name].equals(want[name]), name
    # The content really is there: read from the input, not left null.
    feedback = got["feedback"]
    assert feedback["response_text"].null_count() == 0 and feedback["session_id"].null_count() == 0
    assert feedback.filter(pl.col("exposure_id") == "x9")["latency_ms"].item() == 19.5
    # A conflicting impression's reject payload is rebuilt with its content.
    conflict = got["rejects"].filter(pl.col("reason") == "conflicting_impression")["payload"].to_list()
    assert any("another answer" in p for p in conflict)


def test_the_hook_rewrites_the_content_columns_it_names(batches, tmp_path):
    seen: list[set] = []

    def upper_prompts(conn: duckdb.DuckDBPyConnection) -> dict:
        seen.append({row[0] for row in conn.execute('DESCRIBE "typed_events"').fetchall()})
        conn.execute('UPDATE "typed_events" SET "prompt_text" = UPPER("prompt_text")')
        return {}

    upper_prompts.columns = frozenset({"prompt_text"})
    wh = tmp_path / "wh"
    ingest(IngestConfig(inputs=batches["first"], warehouse=str(wh)), typed_hook=upper_prompts)
    assert "prompt_text" in seen[0] and "response_text" not in seen[0] and "exposure_id" in seen[0]
    tables = _tables(wh)
    assert set(tables["feedback"]["prompt_text"]) == {TEXT["prompt_text"].upper()}
    impressions = tables["events"].filter(pl.col("event_type") == "impression")
    assert set(impressions["prompt_text"]) == {TEXT["prompt_text"].upper()}
    assert TEXT["response_text"] in set(impressions["response_text"])


def test_a_hook_cannot_rewrite_a_column_it_did_not_name(batches, tmp_path):
    def sneaky(conn: duckdb.DuckDBPyConnection) -> dict:
        conn.execute('UPDATE "typed_events" SET "response_text" = NULL')
        return {}

    sneaky.columns = frozenset()
    wh = tmp_path / "wh"
    with pytest.raises(duckdb.BinderException, match="response_text"):
        ingest(IngestConfig(inputs=batches["first"], warehouse=str(wh)), typed_hook=sneaky)
    assert not (wh / "events").exists() and not (wh / "feedback").exists()


def test_mart_content_is_what_feedback_sql_computes():
    """MART_CONTENT restates the final SELECT's columns taken from the impression "i" (with
    deferred content they join in when the table is written): the same columns, spelled alike."""
    final = load_sql("marts/feedback").rsplit("\nSELECT\n", 1)[1].split("\nFROM ", 1)[0]
    from_impression = {}
    for line in final.splitlines():
        line = line.strip().rstrip(",")
        if 'i."' not in line:
            continue
        aliased = re.fullmatch(r'(.*) AS "(\w+)"', line)
        expression, name = aliased.groups() if aliased else (line, re.fullmatch(r'i\."(\w+)"', line).group(1))
        from_impression[name] = expression
    assert from_impression == MART_CONTENT
    assert set(CONTENT_COLUMNS) == {c for c in MART_CONTENT if c != "response_chars"}


def test_the_key_column_mart_is_the_mart_without_its_content_columns(batches, tmp_path, monkeypatch):
    """_narrow_mart leaves out feedback.sql's last join (the impression, for the content columns
    only): on a warehouse with conflicts, repeats and orphans it gives the file's own rows with
    those columns dropped, and a feedback.sql that no longer ends with that join is refused."""
    from datetime import timedelta

    from feedback_etl import ingest as ingest_module, sqlfiles

    warehouse = tmp_path / "wh"
    for inputs in batches.values():
        ingest(IngestConfig(inputs=inputs, warehouse=str(warehouse)))
    conn = duckdb.connect()
    conn.execute("SET TimeZone = 'UTC'")
    ingest_module.register_warehouse_events(conn, warehouse)
    conn.execute('CREATE TEMP VIEW "all_events" AS SELECT * FROM "warehouse_events"')
    ingest_module.build_user_splits(conn)
    window = timedelta(hours=24)
    order = ingest_module._narrow_mart(conn, window)
    kept = ", ".join(f'"{c}"' for c in order if c not in MART_CONTENT)
    whole = f'SELECT {kept} FROM (\n{load_sql("marts/feedback")}\n) AS "mart"'
    differ = conn.execute(
        f'SELECT COUNT(*) FROM (({whole} EXCEPT ALL SELECT {kept} FROM "feedback_mart") '
        f'UNION ALL (SELECT {kept} FROM "feedback_mart" EXCEPT ALL {whole}))', {"window": window}
    ).fetchall()[0][0]
    assert differ == 0
    exposures = conn.execute('SELECT COUNT(DISTINCT "exposure_id") FROM "warehouse_events" WHERE "event_type" = \'impression\'').fetchall()[0][0]
    assert conn.execute('SELECT COUNT(*) FROM "feedback_mart"').fetchall()[0][0] == exposures == 4  # x1, x2, x5, x9
    text = load_sql("marts/feedback").replace('JOIN "all_events" AS i', 'JOIN "warehouse_events" AS i')
    monkeypatch.setattr(sqlfiles, "load_sql", lambda name: text)
    with pytest.raises(ValueError, match="impression join"):
        ingest_module._narrow_mart(conn, window)


def test_deferred_content_in_many_parts_and_day_groups(messy_logs, tmp_path):
    """Small parts: the events are written in several parts (each joined to its files' content)
    and the feedback table in several day groups (each joined to those days' impressions)."""
    inputs = (str(messy_logs / "events"),)
    deferred = ingest(IngestConfig(inputs=inputs, warehouse=str(tmp_path / "d"), batch_rows=1000))
    ingest(IngestConfig(inputs=inputs, warehouse=str(tmp_path / "p"), batch_rows=1000), typed_hook=_every_column)
    assert "late_content" in deferred["timings_s"] and deferred["feedback"]["days"] > 3
    got, want = _tables(tmp_path / "d"), _tables(tmp_path / "p")
    for name in want:
        assert got[name].equals(want[name]), name
    assert len(list((tmp_path / "d" / "feedback").rglob("*.parquet"))) > 3


def test_long_texts_are_typed_without_them_and_rejected_rows_keep_their_payload(messy_logs, tmp_path, monkeypatch):
    """Parquet files whose texts weigh LEAN_TEXT_BYTES a row or more are typed without them (the
    payload of a row typing rejects, the only thing that reads them, is built afterwards for those
    rows alone): the warehouse, every rejected row's payload included, is the plain path's. Forced
    here on the messy logs (their pooled texts are below the threshold, as the check shows)."""
    import feedback_etl.sources as sources

    inputs = (str(messy_logs / "events"),)
    default = ingest(IngestConfig(inputs=inputs, warehouse=str(tmp_path / "default")))
    monkeypatch.setattr(sources, "LEAN_TEXT_BYTES", 0)
    lean = ingest(IngestConfig(inputs=inputs, warehouse=str(tmp_path / "lean")))
    ingest(IngestConfig(inputs=inputs, warehouse=str(tmp_path / "plain")), typed_hook=_every_column)
    assert "late_content" in lean["timings_s"] and lean["rejected"] == default["rejected"]
    typed_rejects = sum(n for reason, n in lean["rejected"].items() if reason not in ("orphan_feedback", "conflicting_impression"))
    assert typed_rejects > 0
    got, want = _tables(tmp_path / "lean"), _tables(tmp_path / "plain")
    for name in want:
        assert got[name].equals(want[name]), name
    payloads = got["rejects"].filter(pl.col("reason") == "bad_timestamp")["payload"]
    assert payloads.len() > 0 and payloads.str.contains('"response_text"').all()
