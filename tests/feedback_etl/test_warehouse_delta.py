"""The warehouse as Delta Lake tables (issue 16): one committed version per read, kills at any
moment, time travel, two writers, history / vacuum / migrate, and literal paths for hostile names."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

import feedback_etl.ingest as ingest_module
from feedback_etl.ingest import IngestConfig, ingest
from feedback_etl.io import feedback_dataset, read_events, read_feedback, read_rejects, table_version
from feedback_etl.warehouse import history, latest_version
from schemas.errors import WarehouseError

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 1, 5, 12, 0, tzinfo=timezone.utc)
# Names every engine used to read as patterns or URLs (DuckDB and Spark globs, delta-rs URLs).
HOSTILE = ["b[c]", "star*", "q?", "{a,b}", "sp ace", "x]y[", "pct%20 #1"]


def _imp(exposure_id: str, minutes: float = 0) -> dict:
    return {
        "event_id": f"imp-{exposure_id}", "event_time": (T0 + timedelta(minutes=minutes)).isoformat(), "event_type": "impression",
        "exposure_id": exposure_id, "user_id": "u1", "session_id": "s1", "prompt_id": "p1", "response_id": f"r-{exposure_id}",
        "model_id": "m1", "prompt_text": "q", "response_text": "a", "position": 0,
    }


def _vote(exposure_id: str, minutes: float) -> dict:
    return {"event_id": f"up-{exposure_id}-{minutes}", "event_time": (T0 + timedelta(minutes=minutes)).isoformat(),
            "event_type": "thumbs_up", "exposure_id": exposure_id}


def _write(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        pl.DataFrame(rows).write_parquet(path)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _run(wh: Path, *inputs: Path, **kwargs) -> dict:
    return ingest(IngestConfig(inputs=tuple(str(p) for p in inputs), warehouse=str(wh), threads=1, **kwargs))


@pytest.fixture
def batches(tmp_path: Path) -> dict[str, Path]:
    return {
        "one": _write(tmp_path / "in" / "one.jsonl", [_imp("x1"), _imp("x2"), _vote("x1", 1), {"event_id": "bad"}]),
        "two": _write(tmp_path / "in" / "two.jsonl", [_imp("x3", 5), _vote("x2", 6), _vote("x3", 7)]),
    }


# ---------------------------------------------------------------- literal paths (DuckDB engine)


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_hostile_file_and_warehouse_names_are_read_literally(tmp_path, fmt):
    """Each hostile file holds its own one exposure; neighbours that any pattern reading of the
    names would match hold others. Warehouses with hostile names sit beside ones their pattern matches."""
    logs = tmp_path / "in"
    neighbours = [_write(logs / f"{n}.{fmt}", [_imp(f"{n}-{k}") for k in range(3)]) for n in ("bc", "starX", "qz", "a", "sp_ace", "xy", "pct")]
    own = {name: _write(logs / f"{name}.{fmt}", [_imp(f"own-{k}")]) for k, name in enumerate(HOSTILE)}
    for plain in ("whh1", "w hAB{x}"):
        _run(tmp_path / plain, *neighbours)
    before = {p: read_feedback(tmp_path / p) for p in ("whh1", "w hAB{x}")}
    for wh_name in ("whh[1]", "w h*?{x}"):
        wh = tmp_path / wh_name
        for name, path in own.items():
            run = _run(wh, path)
            assert run["accepted"] == 1 and run["duplicates"] == 0, (wh_name, name)
        assert sorted(read_feedback(wh)["exposure_id"]) == sorted(f"own-{k}" for k in range(len(HOSTILE)))
        assert sorted(read_events(wh)["source_file"]) == sorted(str(p.resolve()) for p in own.values())
        assert read_rejects(wh).height == 0
    for p, frame in before.items():
        assert read_feedback(tmp_path / p).equals(frame)  # the neighbours were neither read nor written
    # A folder input is enumerated by the project: every file read once, by its own name.
    run = _run(tmp_path / "folder wh[2]", logs)
    rows = {Path(f["path"]).name: f["rows_read"] for f in run["files"]}
    assert rows == {p.name: 1 for p in own.values()} | {p.name: 3 for p in neighbours}


def test_a_warehouse_path_delta_rs_would_decode_is_refused_before_reading(tmp_path, batches):
    from schemas.errors import ConfigError

    with pytest.raises(ConfigError, match="%XX sequence"):
        _run(tmp_path / "wh%20x", batches["one"])
    assert not (tmp_path / "wh%20x" / "feedback").exists()


def test_tmpdir_with_pattern_characters_is_one_clear_error(tmp_path, monkeypatch):
    from feedback_etl.paths import literal_paths
    from schemas.errors import ConfigError

    odd = tmp_path / "tmp[1]"
    odd.mkdir()
    monkeypatch.setenv("TMPDIR", str(odd))
    monkeypatch.setattr("tempfile.tempdir", None)
    with pytest.raises(ConfigError, match="TMPDIR"):
        with literal_paths():
            pass


# ---------------------------------------------------------------- versions and time travel


def test_time_travel_returns_the_exact_earlier_rows(tmp_path, batches):
    wh = tmp_path / "wh"
    _run(wh, batches["one"])
    first, first_version = read_feedback(wh), table_version(wh, "feedback")
    _run(wh, batches["two"])
    second = read_feedback(wh)
    assert not second.equals(first)
    assert read_feedback(wh, version=first_version).equals(first)
    assert read_feedback(wh, version=str(first_version)).equals(first)
    manifest = json.loads((wh / "manifest.json").read_text())
    runs = manifest["runs"]
    assert [r["table_versions"]["feedback"] for r in runs] == [first_version, table_version(wh, "feedback")]
    assert read_feedback(wh, version=runs[0]["committed_at"]).equals(first)
    assert read_feedback(wh, version=runs[1]["committed_at"]).equals(second)
    assert feedback_dataset(wh, version=first_version).count_rows() == first.height
    with pytest.raises(WarehouseError, match="no ingest run was committed by"):
        read_feedback(wh, version="2000-01-01T00:00:00Z")
    with pytest.raises(WarehouseError, match="cannot open version 99 of table feedback"):
        read_feedback(wh, version=99)


def test_feedback_dataset_is_a_stable_snapshot_while_ingests_commit(tmp_path, batches):
    wh = tmp_path / "wh"
    _run(wh, batches["one"])
    dataset = feedback_dataset(wh)
    expected = read_feedback(wh, validate=False)
    _run(wh, batches["two"])
    streamed = pl.from_arrow(dataset.to_table(columns=["exposure_id", "observed"])).sort("exposure_id")
    assert streamed.equals(expected.select("exposure_id", "observed"))


def test_history_and_vacuum(tmp_path, batches):
    wh = tmp_path / "wh"
    _run(wh, batches["one"])
    old = table_version(wh, "feedback")
    _run(wh, batches["two"])
    rows = history(wh)
    feedback = [r for r in rows if r["table"] == "feedback"]
    assert [r["version"] for r in feedback] == [old + 1, old] and [r["current"] for r in feedback] == [True, False]
    assert all(r["run_id"] for r in rows)
    runner = CliRunner()
    from cli import app

    listed = runner.invoke(app, ["history", str(wh), "--table", "feedback"])
    assert listed.exit_code == 0 and listed.output.splitlines()[0].startswith("* feedback  v1")
    dry = runner.invoke(app, ["vacuum", str(wh), "--older-than", "0h", "--dry-run"])
    assert dry.exit_code == 0 and "feedback: would delete 1 file(s)" in dry.output
    assert read_feedback(wh, version=old).height > 0  # a dry run deleted nothing
    stray = wh / "feedback" / "killed-run" / "part-00000.parquet"  # what a kill -9 before the commit leaves
    stray.parent.mkdir()
    shutil.copy(feedback_dataset(wh).files[0], stray)
    done = runner.invoke(app, ["vacuum", str(wh), "--older-than", "0h"])
    assert done.exit_code == 0 and "feedback: deleted 2 file(s)" in done.output
    assert not stray.exists()
    with pytest.raises(WarehouseError, match="vacuumed"):
        read_feedback(wh, version=old)
    assert read_feedback(wh).height == 3
    kept = runner.invoke(app, ["vacuum", str(wh), "--older-than", "7d"])
    assert kept.exit_code == 0 and "feedback: deleted 0 file(s)" in kept.output
    bad = runner.invoke(app, ["vacuum", str(wh), "--older-than", "soon"])
    assert bad.exit_code == 1 and "is not a duration" in bad.output and "Traceback" not in bad.output


# ---------------------------------------------------------------- crashes, readers, writers


@pytest.mark.parametrize("committed_tables", [1, 2, 3])
def test_a_kill_between_table_commits_leaves_the_last_committed_version(tmp_path, batches, monkeypatch, committed_tables):
    """Killed after 1, 2 or 3 of the run's table commits (before the manifest): readers see the
    previous warehouse with no repair step; the next run rolls back and ingests once."""
    wh = tmp_path / "wh"
    _run(wh, batches["one"])
    before = (read_feedback(wh), read_events(wh), read_rejects(wh))
    real = ingest_module.commit_writes

    def commit_some_then_die(writes):
        real(list(writes)[:committed_tables])
        raise KeyboardInterrupt("kill -9")

    monkeypatch.setattr(ingest_module, "commit_writes", commit_some_then_die)
    monkeypatch.setattr(ingest_module, "_undo", lambda *a, **k: None)  # a killed process cleans nothing up
    with pytest.raises(KeyboardInterrupt):
        _run(wh, batches["two"])
    monkeypatch.undo()
    assert all(a.equals(b) for a, b in zip((read_feedback(wh), read_events(wh), read_rejects(wh)), before))
    _run(wh, batches["two"])
    reference = tmp_path / "reference"
    _run(reference, batches["one"])
    _run(reference, batches["two"])
    assert read_feedback(wh).equals(read_feedback(reference))
    assert read_events(wh).drop("run_id").equals(read_events(reference).drop("run_id"))


def test_a_first_run_killed_before_its_manifest_leaves_no_table_to_read(tmp_path, batches, monkeypatch):
    wh = tmp_path / "wh"
    real = ingest_module.write_json
    calls = []

    def die_on_the_real_manifest(path, document):
        calls.append(path)
        if document["runs"]:
            raise KeyboardInterrupt("kill -9")
        real(path, document)

    monkeypatch.setattr(ingest_module, "write_json", die_on_the_real_manifest)
    monkeypatch.setattr(ingest_module, "_undo", lambda *a, **k: None)
    with pytest.raises(KeyboardInterrupt):
        _run(wh, batches["one"])
    monkeypatch.undo()
    assert latest_version(wh, "events") == 0 and len(calls) == 2  # tables committed, manifest not
    for read in (read_feedback, read_events):
        with pytest.raises(WarehouseError, match="warehouse has no"):
            read(wh)
    run = _run(wh, batches["one"])  # empties the orphan tables, then ingests once
    assert run["accepted"] == 3 and read_events(wh).height == 3 and read_rejects(wh).height == 1


_CHILD = """
import sys, time
from feedback_etl.ingest import IngestConfig, ingest
print("ready", flush=True)
start = time.perf_counter()
ingest(IngestConfig(inputs=tuple(sys.argv[2:]), warehouse=sys.argv[1], threads=1))
print(f"done {time.perf_counter() - start:.3f}", flush=True)
"""


def _child(wh: Path, *inputs: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(wh), *map(str, inputs)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


@pytest.fixture(scope="module")
def kill_setup(tmp_path_factory, messy_logs):
    """A base warehouse (messy logs) and a second batch; the reference state after each."""
    root = tmp_path_factory.mktemp("kill")
    later = _write(root / "later.jsonl", [_imp(f"late-{k}", k) for k in range(300)] + [_vote(f"late-{k}", k + 1) for k in range(0, 300, 2)])
    base = root / "base"
    _run(base, messy_logs / "events")
    after = root / "after"
    shutil.copytree(base, after)
    child = _child(after, later)
    out, err = child.communicate(timeout=300)
    assert child.returncode == 0, err
    seconds = float(out.split("done ")[1])
    return {"root": root, "base": base, "later": later, "seconds": seconds,
            "states": {name: (read_feedback(p), read_events(p).drop("run_id")) for name, p in (("before", base), ("after", after))}}


@pytest.mark.slow  # 8 child processes (~30 s on 2 cores); the deterministic kill points above are fast
def test_kill_9_at_random_moments_leaves_a_committed_version(kill_setup):
    """The small version of benchmarks/reliability (60 trials there): 8 ingests killed with
    SIGKILL at random moments; a reader then sees exactly the previous or the new committed
    version, with no repair step, and the next run completes to the new one."""
    rng = random.Random(16)
    root, states = kill_setup["root"], kill_setup["states"]
    seen = {"before": 0, "after": 0}
    for trial in range(8):
        wh = root / f"trial-{trial}"
        shutil.copytree(kill_setup["base"], wh)
        child = _child(wh, kill_setup["later"])
        assert child.stdout.readline().strip() == "ready"
        threading.Event().wait(rng.uniform(0, kill_setup["seconds"] * 1.1))
        child.send_signal(signal.SIGKILL)
        child.communicate(timeout=60)
        feedback, events = read_feedback(wh), read_events(wh).drop("run_id")
        matches = [name for name, (f, e) in states.items() if feedback.equals(f) and events.equals(e)]
        assert len(matches) == 1, f"trial {trial}: a reader saw neither committed version"
        seen[matches[0]] += 1
        _run(wh, kill_setup["later"])
        assert read_feedback(wh).equals(states["after"][0]) and read_events(wh).drop("run_id").equals(states["after"][1])
        shutil.rmtree(wh)
    assert seen["before"] >= 1  # most kills land before the commit; both outcomes are valid


def test_a_reader_looping_during_an_ingest_sees_only_committed_versions(kill_setup):
    wh = kill_setup["root"] / "reader"
    shutil.copytree(kill_setup["base"], wh)
    states = kill_setup["states"]
    child = _child(wh, kill_setup["later"])
    reads = {"before": 0, "after": 0}
    while True:
        running = child.poll() is None
        feedback = read_feedback(wh, validate=False)
        name = next((n for n, (f, _) in states.items() if feedback.equals(f)), None)
        assert name is not None, "a read saw a state that was never committed"
        reads[name] += 1
        if not running:
            break
    _, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    assert reads["before"] >= 1 and reads["after"] >= 1


def test_two_writers_at_once_are_serialised_by_the_lock(tmp_path, batches):
    wh = tmp_path / "wh"
    children = [_child(wh, batches["one"]), _child(wh, batches["two"])]
    outcomes = [c.communicate(timeout=300) for c in children]
    refused = [k for k, c in enumerate(children) if c.returncode != 0]
    for k in refused:
        assert "being ingested into by pid" in outcomes[k][1], outcomes[k][1][-500:]
    assert len(refused) <= 1
    for k in refused:  # the refused writer runs again once the first is done
        _run(wh, batches[("one", "two")[k]])
    runs = json.loads((wh / "manifest.json").read_text())["runs"]
    assert len(runs) == 2
    reference = tmp_path / "reference"
    for run in runs:  # the same files in the order the lock let them in (orphans depend on it)
        _run(reference, Path(run["files"][0]["path"]))
    assert read_feedback(wh).equals(read_feedback(reference))
    assert read_events(wh)["event_id"].is_unique().all() and read_events(wh).height == read_events(reference).height


# ---------------------------------------------------------------- migration from Parquet folders


def _old_layout(source: Path, target: Path) -> None:
    """Write ``source``'s tables the way causalrm before Delta did (hive folders, manifest v1)."""
    target.mkdir()
    for frame, table, key in ((read_events(source), "events", "run_id"), (read_rejects(source), "rejects", "run_id"),
                              (read_feedback(source), "feedback", "impression_date")):
        for (value,), part in frame.partition_by(key, as_dict=True).items():
            folder = target / table / f"{key}={value}"
            folder.mkdir(parents=True)
            # The old writer kept rejects' run_id column (it is in the contract); events' only in the folder name.
            (part if table == "rejects" else part.drop(key)).write_parquet(folder / "part-00000.parquet")
    manifest = json.loads((source / "manifest.json").read_text())
    manifest["format_version"] = 1
    manifest["tables"].pop("versions")
    (target / "manifest.json").write_text(json.dumps(manifest))


