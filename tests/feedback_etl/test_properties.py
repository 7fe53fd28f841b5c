"""Property: whatever garbage the input holds, every row is accounted for (resolution rule 7)."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from feedback_etl.ingest import IngestConfig, ingest, reconcile, register_warehouse_events, stage
from feedback_etl.mapping import FieldMapping
from feedback_etl.sources import discover_inputs, raw_event_parts

EVENT_TYPES = ["impression", "thumbs_up", "thumbs_down", "vote_cleared", "copy", "regenerate", "share", "bogus", ""]
ids = st.one_of(st.none(), st.sampled_from(["a", "b", "c", "", " "]), st.text(max_size=4), st.integers(-2, 3))
times = st.one_of(
    st.none(), st.sampled_from(["2026-01-05T10:00:00Z", "2026-01-05T11:00:00+01:00", "2026-01-06", "2026-13-45T99:61:00Z", "", "infinity"]),
    st.text(max_size=6), st.integers(),
)
values = st.one_of(st.none(), st.text(max_size=5), st.integers(-5, 5), st.floats(allow_nan=True), st.booleans())
record = st.fixed_dictionaries(
    {
        "event_id": ids, "event_time": times, "event_type": st.one_of(st.sampled_from(EVENT_TYPES), values),
        "exposure_id": ids,
    },
    optional={
        "user_id": ids, "session_id": ids, "prompt_id": ids, "response_id": ids, "model_id": ids, "position": values,
        "latency_ms": values, "solicited": values, "prompt_text": values, "extra": values,
    },
)
line = st.one_of(record.map(json.dumps), st.text(max_size=20), st.just("[1, 2]"), st.just('{"event_id": '))


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])  # examples: the profile (conftest.py)
@given(lines=st.lists(line, min_size=1, max_size=25))
def test_reconciliation_holds_for_any_garbage(tmp_path_factory, lines):
    folder = tmp_path_factory.mktemp("garbage")
    path = folder / "events.jsonl"
    # Guarantee the file looks like JSON Lines (preflight rejects a file with no object at all).
    path.write_text("\n".join([json.dumps({"event_id": "seed"}), *lines]) + "\n", encoding="utf-8")
    # Lines end at "\n" (a CR right before it belongs to the line end); a line that is empty or
    # only spaces and tabs is blank, not a row.
    non_blank = 1 + sum(1 for text in lines for part in text.split("\n") if part.removesuffix("\r").strip(" \t"))
    conn = duckdb.connect(config={"threads": 1})
    conn.execute("SET TimeZone = 'UTC'")
    files = discover_inputs([str(path)], "canonical")
    parts, relations = raw_event_parts(conn, files, "canonical", FieldMapping(), rating_threshold=4.0)
    register_warehouse_events(conn, folder / "no-warehouse")
    stage(conn, parts, "r", files=files)
    counts = reconcile(conn, relations)  # raises ReconciliationError when it does not hold
    assert counts["rows_read"] == non_blank
    assert counts["reconciliation"]["balanced"]
    conn.close()


def test_full_ingest_of_garbage_reconciles_and_stays_in_the_warehouse(tmp_path):
    rows = [
        {"event_id": "i", "event_time": "2026-01-05T10:00:00Z", "event_type": "impression", "exposure_id": "x",
         "user_id": "u", "session_id": "s", "prompt_id": "p", "response_id": "r", "model_id": "m", "position": "1"},
        {"event_id": "v", "event_time": "2026-01-05T10:00:01Z", "event_type": "thumbs_up", "exposure_id": "x"},
        {"event_id": "v", "event_time": "garbage", "event_type": "thumbs_up", "exposure_id": "x"},
        {"event_id": "../../etc", "event_time": "2026-01-05T10:00:01Z", "event_type": "share", "exposure_id": "../../x"},
        {"event_id": "w", "event_time": "2026-01-05", "event_type": "impression", "exposure_id": "y", "user_id": "u",
         "session_id": "s", "prompt_id": "p", "response_id": "r", "model_id": "m", "latency_ms": "-3"},
    ]
    path = tmp_path / "in" / "events.jsonl"
    path.parent.mkdir()
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\x00\x01 not json\n")
    wh = tmp_path / "wh"
    run = ingest(IngestConfig(inputs=(str(path),), warehouse=str(wh)))
    assert run["reconciliation"] == {"rows_read": 6, "accepted": 2, "rejected": 4, "duplicates": 0, "balanced": True}
    written = {p.resolve() for p in tmp_path.rglob("*") if p.is_file()}
    assert all(p.is_relative_to(wh.resolve()) or p == path.resolve() for p in written)
    # Delta layout: the log and one folder named by the run id, never by a value (issue 16).
    assert sorted(Path(p).name for p in (wh / "feedback").iterdir()) == sorted(["_delta_log", run["run_id"]])
