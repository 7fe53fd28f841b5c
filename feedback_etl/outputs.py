"""Step outputs that a failing step cannot destroy (issue 16, section 4).

Every step that rewrites a folder of results (``causalrm embed``, ``propensity fit`` / ``score``,
``noise estimate``, ``weights export``, ``train``) builds the new folder *aside*, beside the old
one, and swaps it in with two renames only once it is complete: a typo in ``--model``, an
exception, ``Ctrl-C`` or a killed process leaves the previous results byte-identical.
:func:`build_aside` is that pattern, written once; :func:`replace_dir` is its swap.

:func:`scratch_dir` is the other half of "nothing left behind": a scratch folder in the system temp
directory that a killed run cannot leak for ever, because the next run removes the folders whose
owner is gone.

This module sits upstream of ``propensity/`` and ``rm_train/`` (they import it); it imports only
the standard library.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

_OLD = ".old-"
_BUILDING = ".building-"
_OWNER = ".owner"
# A scratch folder younger than this is never swept: its creator may not hold its lock yet.
_SWEEP_MIN_AGE_S = 60.0


def replace_dir(staging: Path, target: Path) -> None:
    """Swap a fully written ``staging`` folder into ``target``; the old ``target`` is removed after.

    Two renames on one file system: a crash between them leaves the old folder under a hidden
    ``.<name>.old-*`` name and no ``target``; :func:`build_aside` puts such a folder back on the
    next run.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}{_OLD}{uuid.uuid4().hex}")
        os.replace(target, old)
    os.replace(staging, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def building_dir(target: Path, tag: str | None = None) -> Path:
    """The hidden sibling ``.<name>.building-<tag>`` where a new ``target`` is built."""
    return target.with_name(f".{target.name}{_BUILDING}{tag or uuid.uuid4().hex}")


def restore_interrupted(target: Path) -> None:
    """Undo a swap cut between its two renames (old folder moved away, new one not in place yet)."""
    if target.exists():
        return
    olds = sorted(target.parent.glob(f".{glob_escape(target.name)}{_OLD}*"), key=lambda p: p.stat().st_mtime)
    if olds:
        os.replace(olds[-1], target)


def glob_escape(name: str) -> str:
    """``name`` as a glob pattern that matches only itself (``[`` ``*`` ``?`` are literal)."""
    return "".join(f"[{c}]" if c in "[]*?" else c for c in name)


@contextmanager
def build_aside(target: str | Path, *, tag: str | None = None, keep_on_error: bool = False) -> Iterator[Path]:
    """Yield a fresh folder to build the new ``target`` in; swap it in only when the block succeeds.

    Parameters
    ----------
    target : the folder of results to replace (need not exist yet).
    tag : a fixed name for the building folder (``.<name>.building-<tag>``), so that a rerun with
        the same inputs can resume what an interrupted run built; default a random one.
    keep_on_error : keep the building folder when the block raises (resumable steps); by default it
        is deleted.

    On an exception (or ``KeyboardInterrupt``) ``target`` is left exactly as it was.
    """
    target = Path(target)
    restore_interrupted(target)
    staging = building_dir(target, tag)
    if tag is None or not staging.is_dir():
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    try:
        yield staging
    except BaseException:
        if not keep_on_error:
            shutil.rmtree(staging, ignore_errors=True)
        raise
    replace_dir(staging, target)


def remove_building_dirs(target: Path, *, keep: Path | None = None) -> None:
    """Delete abandoned ``.<name>.building-*`` folders of ``target`` (all but ``keep``)."""
    for folder in target.parent.glob(f".{glob_escape(target.name)}{_BUILDING}*"):
        if folder != keep:
            shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    """A scratch folder ``<system temp>/<prefix>*``, removed on exit; stale ones are swept first.

    The folder holds a lock file locked for the life of the block. ``kill -9`` skips the cleanup but
    releases the lock, so the next call with the same ``prefix`` removes every such folder whose
    lock it can take (and that is older than a minute, so a folder being created is safe).
    """
    _sweep(prefix)
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    handle = open(folder / _OWNER, "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield folder
    finally:
        handle.close()
        shutil.rmtree(folder, ignore_errors=True)


def _sweep(prefix: str) -> None:
    now = time.time()
    for folder in Path(tempfile.gettempdir()).glob(glob_escape(prefix) + "*"):
        try:
            if not folder.is_dir() or folder.is_symlink() or now - folder.stat().st_mtime < _SWEEP_MIN_AGE_S:
                continue
            owner = folder / _OWNER
            if owner.is_file():
                with open(owner, "a") as handle:
                    try:
                        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        continue  # a live run holds it
            shutil.rmtree(folder, ignore_errors=True)
        except OSError:
            continue


__all__ = ["build_aside", "building_dir", "glob_escape", "remove_building_dirs", "replace_dir", "restore_interrupted", "scratch_dir"]