def test_an_old_parquet_folder_warehouse_is_refused_then_migrated(tmp_path, batches):
    wh, old = tmp_path / "wh", tmp_path / "old wh[1]"
    _run(wh, batches["one"])
    _old_layout(wh, old)
    for read in (read_feedback, read_events):
        with pytest.raises(WarehouseError, match=r"Parquet-folder tables .* run `causalrm migrate"):
            read(old)
    with pytest.raises(WarehouseError, match="causalrm migrate"):
        _run(old, batches["two"])
    runner = CliRunner()
    from cli import app

    result = runner.invoke(app, ["migrate", str(old)])
    assert result.exit_code == 0, result.output
    assert "feedback 2 rows" in result.output and "rejects 1 rows" in result.output
    assert read_feedback(old).equals(read_feedback(wh))
    assert read_events(old).equals(read_events(wh)) and read_rejects(old).equals(read_rejects(wh))
    again = runner.invoke(app, ["migrate", str(old)])
    assert again.exit_code == 1 and "already stores Delta tables" in again.output
    _run(old, batches["two"])  # ingest carries on; the file ingested before the migration is still skipped
    _run(wh, batches["two"])
    assert read_feedback(old).equals(read_feedback(wh))
    assert _run(old, batches["one"])["files"][0]["status"] == "skipped"


