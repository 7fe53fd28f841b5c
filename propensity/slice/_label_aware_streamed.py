"""``fit-label-aware`` on a feedback table larger than its memory budget (issue 23).

The label-aware estimator only learns from two kinds of rows: organic votes (the outcome model
m(x) = P(r | x, o = 1) is fitted on them, the mean-label estimates and the bootstrap run over them)
and the randomized slice (the moment equations for gamma). Unobserved organic exposures only need
their outputs computed: p(x) from the context fit and m(x) from the fold model of their fold. So:

1. **Core pass** (DuckDB, out of core): the rows that are organic votes, solicited, or in the
   slice file, with their features, sorted by exposure_id; plus the whole table's counts, folds,
   categorical levels and strata levels (so features and strata codes are those of an in-memory fit).
2. **Fit** on the core rows exactly as the in-memory fit does on the whole table: the same fold
   models of m(x) (trained on the same organic votes, with the whole table's categorical levels),
   the same slice, moment equations, bootstrap and clipping. The estimator's results do not depend
   on the unobserved rows, so they equal the in-memory fit's (tests/propensity/test_label_aware_streamed.py).
3. **Scoring pass**: every exposure, in batches sorted by exposure_id, gets m(x) from its fold's
   model and the output columns; ``scores_label_aware.parquet`` is written batch by batch.

Memory: the core rows' features (organic votes plus slice: 2% of the exposures on the public
ratings data), one batch, and DuckDB's buffer (half the budget, spilling beyond it). It grows with
the number of votes, not of exposures; nothing here samples the votes.

Not covered (one clear error each): refitting the context model on organic rows (a context fit
that counted solicited votes as feedback, or ``--refit-context always``), and context scores from
``causalrm propensity score`` (fold -1): rerun ``causalrm propensity fit`` first, which excludes
solicited rows and records its folds.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from schemas.errors import ConfigError, WarehouseError


@dataclass(frozen=True, kw_only=True)
class TableFacts:
    """The whole table's counts and levels, from DuckDB aggregates (no rows held)."""

    n_rows: int
    n_organic: int
    missing_context: int
    min_fold: int
    folds: list[int]
    categorical_levels: dict[str, list[str]]
    strata_levels: list[str]


class StreamedInputs:
    """A DuckDB view ``joined`` of the feedback table (all columns), the context fit's ``propensity``
    and ``fold``, and ``embedding`` when the context fit used WH/embeddings."""

    def __init__(self, con: Any, columns: list[str], *, has_embeddings: bool, dataset: Any = None) -> None:
        self.con, self.dataset = con, dataset
        self.columns = columns
        self.has_embeddings = has_embeddings

    def head(self, rows: int = 10_000) -> pl.DataFrame:
        """The feedback table's first rows, no join (what ``select_features`` looks at)."""
        narrow = [c for c in self.columns if c not in ("prompt_text", "response_text")]
        return pl.from_arrow(self.dataset.head(rows, columns=narrow))

    def facts(self, categorical: tuple[str, ...], strata: str | None) -> TableFacts:
        n, organic, missing, min_fold = self.con.execute(
            "SELECT count(*), count(*) FILTER (WHERE NOT coalesce(solicited, false)), count(*) FILTER (WHERE propensity IS NULL), "
            "coalesce(min(fold), 0) FROM joined"
        ).fetchone()
        folds = sorted(int(r[0]) for r in self.con.execute("SELECT DISTINCT fold FROM joined WHERE fold IS NOT NULL").fetchall())
        levels = {c: self._levels(c, nulls=False) for c in categorical}
        strata_levels = self._levels(strata, nulls=True) if strata else ["all"]
        return TableFacts(n_rows=int(n), n_organic=int(organic), missing_context=int(missing), min_fold=int(min_fold), folds=folds,
                          categorical_levels=levels, strata_levels=strata_levels)

    def _levels(self, column: str, *, nulls: bool) -> list[str]:
        """Sorted distinct values of ``column`` as polars casts them to strings ("<null>" for null when ``nulls``)."""
        values = pl.from_arrow(self.con.sql(f'SELECT DISTINCT "{column}" AS v FROM joined').to_arrow_table())["v"]
        values = values.cast(pl.Utf8)
        values = values.fill_null("<null>") if nulls else values.drop_nulls()
        return sorted(set(values.to_list()))

    def batches(self, batch_rows: int, columns: list[str], *, where: str = "TRUE") -> Iterator[pl.DataFrame]:
        """``columns`` of the rows of ``joined`` matching ``where``, sorted by exposure_id, ``batch_rows``
        at a time (only those columns are read and sorted: the texts stay on disk)."""
        selected = ", ".join(f'"{c}"' for c in dict.fromkeys(["exposure_id", *columns]))
        reader = self.con.sql(f"SELECT {selected} FROM joined WHERE {where} ORDER BY exposure_id").to_arrow_reader(batch_rows)
        for batch in reader:
            if batch.num_rows:
                yield pl.from_arrow(batch)


