"""`causalrm ingest`: raw interaction logs -> staged events, rejects and the feedback table.

The run, step by step (each transform is a file in ``sql/``, run by DuckDB; with ``engine="spark"``
the same files, translated, run by Spark in ``feedback_etl.spark_ingest``, and everything else here
-- preflight, sha256 skipping, lock, staging, commit, manifest -- is shared):

==========================  ====================================================================
read                        ``feedback_etl.sources``: files (or a source adapter) -> ``raw_events``
stg_events_typed            type every row, reason code for those that cannot be accepted
stg_resolution              rules 1, 5 and 6 in one query on key columns (both engines): repeated event_ids,
                            feedback without an impression, a second impression (repeat or conflict);
                            ``sql/reference/`` states each rule in its own file, as the tests' oracle
late_content                (DuckDB, deferred content) the content of the rows rejected after typing, read again
stg_new_events              what this run adds to ``WH/events/``
stg_rejects                 what it adds to ``WH/rejects/``
reconcile                   rows read = accepted + rejected + duplicates, or the run fails (rule 7)
marts/user_splits           each user's split: kept from the committed feedback table, new users balanced in rows
marts/feedback              the feedback table, computed from all events (rules 2-4, history, split);
                            days before the first one this run touches keep their files
write + commit              validate every table on its full data, write aside, swap atomically
==========================  ====================================================================

Privacy hook (issue 9): every table written derives from ``typed_events`` (rejects' payloads
included: typing keeps the raw payload of rejected rows in that table). Pseudonymising
``user_id``/``session_id`` and hashing, dropping or scrubbing the text columns belongs in one
place: ``ingest(..., typed_hook=...)``, run between ``stg_events_typed`` and ``stg_resolution``,
rewrites ``typed_events`` before anything else reads it. On Parquet and CSV inputs the content
columns (``CONTENT_COLUMNS``: texts, the impression's other ids and attributes; and user_id and
source_file) are not kept in ``typed_events`` unless the hook names them in ``hook.columns``; the
events are then written from ``typed_events`` (the key columns and the hook's columns, rewritten)
joined to the other columns read from the input (``Deferred``), and every later step (the mart,
the feedback table's content) reads the events as written: what the hook rewrites is only ever
read from ``typed_events``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import shutil
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterable

import duckdb

from feedback_etl import features, sql_checks, sqlfiles
from feedback_etl.mapping import FieldMapping, load_mapping
from feedback_etl.run_checks import check_run
from feedback_etl.sizes import parse_memory
from feedback_etl.sources import SOURCES, InputFile, discover_inputs, lean_parquet_part, preflight, raw_event_parts
from feedback_etl.sqlfiles import load_sql, run_sql
from feedback_etl.warehouse import (
    LOCK_NAME,
    MANIFEST_VERSION,
    TableWrite,
    check_layout,
    commit_writes,
    committed_versions,
    discard,
    ingest_lock,
    new_staging,
    now_precise,
    read_manifest,
    recover,
    roll_back_uncommitted,
    snapshot,
    write_json,
)
from schemas.errors import ConfigError, InputFileError, ReconciliationError, RejectReason, ResourceError, TableValidationError

log = logging.getLogger(__name__)

_WINDOW = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
# Rewrites the temp table "typed_events" in place; returns what to record in the manifest. A hook
# may name the columns it reads or rewrites as ``hook.columns`` (a set): of CONTENT_COLUMNS,
# user_id and source_file, only those are kept in typed_events for it (deferred_content); without
# the attribute every column is kept.
TypedHook = Callable[[duckdb.DuckDBPyConnection], "dict | None"]
ENGINES: tuple[str, ...] = ("duckdb", "spark")
_MEMORY = re.compile(r"^\s*\d+(\.\d+)?\s*(KB|MB|GB|TB|KiB|MiB|GiB|TiB)\s*$", re.IGNORECASE)

# DuckDB types of the staged events (the empty warehouse reads as a typed, empty relation).
_EVENT_COLUMNS: dict[str, str] = {
    "event_id": "VARCHAR", "event_time": "TIMESTAMP WITH TIME ZONE", "event_type": "VARCHAR",
    "exposure_id": "VARCHAR", "user_id": "VARCHAR", "session_id": "VARCHAR", "prompt_id": "VARCHAR",
    "response_id": "VARCHAR", "model_id": "VARCHAR", "prompt_text": "VARCHAR", "response_text": "VARCHAR",
    "position": "INTEGER", "platform": "VARCHAR", "locale": "VARCHAR", "latency_ms": "DOUBLE",
    "solicited": "BOOLEAN", "source_file": "VARCHAR", "row_number": "BIGINT",
    # Custom context columns' raw values, a JSON object (issue 17; null without features).
    "context": "VARCHAR",
}
# Content columns (issue 19): typed like the others, but on Parquet and CSV inputs the DuckDB
# engine keeps only the key columns in typed_events (event and exposure ids, times, types, file
# and row numbers, reject reasons and payloads) and reads these (and user_id and source_file) from
# the input again, by row identity (file_index, row_number), when it writes the events: the
# resolution rules, the mart and the sorts work on narrow rows, and memory no longer grows with
# the texts (see deferred_content).
CONTENT_COLUMNS: tuple[str, ...] = (
    "session_id", "prompt_id", "response_id", "model_id", "prompt_text", "response_text",
    "position", "platform", "locale", "latency_ms", "solicited",
)
# The feedback table's columns that sql/marts/feedback.sql's final SELECT takes from the exposure's
# impression "i", spelled as there (tests/feedback_etl/test_content_columns.py keeps them equal):
# with deferred content the mart is built without them and they join in when it is written.
MART_CONTENT: dict[str, str] = {
    "session_id": 'i."session_id"',
    "prompt_id": 'i."prompt_id"',
    "response_id": 'i."response_id"',
    "model_id": 'i."model_id"',
    "position": 'CAST(i."position" AS INTEGER)',
    "platform": 'i."platform"',
    "locale": 'i."locale"',
    "latency_ms": 'CAST(i."latency_ms" AS DOUBLE)',
    "prompt_text": 'i."prompt_text"',
    "response_text": 'i."response_text"',
    "response_chars": 'CAST(LENGTH(i."response_text") AS BIGINT)',
    "solicited": 'COALESCE(i."solicited", FALSE)',
}


def parse_window(text: str) -> float:
    """'24h', '90m', '3600s', '2d' or plain seconds -> seconds (> 0).

    Raises
    ------
    ConfigError : anything else.
    """
    match = _WINDOW.match(str(text))
    seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)] if match else 0.0
    if seconds <= 0:
        raise ConfigError(
            f"attribution window {text!r} is not a positive duration",
            where="--window",
            fix="write a number with a unit s, m, h or d, e.g. 24h",
        )
    return seconds


@dataclass(frozen=True, kw_only=True)
class IngestConfig:
    """What to ingest. Mirrors ``causalrm ingest`` options one to one.

    Attributes
    ----------
    inputs : files or folders to read.
    warehouse : the warehouse folder (created when missing).
    source : canonical, oasst, langfuse or ratings.
    mapping : optional TOML file renaming fields / event types / Langfuse scores.
    window : attribution window W, e.g. "24h" (resolution rule 2).
    rating_threshold : ratings source: label = 1 when rating >= this.
    force : re-read files already ingested (same sha256); by default they are skipped.
    memory_limit : DuckDB memory limit (it spills to a temp folder inside the warehouse beyond it).
        It also bounds what one write holds: a feedback part at most a third of it (wide rows,
        e.g. chat-length texts, give parts of fewer than ``batch_rows`` rows), a row group of any
        table a sixteenth (64 MiB at most).
    threads : DuckDB threads, or Spark's local[threads] (None: all cores).
    batch_rows : the most rows of one written Parquet part (a feedback day larger than this is
        split into parts of whole 2,048-row groups: below 2,048, such parts hold 2,048 rows).
    engine : duckdb (default) or spark (``feedback_etl.spark_ingest``: canonical Parquet / JSON
        Lines, no privacy hook; memory_limit becomes the JVM heap when causalrm starts Spark).
    allow_empty : commit a run that accepts no event (else EmptyIngestError, nothing written).
    """

    inputs: tuple[str, ...]
    warehouse: str
    source: str = "canonical"
    mapping: str | None = None
    window: str = "24h"
    rating_threshold: float = 4.0
    force: bool = False
    memory_limit: str = "2GB"
    threads: int | None = None
    batch_rows: int = 1_000_000
    engine: str = "duckdb"
    allow_empty: bool = False
    # Custom context columns (issue 17, docs/features.md): extra raw-event columns become features.
    keep_extra_columns: bool = False
    max_feature_levels: int = 1000
    # ratings source: side-feature files of the users / items (feedback_etl.side_features), kept as features.
    user_features: str | None = None
    item_features: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.inputs, (str, Path)) or not self.inputs:
            raise ConfigError("give at least one input file or folder", where="ingest INPUT")
        object.__setattr__(self, "inputs", tuple(str(p) for p in self.inputs))
        checks = [
            (self.source in SOURCES, f"source must be one of {', '.join(SOURCES)}", "--source"),
            (bool(_MEMORY.match(self.memory_limit)), "memory_limit must look like 2GB or 512MB", "--memory-limit"),
            (self.threads is None or self.threads >= 1, "threads must be >= 1", "--threads"),
            (self.batch_rows >= 1000, "batch_rows must be >= 1000", "ingest config"),
            (0 < self.rating_threshold < float("inf"), "rating_threshold must be a positive number", "--rating-threshold"),
            (self.engine in ENGINES, f"engine must be one of {', '.join(ENGINES)}", "--engine"),
            (self.max_feature_levels >= 2, "max_feature_levels must be >= 2", "--max-feature-levels"),
        ]
        for ok, message, where in checks:
            if not ok:
                raise ConfigError(message, where=where)
        parse_window(self.window)
        if (self.user_features or self.item_features) and self.source != "ratings":
            raise ConfigError(
                f"ingest --user-features / --item-features read side files of a ratings log, not --source {self.source}",
                where="--user-features / --item-features",
                fix="pass side-feature files to `causalrm propensity fit --user-features/--item-features` instead (docs/features.md)",
            )
        if self.engine == "spark" and self.source != "canonical":
            raise ConfigError(
                f"the Spark engine reads canonical logs only, not --source {self.source}",
                where="--engine spark",
                fix="ingest this source with --engine duckdb (its adapters are DuckDB SQL)",
            )

    @property
    def window_seconds(self) -> float:
        return parse_window(self.window)


@dataclass
class _Steps:
    """Logs each step's wall time (kept in the manifest) and drives an optional progress bar."""

    progress: bool
    timings: dict[str, float] = field(default_factory=dict)
    current: str | None = None  # the step running (or that failed)
    _bar: Any = None
    _task: Any = None

    def __enter__(self) -> "_Steps":
        if self.progress:
            from rich.progress import Progress

            self._bar = Progress(transient=True)
            self._bar.start()
            self._task = self._bar.add_task("ingest", total=None)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def run(self, name: str, action: Callable[[], Any]) -> Any:
        self.current = name
        if self._bar is not None:
            self._bar.update(self._task, description=f"ingest: {name}")
        start = time.perf_counter()
        result = action()
        self.timings[name] = round(time.perf_counter() - start, 3)
        log.info("ingest step %s: %.2f s", name, self.timings[name])
        return result