def test_a_snapshot_view_reads_exactly_its_files_with_columns_added_since_as_nulls(tmp_path):
    # The ingest reads a committed version through DuckDB's own Parquet reader (issue 19): each
    # file by its literal name, files of older runs lacking a column read that column as null,
    # a column no file holds is null, and a file beside them that the version does not list is
    # never read.
    import duckdb
    import pyarrow as pa
    import pyarrow.parquet as pq

    from feedback_etl.warehouse import Snapshot

    folder = tmp_path / "wh[1]"
    folder.mkdir()
    old, new = folder / "star*.parquet", folder / "b[c].parquet"
    pq.write_table(pa.table({"event_id": ["a", "b"], "n": pa.array([1, 2], pa.int32())}), old)
    pq.write_table(pa.table({"event_id": ["c"], "n": pa.array([3], pa.int64()), "context": ['{"k": 1}']}), new)
    pq.write_table(pa.table({"event_id": ["stray"], "n": [9]}), folder / "star-stray.parquet")
    snap = Snapshot("events", 2, (old, new), pa.schema([("event_id", pa.string()), ("n", pa.int64()), ("context", pa.string())]))
    conn = duckdb.connect()
    ingest_module._snapshot_view(conn, "v", snap, {"event_id": "VARCHAR", "n": "BIGINT", "context": "VARCHAR", "later": "DOUBLE"})
    rows = conn.execute('SELECT * FROM "v" ORDER BY "event_id"').fetchall()
    assert rows == [("a", 1, None, None), ("b", 2, None, None), ("c", 3, '{"k": 1}', None)]
    assert [r[1] for r in conn.execute('DESCRIBE "v"').fetchall()] == ["VARCHAR", "BIGINT", "VARCHAR", "DOUBLE"]
