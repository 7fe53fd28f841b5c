"""Warehouse state changes: the ingest lock, the staging folder and the atomic commit.

An ingest run builds the warehouse's next state aside, in ``WH/.ingest-staging-<run>/`` (new
``events/``, ``rejects/``, ``feedback/`` and ``manifest.json``; unchanged event and reject files
are hard links, so nothing is copied), then commits:

1. write ``COMMIT`` into the staging folder (fsync'd): from here on the run counts as done;
2. for each of events, rejects, feedback, manifest.json: move the live one into the staging
   folder as ``old-<name>``, move the staged one into place (two renames each);
3. delete the staging folder, old state included.

A crash before step 1 leaves the live warehouse untouched; the next ingest deletes the leftover
staging folder. A crash inside step 2 is rolled forward by the next ingest (the ``COMMIT`` marker
says the new state is complete). Readers that open the warehouse during step 2's few renames may
see a mix; they never see a half-written file.

Two ingests into one warehouse are serialised by an exclusive ``flock`` on ``WH/.ingest.lock``;
the second fails at once with :class:`WarehouseError`. The kernel drops the lock when its
process dies, so a crashed run never leaves a stale lock behind.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from schemas.errors import WarehouseError

log = logging.getLogger(__name__)

LOCK_NAME = ".ingest.lock"
STAGING_PREFIX = ".ingest-staging-"
COMMIT_MARKER = "COMMIT"
STATE_NAMES: tuple[str, ...] = ("events", "rejects", "feedback", "manifest.json")
MANIFEST_VERSION = 1


@contextmanager
def ingest_lock(warehouse: Path) -> Iterator[None]:
    """Hold the warehouse's ingest lock for the duration of the block.

    Raises
    ------
    WarehouseError : another ingest holds the lock.
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


def recover(warehouse: Path) -> list[str]:
    """Finish or discard what an interrupted run left behind (call with the lock held).

    Returns what was done, one line per staging folder.
    """
    actions = []
    for staging in sorted(warehouse.glob(STAGING_PREFIX + "*")):
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
    """Drop an uncommitted staging folder (the live warehouse never saw it)."""
    if staging.exists() and not (staging / COMMIT_MARKER).exists():
        shutil.rmtree(staging, ignore_errors=True)


def commit(warehouse: Path, staging: Path) -> None:
    """Swap the staged state into place (see the module docstring)."""
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


def link_tree(source: Path, target: Path) -> None:
    """Recreate ``source`` under ``target`` with hard links (copies where links are refused).

    Warehouse files are never modified in place, so sharing them between states is safe.
    """
    if not source.exists():
        return
    for path in sorted(source.rglob("*")):
        if path.is_dir() or path.name.startswith("."):
            continue
        dest = target / path.relative_to(source)
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, dest)
        except OSError:
            shutil.copy2(path, dest)


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
    path.write_text(json.dumps(document, indent=2, sort_keys=False, default=str) + "\n", encoding="utf-8")


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