# Engines other than DuckDB are plug-ins: they import this module's contract (IngestConfig, _Steps,
# reconcile, ...) and are looked up by name when asked for, like an entry point, so the core never
# imports an engine back (issue 20).
ENGINE_PLUGINS: dict[str, str] = {"spark": "feedback_etl.spark_ingest"}


def _engine_plugin(engine: str):
    import importlib

    return importlib.import_module(ENGINE_PLUGINS[engine])


def ingest(cfg: IngestConfig, *, progress: bool = False, typed_hook: TypedHook | None = None) -> dict:
    """Ingest ``cfg.inputs`` into ``cfg.warehouse``; return this run's manifest record.

    ``typed_hook(conn)``, when given, runs right after typing, before anything else reads
    ``typed_events``: the one place to pseudonymise ids, hash or drop texts and scrub the
    ``payload`` of rejected rows (issue 9). It rewrites the DuckDB temp table ``typed_events`` in
    place (same columns and types) and returns a JSON-able dict kept in the run's manifest record
    under ``typed_hook`` (e.g. counts of what was redacted; never a secret). A hook that sets
    ``hook.columns`` (the columns it reads or rewrites) lets the other content columns
    (:data:`CONTENT_COLUMNS`, user_id, source_file) stay out of ``typed_events`` on Parquet and
    CSV inputs (they are read from the input when written, never rewritten); a hook without it
    sees every column.

    Raises
    ------
    InputFileError : an input is unreadable, of the wrong format or lacks a required column
        (checked before the warehouse is touched).
    ConfigError : a bad option or mapping file.
    WarehouseError : another ingest holds the warehouse, or its manifest is unreadable.
    ReconciliationError : rows read != accepted + rejected + duplicates (nothing is written).
    TableValidationError : an output table breaks its contract (nothing is written).
    """
    started = datetime.now(timezone.utc)
    warehouse = Path(cfg.warehouse)
    mapping = load_mapping(cfg.mapping)
    files = discover_inputs(cfg.inputs, cfg.source)
    features.check_engine(cfg.engine, mapping, cfg.keep_extra_columns)
    features.check_source(cfg.source, mapping, cfg.keep_extra_columns)
    if cfg.source == "ratings":  # the raw rating and the side files' columns (issue 17)
        mapping = _with_ratings_features(mapping, cfg)
    if cfg.engine == "spark":
        _engine_plugin(cfg.engine).check_supported(cfg, files, typed_hook)
    unknown_columns = preflight(None, files, cfg.source, mapping)  # a DuckDB connection for Parquet files only
    if cfg.keep_extra_columns:
        mapping, _ = features.with_extra_columns(mapping, unknown_columns)
    digests = {f.path: _sha256(f.path) for f in files}
    existed = warehouse.exists()
    try:
        with ingest_lock(warehouse):
            recover(warehouse)
            return _run(cfg, warehouse, files, digests, unknown_columns, mapping, started, progress, typed_hook)
    except BaseException:
        if not existed:
            _remove_if_only_lock(warehouse)
        raise


