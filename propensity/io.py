"""Reading and writing the propensity artifacts in ``WH/propensity/`` (the one place that touches them).

- ``scores.parquet``: exposure_id, channel, propensity (calibrated, clipped), propensity_raw, fold;
  every channel in one file, fitting a channel replaces only that channel's rows. It has two
  forms, both read by :func:`read_scores` and kept by :func:`write_scores`:

  * ``file`` (default): one Parquet file, rows grouped by channel;
  * ``partitioned``: a directory of that name, Hive-partitioned by channel
    (``scores.parquet/channel=vote/part-*.parquet``, no ``channel`` column inside the parts), the
    layout a Spark job writes for a cluster (``causalrm propensity score --layout partitioned``).
- ``metrics.json``: ``{channel: diagnostics}`` (see ``propensity.diagnostics``).
- ``models/<channel>/``: the fold models and calibrators (LightGBM text, safetensors, JSON).

Writes go to a temporary name first and are swapped in with ``os.replace`` so a crash never
leaves a half-written file that a reader would trust.
"""

from __future__ import annotations

import json
import os
import math
import shutil
import uuid
from pathlib import Path
from typing import Any

import polars as pl
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

# replace_dir: the one "build aside, swap in on success" swap of the project (issue 16), re-exported.
from feedback_etl.outputs import replace_dir
from schemas.errors import ConfigError, WarehouseError

SCORES_SCHEMA: dict[str, pl.DataType] = {
    "exposure_id": pl.String(),
    "channel": pl.String(),
    "propensity": pl.Float64(),
    "propensity_raw": pl.Float64(),
    "fold": pl.Int32(),
}


def propensity_dir(warehouse: str | Path) -> Path:
    return Path(warehouse) / "propensity"


def scores_path(warehouse: str | Path) -> Path:
    return propensity_dir(warehouse) / "scores.parquet"


def metrics_path(warehouse: str | Path) -> Path:
    return propensity_dir(warehouse) / "metrics.json"


def models_dir(warehouse: str | Path, channel: str) -> Path:
    return propensity_dir(warehouse) / "models" / channel


def _fit_hint(warehouse: str | Path, channel: str) -> str:
    return f"run `causalrm propensity fit {warehouse} --channel {channel}` first"


SCORES_LAYOUTS: tuple[str, ...] = ("file", "partitioned")

# The Arrow twin of SCORES_SCHEMA; large strings are what polars writes, so a merged file reads
# back exactly like one written by polars.
_ARROW_SCORES = pa.schema(
    [("exposure_id", pa.large_string()), ("channel", pa.large_string()), ("propensity", pa.float64()),
     ("propensity_raw", pa.float64()), ("fold", pa.int32())]
)


def scores_layout(warehouse: str | Path) -> str | None:
    """``"file"``, ``"partitioned"`` (a directory at ``scores.parquet``) or None when there are no scores."""
    path = scores_path(warehouse)
    if path.is_file():
        return "file"
    if path.is_dir():
        return "partitioned"
    return None


def _channel_parts(path: Path, channel: str) -> list[Path]:
    return sorted((path / f"channel={channel}").glob("part-*.parquet"))


def score_files(warehouse: str | Path, channel: str) -> tuple[list[Path], bool]:
    """The Parquet files holding one channel's propensities, for a reader that is not polars (the
    streamed steps' DuckDB), and whether they carry a ``channel`` column to filter on (the one-file
    layout does). The list is empty when a partitioned table has no part for ``channel``.

    Raises
    ------
    WarehouseError : no scores at all; the message says which command to run.
    """
    path = scores_path(warehouse)
    layout = scores_layout(warehouse)
    if layout is None:
        raise WarehouseError("warehouse has no propensity scores", where=str(path), fix=_fit_hint(warehouse, channel))
    return ([path], True) if layout == "file" else (_channel_parts(path, channel), False)


def sql_file_list(paths: list[Path], links: Any = None) -> str:
    """A DuckDB list literal of file paths (``['a', 'b']``, quotes doubled), each through
    ``links.file`` (:class:`feedback_etl.paths.LiteralPaths`) when given, so a name such as
    ``wh[1]`` is read literally, not as a glob."""
    names = (str(links.file(p)) if links is not None else str(p) for p in paths)
    return "[" + ", ".join("'" + name.replace("'", "''") + "'" for name in names) + "]"


def _partitioned_channels(path: Path) -> list[str]:
    return sorted(d.name.removeprefix("channel=") for d in path.glob("channel=*") if d.is_dir() and _channel_parts(path, d.name.removeprefix("channel=")))


