"""Warehouse state: Delta Lake tables, the manifest that commits them, and the ingest lock (issue 16).

Layout (``docs/warehouse.md``)::

    WH/events/     Delta table: staged, typed, de-duplicated events (``run_id`` a column)
    WH/rejects/    Delta table: every input row not accepted
    WH/feedback/   Delta table: one row per exposure, rebuilt (overwritten) by each run
    WH/manifest.json   the runs, the files they read, and the table versions that form the warehouse

Each table is a Delta Lake table written by ``deltalake`` (delta-rs): a commit is one new JSON file
in ``_delta_log/`` that names the table's data files; it appears atomically, so a reader always
reads one whole version, and old versions stay readable (time travel) until vacuumed.

An ingest run commits its tables one after the other (events, rejects, feedback: each a new Delta
version tagged with the run id) and then commits the *warehouse* by atomically replacing
``manifest.json`` (temp file, fsync, rename), which records the version of every table. The
manifest is the multi-table commit point:

* readers (``feedback_etl.io``) open each table at the version the manifest names, so they see
  one committed warehouse state even while a run is writing, and a run killed at any moment
  leaves the last committed state readable as it is, with no repair step;
* versions a killed run wrote beyond the manifest's are rolled back by the next writer
  (:func:`roll_back_uncommitted`, a Delta ``RESTORE`` to the manifest's version, so history
  keeps both), before it writes anything.

Writers (ingest, vacuum, migrate) are serialised by an exclusive ``flock`` on
``WH/.ingest.lock``; a second one fails at once with :class:`WarehouseError`. The kernel drops the
lock when its process dies. Delta's own optimistic concurrency is not relied on: two appends never
conflict in Delta, yet two runs de-duplicating against the same events must not interleave.

``WH/.ingest-staging-<run>/`` holds a run's scratch files (DuckDB spill, Spark scratch); the next
writer deletes leftovers. Warehouses of the older Parquet-folder layout (before Delta) are
refused with one line saying to run ``causalrm migrate WH`` (:func:`migrate`).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import shutil
import socket
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator

import pyarrow as pa

from feedback_etl.paths import literal_paths
from schemas.errors import ConfigError, WarehouseError

log = logging.getLogger(__name__)

LOCK_NAME = ".ingest.lock"
STAGING_PREFIX = ".ingest-staging-"
COMMIT_MARKER = "COMMIT"
STATE_NAMES: tuple[str, ...] = ("events", "rejects", "feedback", "manifest.json")
DELTA_TABLES: tuple[str, ...] = ("events", "rejects", "feedback")
# 1: Parquet folders swapped by renames; 2: Delta tables committed by the manifest.
MANIFEST_VERSION = 2
RUN_ID_KEY = "causalrm_run_id"
# Rows a version added, in its commit info: a commit of staged files (create_write_transaction)
# carries no operation metrics, so `causalrm history` would have nothing to show.
ROWS_KEY = "causalrm_rows_added"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([hdw])\s*$")
_DURATION_HOURS = {"h": 1, "d": 24, "w": 168}


# ---------------------------------------------------------------- the writers' lock


@contextmanager
def ingest_lock(warehouse: Path) -> Iterator[None]:
    """Hold the warehouse's writer lock (ingest, vacuum, migrate) for the duration of the block.

    Raises
    ------
    WarehouseError : another writer holds the lock.
    """
    import fcntl

    warehouse.mkdir(parents=True, exist_ok=True)
    path = warehouse / LOCK_NAME
    handle = open(path, "a+", encoding="utf-8")
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise WarehouseError(
                f"warehouse is being ingested into by {holder}",
                where=str(warehouse),
                fix="wait for that ingest to finish, then run again (runs into one warehouse are serialised)",
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {_now()}")
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            handle.flush()
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    finally:
        handle.close()


# ---------------------------------------------------------------- staging (scratch) folders


def recover(warehouse: Path) -> list[str]:
    """Finish or discard what an interrupted writer left behind (call with the lock held).

    A staging folder with a ``COMMIT`` marker is an interrupted folder swap (a migration, or an
    ingest of the Parquet-folder layout): it is rolled forward. Any other staging folder is a
    killed run's scratch and is deleted. Returns what was done, one line per folder.
    """
    actions = []
    for staging in sorted(p for p in warehouse.iterdir() if p.name.startswith(STAGING_PREFIX)):
        if (staging / COMMIT_MARKER).exists():
            _roll_forward(warehouse, staging)
            actions.append(f"rolled forward committed run {staging.name.removeprefix(STAGING_PREFIX)}")
        else:
            shutil.rmtree(staging, ignore_errors=True)
            actions.append(f"discarded unfinished run {staging.name.removeprefix(STAGING_PREFIX)}")
    for line in actions:
        log.warning("warehouse %s: %s", warehouse, line)
    return actions


def new_staging(warehouse: Path, run_id: str) -> Path:
    staging = warehouse / f"{STAGING_PREFIX}{run_id}"
    staging.mkdir(parents=True)
    return staging


def discard(staging: Path) -> None:
    """Drop a staging folder that was not committed by a folder swap."""
    if staging.exists() and not (staging / COMMIT_MARKER).exists():
        shutil.rmtree(staging, ignore_errors=True)


def _swap_in(warehouse: Path, staging: Path) -> None:
    """Swap ``staging``'s events, rejects, feedback and manifest.json into place: write the
    ``COMMIT`` marker (fsync'd), then two renames per name; a crash after the marker is rolled
    forward by :func:`recover`. Used by :func:`migrate` only."""
    marker = staging / COMMIT_MARKER
    with open(marker, "w", encoding="utf-8") as handle:
        handle.write(_now())
        handle.flush()
        os.fsync(handle.fileno())
    _fsync_dir(staging)
    _roll_forward(warehouse, staging)


def _roll_forward(warehouse: Path, staging: Path) -> None:
    for name in STATE_NAMES:
        staged, live, old = staging / name, warehouse / name, staging / f"old-{name}"
        if not staged.exists():
            continue
        if live.exists():
            os.replace(live, old)
        os.replace(staged, live)
    _fsync_dir(warehouse)
    shutil.rmtree(staging, ignore_errors=True)


# ---------------------------------------------------------------- manifest


def read_manifest(warehouse: Path) -> dict:
    """``WH/manifest.json`` (an empty one for a new warehouse).

    Raises
    ------
    WarehouseError : the manifest exists but is not readable JSON.
    """
    path = warehouse / "manifest.json"
    if not path.exists():
        return {"format_version": MANIFEST_VERSION, "runs": [], "tables": {}}
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise WarehouseError(
            f"manifest is not readable JSON ({exc})",
            where=str(path),
            fix="restore manifest.json from a backup; it lists which files were ingested",
        ) from exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("runs"), list):
        raise WarehouseError("manifest has no list of runs", where=str(path))
    return manifest


def write_json(path: Path, document: dict) -> None:
    """Write a JSON document atomically: a temp file beside it, fsync'd, renamed over ``path``
    (a reader sees the old document or the new one, never a part)."""
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(document, indent=2, sort_keys=False, default=str) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def committed_versions(warehouse: Path) -> dict[str, int] | None:
    """The table versions the manifest commits; None for a warehouse without a (Delta-era)
    manifest, whose tables are then read at their latest version (e.g. built by ``write_feedback``).
    A table missing from the dict has no committed version yet."""
    path = Path(warehouse) / "manifest.json"
    if not path.exists():
        return None
    manifest = read_manifest(Path(warehouse))
    if manifest.get("format_version", 1) < MANIFEST_VERSION:
        return None
    versions = manifest.get("tables", {}).get("versions", {})
    return {k: int(v) for k, v in versions.items() if v is not None}


# ---------------------------------------------------------------- Delta tables: layout, snapshots


def is_delta_table(path: Path) -> bool:
    return (Path(path) / "_delta_log").is_dir()


def check_layout(warehouse: Path) -> None:
    """Refuse a warehouse of the Parquet-folder layout (before Delta tables).

    Raises
    ------
    WarehouseError : one line saying to run ``causalrm migrate``.
    ConfigError : a path delta-rs cannot open (a ``%XX`` sequence in it).
    """
    warehouse = Path(warehouse)
    _delta_uri(None, warehouse, check_only=True)
    old = [n for n in DELTA_TABLES if (warehouse / n).is_dir() and not is_delta_table(warehouse / n) and any((warehouse / n).iterdir())]
    if old:
        raise WarehouseError(
            f"warehouse has Parquet-folder tables ({', '.join(old)}) of causalrm before Delta Lake",
            where=str(warehouse),
            fix=f"run `causalrm migrate {warehouse}` once (it rewrites them as Delta tables, rows unchanged)",
        )


@dataclass(frozen=True)
class Snapshot:
    """One committed version of a table: its data files (literal paths) and Arrow schema."""

    table: str
    version: int
    files: tuple[Path, ...]
    schema: pa.Schema

    def dataset(self):
        """A ``pyarrow.dataset.Dataset`` over exactly this version's files (no pattern, no listing)."""
        import pyarrow.dataset as ds

        # The table's schema, not the first file's: files of older runs lack columns added since
        # (read as nulls), and both engines' string types read as one.
        return ds.dataset([str(f) for f in self.files], format="parquet", schema=self.schema)


def parse_version(version: int | str | datetime | None) -> int | datetime | None:
    """A Delta version number or an ISO 8601 timestamp (naive means UTC).

    Raises
    ------
    ConfigError : neither.
    """
    if version is None or isinstance(version, (int, datetime)):
        return version.replace(tzinfo=version.tzinfo or timezone.utc) if isinstance(version, datetime) else version
    text = str(version).strip()
    if text.isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(
            f"{version!r} is neither a table version nor an ISO timestamp",
            where="--as-of",
            fix="give a version number from `causalrm history WH` or a time such as 2026-01-05T10:00:00Z",
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def versions_as_of(warehouse: Path, version: int | str | datetime | None, *, table: str = "feedback") -> dict[str, int]:
    """Table versions of the warehouse at ``version`` (a version of ``table``) or at a time (the
    last run the manifest committed by then), or the current ones for None.

    Raises
    ------
    WarehouseError : no run was committed by that time.
    """
    warehouse = Path(warehouse)
    wanted = parse_version(version)
    if wanted is None:
        return dict(committed_versions(warehouse) or {})
    runs = [r for r in read_manifest(warehouse)["runs"] if r.get("table_versions")]
    if isinstance(wanted, int):
        for run in reversed(runs):
            if run["table_versions"].get(table) == wanted:
                return {k: int(v) for k, v in run["table_versions"].items()}
        return {table: wanted}
    by_then = [r for r in runs if datetime.fromisoformat(r["committed_at"]) <= wanted]
    if runs and not by_then:
        raise WarehouseError(
            f"no ingest run was committed by {wanted.isoformat()} (the first was at {runs[0]['committed_at']})",
            where=str(warehouse),
            fix="pick a later time or a version from `causalrm history WH`",
        )
    if by_then:
        return {k: int(v) for k, v in by_then[-1]["table_versions"].items()}
    return {table: wanted}  # a warehouse without manifest history: Delta's own commit times


def snapshot(warehouse: Path, table: str, version: int | str | datetime | None = None) -> Snapshot | None:
    """The committed version of ``table`` (the manifest's, or ``version``), None when the table does not exist.

    Raises
    ------
    WarehouseError : old layout, or the version does not exist (or was vacuumed).
    """
    warehouse = Path(warehouse)
    path = warehouse / table
    check_layout(warehouse)
    if not is_delta_table(path):
        return None
    wanted = parse_version(version)
    if wanted is None:
        committed = committed_versions(warehouse)
        if committed is not None and table not in committed:
            return None  # written by a run that never committed (its first run was killed)
        wanted = None if committed is None else committed[table]
    elif isinstance(wanted, datetime):
        wanted = versions_as_of(warehouse, wanted, table=table).get(table, wanted)
    from deltalake import DeltaTable

    with literal_paths() as links:
        uri = _delta_uri(links, path)
        try:
            delta = DeltaTable(uri, version=wanted if isinstance(wanted, int) else None)
            if isinstance(wanted, datetime):
                delta.load_as_version(wanted)
            files = _data_files(delta, path)
            schema = pa.schema(delta.schema().to_arrow())
            current = delta.version()
        except Exception as exc:  # delta-rs raises DeltaError, OSError or ValueError for a missing version
            raise WarehouseError(
                f"cannot open version {version if version is not None else wanted} of table {table}: {str(exc).splitlines()[0][:200]}",
                where=str(path),
                fix="list the versions with `causalrm history WH` (vacuumed versions cannot be read)",
            ) from exc
    missing = [f for f in files if not f.exists()]
    if missing:
        raise WarehouseError(
            f"version {current} of table {table} lost {len(missing)} data file(s) (e.g. {missing[0].name}): vacuumed",
            where=str(path),
            fix="read a newer version (`causalrm history WH`); `causalrm vacuum` removes files of old versions",
        )
    return Snapshot(table, current, files, schema)


_PERCENT_ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}")


def _delta_uri(links, path: Path, *, check_only: bool = False) -> str:
    """The plain link delta-rs opens a table through (it reads a path as a URL).

    Raises
    ------
    ConfigError : the real path holds a ``%XX`` sequence, which delta-rs decodes even there.
    """
    real = Path(path).resolve()
    if _PERCENT_ESCAPE.search(str(real)):
        raise ConfigError(
            f"the warehouse path {str(real)!r} contains a %XX sequence, which delta-rs (the Delta Lake library) decodes",
            where=str(path),
            fix="rename the folder (or its parent) so that no % is followed by two hex digits",
        )
    return "" if check_only else str(links.folder(path))


def _data_files(delta, path: Path) -> tuple[Path, ...]:
    """The snapshot's data files as paths under ``path`` (delta-rs resolves the link and names
    them by a partly percent-encoded URL of the real folder; the part after the table root is
    our own plain relative path)."""
    from urllib.parse import unquote

    root = delta.table_uri.removeprefix("file://").rstrip("/") + "/"
    files = []
    for uri in delta.file_uris():
        uri = uri.removeprefix("file://")
        if not uri.startswith(root):
            raise WarehouseError(f"data file {uri} lies outside its table", where=str(path))
        files.append(path / unquote(uri[len(root):]))
    return tuple(sorted(files))  # run folders are named by start time: oldest first


def latest_version(warehouse: Path, table: str) -> int | None:
    """The table's newest Delta version (committed by the manifest or not), None when absent."""
    path = Path(warehouse) / table
    if not is_delta_table(path):
        return None
    from deltalake import DeltaTable

    with literal_paths() as links:
        return DeltaTable(_delta_uri(links, path)).version()


# ---------------------------------------------------------------- Delta tables: writing


class TableWrite:
    """One table's share of a run, in two phases: data files first, one Delta commit last.

    ``write(frame)`` writes a Parquet file into ``WH/<table>/<run_id>/`` (a folder no version
    names yet, so no Delta reader sees it); ``adopt(paths)`` takes files an engine wrote there
    itself (Spark). :func:`commit_writes` then commits every table's files (``append`` adds them,
    ``overwrite`` also removes the table's current files) and :meth:`discard` deletes them when
    the run fails instead. Files of a killed run stay unreferenced until ``causalrm vacuum``.
    """

    def __init__(self, warehouse: Path, table: str, run_id: str, *, mode: str, row_group_bytes: int | None = None) -> None:
        if mode not in ("append", "overwrite"):
            raise ValueError(f"mode must be append or overwrite, not {mode!r}")
        self.warehouse, self.table, self.run_id, self.mode = Path(warehouse), table, run_id, mode
        # The most bytes DuckDB's writer gathers into one row group (:meth:`copy`; None: its own
        # default, 122,880 rows whatever their width).
        self.row_group_bytes = row_group_bytes
        self.folder = self.warehouse / table / run_id
        self.files: list[tuple[Path, int]] = []  # (path, rows)
        self.schema: pa.Schema | None = None

    def write(self, table: "pa.Table | pl.DataFrame") -> int:
        """Write one Arrow table or polars frame as the next Parquet part (snappy, as DuckDB
        writes); returns its rows. A polars frame is written by polars itself (no Arrow copy)."""
        import polars as pl
        import pyarrow.parquet as pq

        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"part-{len(self.files):05d}.parquet"
        if isinstance(table, pl.DataFrame):
            # The Arrow types every warehouse write uses (large strings, as polars writes them).
            schema = table.head(0).to_arrow(compat_level=pl.CompatLevel.oldest()).schema
            if self.schema is None or schema == self.schema:
                self.schema = self.schema or schema
                # Snappy, DuckDB's default: about a third faster to write than zstd for ~25% larger files.
                table.write_parquet(path, compression="snappy")
                self.files.append((path, table.height))
                return table.height
            table = table.to_arrow(compat_level=pl.CompatLevel.oldest())
        if self.schema is None:
            self.schema = table.schema
        elif table.schema != self.schema:
            table = table.cast(self.schema)
        pq.write_table(table, path, compression="snappy")
        self.files.append((path, table.num_rows))
        return table.num_rows

    def copy(self, conn, query: str, schema: pa.Schema, params: dict | None = None, *, rows_per_file: int | None = None) -> int:
        """Write the rows of a DuckDB ``query`` as the next Parquet part, straight from the engine
        (``COPY ... TO``: no Arrow or polars copy, memory bounded by DuckDB's limit; issue 19).
        ``schema`` is the Arrow schema to commit (the query's columns cast to the contract's
        types: DuckDB writes plain strings where polars writes large ones, and readers open the
        files with the table's schema, as for Spark's files). Returns the rows written.

        Each writer thread holds a row group in memory until it is full: with ``row_group_bytes``
        a row group closes at that many bytes (wide rows: 122,880 rows of 8 KB texts would be 1 GB).

        ``rows_per_file``: the rows go into as many parts as it takes, in the query's order, each of
        at most that many rows (whole row groups: at least 2,048 rows, DuckDB's smallest row
        group), all from one run of the query."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if rows_per_file is None:
            path = self.folder / f"part-{len(self.files):05d}.parquet"
            target = str(path).replace("'", "''")
            rows = int(conn.execute(f"COPY ({query}) TO '{target}' (FORMAT parquet, COMPRESSION snappy{self._group_bytes()})",
                                    params or {}).fetchone()[0])
            self.files.append((path, rows))
        else:
            rows = self._copy_files(conn, query, params, rows_per_file)
        self.schema = self.schema or schema
        return rows

    def keep(self, files: "Iterable[tuple[Path, int]]") -> None:
        """Committed files of this table, as (path, rows), to carry into this write's version as
        they are, ahead of its own parts: hard-linked into the run's folder (copied where links are
        not possible), so ``vacuum`` of the version that listed them never removes this one's."""
        self.folder.mkdir(parents=True, exist_ok=True)
        kept = []
        for k, (source, rows) in enumerate(files):
            target = self.folder / f"kept-{k:05d}.parquet"
            try:
                os.link(source, target)
            except OSError:
                shutil.copy2(source, target)
            kept.append((target, rows))
        self.files[:0] = kept

    def _copy_files(self, conn, query: str, params: dict | None, rows_per_file: int) -> int:
        """:meth:`copy` with ``rows_per_file``: DuckDB writes the files into a scratch folder, in
        the query's order, and they become the next parts."""
        import pyarrow.parquet as pq

        # A row group holds a multiple of 2,048 rows (DuckDB's vector); a file holds whole row groups.
        group = max(2048, min(rows_per_file, 122_880) // 2048 * 2048)
        folder = self.folder / f"_copy-{len(self.files):05d}"
        out = str(folder).replace("'", "''")
        rows = int(conn.execute(
            f"COPY ({query}) TO '{out}' (FORMAT parquet, COMPRESSION snappy, ROW_GROUP_SIZE {group}, "
            f"ROW_GROUPS_PER_FILE {max(1, rows_per_file // group)}{self._group_bytes()})", params or {},
        ).fetchone()[0])
        # DuckDB names them data_0, data_1, ... in the query's order.
        for written in sorted(folder.glob("data_*.parquet"), key=lambda p: int(p.stem.split("_")[1])):
            part = self.folder / f"part-{len(self.files):05d}.parquet"
            written.rename(part)
            self.files.append((part, pq.ParquetFile(part).metadata.num_rows))
        folder.rmdir()
        return rows

    def _group_bytes(self) -> str:
        return f", ROW_GROUP_SIZE_BYTES {int(self.row_group_bytes)}" if self.row_group_bytes else ""

    def adopt(self, paths: Iterable[Path], schema: pa.Schema) -> int:
        """Take Parquet files already written under :attr:`folder`; returns their rows."""
        import pyarrow.parquet as pq

        self.schema = self.schema or schema
        rows = 0
        for path in sorted(paths):
            count = pq.ParquetFile(path).metadata.num_rows
            self.files.append((Path(path), count))
            rows += count
        return rows

    def set_schema(self, schema: pa.Schema) -> None:
        """The schema to commit when no file was written (an empty table, or an emptying overwrite)."""
        self.schema = self.schema or schema

    @property
    def rows(self) -> int:
        return sum(rows for _, rows in self.files)

    def discard(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def commit_writes(writes: Iterable[TableWrite]) -> dict[str, int]:
    """Commit each table's staged files as one new Delta version; return {table: version}.

    An ``append`` without rows commits nothing (the table keeps its version); a table that does
    not exist yet is created (empty when there are no rows). Empty files are deleted, not committed. The manifest, written after this,
    is what makes the run's versions the warehouse's (module docstring).
    """
    from deltalake import CommitProperties, DeltaTable
    from deltalake.transaction import AddAction, create_table_with_add_actions

    versions: dict[str, int] = {}
    for write in writes:
        path = write.warehouse / write.table
        exists = is_delta_table(path)
        for file, rows in write.files:
            if not rows:  # empty parts (Spark writes one for no rows) are never committed
                file.unlink(missing_ok=True)
        if write.folder.is_dir() and not any(write.folder.rglob("*.parquet")):
            shutil.rmtree(write.folder, ignore_errors=True)
        if write.mode == "append" and write.rows == 0 and (exists or write.schema is None):
            if exists:  # nothing to add (Spark writes one empty file even for no rows): no new version
                versions[write.table] = int(latest_version(write.warehouse, write.table))
            continue
        if write.schema is None:
            raise WarehouseError(f"cannot commit table {write.table}: no rows and no schema", where=str(path))
        actions = [
            AddAction(
                path=file.relative_to(path).as_posix(),
                size=file.stat().st_size,
                partition_values={},
                modification_time=int(file.stat().st_mtime * 1000),
                data_change=True,
                stats=json.dumps({"numRecords": rows}),
            )
            for file, rows in write.files
            if rows
        ]
        note = CommitProperties(custom_metadata={RUN_ID_KEY: write.run_id})
        counted = CommitProperties(custom_metadata={RUN_ID_KEY: write.run_id, ROWS_KEY: write.rows})
        path.mkdir(parents=True, exist_ok=True)
        with literal_paths() as links:
            uri = _delta_uri(links, path)
            if exists:
                delta = DeltaTable(uri)
                current = pa.schema(delta.schema().to_arrow())
                added = [f for f in write.schema if f.name not in current.names]
                if added:  # a newer causalrm writes a column more: widen the table first (older rows read null)
                    from deltalake import Schema

                    delta.alter.add_columns(Schema.from_arrow(pa.schema(added)).fields, commit_properties=note)
                    delta = DeltaTable(uri)
                delta.create_write_transaction(actions, write.mode, write.schema, commit_properties=counted)
            else:
                from deltalake import Schema

                create_table_with_add_actions(uri, Schema.from_arrow(write.schema), actions, mode="error", commit_properties=counted)
            versions[write.table] = DeltaTable(uri).version()
    return versions


def write_table(warehouse: Path, table: str, tables: Iterable[pa.Table], *, mode: str, run_id: str,
                empty_schema: pa.Schema | None = None) -> int:
    """Write and commit one table in one go (:class:`TableWrite` + :func:`commit_writes`); returns the version."""
    write = TableWrite(warehouse, table, run_id, mode=mode)
    try:
        for item in tables:
            write.write(item)
        if empty_schema is not None:
            write.set_schema(empty_schema)
        return commit_writes([write])[table]
    except BaseException:
        write.discard()
        raise


def roll_back_uncommitted(warehouse: Path, manifest: dict) -> list[str]:
    """Undo table versions a killed run wrote after the manifest's (call with the lock held).

    Each such table is restored to the manifest's version (a Delta ``RESTORE``: a new version equal
    to the committed one, so the history keeps both); a table the manifest does not name yet is
    emptied. Returns what was done, one line per table.
    """
    from deltalake import CommitProperties, DeltaTable

    versions = manifest.get("tables", {}).get("versions", {}) if manifest.get("format_version", 1) >= 2 else {}
    # Ingest writes a manifest before its first table commit: with none, the tables were made by hand.
    has_manifest = (Path(warehouse) / "manifest.json").exists()
    actions = []
    for table in DELTA_TABLES:
        path = Path(warehouse) / table
        if not is_delta_table(path):
            continue
        committed = versions.get(table)
        with literal_paths() as links:
            delta = DeltaTable(_delta_uri(links, path))
            latest = delta.version()
            note = CommitProperties(custom_metadata={RUN_ID_KEY: "rollback"})
            if committed is not None and latest > committed:
                delta.restore(committed, commit_properties=note)
                actions.append(f"{table}: versions {committed + 1}..{latest} were never committed by the manifest; restored version {committed}")
            elif committed is None and has_manifest and delta.file_uris():
                delta.delete(commit_properties=note)
                actions.append(f"{table}: written by a run that never committed; emptied")
    for line in actions:
        log.warning("warehouse %s: %s", warehouse, line)
    return actions


def history(warehouse: Path) -> list[dict]:
    """Every version of every table, newest first: table, version, time, operation, run_id, rows
    added, and whether it is the version the manifest commits now."""
    from deltalake import DeltaTable

    warehouse = Path(warehouse)
    check_layout(warehouse)
    committed = committed_versions(warehouse)
    rows = []
    for table in DELTA_TABLES:
        path = warehouse / table
        if not is_delta_table(path):
            continue
        with literal_paths() as links:
            entries = DeltaTable(_delta_uri(links, path)).history()
        latest = max((int(e["version"]) for e in entries), default=None)
        current = latest if committed is None else committed.get(table)
        for entry in entries:
            metrics = entry.get("operationMetrics") or {}
            rows.append({
                "table": table,
                "version": int(entry["version"]),
                "timestamp": datetime.fromtimestamp(entry["timestamp"] / 1000, timezone.utc).isoformat(timespec="milliseconds"),
                "operation": entry.get("operation"),
                "run_id": entry.get(RUN_ID_KEY),
                "rows_added": metrics.get("num_added_rows", metrics.get("numOutputRows", entry.get(ROWS_KEY))),
                "current": current == int(entry["version"]),
            })
    return rows


def parse_duration_hours(text: str) -> float:
    """'7d', '36h', '2w' -> hours (>= 0).

    Raises
    ------
    ConfigError : anything else.
    """
    match = _DURATION.match(str(text))
    if not match:
        raise ConfigError(f"{text!r} is not a duration", where="--older-than", fix="write a number with a unit h, d or w, e.g. 7d")
    return float(match.group(1)) * _DURATION_HOURS[match.group(2)]


def vacuum(warehouse: Path, older_than: str = "7d", *, dry_run: bool = False) -> dict[str, list[str]]:
    """Delete data files that no version newer than ``older_than`` needs (per table); return them.

    Versions older than that can no longer be read (time travel stops there); the versions the
    manifest commits are never touched. Takes the writer lock and first rolls back versions a
    killed run left uncommitted, so their files cannot outlive the committed ones.

    Raises
    ------
    WarehouseError : another writer holds the lock, or no Delta warehouse here.
    """
    from deltalake import DeltaTable

    warehouse = Path(warehouse)
    hours = parse_duration_hours(older_than)
    if not any(is_delta_table(warehouse / t) for t in DELTA_TABLES):
        check_layout(warehouse)
        raise WarehouseError("no Delta tables to vacuum", where=str(warehouse), fix="check the warehouse path")
    removed: dict[str, list[str]] = {}
    with ingest_lock(warehouse):
        check_layout(warehouse)
        roll_back_uncommitted(warehouse, read_manifest(warehouse))
        for table in DELTA_TABLES:
            path = warehouse / table
            if not is_delta_table(path):
                continue
            with literal_paths() as links:
                delta = DeltaTable(_delta_uri(links, path))
                committed = committed_versions(warehouse) or {}
                keep = [committed[table]] if table in committed else None
                files = delta.vacuum(
                    retention_hours=int(hours), dry_run=dry_run, enforce_retention_duration=False, full=True, keep_versions=keep
                )
            removed[table] = sorted(str(f) for f in files)
    return removed


# ---------------------------------------------------------------- migration from Parquet folders


def migrate(warehouse: Path) -> dict[str, int]:
    """Rewrite a Parquet-folder warehouse (before Delta) as Delta tables; return rows per table.

    The tables are written aside into a staging folder (streamed one old file at a time), their
    row counts checked against the old ones, and swapped in with the manifest (format 2, each
    table at version 0) by the crash-safe folder swap; the next writer finishes a swap a crash
    interrupted. Run it while nothing reads the warehouse.

    Raises
    ------
    WarehouseError : locked, not a warehouse, already migrated, or row counts differ.
    """
    import polars as pl
    import pyarrow.parquet as pq

    warehouse = Path(warehouse)
    if not (warehouse / "manifest.json").exists() and not any((warehouse / t).is_dir() for t in DELTA_TABLES):
        raise WarehouseError("not a causalrm warehouse (no manifest.json, no tables)", where=str(warehouse), fix="check the path")
    with ingest_lock(warehouse):
        recover(warehouse)
        old = [t for t in DELTA_TABLES if (warehouse / t).is_dir() and not is_delta_table(warehouse / t)]
        if not old:
            raise WarehouseError("warehouse already stores Delta tables; nothing to migrate", where=str(warehouse))
        manifest = read_manifest(warehouse)
        run_id = "migrate-" + datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        staging = new_staging(warehouse, run_id)
        try:
            rows: dict[str, int] = {}
            versions: dict[str, int] = {}
            for table in DELTA_TABLES:
                source = warehouse / table
                if not source.is_dir():
                    continue
                if is_delta_table(source):
                    shutil.copytree(source, staging / table, symlinks=False)
                    versions[table] = int(latest_version(staging, table) or 0)
                    continue
                files = sorted(p for p in source.rglob("*.parquet") if p.is_file())
                partition = "impression_date" if table == "feedback" else "run_id"

                def frames(files=files, partition=partition) -> Iterator[pa.Table]:
                    for file in files:
                        frame = pl.read_parquet(file, glob=False, hive_partitioning=False)
                        value = file.parent.name.removeprefix(f"{partition}=")
                        if partition not in frame.columns and file.parent.name.startswith(f"{partition}="):
                            frame = frame.with_columns(pl.lit(value).alias(partition))
                        if partition == "impression_date" and frame.schema[partition] == pl.String:
                            frame = frame.with_columns(pl.col(partition).str.to_date("%Y-%m-%d"))
                        yield frame.to_arrow(compat_level=pl.CompatLevel.oldest())

                expected = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
                version = write_table(staging, table, frames(), mode="overwrite", run_id=run_id)
                got = snapshot(staging, table).dataset().count_rows() if version is not None else 0
                if got != expected:
                    raise WarehouseError(f"migrating {table}: {got} rows written, {expected} read", where=str(source))
                rows[table] = got
                versions[table] = int(version or 0)
            manifest = {
                **manifest,
                "format_version": MANIFEST_VERSION,
                "tables": {**manifest.get("tables", {}), "versions": versions},
                "migrated": {"run_id": run_id, "at": _now(), "from_format_version": manifest.get("format_version", 1), "rows": rows},
            }
            write_json(staging / "manifest.json", manifest)
            _swap_in(warehouse, staging)
        finally:
            discard(staging)
    return rows


# ---------------------------------------------------------------- small helpers


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def now_precise() -> str:
    """UTC now with microseconds (a run's ``committed_at``, compared by ``--as-of`` times)."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")

