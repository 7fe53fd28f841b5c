"""Warehouse commit paths that mutation testing found unguarded (issue 22, benchmarks/mutation/).

Each test names the mutant it kills; each was seen red with that mutant applied.
"""

from __future__ import annotations

import json
import shutil
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from feedback_etl.ingest import IngestConfig, ingest
from feedback_etl.io import read_rejects
from feedback_etl.warehouse import TableWrite, commit_writes, history, latest_version, migrate, snapshot

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)


def _jsonl(path: Path, exposures: list[str], minutes: float) -> Path:
    rows = [{"event_id": f"i-{x}", "event_time": (T0 + timedelta(minutes=minutes)).isoformat(), "event_type": "impression",
             "exposure_id": x, "user_id": f"u-{x}", "session_id": f"s-{x}", "prompt_id": "p", "response_id": f"r-{x}",
             "model_id": "m1", "prompt_text": "q", "response_text": f"a {x}", "position": 0} for x in exposures]
    rows.append({"event_id": f"bad-{minutes}", "event_type": "impression"})  # one reject per run
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _run(wh: Path, source: Path) -> dict:
    return ingest(IngestConfig(inputs=(str(source),), warehouse=str(wh), threads=1))


def test_adopted_files_are_counted_and_committed(tmp_path: Path) -> None:
    """TableWrite.adopt (Spark's files) returns the rows it took: mutant adopt__mutmut_11 (rows -= count)."""
    write = TableWrite(tmp_path / "wh", "events", "run-1", mode="append")
    write.folder.mkdir(parents=True)
    schema = pa.schema([("event_id", pa.large_string())])
    paths = []
    for k, n in enumerate((2, 3)):
        paths.append(write.folder / f"part-{k:05d}.parquet")
        pq.write_table(pa.table({"event_id": [f"e{k}-{i}" for i in range(n)]}, schema=schema), paths[-1])
    assert write.adopt(paths, schema) == 5 and write.rows == 5
    assert commit_writes([write]) == {"events": 0}
    assert snapshot(tmp_path / "wh", "events").dataset().count_rows() == 5


def test_history_reports_the_rows_each_version_added(tmp_path: Path) -> None:
    """`causalrm history` shows the rows a version added: mutant history__mutmut_71 (a misspelt metrics key gave None)."""
    wh = tmp_path / "wh"
    _run(wh, _jsonl(tmp_path / "in" / "one.jsonl", ["x1", "x2", "x3"], 0))
    _run(wh, _jsonl(tmp_path / "in" / "two.jsonl", ["x4"], 5))
    events = [r for r in history(wh) if r["table"] == "events"]
    assert [r["rows_added"] for r in events] == [1, 3]


def test_migrate_keeps_a_table_already_in_delta_at_its_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A warehouse half in Delta (a table already converted, one still in Parquet folders):
    the Delta table is copied at its own version, the manifest records the format migrated from,
    and the run id is stamped in UTC whatever the local zone. Mutants migrate__mutmut_72 (every
    copied table at version 0), _181 (the from_format_version key) and _46 (local time)."""
    wh = tmp_path / "wh"
    _run(wh, _jsonl(tmp_path / "in" / "one.jsonl", ["x1", "x2"], 0))
    _run(wh, _jsonl(tmp_path / "in" / "two.jsonl", ["x3"], 5))
    events_version = latest_version(wh, "events")
    assert events_version is not None and events_version >= 1
    rejects = read_rejects(wh)
    shutil.rmtree(wh / "rejects")  # the rejects table back in the old layout: hive folders, no Delta log
    for (run_id,), part in rejects.partition_by("run_id", as_dict=True).items():
        folder = wh / "rejects" / f"run_id={run_id}"
        folder.mkdir(parents=True)
        part.write_parquet(folder / "part-00000.parquet")
    manifest = json.loads((wh / "manifest.json").read_text())
    manifest["format_version"] = 1
    (wh / "manifest.json").write_text(json.dumps(manifest))

    monkeypatch.setenv("TZ", "Etc/GMT+7")  # seven hours behind UTC
    time.tzset()
    try:
        before = datetime.now(timezone.utc)
        rows = migrate(wh)
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    assert rows == {"rejects": rejects.height}
    after = json.loads((wh / "manifest.json").read_text())
    assert after["tables"]["versions"]["events"] == events_version
    assert after["migrated"]["from_format_version"] == 1
    stamp = datetime.strptime(after["migrated"]["run_id"].removeprefix("migrate-"), "%Y%m%dT%H%M%S%fZ").replace(tzinfo=timezone.utc)
    assert abs(stamp - before) < timedelta(minutes=10)
    assert pl.from_arrow(snapshot(wh, "rejects").dataset().to_table()).height == rejects.height


def test_a_table_no_manifest_version_names_is_emptied_even_before_the_first_commit(tmp_path: Path) -> None:
    """A format-2 manifest written before the first table commit has no `versions` yet: a table a
    killed run wrote is emptied, not a crash (mutant roll_back_uncommitted__mutmut_5 read None)."""
    from feedback_etl.warehouse import roll_back_uncommitted, write_table

    wh = tmp_path / "wh"
    write_table(wh, "events", [pa.table({"event_id": ["a", "b"]})], mode="append", run_id="killed")
    manifest = {"format_version": 2, "runs": [], "tables": {}}
    (wh / "manifest.json").write_text(json.dumps(manifest))
    assert roll_back_uncommitted(wh, manifest) == ["events: written by a run that never committed; emptied"]
    from deltalake import DeltaTable

    assert DeltaTable(str(wh / "events")).file_uris() == [] and latest_version(wh, "events") == 1