def read_scores(warehouse: str | Path, channel: str = "vote") -> pl.DataFrame:
    """Propensities of one channel, from either form of ``scores.parquet`` (see the module docstring).

    Returns
    -------
    polars frame with one row per exposure: ``exposure_id`` (str), ``propensity`` (float64,
    calibrated and clipped to [floor, 1]), ``propensity_raw`` (float64, the uncalibrated fold-model
    score, or the fold average for an exposure scored after the fit), ``fold`` (int32; -1 for an
    exposure that ``causalrm propensity score`` scored with the fold average), sorted by exposure_id.

    Raises
    ------
    WarehouseError : no scores, or no rows for ``channel``; the message says which command to run.
    """
    path = scores_path(warehouse)
    layout = scores_layout(warehouse)
    if layout is None:
        raise WarehouseError("warehouse has no propensity scores", where=str(path), fix=_fit_hint(warehouse, channel))
    if layout == "file":
        lazy = pl.scan_parquet(path, glob=False)  # a literal path: a warehouse may be named wh[1] (issue 16)
        columns = lazy.collect_schema().names()
        wanted = list(SCORES_SCHEMA)
        fitted = lambda: sorted(lazy.select(pl.col("channel").unique()).collect()["channel"].to_list())  # noqa: E731
    else:
        parts = _channel_parts(path, channel)
        lazy = pl.scan_parquet(parts, glob=False) if parts else None
        columns = lazy.collect_schema().names() if lazy is not None else []
        wanted = [c for c in SCORES_SCHEMA if c != "channel"]
        fitted = lambda: _partitioned_channels(path)  # noqa: E731
    missing = [c for c in wanted if c not in columns]
    if lazy is not None and missing:
        raise WarehouseError(
            f"propensity scores lack column(s) {missing}", where=str(path), fix=_fit_hint(warehouse, channel)
        )
    rows = None
    if lazy is not None:
        rows = (lazy.filter(pl.col("channel") == channel) if layout == "file" else lazy).collect()
    if rows is None or rows.is_empty():
        raise WarehouseError(
            f"no propensity scores for channel {channel!r} (fitted: {fitted()})", where=str(path), fix=_fit_hint(warehouse, channel)
        )
    return rows.select([pl.col(c).cast(SCORES_SCHEMA[c]) for c in ("exposure_id", "propensity", "propensity_raw", "fold")]).sort("exposure_id")


