"""The warehouse commit point under a real kill (issue 22, bug 5): an ingest killed before its
commit point leaves no trace of its rows in any table readable through ``feedback_etl.io``, neither
right after the kill nor after the next writer has run; and a staging folder without the COMMIT
marker is never rolled forward.

The child process is killed with SIGKILL by itself at a named point (the test's own wrapper around
``feedback_etl.ingest``'s commit functions; no hook in production code): no ``finally`` block, no
cleanup runs, exactly as for ``kill -9`` or a lost machine.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import polars as pl
import pytest

from feedback_etl.ingest import IngestConfig, ingest
from feedback_etl.io import feedback_dataset, read_events, read_feedback, read_rejects
from feedback_etl.warehouse import COMMIT_MARKER, STAGING_PREFIX, committed_versions, latest_version, recover

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 1, 5, 12, 0, tzinfo=timezone.utc)

_CHILD = """
import os, signal, sys
import feedback_etl.ingest as ingest_module
from feedback_etl.ingest import IngestConfig, ingest

point, warehouse, inputs = sys.argv[1], sys.argv[2], tuple(sys.argv[3:])
real_commit, real_write_json = ingest_module.commit_writes, ingest_module.write_json


def die():
    os.kill(os.getpid(), signal.SIGKILL)


def commit_writes(writes):
    if point == "before_table_commits":
        die()
    return real_commit(writes)


def write_json(path, document):
    if point == "before_manifest" and document.get("runs"):
        die()
    return real_write_json(path, document)


ingest_module.commit_writes, ingest_module.write_json = commit_writes, write_json
ingest(IngestConfig(inputs=inputs, warehouse=warehouse, threads=1))
print("not killed", flush=True)
"""


def _event(event_id: str, exposure_id: str, minutes: float, event_type: str = "impression") -> dict:
    row = {"event_id": event_id, "event_time": (T0 + timedelta(minutes=minutes)).isoformat(), "event_type": event_type,
           "exposure_id": exposure_id}
    if event_type == "impression":
        row.update(user_id=f"user-{exposure_id}", session_id=f"session-{exposure_id}", prompt_id="p", response_id=f"r-{exposure_id}",
                   model_id="m1", prompt_text="q", response_text=f"answer {exposure_id}", position=0)
    return row


def _write(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def batches(tmp_path: Path) -> dict[str, Path]:
    """base: 2 exposures; killed: 3 exposures, votes on old and new exposures, a rejected row;
    next: 1 exposure. Every id and the file name of the killed batch contain "doomed"."""
    return {
        "base": _write(tmp_path / "in" / "base.jsonl", [_event("base-i1", "x1", 0), _event("base-i2", "x2", 0),
                                                        _event("base-v1", "x1", 1, "thumbs_up")]),
        "killed": _write(tmp_path / "in" / "doomed.jsonl", [
            *[_event(f"doomed-i{k}", f"doomed-x{k}", 2) for k in range(3)],
            _event("doomed-v1", "doomed-x0", 3, "thumbs_down"), _event("doomed-v2", "x2", 3, "thumbs_down"),
            {"event_id": "doomed-bad", "event_type": "impression"},
        ]),
        "next": _write(tmp_path / "in" / "next.jsonl", [_event("next-i1", "x3", 5), _event("next-v1", "x3", 6, "thumbs_up")]),
    }


def _run(wh: Path, *inputs: Path) -> dict:
    return ingest(IngestConfig(inputs=tuple(str(p) for p in inputs), warehouse=str(wh), threads=1))


def _killed_at(point: str, wh: Path, batch: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.run([sys.executable, "-c", _CHILD, point, str(wh), str(batch)], capture_output=True, text=True, env=env,
                           timeout=300)
    assert child.returncode == -signal.SIGKILL, (child.returncode, child.stdout, child.stderr[-2000:])


def _traces(wh: Path) -> list[str]:
    """Every value of the killed batch readable through feedback_etl.io, as 'table: value'."""
    tables = {
        "feedback": read_feedback(wh),
        "feedback_dataset": pl.from_arrow(feedback_dataset(wh).to_table()),
        "events": read_events(wh),
        "rejects": read_rejects(wh),
    }
    found = []
    for name, frame in tables.items():
        for column in frame.columns:
            if frame[column].dtype == pl.String:
                hits = frame.filter(pl.col(column).str.contains("doomed"))[column].to_list()
                found += [f"{name}.{column}: {v}" for v in hits]
    feedback = tables["feedback"].filter(pl.col("exposure_id") == "x2")
    if feedback["observed"].to_list() != [False]:  # the killed batch's down-vote on an old exposure
        found.append("feedback: x2 carries the killed batch's vote")
    return found


@pytest.mark.parametrize("point", ["before_table_commits", "before_manifest"])
def test_an_ingest_killed_before_its_commit_point_leaves_no_trace(tmp_path: Path, batches: dict, point: str) -> None:
    """Catches issue 22 bug 5 as the commit mechanism now stands (Delta tables committed by the
    manifest): a run SIGKILLed with its data files written (before_table_commits) or with its
    Delta versions committed but not the manifest (before_manifest) must leave nothing readable,
    and the next writer must roll those versions back rather than build on them (so the killed
    rows never surface later). Applied as bugs and seen red: readers opening the latest Delta
    version instead of the manifest's; roll_back_uncommitted doing nothing."""
    wh = tmp_path / "wh"
    _run(wh, batches["base"])
    before = (read_feedback(wh), read_events(wh), read_rejects(wh))
    committed = committed_versions(wh)
    _killed_at(point, wh, batches["killed"])
    if point == "before_manifest":  # the premise: the killed run did commit table versions
        assert latest_version(wh, "events") > committed["events"]
    assert _traces(wh) == []
    assert all(a.equals(b) for a, b in zip((read_feedback(wh), read_events(wh), read_rejects(wh)), before))

    _run(wh, batches["next"])
    assert _traces(wh) == []
    reference = tmp_path / "reference"
    _run(reference, batches["base"])
    _run(reference, batches["next"])
    assert read_feedback(wh).equals(read_feedback(reference))
    assert read_events(wh).drop("run_id").equals(read_events(reference).drop("run_id"))
    assert read_rejects(wh).height == read_rejects(reference).height


