"""Incremental runs: appends, late updates, idempotency, orphans, atomicity, the lock, reconciliation."""

from __future__ import annotations

import hashlib
import json
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import polars as pl
import pytest

import feedback_etl.ingest as ingest_module
import feedback_etl.sqlfiles as sqlfiles
import feedback_etl.warehouse as warehouse_module
from feedback_etl.ingest import IngestConfig, ingest
from feedback_etl.io import read_events, read_feedback, read_rejects
from feedback_etl.warehouse import ingest_lock
from schemas.errors import ReconciliationError, WarehouseError

T0 = datetime(2026, 1, 5, 12, 0, tzinfo=timezone.utc)


def _imp(exposure_id: str, user: str = "u1", minutes: float = 0) -> dict:
    return {
        "event_id": f"imp-{exposure_id}", "event_time": (T0 + timedelta(minutes=minutes)).isoformat(), "event_type": "impression",
        "exposure_id": exposure_id, "user_id": user, "session_id": "s1", "prompt_id": "p1", "response_id": f"r-{exposure_id}",
        "model_id": "m1", "prompt_text": "q", "response_text": "a", "position": 0,
    }


def _fb(exposure_id: str, kind: str, minutes: float, event_id: str | None = None) -> dict:
    return {"event_id": event_id or f"{kind}-{exposure_id}-{minutes}", "event_time": (T0 + timedelta(minutes=minutes)).isoformat(),
            "event_type": kind, "exposure_id": exposure_id}