def write_scores(warehouse: str | Path, channel: str, scores: pl.DataFrame) -> Path:
    """Replace ``channel``'s rows in ``scores.parquet`` with ``scores`` (other channels are kept),
    in the form the warehouse already has (a single file when it has none yet)."""
    path = scores_path(warehouse)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = scores.select([pl.col(name).cast(dtype) for name, dtype in SCORES_SCHEMA.items() if name != "channel"])
    staging = path.parent / f".scores-{channel}.{uuid.uuid4().hex}.tmp"
    staging.mkdir()
    try:
        part = staging / "part-00000.parquet"
        new.sort("exposure_id").write_parquet(part)
        return commit_score_parts(warehouse, channel, [part])
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def commit_score_parts(warehouse: str | Path, channel: str, parts: list[Path], *, layout: str | None = None) -> Path:
    """Make the Parquet ``parts`` (exposure_id, propensity, propensity_raw, fold) ``channel``'s rows
    of ``scores.parquet``, replacing its old rows and keeping the other channels.

    Memory stays bounded by one part (or one row group of the old file): rows are streamed, never
    collected whole. ``parts`` must lie on the warehouse's file system (they are moved, not copied,
    into the partitioned form).

    Parameters
    ----------
    layout : ``file`` (one file: the old file's other channels and the parts are streamed into a new
        file, one row group per part, swapped in with ``os.replace``), ``partitioned`` (the parts
        are moved into ``scores.parquet/channel=<channel>/``; a single file is split by channel
        first), or None: keep the warehouse's current form (``file`` when there is none).

    Returns
    -------
    the path of ``scores.parquet`` (file or directory).
    """
    if layout is not None and layout not in SCORES_LAYOUTS:
        raise ConfigError(f"unknown scores layout {layout!r}", where="--layout", fix=f"use one of {list(SCORES_LAYOUTS)}")
    path = scores_path(warehouse)
    path.parent.mkdir(parents=True, exist_ok=True)
    current = scores_layout(warehouse)
    target = layout or current or "file"
    if target == "file":
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            with pq.ParquetWriter(tmp, _ARROW_SCORES, compression="zstd") as writer:
                others = _old_channels(path, current, exclude=channel)
                for name in (c for c in others if c < channel):
                    for table in _old_channel_tables(path, current, name):
                        writer.write_table(table)
                for part in parts:
                    writer.write_table(_with_channel(pq.read_table(part), channel))
                for name in (c for c in others if c > channel):
                    for table in _old_channel_tables(path, current, name):
                        writer.write_table(table)
            _swap_in(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path
    if current == "partitioned":
        staging = path / f".channel={channel}.{uuid.uuid4().hex}.tmp"
        staging.mkdir()
        try:
            _move_parts(parts, staging)
            replace_dir(staging, path / f"channel={channel}")
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return path
    # A single file (or nothing) becomes the partitioned form: split the other channels out first.
    staging = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    staging.mkdir()
    try:
        for name in _old_channels(path, current, exclude=channel):
            (staging / f"channel={name}").mkdir()
            with pq.ParquetWriter(staging / f"channel={name}" / "part-00000.parquet", _ARROW_SCORES.remove(1), compression="zstd") as writer:
                for table in _old_channel_tables(path, current, name):
                    writer.write_table(table.drop_columns(["channel"]))
        (staging / f"channel={channel}").mkdir()
        _move_parts(parts, staging / f"channel={channel}")
        _swap_in(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def _old_channels(path: Path, layout: str | None, *, exclude: str) -> list[str]:
    if layout == "file":
        channels = pq.read_table(path, columns=["channel"]).column("channel").unique().to_pylist()
    elif layout == "partitioned":
        channels = _partitioned_channels(path)
    else:
        channels = []
    return sorted(c for c in channels if c != exclude)


def _old_channel_tables(path: Path, layout: str | None, channel: str):
    """One channel's old rows as Arrow tables in ``_ARROW_SCORES``, one row group (or part) at a time."""
    if layout == "file":
        source = pq.ParquetFile(path)
        for k in range(source.num_row_groups):
            group = source.read_row_group(k)
            rows = group.filter(pc.equal(group.column("channel").cast(pa.large_string()), channel))
            if rows.num_rows:
                yield rows.select(list(_ARROW_SCORES.names)).cast(_ARROW_SCORES)
    elif layout == "partitioned":
        for part in _channel_parts(path, channel):
            yield _with_channel(pq.read_table(part), channel)


def _with_channel(table: pa.Table, channel: str) -> pa.Table:
    """A part's rows (no channel column) in ``_ARROW_SCORES``."""
    table = table.select([n for n in _ARROW_SCORES.names if n != "channel"])
    table = table.add_column(1, "channel", pa.array([channel] * table.num_rows, type=pa.large_string()))
    return table.cast(_ARROW_SCORES)


def _move_parts(parts: list[Path], directory: Path) -> None:
    for k, part in enumerate(parts):
        name = part.name if part.name.startswith("part-") else f"part-{k:05d}.parquet"
        os.replace(part, directory / name)


def _swap_in(new: Path, path: Path) -> None:
    """Replace ``path`` (file, directory or nothing) by ``new`` (file or directory)."""
    if path.is_dir():
        old = path.with_name(f".{path.name}.{uuid.uuid4().hex}.old")
        os.replace(path, old)
        os.replace(new, path)
        shutil.rmtree(old, ignore_errors=True)
    elif path.is_file() and new.is_dir():
        old = path.with_name(f".{path.name}.{uuid.uuid4().hex}.old")
        os.replace(path, old)
        os.replace(new, path)
        old.unlink(missing_ok=True)
    else:
        os.replace(new, path)


def read_metrics(warehouse: str | Path, channel: str | None = None) -> dict[str, Any]:
    """``metrics.json`` as a dict keyed by channel, or one channel's diagnostics when ``channel`` is given.

    Raises
    ------
    WarehouseError : no metrics file, or no entry for ``channel``.
    """
    path = metrics_path(warehouse)
    if not path.is_file():
        raise WarehouseError("warehouse has no propensity metrics", where=str(path), fix=_fit_hint(warehouse, channel or "vote"))
    metrics = json.loads(path.read_text())
    if channel is None:
        return metrics
    if channel not in metrics:
        raise WarehouseError(
            f"no propensity metrics for channel {channel!r} (fitted: {sorted(metrics)})", where=str(path), fix=_fit_hint(warehouse, channel)
        )
    return metrics[channel]


def write_metrics(warehouse: str | Path, channel: str, diagnostics: dict[str, Any]) -> Path:
    """Set ``metrics.json[channel]`` (other channels are kept)."""
    path = metrics_path(warehouse)
    path.parent.mkdir(parents=True, exist_ok=True)
    metrics = json.loads(path.read_text()) if path.is_file() else {}
    metrics[channel] = diagnostics
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(metrics, indent=2, sort_keys=False, allow_nan=False) + "\n")
    os.replace(tmp, path)
    return path


def json_safe(value: Any) -> Any:
    """NaN / inf -> None, numpy scalars -> Python, recursively, so the JSON we write is strict JSON."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