def test_a_staging_folder_without_the_commit_marker_is_discarded_not_rolled_forward(tmp_path: Path, batches: dict) -> None:
    """Catches issue 22 bug 5 in its original form: crash recovery rolling forward a staging
    folder that has no COMMIT marker (the crash-safe folder swap of `causalrm migrate` and of the
    Parquet-folder layout still uses it). An uncommitted swap's tables must not replace the live
    ones; a committed one (marker present) must."""
    wh = tmp_path / "wh"
    _run(wh, batches["base"])
    other = tmp_path / "other"
    _run(other, batches["killed"])
    before = read_feedback(wh)

    staging = wh / f"{STAGING_PREFIX}20260105T000000000000Z-dead01"
    staging.mkdir()
    for name in ("events", "rejects", "feedback", "manifest.json"):
        (shutil.copytree if (other / name).is_dir() else shutil.copy)(other / name, staging / name)
    actions = recover(wh)
    assert actions == ["discarded unfinished run 20260105T000000000000Z-dead01"]
    assert not staging.exists()
    assert read_feedback(wh).equals(before) and _traces(wh) == []

    # Positive control: the same folder with its marker is a committed swap and is rolled forward.
    staging.mkdir()
    for name in ("events", "rejects", "feedback", "manifest.json"):
        (shutil.copytree if (other / name).is_dir() else shutil.copy)(other / name, staging / name)
    (staging / COMMIT_MARKER).write_text("2026-01-05T00:00:00+00:00")
    assert recover(wh) == ["rolled forward committed run 20260105T000000000000Z-dead01"]
    assert read_feedback(wh).equals(read_feedback(other))


# ---------------------------------------------------------------- found by mutation testing (issue 22)


def test_a_run_writing_several_parts_per_table_commits_them_all(tmp_path: Path) -> None:
    """batch_rows splits a table's rows into several Parquet parts of one run (one folder): every
    part is committed and read back."""
    rows = [_event(f"i{k}", f"x{k}", k / 100) for k in range(2_500)]
    wh = tmp_path / "wh"
    ingest(IngestConfig(inputs=(str(_write(tmp_path / "many.jsonl", rows)),), warehouse=str(wh), threads=1, batch_rows=1_000))
    assert read_events(wh).height == 2_500 and read_feedback(wh).height == 2_500
    assert len(list((wh / "events").rglob("*.parquet"))) >= 3


def test_warehouse_versions_as_of_a_feedback_version_number(tmp_path: Path, batches: dict) -> None:
    """`--as-of N` names a version of the feedback table: the versions of every table that run
    committed come back."""
    from feedback_etl.io import warehouse_versions

    wh = tmp_path / "wh"
    _run(wh, batches["base"])
    first = committed_versions(wh)
    _run(wh, batches["next"])
    assert warehouse_versions(wh, as_of=first["feedback"]) == first
    assert warehouse_versions(wh) == committed_versions(wh) != first


def test_migrate_refuses_a_folder_that_is_not_a_warehouse_and_one_already_migrated(tmp_path: Path, batches: dict) -> None:
    from feedback_etl.warehouse import migrate
    from schemas.errors import WarehouseError

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(WarehouseError, match="not a causalrm warehouse"):
        migrate(empty)
    manifest_only = tmp_path / "manifest_only"
    manifest_only.mkdir()
    (manifest_only / "manifest.json").write_text('{"format_version": 2, "runs": [], "tables": {}}')
    with pytest.raises(WarehouseError, match="nothing to migrate"):
        migrate(manifest_only)
    wh = tmp_path / "wh"
    _run(wh, batches["base"])
    with pytest.raises(WarehouseError, match="nothing to migrate"):
        migrate(wh)