def _write(path: Path, rows: list[dict]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _snapshot(wh: Path) -> dict[str, str]:
    """Every file under the warehouse (lock file aside) with a hash of its bytes."""
    return {
        str(p.relative_to(wh)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(wh.rglob("*")) if p.is_file() and p.name != ".ingest.lock"
    }


@pytest.fixture
def batches(tmp_path: Path) -> dict[str, str]:
    return {
        "one": _write(tmp_path / "in" / "batch1.jsonl", [_imp("x1"), _imp("x2"), _fb("x1", "thumbs_up", 1)]),
        "two": _write(tmp_path / "in" / "batch2.jsonl", [
            _fb("x1", "thumbs_down", 5), _fb("x2", "thumbs_up", 30 * 60), _fb("x2", "copy", 60), _imp("x3", minutes=90),
        ]),
    }


def _run(wh: Path, *inputs: str, **kwargs) -> dict:
    return ingest(IngestConfig(inputs=inputs, warehouse=str(wh), **kwargs))


def _row(wh: Path, exposure_id: str) -> dict:
    return read_feedback(wh).filter(pl.col("exposure_id") == exposure_id).to_dicts()[0]


def test_second_batch_appends_and_updates_earlier_exposures(tmp_path, batches):
    wh = tmp_path / "wh"
    first = _run(wh, batches["one"])
    assert (_row(wh, "x1")["observed"], _row(wh, "x1")["label"]) == (True, 1)
    second = _run(wh, batches["two"])
    assert read_feedback(wh)["exposure_id"].to_list() == ["x1", "x2", "x3"]
    x1, x2 = _row(wh, "x1"), _row(wh, "x2")
    assert (x1["label"], x1["n_events"], x1["feedback_delay_s"]) == (0, 3, 300.0)  # the later vote wins
    assert (x2["observed"], x2["copied"], x2["n_late_events"]) == (False, True, 1)
    assert second["late_events"] == 1 and second["accepted"] == 4
    assert _row(wh, "x3")["user_prior_exposures"] == 2
    events = read_events(wh)
    assert events.group_by("run_id").len().sort("run_id")["len"].to_list() == [3, 4]
    manifest = json.loads((wh / "manifest.json").read_text())
    assert [r["run_id"] for r in manifest["runs"]] == [first["run_id"], second["run_id"]]
    assert manifest["tables"]["events"] == 7


def test_reingesting_a_file_changes_nothing(tmp_path, batches):
    wh = tmp_path / "wh"
    _run(wh, batches["one"], batches["two"])
    before = _snapshot(wh)
    tables = (read_feedback(wh), read_events(wh), read_rejects(wh))
    again = _run(wh, batches["two"], batches["one"])
    assert again["rows_read"] == 0 and {f["status"] for f in again["files"]} == {"skipped"}
    after = _snapshot(wh)
    assert {k: v for k, v in after.items() if k != "manifest.json"} == {k: v for k, v in before.items() if k != "manifest.json"}
    # --force re-reads: every row is now a duplicate, the tables stay equal
    forced = _run(wh, batches["one"], force=True)
    assert forced["duplicates"] == forced["rows_read"] == 3 and forced["accepted"] == 0
    assert read_feedback(wh).equals(tables[0])
    assert read_events(wh).drop("run_id").equals(tables[1].drop("run_id"))


def test_orphans_stay_rejected_until_their_file_is_reingested(tmp_path):
    wh = tmp_path / "wh"
    votes = _write(tmp_path / "votes.jsonl", [_fb("x9", "thumbs_up", 2)])
    impressions = _write(tmp_path / "imps.jsonl", [_imp("x9")])
    # Nothing accepted: refused by default (issue 18), committed with allow_empty so the orphan is on record.
    assert _run(wh, votes, allow_empty=True)["rejected"]["orphan_feedback"] == 1
    _run(wh, impressions)
    assert _row(wh, "x9")["observed"] is False  # not resurrected by the impression's arrival
    _run(wh, votes, force=True)
    assert _row(wh, "x9")["observed"] is True
    assert read_rejects(wh)["reason"].to_list() == ["orphan_feedback"]


def test_a_crash_mid_run_leaves_the_warehouse_as_it_was(tmp_path, batches, monkeypatch):
    wh = tmp_path / "wh"
    _run(wh, batches["one"])
    before = _snapshot(wh)

    def crash(*args, **kwargs):
        raise RuntimeError("simulated crash while writing the feedback table")

    monkeypatch.setattr(ingest_module, "_write_feedback", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _run(wh, batches["two"])
    assert _snapshot(wh) == before
    assert sorted(p.name for p in wh.iterdir()) == [".ingest.lock", "events", "feedback", "manifest.json", "rejects"]


def test_a_kill_between_table_commits_and_manifest_leaves_the_committed_version(tmp_path, batches, monkeypatch):
    """Issue 16: the tables are committed (new Delta versions) but the manifest is not: readers
    still see the previous warehouse, with no repair step, and the next run rolls the orphan
    versions back before it writes."""
    wh = tmp_path / "wh"
    _run(wh, batches["one"])
    tables = (read_feedback(wh), read_events(wh), read_rejects(wh))
    manifest = (wh / "manifest.json").read_text()

    def die(*args, **kwargs):
        raise KeyboardInterrupt("killed before the manifest was replaced")

    monkeypatch.setattr(ingest_module, "write_json", die)
    monkeypatch.setattr(ingest_module, "_undo", lambda *a, **k: None)  # a kill -9 cleans nothing up
    with pytest.raises(KeyboardInterrupt):
        _run(wh, batches["two"])
    monkeypatch.undo()
    assert warehouse_module.latest_version(wh, "feedback") > json.loads(manifest)["tables"]["versions"]["feedback"]
    assert (wh / "manifest.json").read_text() == manifest
    assert read_feedback(wh).equals(tables[0]) and read_events(wh).equals(tables[1]) and read_rejects(wh).equals(tables[2])
    _run(wh, batches["two"])  # rolls back the orphan versions, then ingests batch two once
    assert _row(wh, "x1")["label"] == 0 and read_feedback(wh).height == 3
    assert read_events(wh)["event_id"].is_unique().all() and read_events(wh).height == 7
    assert len(json.loads((wh / "manifest.json").read_text())["runs"]) == 2


def test_a_concurrent_ingest_fails_with_a_clear_error(tmp_path, batches):
    wh = tmp_path / "wh"
    _run(wh, batches["one"])
    before = _snapshot(wh)
    with ingest_lock(wh):
        with pytest.raises(WarehouseError, match="being ingested into by pid"):
            _run(wh, batches["two"])
    assert _snapshot(wh) == before
    _run(wh, batches["two"])  # the lock is released afterwards


def test_two_threads_ingesting_at_once_one_waits_out(tmp_path, batches, monkeypatch):
    wh = tmp_path / "wh"
    entered, release = threading.Event(), threading.Event()
    real = ingest_module.reconcile

    def slow_reconcile(*args, **kwargs):
        entered.set()
        release.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(ingest_module, "reconcile", slow_reconcile)
    errors: list[BaseException] = []
    worker = threading.Thread(target=lambda: _run(wh, batches["one"]))
    worker.start()
    assert entered.wait(30)
    try:
        _run(wh, batches["two"])
    except WarehouseError as exc:
        errors.append(exc)
    finally:
        release.set()
        worker.join(60)
    assert len(errors) == 1
    assert read_feedback(wh).height == 2


def test_a_run_that_does_not_reconcile_fails_and_writes_nothing(tmp_path, batches, monkeypatch):
    wh = tmp_path / "wh"
    _run(wh, batches["one"])
    before = _snapshot(wh)
    real_load = sqlfiles.load_sql

    def lossy(name: str) -> str:
        text = real_load(name)
        # A broken transform that silently drops orphan rejects.
        return text.replace("UNION ALL\nSELECT CAST($run_id", "UNION ALL\nSELECT CAST($run_id") + "\nLIMIT 0" if name == "staging/stg_rejects" else text

    monkeypatch.setattr(sqlfiles, "load_sql", lossy)
    orphan = _write(tmp_path / "orphan.jsonl", [_fb("nope", "copy", 1)])
    with pytest.raises(ReconciliationError, match=r"rows read \(1\) != accepted \(0\) \+ rejected \(0\) \+ duplicates \(0\)"):
        _run(wh, orphan)
    assert _snapshot(wh) == before