def _run(
    cfg: IngestConfig,
    warehouse: Path,
    files: list[InputFile],
    digests: dict[Path, str],
    unknown_columns: dict[str, list[str]],
    mapping: FieldMapping,
    started: datetime,
    progress: bool,
    typed_hook: "TypedHook | None" = None,
) -> dict:
    check_layout(warehouse)
    manifest = read_manifest(warehouse)
    # Versions a killed run wrote past the manifest's are undone before anything reads the tables.
    roll_back_uncommitted(warehouse, manifest)
    run_id = started.strftime("%Y%m%dT%H%M%S%fZ") + "-" + uuid.uuid4().hex[:6]
    ingested_before = {
        entry["sha256"]: run["run_id"]
        for run in manifest["runs"]
        for entry in run.get("files", [])
        if entry.get("status") == "ingested"
    }
    to_read: list[InputFile] = []
    file_entries: list[dict] = []
    for f in files:
        digest = digests[f.path]
        prior = ingested_before.get(digest)
        entry = {"path": str(f.path), "sha256": digest, "bytes": f.path.stat().st_size, "format": f.format}
        if prior is not None and not cfg.force:
            entry.update(status="skipped", reason=f"already ingested (same sha256) by run {prior}", rows_read=0)
        else:
            entry.update(status="ingested", unknown_columns=unknown_columns.get(str(f.path), []))
            to_read.append(f)
            ingested_before[digest] = run_id
        file_entries.append(entry)

    window_s = cfg.window_seconds
    tables = manifest.get("tables", {})
    record: dict[str, Any] = {
        "run_id": run_id,
        "started_at": started.isoformat(timespec="seconds"),
        "source": cfg.source,
        "engine": cfg.engine,
        "window": cfg.window,
        "window_seconds": window_s,
        "rating_threshold": cfg.rating_threshold if cfg.source == "ratings" else None,
        "mapping": mapping.to_manifest() if mapping.path else None,
        "force": cfg.force,
        "files": file_entries,
    }
    staging = new_staging(warehouse, run_id)
    # Each table's new files are written aside by the pipeline and committed together below. A row
    # group closes at a sixteenth of the memory limit, 64 MiB at most (only wide rows reach that).
    group_bytes = min(_ROW_GROUP_BYTES, parse_memory(cfg.memory_limit) // 16)
    writes = {
        "events": TableWrite(warehouse, "events", run_id, mode="append", row_group_bytes=group_bytes),
        "rejects": TableWrite(warehouse, "rejects", run_id, mode="append", row_group_bytes=group_bytes),
        "feedback": TableWrite(warehouse, "feedback", run_id, mode="overwrite", row_group_bytes=group_bytes),
    }
    committed = False
    try:
        if not to_read and tables.get("feedback_window_seconds") == window_s and (warehouse / "feedback").exists():
            # Nothing new and the same window: the tables stay exactly as they are.
            record.update(_zero_counts(), feedback={"rebuilt": False, **tables.get("feedback_summary", {})})
            new_tables = dict(tables)
        else:
            with _Steps(progress) as steps:
                if cfg.engine == "spark":
                    counts, new_tables = _engine_plugin(cfg.engine).spark_pipeline(
                        cfg, warehouse, staging, to_read, mapping, run_id, tables, steps, writes=writes
                    )
                else:
                    try:
                        with _connect(cfg, staging / ".duckdb-tmp") as conn:
                            counts, new_tables = _pipeline(
                                conn, cfg, warehouse, staging, to_read, mapping, run_id, tables, steps, typed_hook, writes=writes
                            )
                    except duckdb.OutOfMemoryException as exc:
                        raise ResourceError(
                            f"ingest ran out of memory under --memory-limit {cfg.memory_limit} "
                            f"({str(exc).splitlines()[0].removeprefix('Out of Memory Error: ')})",
                            where=f"ingest step {steps.current}",
                            fix="raise --memory-limit (or lower --threads: each thread holds its own buffers); nothing was committed",
                        ) from exc
            rows = counts.pop("_rows_per_file")
            sources = counts.pop("_source_rows_per_file")
            rejected_by_file, reject_details = counts.pop("_rejected_by_file", {}), counts.pop("_reject_details", {})
            adapter_warnings = counts.pop("_adapter_warnings", [])
            record.update(counts, timings_s=steps.timings)
            for f, entry in zip(files, file_entries):
                if entry["status"] == "ingested":
                    entry["rows_read"] = rows.get(f.index, 0)
                    if sources is not None:
                        entry["source_records"] = sources.get(f.index, 0)
            # No silent zero (issue 18): an empty run raises here, before anything is committed.
            record["warnings"] = check_run(
                record, source=cfg.source, allow_empty=cfg.allow_empty, rejected_by_file=rejected_by_file, reject_details=reject_details
            ) + adapter_warnings
        record["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        # Commit: one Delta version per changed table, then the manifest naming them (the
        # warehouse's commit point: readers follow it; see feedback_etl.warehouse).
        rebuilt = record.get("feedback", {}).get("rebuilt", True)
        if not (warehouse / "manifest.json").exists():
            # A first run: a manifest naming no version yet, so that tables a crash leaves behind
            # are ignored by readers and emptied by the next writer (no manifest = tables made by hand).
            write_json(warehouse / "manifest.json", {"format_version": MANIFEST_VERSION, "runs": [], "tables": {"versions": {}}})
        versions = commit_writes(writes.values()) if rebuilt else {}
        versions = {**(committed_versions(warehouse) or {}), **versions}
        record["table_versions"] = versions
        record["committed_at"] = now_precise()
        manifest = {
            **manifest, "format_version": MANIFEST_VERSION, "runs": [*manifest["runs"], record],
            "tables": {**new_tables, "versions": versions},
        }
        write_json(warehouse / "manifest.json", manifest)
        committed = True
    finally:
        if not committed:
            _undo(warehouse, manifest, writes.values())
        discard(staging)
    log.info("ingest run %s committed into %s", run_id, warehouse)
    return record


def _undo(warehouse: Path, manifest: dict, writes) -> None:
    """A failed run: restore tables it committed to the manifest's versions, delete its files."""
    try:
        roll_back_uncommitted(warehouse, manifest)
    except Exception:  # the next writer rolls back as well; the first error is the one to report
        log.exception("ingest: could not roll back the failed run's table versions yet")
    for write in writes:
        write.discard()


def _zero_counts() -> dict:
    return {
        "rows_read": 0, "accepted": 0, "accepted_by_type": {}, "rejected": {r.value: 0 for r in RejectReason},
        "rejected_total": 0, "duplicates": 0, "late_events": 0,
        "reconciliation": {"rows_read": 0, "accepted": 0, "rejected": 0, "duplicates": 0, "balanced": True},
    }


class _connect:
    """A DuckDB connection with a memory limit, a spill folder and UTC as the session time zone."""

    def __init__(self, cfg: IngestConfig, temp_dir: Path) -> None:
        self.cfg, self.temp_dir = cfg, temp_dir

    def __enter__(self) -> duckdb.DuckDBPyConnection:
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        config = {"memory_limit": self.cfg.memory_limit, "temp_directory": str(self.temp_dir)}
        if self.cfg.threads:
            config["threads"] = self.cfg.threads
        self.conn = duckdb.connect(config=config)
        self.conn.execute("SET TimeZone = 'UTC'")
        self.conn.execute("SET enable_progress_bar = false")
        # The warehouse's files never change once written: their footers are read once, not at
        # every query that binds a view over them.
        self.conn.execute("SET parquet_metadata_cache = true")
        return self.conn

    def __exit__(self, *exc: object) -> None:
        self.conn.close()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _pipeline(
    conn: duckdb.DuckDBPyConnection,
    cfg: IngestConfig,
    warehouse: Path,
    staging: Path,
    files: list[InputFile],
    mapping: FieldMapping,
    run_id: str,
    tables: dict,
    steps: _Steps,
    typed_hook: "TypedHook | None" = None,
    *,
    writes: dict[str, TableWrite],
) -> tuple[dict, dict]:
    """Run the SQL steps, reconcile, validate and write each table's new files (``writes``,
    committed by ``_run``); ``staging`` holds scratch files only."""
    window = timedelta(seconds=cfg.window_seconds)
    steps.run("register", lambda: register_warehouse_events(conn, warehouse))
    previous_feedback = snapshot(warehouse, "feedback")  # its users keep their split; read before this run writes
    parts, source_relations = steps.run(
        "read", lambda: raw_event_parts(conn, files, cfg.source, mapping, rating_threshold=cfg.rating_threshold,
                                        side_tables=_side_tables(cfg))
    )
    # Content columns read from the input when writing, not kept in typed_events (issue 19).
    deferred = deferred_content(cfg, files, mapping, typed_hook) if len(parts) == len(files) else Deferred()
    typing_parts = None
    if deferred.columns and typed_hook is None:
        # Parquet files of long texts are typed without them: a rejected row's payload (the only
        # thing that reads them) is built afterwards for those rows alone (_late_content). Not with
        # a privacy hook, whose scrubbing of rejected payloads runs on what typing built.
        typing_parts = [lean_parquet_part(conn, f, mapping) or part for f, part in zip(files, parts)]
    hook_report = stage(conn, parts, run_id, files=files, steps=steps, typed_hook=typed_hook, deferred=deferred,
                        typing_parts=typing_parts)

    if _has_relation(conn, "new_events"):
        counts = steps.run("reconcile", lambda: reconcile(conn, source_relations))
        # new_events is a table (custom context columns): free the typed copy before the mart.
        conn.execute('DROP TABLE "typed_events"')
    else:
        # The rows read are counted first; the accepted ones once only they are left in
        # typed_events, where counting them is a plain scan rather than new_events' anti-joins.
        read = _rows_per_file(conn)
        steps.run("keep_accepted", lambda: _keep_accepted_only(conn, deferred))
        counts = steps.run("reconcile", lambda: reconcile(conn, source_relations, rows_per_file=read))
    # With deferred content, every step up to the writes reads key columns only: the warehouse's
    # content columns are left out too (read where the feedback table is written).
    context = '"context"'
    earlier = f'SELECT {_event_select(deferred, context=context)} FROM "warehouse_events"' if deferred.columns else 'SELECT * FROM "warehouse_events"'
    conn.execute(f'CREATE OR REPLACE TEMP VIEW "all_events" AS {earlier} UNION ALL SELECT * FROM "new_events"')
    counts["late_events"] = steps.run(
        "stg_late_events", lambda: run_sql(conn, "staging/stg_late_events", {"window": window}).fetchall()[0][0]
    )

    def write_events() -> int:
        # Every row checked in SQL against the StagedEvent contract (sql_checks: the same rules as
        # the pandera model, without importing pandera), then written by DuckDB itself (issue 19).
        # The schema of an empty batch: the first run creates the table even when it accepts nothing.
        full = "new_events"
        if deferred.columns:  # the accepted rows with their content, read from the input again
            conn.execute(f'CREATE OR REPLACE TEMP VIEW "new_events_full" AS {_events_full(deferred)}')
            full = "new_events_full"
        select, schema = _contract_select(conn, full, "events", run_id=run_id)
        writes["events"].set_schema(schema)
        if counts["accepted"] == 0:
            sql_checks.validate_relation(conn, full, "events")
            return 0
        _check_unique(conn, "new_events", "event_id", "events")
        if not deferred.columns:  # with deferred content, the files are checked as written (below)
            sql_checks.validate_relation(conn, full, "events", skip_unique=True)
        # One part per batch_rows rows of the table under new_events (a rowid range: the scan
        # reads only that range), so a part holds at most batch_rows events; empty parts are dropped.
        base, projection = ('"new_events"', "*") if _has_relation(conn, "new_events") else ('"typed_events"', _ACCEPTED)
        end = int(conn.execute(f"SELECT COALESCE(MAX(rowid), -1) + 1 FROM {base}").fetchone()[0])
        written = 0
        for low in range(0, end, cfg.batch_rows):
            within = f"rowid >= {low} AND rowid < {low + cfg.batch_rows}"
            if deferred.columns:  # the content of the files holding this range's rows only
                files_in = [int(k) for (k,) in conn.execute(f'SELECT DISTINCT "file_index" FROM "typed_events" WHERE {within}').fetchall()]
                part = f'{_events_full(deferred, files_in)} WHERE "t".{within}'
            else:
                part = f'SELECT {projection} FROM {base} WHERE {within}'
            written += writes["events"].copy(conn, f'SELECT {select} FROM ({part}) AS "new_events"', schema, {"run_id": run_id})
        if written != counts["accepted"]:
            raise TableValidationError("events", 1, f"{written} rows written for {counts['accepted']} accepted events")
        if deferred.columns:
            _validate_written(conn, writes["events"], "events")
        return written

    def write_rejects() -> int:
        # Checked in SQL on every row, then written by DuckDB itself, as the events are (issue 19).
        sql_checks.validate_relation(conn, "rejects", "rejects")
        select, schema = _contract_select(conn, "rejects", "rejects")
        writes["rejects"].set_schema(schema)
        return _write_rejects(conn, writes["rejects"], select, schema, counts["rejected_total"], cfg.batch_rows)

    steps.run("write_events", write_events)
    steps.run("write_rejects", write_rejects)
    if deferred.columns:
        # From here on this run's events are read as written (a Parquet scan of the key columns, as
        # for earlier runs'), not from typed_events: its memory is freed before the mart (issue 19).
        if not _written_view(conn, writes["events"], "written_events"):
            conn.execute('CREATE OR REPLACE TEMP VIEW "written_events" AS SELECT * FROM "warehouse_events" WHERE FALSE')
        keys = _event_select(Deferred(CONTENT_COLUMNS), context='"context"')
        conn.execute(
            f'CREATE OR REPLACE TEMP VIEW "all_events" AS SELECT {keys} FROM "warehouse_events" '
            f'UNION ALL SELECT {keys} FROM "written_events"'
        )
        conn.execute('DROP TABLE "typed_events"')
    # Each user's split, balanced in rows; users of the committed feedback table keep theirs (issue 15).
    steps.run("marts/user_splits", lambda: build_user_splits(conn, previous_feedback))
    mart_columns: list[str] = []
    if deferred.columns:  # the mart on key columns; the impressions' content joins in when it is written
        mart_columns = steps.run("marts/feedback", lambda: _narrow_mart(conn, window))
    else:
        steps.run("marts/feedback", lambda: run_sql(conn, "marts/feedback", {"window": window}, into="feedback_mart"))
    wanted = features.resolve_features(mapping, tables.get("features"))
    kept, feature_warnings = steps.run(
        "features", lambda: features.add_feature_columns(conn, wanted, max_levels=cfg.max_feature_levels)
    )
    types = {name: spec["type"] for name, spec in kept.items()}
    totals = conn.execute('SELECT COUNT(*) FROM "all_events"').fetchone()[0]
    content = None
    if deferred.columns:  # each impression's content: from the events files, this run's as just written
        content = lambda frame: _feedback_full(conn, mart_columns, frame)  # noqa: E731
    # Days before the first one this run's events touch are as committed: their files are kept
    # (issue 19: a daily run no longer rewrites the whole history).
    unchanged, kept_warnings, fingerprint = None, [], _mart_fingerprint(window)
    if not types and not cfg.force:
        unchanged = steps.run("feedback_unchanged",
                              lambda: _unchanged_days(conn, previous_feedback, tables, writes["events"], fingerprint, kept_warnings))
    # Nothing reads the events past this point: free their memory for the feedback table's sort (issue 19).
    for table in ("typed_events", "new_events"):
        if _has_relation(conn, table):
            conn.execute(f'DROP TABLE "{table}"')
    summary = steps.run("write_feedback", lambda: _write_feedback(conn, writes["feedback"], cfg.batch_rows, types, content,
                                                                  memory_bytes=parse_memory(cfg.memory_limit), unchanged=unchanged))

    new_tables = {
        "events": int(totals),
        "rejects": int(tables.get("rejects", 0)) + counts["rejected_total"],
        "feedback": summary["exposures"],
        "feedback_window_seconds": cfg.window_seconds,
        "feedback_summary": summary,
        "feedback_fingerprint": fingerprint,
        "features": {name: {"type": spec["type"], "source": spec["source"]} for name, spec in kept.items()},
    }
    counts["feedback"] = {"rebuilt": True, **summary}
    if unchanged is not None:
        counts["feedback"].update(kept_before=unchanged.first_day.isoformat(), kept_rows=unchanged.rows)
    counts["features"] = kept
    counts["_adapter_warnings"] = [*counts.get("_adapter_warnings", []), *feature_warnings, *kept_warnings]
    if hook_report is not None:
        counts["privacy"] = hook_report
    return counts, new_tables


def _mart_fingerprint(window: timedelta) -> str:
    """What a committed feedback row depends on besides the events: the marts' SQL, the table's
    contract and the attribution window. A run whose fingerprint differs from the one the manifest
    recorded rebuilds every day (:func:`_unchanged_days`)."""
    digest = hashlib.sha256()
    for name in ("marts/feedback", "marts/user_splits"):
        digest.update(load_sql(name).encode())
    digest.update(",".join(sql_checks.contract_columns("feedback")).encode())
    digest.update(str(window.total_seconds()).encode())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class _UnchangedDays:
    """The committed feedback files holding every row dated before ``first_day`` (and no other):
    ``files`` as (path, rows), ``rows`` in all."""

    files: tuple[tuple[Path, int], ...]
    first_day: Any
    rows: int


def _unchanged_days(conn: duckdb.DuckDBPyConnection, previous: Any, tables: dict, events: TableWrite,
                    fingerprint: str, warnings: list[str]) -> _UnchangedDays | None:
    """The days of the committed feedback table (``previous``, a snapshot) that this run leaves as
    they are, or None to rewrite every day.

    A feedback row depends on its exposure's events, its user's split and its user's earlier
    impressions and votes (sql/marts/feedback.sql). This run's accepted events (``events``, as
    written) touch exposures; a touched exposure dated d changes its own row and rows of its user
    dated d or later, and a new user's rows all lie on or after its first (new) impression. So
    every row dated before the earliest touched exposure's impression_date is what the committed
    table holds, and the files holding only such rows are kept. Not when the marts' SQL, the
    contract or the window changed (``fingerprint``, this run's :func:`_mart_fingerprint`), nor
    with custom feature columns (the caller), nor when the files' dates are unknown or their row count differs from the mart's
    for those days (a line in ``warnings``, kept in the run's manifest record)."""
    if previous is None or not previous.files or tables.get("feedback_fingerprint") != fingerprint:
        return None
    if sorted(previous.schema.names) != sorted(sql_checks.contract_columns("feedback")):
        return None
    touched = None
    if _written_view(conn, events, "run_events"):
        touched = conn.execute(
            'SELECT MIN("impression_date") FROM "feedback_mart" WHERE "exposure_id" IN (SELECT "exposure_id" FROM "run_events")'
        ).fetchone()[0]
    spans = [(path, *_date_span(path)) for path in previous.files]
    if any(span[1] is None for span in spans):
        return None
    # No exposure touched: every day is kept. Else a file holding a rewritten day is rewritten
    # whole, so the first rewritten day moves back to its first day, until no kept file holds a
    # day from there on.
    first_day = touched if touched is not None else max(last for _, _, last, _ in spans) + timedelta(days=1)
    while (earlier := min((first for _, first, last, _ in spans if last >= first_day), default=first_day)) < first_day:
        first_day = earlier
    files = tuple((path, rows) for path, _, last, rows in spans if last < first_day)
    if not files:
        return None
    rows = sum(n for _, n in files)
    mart_rows = conn.execute('SELECT COUNT(*) FROM "feedback_mart" WHERE "impression_date" < $day', {"day": first_day}).fetchone()[0]
    if rows != mart_rows:
        warnings.append(f"feedback: the committed files hold {rows} rows dated before {first_day}, the events give {mart_rows}: "
                        "every day was rewritten")
        log.warning(warnings[-1])
        return None
    return _UnchangedDays(files, first_day, rows)


def _date_span(path: Path) -> tuple[Any, Any, int]:
    """(first, last) impression_date of a feedback file from its Parquet statistics (None, None
    when a row group lacks them), and its rows."""
    import pyarrow.parquet as pq

    with open(path, "rb") as handle:  # a file object: the name is never parsed as a URI
        meta = pq.ParquetFile(handle).metadata
    column = meta.schema.names.index("impression_date")
    first = last = None
    for k in range(meta.num_row_groups):
        stats = meta.row_group(k).column(column).statistics
        if stats is None or not stats.has_min_max:
            return None, None, meta.num_rows
        first = stats.min if first is None else min(first, stats.min)
        last = stats.max if last is None else max(last, stats.max)
    return first, last, meta.num_rows


def _side_tables(cfg: IngestConfig) -> list:
    if cfg.source != "ratings":
        return []
    from feedback_etl.side_features import read_side_tables  # numpy and polars: the ratings source only

    return read_side_tables(cfg.user_features, cfg.item_features)


def _with_ratings_features(mapping: FieldMapping, cfg: IngestConfig) -> FieldMapping:
    """``mapping`` plus the ratings source's feature columns: ``rating`` (the outcome column) and the
    side files' columns (read here first, so a bad file fails before the warehouse is touched)."""
    from dataclasses import replace
    from types import MappingProxyType

    from feedback_etl.sources import ratings_features

    tables = _side_tables(cfg)
    origin = {name: table.path for table in tables for name in table.types}
    added = {name: (kind, origin.get(name, "ratings adapter")) for name, kind in ratings_features(tables).items()}
    return replace(mapping, features=MappingProxyType({**mapping.features, **added}))


def stage(
    conn: duckdb.DuckDBPyConnection,
    parts: list[str],
    run_id: str,
    *,
    files: list[InputFile] | None = None,
    steps: _Steps | None = None,
    typed_hook: TypedHook | None = None,
    deferred: "Deferred | None" = None,
    typing_parts: list[str] | None = None,
) -> dict | None:
    """Run the staging transforms over the slices of ``raw_events`` (needs ``warehouse_events``
    and ``event_type_map``): typed_events, duplicates, impression_losers, orphans, new_events,
    rejects -- everything reconciliation counts. Returns what ``typed_hook`` returned.

    With ``deferred`` columns (one slice per file of ``files``), typed_events keeps every column
    but those, and each slice stays readable as the view ``raw_input_<file_index>``; new_events
    has them null (they are joined in when the events are written). ``typing_parts``, when given,
    are the slices typing reads instead of ``parts`` (the same rows; a null payload where the
    deferred content builds it later)."""
    steps = steps or _Steps(progress=False)
    files = files or []
    deferred = deferred or Deferred()
    excluded = ", ".join(f'"{c}"' for c in deferred.columns)
    # With deferred content: the key columns (and those the hook reads) only.
    typing = f'SELECT * EXCLUDE ({excluded}) FROM (\n{sqlfiles.load_sql("staging/stg_events_typed")}\n) AS "typed"' if excluded else ""

    def type_events() -> None:
        # One pass per slice of raw_events (one per canonical file), all into one typed table.
        for k, part in enumerate(parts):
            conn.execute(f'CREATE OR REPLACE TEMP VIEW "raw_events" AS {typing_parts[k] if typing_parts else part}')
            if deferred.columns:
                view = _raw_view(files[k].index)
                conn.execute(f"CREATE OR REPLACE TEMP VIEW {view} AS {part}")
                head = f'SELECT "file_index", "source_file" FROM {view} LIMIT 1'
                conn.execute(f'INSERT INTO "input_files" {head}' if k else f'CREATE OR REPLACE TEMP TABLE "input_files" AS {head}')
            try:
                if typing:
                    conn.execute(("INSERT INTO \"typed_events\"\n" if k > 0 else "CREATE OR REPLACE TEMP TABLE \"typed_events\" AS\n") + typing)
                else:
                    run_sql(conn, "staging/stg_events_typed", into="typed_events", append=k > 0)
                features.capture_context(conn, append=k > 0)  # custom context columns (issue 17)
            except duckdb.OutOfMemoryException:
                raise  # not the file's fault: _run names the memory limit
            except duckdb.Error as exc:
                where = str(files[k].path) if len(parts) == len(files) else ", ".join(str(f.path) for f in files[:3])
                raise InputFileError(
                    f"cannot read input: {str(exc).splitlines()[0]}",
                    where=where or "input",
                    fix="check the file is complete and in the format its suffix says",
                ) from exc

    steps.run("stg_events_typed", type_events)
    hook_report = steps.run("typed_hook", lambda: typed_hook(conn)) if typed_hook is not None else None
    if deferred.columns:
        _content_views(conn, deferred)
    # Rules 1, 5 and 6 in one pass over the key columns (issue 19), on both engines; the three files
    # it replaces (stg_duplicates, stg_impression_losers, stg_orphans) give the same rows (tested).
    steps.run("stg_resolution", lambda: _resolve(conn))
    if deferred.columns:
        # a slice other than the file's own part is a lean one: its rejected rows lack a payload
        lean = typing_parts is not None and any(t is not p for t, p in zip(typing_parts, parts))
        steps.run("late_content", lambda: _late_content(conn, deferred, lean))
    # A view over typed_events (issue 19): the accepted rows are not copied. With custom context
    # columns they are materialised once, with their context column (features.attach_context).
    new_events = _staging_sql("staging/stg_new_events", deferred)
    steps.run("stg_new_events", lambda: conn.execute('CREATE OR REPLACE TEMP VIEW "new_events" AS ' + new_events))
    steps.run("context", lambda: _attach_context(conn, new_events))
    if deferred.columns:
        rejects = _staging_sql("staging/stg_rejects", deferred)
        steps.run("stg_rejects", lambda: conn.execute('CREATE OR REPLACE TEMP TABLE "rejects" AS\n' + rejects, {"run_id": run_id}))
    else:
        steps.run("stg_rejects", lambda: run_sql(conn, "staging/stg_rejects", {"run_id": run_id}, into="rejects"))
    return hook_report


def _resolve(conn: duckdb.DuckDBPyConnection) -> None:
    """The table ``resolution`` (sql/staging/stg_resolution.sql) and, over it, the views
    ``duplicates``, ``impression_losers`` and ``orphans`` with the columns of their own SQL files."""
    # The content of contested impressions: typed_events itself unless ingest.stage made the view.
    if not conn.execute("SELECT COUNT(*) FROM duckdb_views() WHERE view_name = 'typed_content'").fetchone()[0]:
        conn.execute('CREATE OR REPLACE TEMP VIEW "typed_content" AS SELECT * FROM "typed_events"')
    run_sql(conn, "staging/stg_resolution", into="resolution")
    for view, rule, columns in (
        ("duplicates", "duplicate", '"file_index", "row_number", "event_id"'),
        ("impression_losers", "impression_loser", '"file_index", "row_number", "event_id", "exposure_id", "same_content"'),
        ("orphans", "orphan", '"file_index", "row_number", "event_id", "exposure_id"'),
    ):
        conn.execute(f'CREATE OR REPLACE TEMP VIEW "{view}" AS SELECT {columns} FROM "resolution" WHERE "rule" = \'{rule}\'')


def register_warehouse_events(conn: duckdb.DuckDBPyConnection, warehouse: Path) -> None:
    """``warehouse_events``: the events earlier runs accepted (read-only; we hold the lock), over
    exactly the committed version's files (:func:`_snapshot_view`)."""
    events = snapshot(warehouse, "events")
    if events is not None and events.files:
        # A table written before custom features (issue 17) has no context column: null there.
        _snapshot_view(conn, "warehouse_events", events, _EVENT_COLUMNS)
    else:
        nulls = ", ".join(f'CAST(NULL AS {kind}) AS "{name}"' for name, kind in _EVENT_COLUMNS.items())
        conn.execute(f'CREATE OR REPLACE TEMP VIEW "warehouse_events" AS SELECT {nulls} WHERE FALSE')


def _parquet_listing(paths: "Iterable[str | Path]") -> str:
    """A DuckDB list literal of ``paths`` as plain links (``paths.engine_file``): read_parquet
    expands patterns, and a warehouse or input name may hold ``*`` or ``[``."""
    from feedback_etl.paths import engine_file

    return "[" + ", ".join("'" + engine_file(path).replace("'", "''") + "'" for path in paths) + "]"


def _snapshot_view(conn: duckdb.DuckDBPyConnection, view: str, table: Any, columns: dict[str, str]) -> None:
    """The temp view ``view`` over a committed table version's files (``warehouse.Snapshot``):
    ``columns`` (name -> DuckDB type) cast, one that no file holds read as null.

    The files are a literal list of plain links (``paths.engine_file``), so no warehouse name is
    ever read as a pattern (issue 16), read by DuckDB's own Parquet reader: its memory counts
    against the limit and the feedback write's date bounds prune row groups. A registered
    pyarrow dataset did neither (issue 19: an ingest into a warehouse of 10M events peaked at
    3.4 GB under a 2GB limit, and its feedback write took 65 CPU s). ``union_by_name``: files of
    older runs lack columns added since."""
    source = f"read_parquet({_parquet_listing(table.files)}, union_by_name = true)"
    present = {row[0] for row in conn.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()}
    select = ", ".join(f'CAST({sql_checks.quote_identifier(name) if name in present else "NULL"} AS {kind}) AS "{name}"' for name, kind in columns.items())
    conn.execute(f'CREATE OR REPLACE TEMP VIEW "{view}" AS SELECT {select} FROM {source}')


def build_user_splits(conn: duckdb.DuckDBPyConnection, feedback: Any = None) -> None:
    """The temp table ``user_splits`` (sql/marts/user_splits.sql) over ``all_events``: the users of
    ``feedback`` (the committed feedback table's ``warehouse.snapshot``, None on a first run) keep
    their split (``previous_splits``), new users are assigned balanced in rows."""
    if feedback is not None and feedback.files:
        _snapshot_view(conn, "previous_feedback_files", feedback, {"user_id": "VARCHAR", "split": "VARCHAR"})
        conn.execute('CREATE OR REPLACE TEMP VIEW "previous_splits" AS SELECT DISTINCT "user_id", "split" FROM "previous_feedback_files"')
    else:
        conn.execute(
            'CREATE OR REPLACE TEMP VIEW "previous_splits" AS '
            'SELECT CAST(NULL AS VARCHAR) AS "user_id", CAST(NULL AS VARCHAR) AS "split" WHERE FALSE'
        )
    run_sql(conn, "marts/user_splits", into="user_splits")


def _rows_per_file(conn) -> dict[int, int]:
    """Rows of ``typed_events`` (every input row of this run) by ``file_index``."""
    return {int(k): int(v) for k, v in conn.execute('SELECT "file_index", COUNT(*) FROM "typed_events" GROUP BY 1').fetchall()}


def reconcile(conn: duckdb.DuckDBPyConnection, source_relations: list[str], *, rows_per_file: dict[int, int] | None = None) -> dict:
    """Rule 7: rows read = accepted + rejected + duplicates, else ReconciliationError.

    ``rows_per_file``: the rows read by file, counted before typed_events lost the rows that are
    not accepted (:func:`_keep_accepted_only`); by default counted here."""

    def scalar(sql: str) -> int:
        return int(conn.execute(sql).fetchone()[0])

    if rows_per_file is None:
        rows_per_file = _rows_per_file(conn)
    rows_read = sum(rows_per_file.values())
    # One pass over the accepted rows gives both their number and their types.
    by_type = dict(conn.execute('SELECT "event_type", COUNT(*) FROM "new_events" GROUP BY 1 ORDER BY 1').fetchall())
    accepted = int(sum(by_type.values()))
    duplicates = scalar('SELECT COUNT(*) FROM "duplicates"') + scalar(
        'SELECT COUNT(*) FROM "impression_losers" WHERE "same_content"'
    )
    rejected = {r.value: 0 for r in RejectReason}
    for reason, n in conn.execute('SELECT "reason", COUNT(*) FROM "rejects" GROUP BY "reason"').fetchall():
        rejected[reason] = int(n)
    rejected_total = sum(rejected.values())
    balanced = rows_read == accepted + rejected_total + duplicates
    reconciliation = {
        "rows_read": rows_read, "accepted": accepted, "rejected": rejected_total,
        "duplicates": duplicates, "balanced": balanced,
    }
    if not balanced:
        raise ReconciliationError(
            f"rows read ({rows_read}) != accepted ({accepted}) + rejected ({rejected_total}) + duplicates ({duplicates})",
            where="ingest reconciliation",
            fix="this is a bug in the ETL; report it with the input files",
        )
    # Per file and reason, with one example detail per reason: what run_checks judges (issue 18).
    rejected_by_file: dict[str, dict[str, int]] = {}
    for source_file, reason, n in conn.execute('SELECT "source_file", "reason", COUNT(*) FROM "rejects" GROUP BY 1, 2').fetchall():
        rejected_by_file.setdefault(str(source_file), {})[str(reason)] = int(n)
    reject_details = {str(r): str(d) for r, d in conn.execute('SELECT "reason", MIN("detail") FROM "rejects" GROUP BY 1').fetchall()}
    adapter_warnings = [str(m) for (m,) in conn.execute('SELECT "message" FROM "adapter_warnings"').fetchall()] if _has_relation(
        conn, "adapter_warnings") else []
    source_rows = None
    if source_relations:
        union = " UNION ALL ".join(f'SELECT "file_index" FROM "{name}"' for name in source_relations)
        source_rows = dict(conn.execute(f"SELECT \"file_index\", COUNT(*) FROM ({union}) GROUP BY 1").fetchall())
    return {
        "rows_read": rows_read,
        "accepted": accepted,
        "accepted_by_type": {k: int(v) for k, v in by_type.items()},
        "rejected": rejected,
        "rejected_total": rejected_total,
        "duplicates": duplicates,
        "reconciliation": reconciliation,
        "_rows_per_file": rows_per_file,
        "_source_rows_per_file": None if source_rows is None else {int(k): int(v) for k, v in source_rows.items()},
        "_rejected_by_file": rejected_by_file,
        "_reject_details": reject_details,
        "_adapter_warnings": adapter_warnings,
    }


def _keep_accepted_only(conn: duckdb.DuckDBPyConnection, deferred: "Deferred | None" = None) -> None:
    """Once reconciled, delete from ``typed_events`` every row ``stg_new_events`` leaves out (the
    same predicates), so that the view ``new_events`` becomes a plain projection of it: each of its
    later scans (validation, write, the mart) skips the anti-joins (issue 19)."""
    conn.execute(
        """DELETE FROM "typed_events" AS t
        WHERE t."reject_reason" IS NOT NULL
           OR EXISTS (
               SELECT 1 FROM (
                   SELECT "file_index", "row_number" FROM "duplicates"
                   UNION ALL SELECT "file_index", "row_number" FROM "impression_losers"
                   UNION ALL SELECT "file_index", "row_number" FROM "orphans"
               ) AS d
               WHERE d."file_index" = t."file_index" AND d."row_number" = t."row_number"
           )"""
    )
    conn.execute(f'CREATE OR REPLACE TEMP VIEW "new_events" AS SELECT {_event_select(deferred or Deferred())} FROM "typed_events"')


# new_events as a projection of typed_events once only accepted rows are left in it (no context columns).
_ACCEPTED = ", ".join(f'"{name}"' for name in _EVENT_COLUMNS if name != "context") + ', CAST(NULL AS VARCHAR) AS "context"'


def _attach_context(conn: duckdb.DuckDBPyConnection, new_events: str | None = None) -> None:
    """``new_events`` gets its ``context`` column: joined and materialised when the input had custom
    context columns (:func:`features.attach_context`), else a null column on the view (no copy)."""
    if _has_relation(conn, "feature_context"):
        features.attach_context(conn)
        return
    conn.execute(
        'CREATE OR REPLACE TEMP VIEW "new_events" AS SELECT *, CAST(NULL AS VARCHAR) AS "context" FROM (\n'
        + (new_events or load_sql("staging/stg_new_events")) + '\n) AS "accepted"'
    )


# ---------------------------------------------------------------- deferred content (issue 19)


@dataclass(frozen=True)
class Deferred:
    """The content columns a run reads from its input when writing instead of keeping them in
    ``typed_events`` (``columns``; empty: every column is kept, the plain path), and the
    ``file_index`` of each input file (each read again through the view ``raw_input_<index>``)."""

    columns: tuple[str, ...] = ()
    files: tuple[int, ...] = ()

    def content(self, files: "list[int] | tuple[int, ...] | None" = None, *, only: str | None = None,
                extra: tuple[str, ...] = ()) -> str:
        """SQL of ``file_index``, ``row_number`` and the deferred columns of every input row of
        ``files`` (all by default), typed by stg_events_typed itself over the input read again;
        with ``only`` (SQL of a relation of ``file_index``, ``row_number``), of those rows only,
        picked before typing (a few rows then cost a scan, not the typing of every row); ``extra``:
        further typed columns after those (``payload``)."""
        text = sqlfiles.load_sql("staging/stg_events_typed")
        columns = ", ".join(f'"{c}"' for c in (*self.columns, *extra))
        chosen = sorted(set(self.files if files is None else files))

        def source(k: int) -> str:
            if only is None:
                return _raw_view(k)
            picked = f'SELECT o."row_number" FROM ({only}) AS o WHERE o."file_index" = {int(k)}'
            return f'(SELECT * FROM {_raw_view(k)} WHERE "row_number" IN ({picked}))'

        selects = [
            f'SELECT "file_index", "row_number", {columns} FROM (\n{_over(text, "raw_events", source(k))}\n) AS "typed"'
            for k in chosen
        ]
        if selects:
            return "\nUNION ALL\n".join(selects)
        nulls = ", ".join([*(f'CAST(NULL AS {_EVENT_COLUMNS[c]}) AS "{c}"' for c in self.columns),
                           *(f'CAST(NULL AS VARCHAR) AS "{c}"' for c in extra)])  # extra: payload, text
        return f'SELECT CAST(NULL AS INTEGER) AS "file_index", CAST(NULL AS BIGINT) AS "row_number", {nulls} WHERE FALSE'

    def join(self, alias: str, files: "list[int] | None" = None) -> str:
        """``JOIN (content) AS w`` on the row identity of the relation aliased ``alias``."""
        return (
            f'JOIN ({self.content(files)}) AS "w" '
            f'ON "w"."file_index" = "{alias}"."file_index" AND "w"."row_number" = "{alias}"."row_number"'
        )


def deferred_content(cfg: IngestConfig, files: list[InputFile], mapping: FieldMapping, typed_hook: "TypedHook | None") -> Deferred:
    """What this run reads from the input when writing (issue 19): on canonical Parquet and CSV
    inputs without custom context columns, every content column the hook does not name in
    ``hook.columns`` (a hook without that attribute keeps them all). JSON Lines and adapters keep
    every column: reading them again would parse every record again, and their text is held in
    memory by the reader anyway."""
    plain = Deferred()
    if cfg.engine != "duckdb" or cfg.source != "canonical" or mapping.features or not files:
        return plain
    if any(f.format not in ("parquet", "csv") for f in files):
        return plain
    used = frozenset() if typed_hook is None else getattr(typed_hook, "columns", None)
    if used is None:
        return plain
    # user_id and source_file too (each weighs as much as an id; nothing before the events are
    # written needs user_id, and typed_rows maps source_file back from the file).
    columns = tuple(c for c in (*CONTENT_COLUMNS, "user_id", "source_file") if c not in used)
    return Deferred(columns, tuple(f.index for f in files)) if columns else plain


def _raw_view(file_index: int) -> str:
    return f'"raw_input_{int(file_index)}"'


def _over(text: str, name: str, relation: str) -> str:
    """SQL ``text`` reading ``relation`` wherever it reads the relation ``name``."""
    quoted = f'"{name}"'
    if quoted not in text:
        raise ValueError(f"the SQL reads no {quoted}")
    return text.replace(quoted, relation)


def _event_select(deferred: Deferred, *, context: str = 'CAST(NULL AS VARCHAR) AS "context"', alias: str | None = None) -> str:
    """The events columns (``_EVENT_COLUMNS``' order) of a key-column relation: deferred content
    columns null, ``context`` as given."""
    prefix = f'"{alias}".' if alias else ""
    columns = []
    for name, kind in _EVENT_COLUMNS.items():
        if name == "context":
            columns.append(context)
        elif name in deferred.columns:
            columns.append(f'CAST(NULL AS {kind}) AS "{name}"')
        else:
            columns.append(f'{prefix}"{name}"')
    return ", ".join(columns)


def _rows_content(conn: duckdb.DuckDBPyConnection, deferred: Deferred, table: str, rows: str, extra: tuple[str, ...] = ()) -> str:
    """SQL of the deferred content (and ``extra`` typed columns) of the input rows ``rows`` (SQL of
    ``file_index``, ``row_number``), read again from their files only: ``rows`` is kept as the temp
    table ``table`` (each file's read picks its rows from it)."""
    conn.execute(f'CREATE OR REPLACE TEMP TABLE "{table}" AS {rows}')
    files = [int(k) for (k,) in conn.execute(f'SELECT DISTINCT "file_index" FROM "{table}"').fetchall()]
    return deferred.content(files, only=f'SELECT * FROM "{table}"', extra=extra)


def _content_views(conn: duckdb.DuckDBPyConnection, deferred: Deferred) -> None:
    """``typed_content``: every typed column of this run's impressions that stg_resolution may
    find contested, the only rows whose content it reads: those of an exposure with impressions
    of two or more event_ids, this run's or the warehouse's (what it ranks: a repeated event_id is
    a duplicate). Their content is read again from their files only; a run that contests no
    impression (most do not) reads none. (MIN("event_id") <> MAX("event_id") instead of the
    distinct count cost half as much again at 10M events: two strings kept per exposure.)"""
    impressions = 'SELECT "exposure_id", "event_id" FROM "typed_events" WHERE "reject_reason" IS NULL AND "event_type" = \'impression\''
    contested = f"""SELECT "file_index", "row_number" FROM "typed_events"
        WHERE "reject_reason" IS NULL AND "event_type" = 'impression' AND "exposure_id" IN (
            SELECT "exposure_id" FROM (
                {impressions}
                UNION ALL
                SELECT "exposure_id", "event_id" FROM "warehouse_events"
                WHERE "event_type" = 'impression' AND "exposure_id" IN (SELECT "exposure_id" FROM ({impressions}))
            ) GROUP BY "exposure_id" HAVING COUNT(DISTINCT "event_id") > 1
        )"""
    content = _rows_content(conn, deferred, "contested_rows", contested)
    picked = ", ".join(f'"w"."{c}"' for c in deferred.columns)
    conn.execute(
        f'CREATE OR REPLACE TEMP VIEW "typed_content" AS SELECT "t".*, {picked} FROM "typed_events" AS "t" '
        f'JOIN ({content}) AS "w" ON "w"."file_index" = "t"."file_index" AND "w"."row_number" = "t"."row_number"'
    )


def _late_content(conn: duckdb.DuckDBPyConnection, deferred: Deferred, lean: bool = False) -> None:
    """``typed_rows``: typed_events with the deferred content of the rows rejected after typing
    (conflicting impressions, orphan feedback: stg_rejects rebuilds their payload from it) and the
    payload of the rows typing rejected without building one (``lean``: some files were typed with
    a null payload), all read again from their files only, in one pass; null on every other row."""
    late = 'SELECT "file_index", "row_number" FROM "resolution" WHERE "rule" IN (\'impression_loser\', \'orphan\')'
    if lean:  # asking for the payload builds every picked row's STRUCT: only when some are missing
        late += ' UNION ALL SELECT "file_index", "row_number" FROM "typed_events" WHERE "reject_reason" IS NOT NULL AND "payload" IS NULL'
    content = _rows_content(conn, deferred, "late_rows", late, extra=("payload",) if lean else ())
    conn.execute(f'CREATE OR REPLACE TEMP TABLE "late_content" AS {content}')
    payload = ' REPLACE (COALESCE("t"."payload", "c"."payload") AS "payload")' if lean else ""
    # Every row's source_file, from the file's own (typing names each file's rows alike).
    picked = ", ".join(f'"f"."{c}"' if c == "source_file" else f'"c"."{c}"' for c in deferred.columns)
    conn.execute(
        'CREATE OR REPLACE TEMP VIEW "typed_rows" AS '
        f'SELECT "t".*{payload}, {picked} FROM "typed_events" AS "t" '
        'LEFT JOIN "input_files" AS "f" ON "f"."file_index" = "t"."file_index" '
        'LEFT JOIN "late_content" AS "c" ON "c"."file_index" = "t"."file_index" AND "c"."row_number" = "t"."row_number"'
    )


def _staging_sql(name: str, deferred: Deferred) -> str:
    """A staging file's SQL; with deferred content, over ``typed_rows`` (typed_events with the
    content the file reads) instead of ``typed_events``."""
    text = sqlfiles.load_sql(name)  # through the module: tests replace a transform there
    return _over(text, "typed_events", '"typed_rows"') if deferred.columns else text


def _written_view(conn: duckdb.DuckDBPyConnection, write: TableWrite, view: str) -> bool:
    """The view ``view`` over the files ``write`` holds (not committed yet; ``run_id`` left out);
    False when it holds no row."""
    paths = [path for path, rows in write.files if rows]
    if not paths:
        return False
    extra = ' EXCLUDE ("run_id")' if "run_id" in write.schema.names else ""
    conn.execute(f'CREATE OR REPLACE TEMP VIEW "{view}" AS SELECT *{extra} FROM read_parquet({_parquet_listing(paths)})')
    return True


def _validate_written(conn: duckdb.DuckDBPyConnection, write: TableWrite, table: str, types: dict[str, str] | None = None) -> None:
    """Check every row of the files ``write`` holds against ``table``'s contract
    (:func:`sql_checks.validate_relation`, unique keys excepted: checked before writing), and the
    feedback table's custom feature columns ``types`` against theirs. With deferred content
    (issue 19) the rows are checked as written -- one read of the files -- rather than as a second
    join with the input; a file that breaks the contract is never committed."""
    if _written_view(conn, write, f"written_{table}"):
        _validate_relation(conn, f"written_{table}", table, types)


def _validate_relation(conn: duckdb.DuckDBPyConnection, relation: str, table: str, types: dict[str, str] | None = None) -> None:
    """:func:`sql_checks.validate_relation` (unique keys excepted); with custom feature columns
    ``types``, on the contract's columns, then each feature against its declared type
    (:func:`features.feature_sql`: the pandera feature schema's rules, in SQL)."""
    if not types:
        sql_checks.validate_relation(conn, relation, table, skip_unique=True)
        return
    contract = ", ".join(f'"{c}"' for c in sql_checks.contract_columns(table))
    conn.execute(f'CREATE OR REPLACE TEMP VIEW "{relation}__contract_columns" AS SELECT {contract} FROM "{relation}"')
    sql_checks.validate_relation(conn, f"{relation}__contract_columns", table, skip_unique=True)
    checks = features.feature_sql(types)[2]
    if checks:
        row = conn.execute(f'SELECT {", ".join(sql for _, sql in checks)} FROM "{relation}"').fetchone()
        failing = {name: int(n) for (name, _), n in zip(checks, row) if n}
        if failing:
            raise TableValidationError(f"{table} (custom features)", len(failing), f"on all rows: {failing}")


def _events_full(deferred: Deferred, files: "list[int] | None" = None) -> str:
    """SQL of the accepted events (typed_events once :func:`_keep_accepted_only` has run) with
    their deferred content read from ``files`` of the input (all by default), aliased ``t``."""
    columns = []
    for name in _EVENT_COLUMNS:
        if name == "context":
            columns.append('CAST(NULL AS VARCHAR) AS "context"')
        else:
            columns.append(f'"w"."{name}"' if name in deferred.columns else f'"t"."{name}"')
    return f'SELECT {", ".join(columns)} FROM "typed_events" AS "t" {deferred.join("t", files)}'


def _narrow_mart(conn: duckdb.DuckDBPyConnection, window: timedelta) -> list[str]:
    """``feedback_mart``: sql/marts/feedback.sql without its :data:`MART_CONTENT` columns (over
    key columns, the impressions' content would be null). Returns the mart's full column order."""
    text = sqlfiles.load_sql("marts/feedback")
    order = [d[0] for d in conn.execute(f'SELECT * FROM (\n{text}\n) AS "mart" LIMIT 0', {"window": window}).description]
    # The file's last join fetches each exposure's impression (one per exposure: rule 6) for the
    # content columns alone, which are left out here: kept, it would be a hash join of every
    # exposure for nothing (issue 19: an eighth of the mart at 10M events). Joined to an empty
    # relation instead, the query's names stay bound and the optimizer drops the join.
    join = 'JOIN "all_events" AS i\n    ON i."exposure_id" = r."exposure_id"'
    if text.count(join) != 1:
        raise ValueError("sql/marts/feedback.sql no longer ends with the impression join _narrow_mart leaves out")
    text = text.replace(join, 'LEFT JOIN (SELECT * FROM "all_events" WHERE FALSE) AS i\n    ON i."exposure_id" = r."exposure_id"')
    excluded = ", ".join(f'"{c}"' for c in MART_CONTENT)
    conn.execute(f'CREATE OR REPLACE TEMP TABLE "feedback_mart" AS SELECT * EXCLUDE ({excluded}) FROM (\n{text}\n) AS "mart"', {"window": window})
    return order


def _feedback_full(conn: duckdb.DuckDBPyConnection, order: list[str], frame: "_Frame | None") -> str:
    """SQL of the feedback table's rows (``order``, then feature columns), those of the part
    ``frame`` only (binding its parameters) unless it is None: ``feedback_mart`` joined to each
    exposure's impression content as feedback.sql computes it, read from the events files (earlier
    runs' and this run's ``written_events``, hook-rewritten where it rewrote)."""
    day = ""
    if frame is not None:  # the impression's UTC date is the exposure's impression_date; bounds on
        # event_time itself are pushed into the Parquet scan (texts of other days are not decoded)
        day = ' AND "event_time" >= CAST($first AS TIMESTAMPTZ) AND "event_time" < CAST($last AS TIMESTAMPTZ) + INTERVAL 1 DAY'
    present = [r[0] for r in conn.execute('DESCRIBE "feedback_mart"').fetchall()]
    columns = [f'{MART_CONTENT[c]} AS "{c}"' if c in MART_CONTENT else f'm."{c}"' for c in order]
    columns += [f'm."{c}"' for c in present if c not in order]  # custom feature columns
    content = ", ".join(f'"{c}"' for c in CONTENT_COLUMNS)
    impressions = " UNION ALL ".join(
        f'SELECT "exposure_id", {content} FROM "{relation}" WHERE "event_type" = \'impression\'{day}'
        for relation in ("warehouse_events", "written_events")
    )
    where = ' WHERE m."impression_date" BETWEEN $first AND $last' if frame is not None else ""
    return f'SELECT {", ".join(columns)} FROM "feedback_mart" AS m JOIN ({impressions}) AS i ON i."exposure_id" = m."exposure_id"{where}'


def _has_relation(conn, name: str) -> bool:
    """Whether a temp table or view ``name`` exists (DuckDB; the Spark engine runs no adapter)."""
    if not isinstance(conn, duckdb.DuckDBPyConnection):
        return False
    return bool(conn.execute("SELECT COUNT(*) FROM duckdb_tables() WHERE table_name = ?", [name]).fetchone()[0])


# Arrow type of a contract column (as polars writes it) -> the DuckDB type that writes it.
_ARROW_TO_DUCKDB: dict[str, str] = {
    "large_string": "VARCHAR", "string": "VARCHAR", "int8": "TINYINT", "int32": "INTEGER", "int64": "BIGINT",
    "double": "DOUBLE", "bool": "BOOLEAN", "date32[day]": "DATE", "timestamp[us, tz=UTC]": "TIMESTAMP WITH TIME ZONE",
}


def _contract_select(conn: duckdb.DuckDBPyConnection, relation: str, table: str, *, run_id: str | None = None,
                     features_: dict[str, str] | None = None):
    """``relation``'s columns cast to ``table``'s contract types as a DuckDB select list, and the
    Arrow schema the warehouse commits for them (that of a validated polars batch: large strings,
    ``run_id`` last when given, as ``io.validated_batches`` writes it). With ``run_id`` the select
    list ends with the parameter ``$run_id``. With custom feature columns ``features_`` (name ->
    type), the contract's columns come in its order and the features after them, cast to their
    types, as ``features.validate_feedback`` lays out a validated batch."""
    current = dict(conn.execute(f'SELECT column_name, column_type FROM (DESCRIBE "{relation}")').fetchall())
    names = sql_checks.contract_columns(table) if features_ else list(current)
    # The schema of a validated polars batch, derived without polars (issue 19: start-up).
    schema = sql_checks.arrow_schema(table, names, run_id=run_id is not None)
    columns = []
    for field_ in schema:
        if field_.name == "run_id" and run_id is not None:
            columns.append('CAST($run_id AS VARCHAR) AS "run_id"')
            continue
        kind = _ARROW_TO_DUCKDB.get(str(field_.type))
        if kind is None:
            raise TableValidationError(table, 1, f"column {field_.name} has type {field_.type}, which the DuckDB writer does not map")
        quoted = f'"{field_.name}"'
        columns.append(quoted if current[field_.name] == kind else f"CAST({quoted} AS {kind}) AS {quoted}")
    if features_:
        import pyarrow as pa

        select, fields, _ = features.feature_sql(features_)
        columns += select
        schema = pa.schema([*schema, *fields])
    return ", ".join(columns), schema


def _write_rejects(conn: duckdb.DuckDBPyConnection, write: TableWrite, select: str, schema, total: int, batch_rows: int) -> int:
    """Write the ``rejects`` relation (``total`` rows, checked) in file and row order, parts of at
    most ``batch_rows`` rows; returns the rows written.

    Raises
    ------
    TableValidationError : fewer or more rows written than ``total``.
    """
    order = 'ORDER BY "source_file", "row_number"'
    if total <= batch_rows:
        written = write.copy(conn, f'SELECT {select} FROM "rejects" {order}', schema) if total else 0
    else:  # numbered once in that order, then written batch_rows at a time
        conn.execute(f'CREATE OR REPLACE TEMP TABLE "rejects_ordered" AS SELECT ROW_NUMBER() OVER ({order}) AS "k", * FROM "rejects"')
        written = sum(
            write.copy(conn, f'SELECT {select} FROM "rejects_ordered" WHERE "k" > {low} AND "k" <= {low + batch_rows} ORDER BY "k"', schema)
            for low in range(0, total, batch_rows)
        )
        conn.execute('DROP TABLE "rejects_ordered"')
    if written != total:
        raise TableValidationError("rejects", 1, f"{written} rows written for {total} rejected")
    return written


def _check_unique(conn: duckdb.DuckDBPyConnection, relation: str, key: str, table: str) -> None:
    """Full-data uniqueness of a key (parts are validated one at a time, so checked here)."""
    repeated = conn.execute(
        f'SELECT "{key}", COUNT(*) AS n FROM "{relation}" GROUP BY 1 HAVING COUNT(*) > 1 LIMIT 5'
    ).fetchall()
    if repeated:
        raise TableValidationError(table, len(repeated), f"{key} not unique: {repeated}")


def _write_feedback(
    conn: duckdb.DuckDBPyConnection, write: TableWrite, batch_rows: int, types: dict[str, str] | None = None,
    content: "Callable[[_Frame | None], str] | None" = None, *, memory_bytes: int | None = None,
    unchanged: "_UnchangedDays | None" = None,
) -> dict:
    """Validate and write the feedback table's files, whole impression_date days at a time.

    Days are grouped into parts of at most ``batch_rows`` rows (a day larger than that is written
    as several files of at most ``batch_rows`` rows by one COPY, :func:`_feedback_frames`), each
    sorted by exposure_id and written by DuckDB itself (issue 19). Every row is checked in SQL
    against ``FeedbackTable``'s rules, and the custom feature columns ``types`` (issue 17) against
    their declared types (:func:`features.feature_sql`); exposure_id uniqueness is checked on the
    whole table first.

    With ``memory_bytes`` (DuckDB's memory limit), a part also holds at most a third of it, at
    the bytes a row measures (:func:`_feedback_row_bytes`): each part is joined and sorted in
    memory, and with chat-length texts a million rows hold 1.5 GB, which a 2GB limit cannot sort
    (3M events of such logs failed with DuckDB's out-of-memory error). A day larger than that is
    cut into exposure_id ranges (:func:`_day_ranges`).

    ``content(frame)``, when given, is the SQL of the rows of one part (None: every row) with the
    columns ``feedback_mart`` lacks (deferred content, issue 19; it binds the part's parameters);
    the rows are then checked as written, one read of the files rather than a second join.

    ``unchanged``: the committed files that already hold every row before its ``first_day``
    (:func:`_unchanged_days`); only the later days are written, and those files join the new
    version as they are (linked into the run's folder, ahead of the new parts).
    """
    _check_unique(conn, "feedback_mart", "exposure_id", "feedback")
    relation = "feedback_mart"
    if content is not None:
        conn.execute(f'CREATE OR REPLACE TEMP VIEW "feedback_full" AS {content(None)}')
        relation = "feedback_full"

    def day_rows_sql(select: str, frame: "_Frame") -> str:
        source = '"feedback_mart"' if content is None else f'({content(frame)}) AS "feedback_full"'
        return f'SELECT {select} FROM {source} WHERE "impression_date" BETWEEN $first AND $last{frame.where} ORDER BY "exposure_id"'

    select, schema = _contract_select(conn, relation, "feedback", features_=types)
    write.set_schema(schema)  # also the schema of an emptied table
    if content is None:
        _validate_relation(conn, relation, "feedback", types)
    from_day = '' if unchanged is None else ' WHERE "impression_date" >= $day'
    day_rows = conn.execute(
        f'SELECT "impression_date", COUNT(*) FROM "feedback_mart"{from_day} GROUP BY 1 ORDER BY 1',
        {} if unchanged is None else {"day": unchanged.first_day},
    ).fetchall()
    frame_rows = batch_rows
    if memory_bytes is not None and day_rows:
        frame_rows = max(1, min(batch_rows, memory_bytes // _FRAME_MEMORY_SHARE // _feedback_row_bytes(conn, content is not None)))
    frames = [
        ranged
        for frame in _feedback_frames(day_rows, batch_rows, frame_rows)
        for ranged in (_day_ranges(conn, frame.first, frame_rows) if frame.ranged else [frame])
    ]
    written = 0
    try:
        for group in frames:
            written += write.copy(conn, day_rows_sql(select, group), schema, group.params,
                                  rows_per_file=batch_rows if group.split else None)
    except duckdb.ConversionException as exc:  # a value its column's type cannot hold
        table = "feedback (custom features)" if types else "feedback"
        raise TableValidationError(table, 1, f"cannot cast to the declared types: {str(exc).splitlines()[0][:300]}") from exc
    exposures, observed, copied, regenerated, shared = conn.execute(
        'SELECT COUNT(*), COUNT(*) FILTER (WHERE "observed"), COUNT(*) FILTER (WHERE "copied"), '
        'COUNT(*) FILTER (WHERE "regenerated"), COUNT(*) FILTER (WHERE "shared") FROM "feedback_mart"'
    ).fetchone()
    kept = 0 if unchanged is None else unchanged.rows
    if written + kept != exposures:  # each exposure's content joined exactly once
        raise TableValidationError("feedback", 1, f"{written} rows written and {kept} kept for {exposures} exposures")
    if content is not None:
        _validate_written(conn, write, "feedback", types)
    if unchanged is not None:
        write.keep(unchanged.files)
    return {
        "exposures": int(exposures), "observed": int(observed), "copied": int(copied),
        "regenerated": int(regenerated), "shared": int(shared), "days": len(day_rows),
    }


# The share of DuckDB's memory limit one feedback part may hold (its rows are joined to their
# content, then sorted): a third. 1M rows of chat-length texts (1.5 KB a row) held at once failed
# under a 2GB limit. Each part reads the events files again, and where they are not in time order
# (the simulator's) every row group spans every day, so a part's date bounds prune nothing: at 10M
# events a quarter made 14 parts of one day and a third 7 of two, 30.2 -> 22.9 CPU s for the write
# (-10% for the run); 3M events of chat-length texts peaked at 1.79 / 1.74 GB with the same CPU (issue 19).
_FRAME_MEMORY_SHARE = 3
# The most bytes of one row group of a written table: 122,880 rows of ~100 bytes (the simulator's
# logs) stay whole; of 8 KB texts, they would be 1 GB held by each writer thread.
_ROW_GROUP_BYTES = 64 * 2**20
# Bytes of a feedback row beside its strings (numbers, dates, flags, DuckDB's own row overhead).
_FEEDBACK_FIXED_BYTES = 160
_SAMPLED_ROWS = 20_000


@dataclass(frozen=True)
class _Frame:
    """One COPY of the feedback table's rows: the days ``first`` to ``last``; ``split``: a single
    day larger than ``batch_rows``, written as several files by that one COPY; ``ranged``: a single
    day larger than a part may hold in memory, to be cut into exposure_id ranges, each a frame of
    its own with bounds ``[low, high)`` (:func:`_day_ranges`; None: unbounded)."""

    first: Any
    last: Any
    split: bool = False
    ranged: bool = False
    low: str | None = None
    high: str | None = None

    @property
    def params(self) -> dict:
        bounds = {name: value for name, value in (("low", self.low), ("high", self.high)) if value is not None}
        return {"first": self.first, "last": self.last, **bounds}

    @property
    def where(self) -> str:
        """SQL of the exposure_id bounds (binding ``params``)."""
        return (' AND "exposure_id" >= $low' if self.low is not None else "") + (' AND "exposure_id" < $high' if self.high is not None else "")


def _feedback_frames(day_rows: list, batch_rows: int, frame_rows: int | None = None) -> list[_Frame]:
    """Whole days grouped into frames of at most ``frame_rows`` rows (``batch_rows`` by default,
    never more). A day larger than that is a frame of its own:

    * larger than ``batch_rows`` (a ratings log puts every cell on one day): DuckDB writes it as
      files of at most ``batch_rows`` rows in one sorted pass (``TableWrite.copy(rows_per_file=...)``;
      cut into exposure_id ranges instead, each range re-read the whole day: 16 ranges of a
      15.4M-row day took 82 s, issue 23);
    * larger than ``frame_rows`` only (rows too wide to sort that many at once): cut into
      exposure_id ranges of ``frame_rows`` rows (``ranged``), each its own sorted pass."""
    limit = min(batch_rows, frame_rows or batch_rows)
    frames: list[_Frame] = []
    days: list = []
    size = 0
    for day, rows in [*day_rows, (None, 0)]:
        if days and (day is None or size + rows > limit):
            frames.append(_Frame(days[0], days[-1]))
            days, size = [], 0
        if day is None:
            break
        if rows > limit:
            frames.append(_Frame(day, day, ranged=True) if limit < batch_rows else _Frame(day, day, split=True))
            continue
        days.append(day)
        size += rows
    return frames


def _day_ranges(conn: duckdb.DuckDBPyConnection, day: Any, rows: int) -> list[_Frame]:
    """The exposures of ``feedback_mart`` on ``day`` as exposure_id ranges of ``rows`` rows each, in
    order (the bounds come from a sort of the ids alone)."""
    bounds = [
        b for (b,) in conn.execute(
            'SELECT "exposure_id" FROM (SELECT "exposure_id", ROW_NUMBER() OVER (ORDER BY "exposure_id") AS "k" '
            'FROM "feedback_mart" WHERE "impression_date" = $day) WHERE ("k" - 1) % $rows = 0 AND "k" > 1 ORDER BY "k"',
            {"day": day, "rows": rows},
        ).fetchall()
    ]
    edges = [None, *bounds, None]
    return [_Frame(day, day, low=low, high=high) for low, high in zip(edges, edges[1:])]


def _feedback_row_bytes(conn: duckdb.DuckDBPyConnection, deferred: bool) -> int:
    """Bytes one feedback row holds while it is sorted: its string columns as measured on the first
    impressions (a LIMIT: the scan stops there), plus the fixed columns. With ``deferred`` content
    the strings are those of the events files (``all_events`` holds key columns only), else of
    ``feedback_mart`` itself."""
    if deferred:  # written_events and warehouse_events: views over the events files (empty or not)
        columns = [c for c in CONTENT_COLUMNS if _EVENT_COLUMNS[c] == "VARCHAR"] + ["exposure_id", "user_id"]
        listed = ", ".join(f'"{c}"' for c in columns)
        source = " UNION ALL ".join(
            f'(SELECT {listed} FROM "{relation}" WHERE "event_type" = \'impression\' LIMIT {_SAMPLED_ROWS})'
            for relation in ("written_events", "warehouse_events")
        )
    else:
        present = dict(conn.execute('SELECT column_name, column_type FROM (DESCRIBE "feedback_mart")').fetchall())
        columns = [c for c, kind in present.items() if kind == "VARCHAR"]
        source = f'SELECT * FROM "feedback_mart" LIMIT {_SAMPLED_ROWS}'
    if not columns:
        return _FEEDBACK_FIXED_BYTES
    width = " + ".join(f'COALESCE(STRLEN("{c}"), 0)' for c in columns)
    measured = conn.execute(f'SELECT AVG({width}) FROM ({source}) AS "sampled"').fetchone()[0]
    return _FEEDBACK_FIXED_BYTES + int(math.ceil(measured or 0)) + 16 * len(columns)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _remove_if_only_lock(warehouse: Path) -> None:
    """A failed first run leaves no warehouse folder behind (only its lock file and the empty
    folders of the tables it was writing were created)."""
    try:
        entries = list(warehouse.iterdir())
        leftovers = all(e.name == LOCK_NAME or (e.is_dir() and not any(e.iterdir())) for e in entries)
    except OSError:
        return
    if leftovers:
        shutil.rmtree(warehouse, ignore_errors=True)
