"""Literal paths for engines that read a path string as a pattern or a URL (issue 16).

DuckDB (``read_parquet``, ``read_csv``, ``read_text``: even a list of paths), Spark (Hadoop globs
every path it reads) and delta-rs (it parses a table path as a URL) do not take a file name as it
is: ``b[c].jsonl`` read the neighbouring ``bc.jsonl``, a warehouse ``whh[1]`` read ``whh1``'s events,
``#`` or ``%20`` in a name made delta-rs open another folder. Escaping those characters would still
hand the engines a pattern built from a user's path, one dialect per engine. Instead, every path an
engine opens goes through :class:`LiteralPaths`: a private folder of symbolic links with plain
names (``f-00000.jsonl.gz``, ``d-00000``) pointing at the user's files and folders. The engines
read the links, which mean exactly one file each; the user's path appears only in the data
(``source_file``) and in messages.

The link folder lives in the system temp folder (``TMPDIR``), is removed when the block ends, and
folders left by a killed process are removed by the next one (they hold only links).
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from schemas.errors import ConfigError

_PREFIX = "causalrm-links-"
# Characters no engine reads as glob, URL or escape syntax.
_PLAIN = re.compile(r"^[A-Za-z0-9_./+=,@-]*$")
_PLAIN_SUFFIX = re.compile(r"^\.[A-Za-z0-9]{1,10}$")


def is_plain(path: str | Path) -> bool:
    """Whether a path has only characters that no engine reads as a pattern."""
    return bool(_PLAIN.match(str(path)))


class LiteralPaths:
    """Plain-named links to user files and folders, for one block of engine work.

    Use through :func:`literal_paths`. ``file(path)`` and ``folder(path)`` return the link (a
    :class:`~pathlib.Path` with a plain name) and are idempotent per target.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._links: dict[tuple[str, Path], Path] = {}

    def file(self, path: str | Path) -> Path:
        """A link to one file, keeping its plain suffixes (``.jsonl.gz``: readers pick the codec by them)."""
        target = Path(path).absolute()
        suffixes: list[str] = []
        for suffix in reversed(target.suffixes[-2:]):
            if not _PLAIN_SUFFIX.match(suffix):
                break
            suffixes.insert(0, suffix)
        return self._link("f", target, "".join(suffixes))

    def folder(self, path: str | Path) -> Path:
        """A link to a folder. Link an existing folder and name new ones under the link: an engine
        cannot create a folder through a link whose target does not exist yet."""
        return self._link("d", Path(path).absolute(), "")

    def _link(self, kind: str, target: Path, suffix: str) -> Path:
        key = (kind, target)
        if key not in self._links:
            link = self.root / f"{kind}-{len(self._links):05d}{suffix}"
            os.symlink(target, link)
            self._links[key] = link
        return self._links[key]

    def real(self, link_path: str | Path) -> Path:
        """The user-side path of a path under one of this block's links (inverse of ``file``/``folder``)."""
        link_path = Path(str(link_path).removeprefix("file://"))
        for (_, target), link in self._links.items():
            if link_path == link or link in link_path.parents:
                return target / link_path.relative_to(link)
        return link_path


@contextmanager
def literal_paths() -> Iterator[LiteralPaths]:
    """A :class:`LiteralPaths` whose link folder is removed when the block ends.

    Raises
    ------
    ConfigError : the temp folder's own path has pattern characters (then no plain link exists).
    """
    root = _new_root()
    try:
        yield LiteralPaths(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)  # removes the links, never what they point at


def engine_file(path: str | Path) -> str:
    """A plain path for one input file, to paste into DuckDB SQL or hand to Spark (the process's
    shared link folder, removed at exit)."""
    return str(_process_links().file(path))


def engine_folder(path: str | Path) -> Path:
    """A plain path for a folder (e.g. Spark's scratch inside a warehouse named ``wh[1]``)."""
    return _process_links().folder(path)


_shared: LiteralPaths | None = None
_shared_pid = 0
_shared_lock = threading.Lock()


def _process_links() -> LiteralPaths:
    global _shared, _shared_pid
    with _shared_lock:
        if _shared is None or _shared_pid != os.getpid() or not _shared.root.is_dir():
            _shared, _shared_pid = LiteralPaths(_new_root()), os.getpid()
            atexit.register(shutil.rmtree, _shared.root, True)
        return _shared


def _new_root() -> Path:
    base = Path(tempfile.gettempdir()).absolute()
    if not is_plain(base):
        raise ConfigError(
            f"the temp folder path {str(base)!r} has characters that DuckDB, Spark or delta-rs read as a pattern",
            where="TMPDIR",
            fix="set TMPDIR to a folder whose path has only letters, digits and . _ - /",
        )
    _sweep(base)
    return Path(tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-", dir=base))


def _sweep(base: Path) -> None:
    """Remove link folders of processes that no longer run (a killed run cannot clean up)."""
    try:
        leftovers = [p for p in base.iterdir() if p.name.startswith(_PREFIX)]
    except OSError:
        return
    for folder in leftovers:
        pid = folder.name.removeprefix(_PREFIX).split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
