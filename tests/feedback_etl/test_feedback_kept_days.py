"""A run keeps the committed feedback days its events cannot change (issue 19): a daily ingest
rewrites the days from the first one it touches, not the whole history, and the table is row for
row the one a rewrite of every day gives."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import duckdb
import pytest

import feedback_etl.ingest as ingest_module
from feedback_etl.ingest import IngestConfig, ingest
from feedback_etl.io import read_events, read_feedback
from feedback_etl.simulator import SimulationConfig, simulate
from feedback_etl.warehouse import snapshot, vacuum


def _split_by_time(events: Path, out: Path, cuts: list[str]) -> list[str]:
    """The simulator's messy logs cut by event_time into len(cuts) + 1 Parquet files; rows whose
    time does not parse go into the last one."""
    conn = duckdb.connect()
    conn.execute("SET TimeZone = 'UTC'")
    source = f"read_parquet('{events}/*.parquet')"
    bounds = ["TIMESTAMPTZ '1970-01-01'", *[f"TIMESTAMPTZ '{c}'" for c in cuts], "TIMESTAMPTZ '2200-01-01'"]
    paths = []
    for k, (low, high) in enumerate(zip(bounds, bounds[1:])):
        path = out / f"batch-{k}.parquet"
        time = "TRY_CAST(event_time AS TIMESTAMPTZ)"
        late = f" OR {time} IS NULL" if k == len(bounds) - 2 else ""
        conn.execute(f"COPY (SELECT * FROM {source} WHERE ({time} >= {low} AND {time} < {high}){late}) TO '{path}' (FORMAT parquet)")
        paths.append(str(path))
    return paths


# Parts of at most 1,000 rows (the least allowed): about a day each here (1,000 exposures a day), as
# a large table's parts hold a day or a few; a table in one part is rewritten whole.
BATCH_ROWS = 1_000


def _ingest_all(wh: Path, batches: list[str], **options) -> list[dict]:
    return [ingest(IngestConfig(inputs=(b,), warehouse=str(wh), batch_rows=BATCH_ROWS, **options)) for b in batches]


@pytest.fixture(scope="module")
def daily(tmp_path_factory) -> dict:
    """Three daily batches of the simulator's messy logs (14 days from 2026-01-05), ingested run
    by run, and the same runs with every day rewritten (the behaviour before issue 19's change)."""
    root = tmp_path_factory.mktemp("daily")
    simulate(SimulationConfig(out=str(root / "sim"), n_exposures=14_000, messiness=0.3, seed=7))
    batches = _split_by_time(root / "sim" / "events", root, ["2026-01-12", "2026-01-16"])
    kept = _ingest_all(root / "kept", batches)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ingest_module, "_unchanged_days", lambda *args, **kwargs: None)
        rewritten = _ingest_all(root / "rewritten", batches)
    return {"root": root, "batches": batches, "kept": kept, "rewritten": rewritten}


def test_later_runs_keep_the_days_before_the_first_they_touch_and_equal_a_full_rewrite(daily):
    root, kept, rewritten = daily["root"], daily["kept"], daily["rewritten"]
    assert "kept_before" not in kept[0]["feedback"]  # a first run writes every day
    for run in kept[1:]:  # late votes reach back up to a day (the window), never to the first days
        first = date.fromisoformat(run["feedback"]["kept_before"])
        assert date(2026, 1, 5) < first <= date(2026, 1, 16)
        assert run["feedback"]["kept_rows"] > 0
    feedback = read_feedback(root / "kept")
    assert kept[2]["feedback"]["kept_rows"] == feedback.filter(feedback["impression_date"] < first).height
    assert feedback.equals(read_feedback(root / "rewritten"))
    assert read_events(root / "kept").drop("run_id").equals(read_events(root / "rewritten").drop("run_id"))
    assert [r["feedback"]["exposures"] for r in kept] == [r["feedback"]["exposures"] for r in rewritten]


def test_kept_files_are_links_to_the_committed_ones_and_time_travel_still_reads_them(daily):
    wh = daily["root"] / "kept"
    files = snapshot(wh, "feedback").files
    kept = [f for f in files if f.name.startswith("kept-")]
    assert kept and files[: len(kept)] == tuple(kept)  # the old days first, then the new parts
    earlier = {f.stat().st_ino for f in snapshot(wh, "feedback", version=1).files}
    assert {f.stat().st_ino for f in kept} <= earlier
    assert read_feedback(wh, version=1).height == daily["kept"][1]["feedback"]["exposures"]


def test_a_late_vote_on_an_old_exposure_rewrites_from_its_day(daily, tmp_path):
    wh = tmp_path / "wh"
    _ingest_all(wh, daily["batches"])
    old = read_feedback(wh).filter(read_feedback(wh)["impression_date"] == date(2026, 1, 7)).row(0, named=True)
    late = tmp_path / "late.jsonl"
    late.write_text(json.dumps({"event_id": "late-vote", "event_type": "thumbs_down", "exposure_id": old["exposure_id"],
                                "event_time": old["impression_time"].isoformat()}) + "\n")
    run = ingest(IngestConfig(inputs=(str(late),), warehouse=str(wh), batch_rows=BATCH_ROWS))
    assert "2026-01-05" < run["feedback"]["kept_before"] <= "2026-01-07"
    row = read_feedback(wh).filter(read_feedback(wh)["exposure_id"] == old["exposure_id"]).row(0, named=True)
    assert row["n_events"] == old["n_events"] + 1
    full = tmp_path / "full"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ingest_module, "_unchanged_days", lambda *args, **kwargs: None)
        _ingest_all(full, [*daily["batches"], str(late)])
    assert read_feedback(wh).equals(read_feedback(full))
    # Vacuuming every older version deletes the files they listed; the kept days are links of their own.
    removed = vacuum(wh, "0h")["feedback"]
    assert removed and read_feedback(wh).equals(read_feedback(full))


def test_a_changed_window_or_mart_rewrites_every_day(daily, tmp_path):
    wh = tmp_path / "wh"
    _ingest_all(wh, daily["batches"][:2])
    run = _ingest_all(wh, daily["batches"][2:], window="12h")[0]
    assert "kept_before" not in run["feedback"]
    manifest = json.loads((wh / "manifest.json").read_text())
    manifest["tables"]["feedback_fingerprint"] = "from-another-version"
    (wh / "manifest.json").write_text(json.dumps(manifest))
    late = tmp_path / "late.jsonl"
    late.write_text(json.dumps({"event_id": "late-imp", "event_type": "impression", "exposure_id": "new-x", "user_id": "u-new",
                                "session_id": "s", "prompt_id": "p", "response_id": "r", "model_id": "m",
                                "event_time": "2026-01-19T10:00:00Z"}) + "\n")
    assert "kept_before" not in _ingest_all(wh, [str(late)], window="12h")[0]["feedback"]


def test_kept_files_that_disagree_with_the_events_are_rewritten_with_a_warning(daily, tmp_path, monkeypatch):
    # The committed files' rows for the kept days are counted against the recomputed table: a file
    # whose count disagrees (here its statistics report one row more) is not trusted.
    wh = tmp_path / "wh"
    _ingest_all(wh, daily["batches"][:2])
    span = ingest_module._date_span
    monkeypatch.setattr(ingest_module, "_date_span", lambda path: (*span(path)[:2], span(path)[2] + 1))
    run = _ingest_all(wh, daily["batches"][2:])[0]
    assert "kept_before" not in run["feedback"]
    assert any("every day was rewritten" in w for w in run["warnings"])
    assert read_feedback(wh).equals(read_feedback(daily["root"] / "rewritten"))