@contextmanager
def streamed_inputs(warehouse: Path, *, channel: str, embeddings: bool, slice_ids: pl.DataFrame | None,
                    memory_limit_bytes: int) -> Iterator[StreamedInputs]:
    """Open :class:`StreamedInputs` over the warehouse's current feedback version (see the module docstring)."""
    from feedback_etl.io import feedback_dataset, feedback_files
    from propensity.io import score_files as channel_score_files
    from propensity.io import sql_file_list
    from propensity.models.casecontrol import feedback_connection

    score_files, has_channel = channel_score_files(warehouse, channel)
    embedding_files = sorted((warehouse / "embeddings").glob("*.parquet")) if embeddings else []
    dataset = feedback_dataset(warehouse)
    with feedback_connection(feedback_files(warehouse), dataset.schema, memory_limit_bytes=memory_limit_bytes,
                             prefix="causalrm-labelaware-") as (con, links):
        files = sql_file_list(score_files, links)
        where = f"WHERE channel = '{channel}'" if has_channel else ""
        con.execute(f"""
            CREATE TEMP VIEW scores AS
            SELECT exposure_id, propensity, fold FROM read_parquet({files}) {where}
        """)
        joins, extra = "", ""
        if embedding_files:
            emb = sql_file_list(embedding_files, links)
            con.execute(f"""
                CREATE TEMP VIEW embeddings AS
                SELECT exposure_id, embedding FROM read_parquet({emb}, filename = true, file_row_number = true)
                QUALIFY row_number() OVER (PARTITION BY exposure_id ORDER BY filename DESC, file_row_number DESC) = 1
            """)
            joins, extra = "LEFT JOIN embeddings e ON e.exposure_id = f.exposure_id", ", e.embedding"
        in_slice = "FALSE"
        if slice_ids is not None and slice_ids.height:
            con.register("slice_ids", slice_ids.select("exposure_id").to_arrow())
            in_slice = "f.exposure_id IN (SELECT exposure_id FROM slice_ids)"
        con.execute(f"""
            CREATE TEMP VIEW joined AS
            SELECT f.*, s.propensity, s.fold{extra}, {in_slice} AS _in_slice_file
            FROM feedback f LEFT JOIN scores s ON s.exposure_id = f.exposure_id {joins}
        """)
        yield StreamedInputs(con, list(dataset.schema.names), has_embeddings=bool(embedding_files), dataset=dataset)


def check_streamable(facts: TableFacts, *, refit: bool, warehouse: Path) -> None:
    """The cases a streamed fit leaves out (module docstring), as one clear error each."""
    if facts.n_rows == 0:
        raise WarehouseError("feedback table is empty", where=str(warehouse / "feedback"), fix="ingest logs first")
    if facts.missing_context:
        raise WarehouseError(
            f"{facts.missing_context:,} exposures have no context propensity", where="propensity/scores.parquet",
            fix=f"rerun `causalrm propensity fit {warehouse}` after the latest ingest",
        )
    if refit:
        raise ConfigError(
            "a label-aware fit of a table above the memory budget reuses the context fit's propensities; this one would "
            "refit the context model on organic rows", where="--refit-context / --memory-limit",
            fix=f"rerun `causalrm propensity fit {warehouse}` (it leaves solicited rows out), or raise --memory-limit / --max-rows",
        )
    if facts.min_fold < 0:
        raise ConfigError(
            "some context propensities come from `causalrm propensity score` (no cross-fitting fold); a label-aware fit above "
            "the memory budget needs the folds of the fit", where="propensity/scores.parquet",
            fix=f"rerun `causalrm propensity fit {warehouse}`, or raise --memory-limit / --max-rows",
        )


def strata_codes(frame: pl.DataFrame, column: str | None, levels: list[str]) -> np.ndarray:
    """Codes of ``frame[column]`` in the whole table's sorted ``levels`` (as ``_strata_codes``)."""
    if column is None:
        return np.zeros(frame.height, dtype=np.int64)
    values = frame[column].cast(pl.Utf8).fill_null("<null>")
    return values.replace_strict(levels, list(range(len(levels))), return_dtype=pl.Int64).to_numpy()
