"""The audit's inputs when the feedback table is larger than its memory budget (issue 23).

One streamed DuckDB pass over the feedback table joined with the channel's propensities (and the
label-aware ones when fitted) fills compact per-exposure arrays (observed, label, solicited,
propensity: about 20 bytes an exposure), from which every headline number, the reliability
diagram, the weights, the histograms and the naive / IPS / SNIPS estimates are computed over all
exposures, exactly as in memory. The balance table and the segment tables need the feature columns
of every row; they use a uniform sample instead (a Bernoulli draw on a seeded hash of exposure_id;
as many rows as the budget leaves, :func:`sample_rows`, at most ``max_rows``), and the report says so
under ``sample``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from schemas.errors import WarehouseError
from schemas.feedback import CHANNELS

_SAMPLE_SALT = 0xA0D1
# The per-exposure arrays (observed, label, slice flag, two propensities) and their transient copies.
_BYTES_PER_EXPOSURE = 40
# Columns no audit section reads: the texts are most of a feedback row's bytes.
_TEXT_COLUMNS = ("prompt_text", "response_text")


@dataclass(frozen=True, kw_only=True)
class AuditInputs:
    """``frame``: every exposure's observed, label, solicited, propensity (no other column);
    ``label_aware``: P(o=1 | x, r) at each row's own vote, or None; ``sample``: the sampled rows with
    every non-text feedback column plus ``propensity`` / ``label_aware_propensity``."""

    frame: pl.DataFrame
    label_aware: np.ndarray | None
    sample: pl.DataFrame
    sample_note: dict[str, Any]
    feedback_columns: list[str]


def sample_rows(plan: dict[str, Any]) -> int:
    """Rows of the balance / segment sample: what is left of the budget once DuckDB has its half and
    every exposure its ``_BYTES_PER_EXPOSURE``, at the fit's bytes per row, and at most ``max_rows``."""
    from propensity.models.casecontrol import BASE_BYTES, BYTES_PER_ROW, MIN_SAMPLE_ROWS

    left = plan["memory_limit_bytes"] // 2 - BASE_BYTES - int(plan["n_rows"]) * _BYTES_PER_EXPOSURE
    return int(min(plan["max_rows"], max(MIN_SAMPLE_ROWS, left // BYTES_PER_ROW)))


def read_audit_inputs(warehouse: Path, channel: str, plan: dict[str, Any], *, label_aware: bool, seed: int = 0,
                      batch_rows: int = 200_000) -> AuditInputs:
    """Stream the warehouse into :class:`AuditInputs` (module docstring)."""
    from feedback_etl.io import feedback_dataset, feedback_files
    from propensity.io import score_files as channel_score_files
    from propensity.io import sql_file_list
    from propensity.models.casecontrol import SampleRates, detached, feedback_connection, join_partitions, keep_mask, partitioned_batches
    from propensity.slice.label_aware import label_aware_scores_path

    score_files, has_channel = channel_score_files(warehouse, channel)
    la_path = label_aware_scores_path(warehouse)
    with_label_aware = label_aware and la_path.is_file()
    dataset = feedback_dataset(warehouse)
    names = [c for c in dataset.schema.names if c not in _TEXT_COLUMNS]
    n = int(plan["n_rows"])
    rate = min(1.0, sample_rows(plan) / n) if n else 1.0
    observed_all, solicited_all = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    label_all = np.full(n, -1, dtype=np.int8)
    p_all, la_all = np.full(n, np.nan), (np.full(n, np.nan) if with_label_aware else None)
    sample_parts: list[pl.DataFrame] = []
    offset = 0

    budget = plan["memory_limit_bytes"] // 2
    with feedback_connection(feedback_files(warehouse), dataset.schema, memory_limit_bytes=budget,
                             prefix="causalrm-audit-") as (con, links):
        where = f"WHERE channel = '{channel}'" if has_channel else ""
        flag = CHANNELS[channel]
        observed = 'f."observed"' if channel == "vote" else f'f."{flag}"'
        label = 'f."label"' if channel == "vote" else "CAST(NULL AS TINYINT)"
        selected = ", ".join(f'f."{c}"' for c in names if c not in ("observed", "label"))
        la_join, la_select = "", ""
        if with_label_aware:
            la_join = (f"LEFT JOIN (SELECT * FROM read_parquet({sql_file_list([la_path], links)}) WHERE channel = '{channel}' AND {{part}}) la "
                       "ON la.exposure_id = f.exposure_id")
            la_select = (""", CASE WHEN f.solicited THEN la.propensity
                WHEN f.observed AND f.label = 1 THEN la.propensity_label1
                WHEN f.observed AND f.label = 0 THEN la.propensity_label0
                ELSE la.propensity_context END AS label_aware_propensity""")
        # One pass per partition of the exposures when the score tables' hash tables would not fit
        # DuckDB's share (join_partitions; at 30M exposures with label-aware scores, three passes took
        # 52 CPU s where one spilled join took 105). {part} is the pass's predicate on exposure_id.
        where = f"{where} AND {{part}}" if where else "WHERE {part}"
        query = f"""
            SELECT {selected}, {observed} AS observed, {label} AS label, s.propensity{la_select}
            FROM (SELECT * FROM feedback WHERE {{part}}) f
            LEFT JOIN (SELECT exposure_id, propensity FROM read_parquet({sql_file_list(score_files, links)}) {where}) s
                ON s.exposure_id = f.exposure_id
            {la_join}
        """
        parts = join_partitions(n, budget, tables=2 if with_label_aware else 1)
        for batch in partitioned_batches(con, query, parts, batch_rows):
            frame = pl.from_arrow(batch)
            rows = slice(offset, offset + frame.height)
            if offset + frame.height > n:
                raise WarehouseError("the feedback table changed while it was read", where=str(warehouse / "feedback"),
                                     fix="run `causalrm audit` again once the ingest is done")
            observed_all[rows] = frame["observed"].fill_null(False).to_numpy()
            label_all[rows] = frame["label"].fill_null(-1).cast(pl.Int8).to_numpy()
            if "solicited" in frame.columns:
                solicited_all[rows] = frame["solicited"].fill_null(False).to_numpy()
            p_all[rows] = frame["propensity"].cast(pl.Float64).fill_null(np.nan).to_numpy()
            if la_all is not None:
                la_all[rows] = frame["label_aware_propensity"].cast(pl.Float64).fill_null(np.nan).to_numpy()
            keep = keep_mask(frame["exposure_id"], observed_all[rows], SampleRates(observed=rate, unobserved=rate), seed,
                             salt=_SAMPLE_SALT)
            if keep.any():
                sample_parts.append(detached(frame.filter(pl.Series(keep))))
            offset += frame.height
    if offset != n:
        raise WarehouseError(f"the feedback table changed while it was read ({n:,} rows counted, {offset:,} read)",
                             where=str(warehouse / "feedback"), fix="run `causalrm audit` again once the ingest is done")
    label_series = pl.Series("label", label_all).replace(-1, None)
    full = pl.DataFrame({
        "observed": observed_all,
        "label": label_series.cast(pl.Int8),
        "solicited": solicited_all,
        "propensity": pl.Series(p_all).fill_nan(None),
    })
    if "solicited" not in names:
        full = full.drop("solicited")
    sample = pl.concat(sample_parts, how="vertical_relaxed") if sample_parts else pl.DataFrame()
    note = {
        "sections": ["balance", "segments"],
        "n": sample.height, "rate": rate,
        "note": f"covariate balance and segment tables on a uniform sample of {sample.height:,} of {n:,} exposures (seeded hash "
                "of exposure_id); every other number covers every exposure",
    }
    return AuditInputs(frame=full, label_aware=la_all, sample=sample, sample_note=note,
                       feedback_columns=[c for c in names if c in sample.columns])
