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
   on the unobserved rows, so they equal the in-memory fit's (tests/propensity/test_streamed_chain.py).
3. **Scoring pass**: every exposure, in batches sorted by exposure_id, gets m(x) from its fold's
   model and the output columns; ``scores_label_aware.parquet`` is written batch by batch.

Memory: the core rows' features (organic votes plus slice: 2% of the exposures on the public
ratings data), one batch, and DuckDB's buffer (half the budget, spilling beyond it). It grows with
the number of votes, not of exposures; the estimator samples nothing (a context refit does, below).

Also covered (issues 17 and 23):

* the context fit's side-feature files (``--user-features`` / ``--item-features``): DuckDB left-joins
  their columns to every row on their keys (``streamed_inputs(side_tables=...)``), so the outcome
  model reads the columns the context fit read, with the whole table's levels, as in memory;
* a multi-level label (``--label-column rating``): the column is read with the core rows, the
  multiclass fold models (:func:`propensity.slice.multilevel.fit_multiclass_models`) are fitted on
  them and score each batch; every observed value is a core row's, so the codes are the same;
* context scores from ``causalrm propensity score`` (fold -1): every exposure is regrouped by user
  from the users' exposure counts (:func:`user_folds`), the folds ``group_folds`` gives in memory;
* refitting the context model on organic rows (a context fit that counted solicited votes as
  feedback, or ``--refit-context always``): a case-control propensity fit with the context fit's
  config under the same budget (``label_aware._refit_context_streamed``), so the refit **samples**
  the organic unobserved rows (and the organic votes when they alone would fill half the budget),
  corrected exactly as ``propensity fit`` does; its rates are in ``label_aware.json``
  (``context.sampling``). It is the one part that is not equal to the in-memory fit, only close
  (tests/propensity/test_label_aware_refit.py); a context fit with ``--id-encodings`` is refused.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from schemas.errors import WarehouseError


@dataclass(frozen=True, kw_only=True)
class TableFacts:
    """The whole table's counts and levels, from DuckDB aggregates (no rows held)."""

    n_rows: int
    n_organic: int
    missing_context: int
    min_fold: int
    max_fold: int
    folds: list[int]
    categorical_levels: dict[str, list[str]]
    strata_levels: list[str]


class StreamedInputs:
    """A DuckDB view ``joined`` of the feedback table (all columns), the context fit's ``propensity``
    and ``fold``, and ``embedding`` when the context fit used WH/embeddings."""

    def __init__(self, con: Any, columns: list[str], *, has_embeddings: bool, dataset: Any = None,
                 side_tables: list[Any] | None = None, side_warnings: list[str] | None = None) -> None:
        self.con, self.dataset = con, dataset
        self.columns = columns
        self.has_embeddings = has_embeddings
        self.side_tables = list(side_tables or [])
        self.side_warnings = list(side_warnings or [])  # the side files' key checks, as join_entity_features words them

    def head(self, rows: int = 10_000) -> pl.DataFrame:
        """The feedback table's first rows with the side files' columns (what ``select_features`` looks at)."""
        from propensity.models.entity_features import join_side_columns

        narrow = [c for c in self.columns if c not in ("prompt_text", "response_text")]
        return join_side_columns(pl.from_arrow(self.dataset.head(rows, columns=narrow)), self.side_tables)

    def facts(self, categorical: tuple[str, ...], strata: str | None) -> TableFacts:
        n, organic, missing, min_fold, max_fold = self.con.execute(
            "SELECT count(*), count(*) FILTER (WHERE NOT coalesce(solicited, false)), count(*) FILTER (WHERE propensity IS NULL), "
            "coalesce(min(fold), 0), coalesce(max(fold), 0) FROM joined"
        ).fetchone()
        folds = sorted(int(r[0]) for r in self.con.execute("SELECT DISTINCT fold FROM joined WHERE fold IS NOT NULL").fetchall())
        levels = {c: self._levels(c, nulls=False) for c in categorical}
        strata_levels = self._levels(strata, nulls=True) if strata else ["all"]
        return TableFacts(n_rows=int(n), n_organic=int(organic), missing_context=int(missing), min_fold=int(min_fold),
                          max_fold=int(max_fold), folds=folds, categorical_levels=levels, strata_levels=strata_levels)

    def user_counts(self) -> pl.DataFrame:
        """``user_id`` (sorted as :func:`propensity.models.crossfit.group_folds` sorts them) and ``n``, its exposures."""
        counts = pl.from_arrow(self.con.sql("SELECT CAST(user_id AS VARCHAR) AS user_id, count(*) AS n FROM feedback GROUP BY 1")
                               .to_arrow_table())
        return counts.sort("user_id")

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
                    memory_limit_bytes: int, context_files: list[Path] | None = None,
                    user_folds: pl.DataFrame | None = None, side_tables: list[Any] | None = None) -> Iterator[StreamedInputs]:
    """Open :class:`StreamedInputs` over the warehouse's current feedback version (see the module docstring).

    ``context_files``: Parquet files of the context propensities (exposure_id, propensity, fold; a
    context refit's) instead of the channel's ``scores.parquet``. ``user_folds`` (user_id, fold):
    every row's fold is its user's (context scores without folds), not the scores' fold.
    ``side_tables``: the context fit's side-feature files (:class:`propensity.models.entity_features.EntityTable`),
    whose columns DuckDB left-joins on their keys, as ``propensity fit`` joins them in memory; the key
    checks of :func:`~propensity.models.entity_features.join_entity_features` run in DuckDB too."""
    from feedback_etl.io import feedback_dataset, feedback_files
    from propensity.io import score_files as channel_score_files
    from propensity.io import sql_file_list
    from propensity.models.casecontrol import feedback_connection
    from propensity.models.entity_features import check_side_columns

    if context_files is None:
        score_files, has_channel = channel_score_files(warehouse, channel)
    else:
        score_files, has_channel = list(context_files), False
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
        fold, fold_join = "s.fold", ""
        if user_folds is not None:
            con.register("user_folds", user_folds.select(pl.col("user_id").cast(pl.Utf8), pl.col("fold").cast(pl.Int32)).to_arrow())
            fold, fold_join = "u.fold", "LEFT JOIN user_folds u ON u.user_id = CAST(f.user_id AS VARCHAR)"
        side_tables = list(side_tables or [])
        check_side_columns(dataset.schema.names, side_tables)
        side_warnings = _side_key_warnings(con, side_tables)
        for i, table in enumerate(side_tables):
            names = [*table.categorical, *table.numeric]
            con.register(f"side_{i}", table.frame.select(table.key, *names).to_arrow(compat_level=pl.CompatLevel.oldest()))
            extra += "".join(f', side{i}."{n}"' for n in names)
            fold_join += f' LEFT JOIN side_{i} side{i} ON side{i}."{table.key}" = CAST(f."{table.key}" AS VARCHAR)'
        in_slice = "FALSE"
        if slice_ids is not None and slice_ids.height:
            con.register("slice_ids", slice_ids.select("exposure_id").to_arrow())
            in_slice = "f.exposure_id IN (SELECT exposure_id FROM slice_ids)"
        con.execute(f"""
            CREATE TEMP VIEW joined AS
            SELECT f.*, s.propensity, {fold} AS fold{extra}, {in_slice} AS _in_slice_file
            FROM feedback f LEFT JOIN scores s ON s.exposure_id = f.exposure_id {joins} {fold_join}
        """)
        yield StreamedInputs(con, list(dataset.schema.names), has_embeddings=bool(embedding_files), dataset=dataset,
                             side_tables=side_tables, side_warnings=side_warnings)


def _side_key_warnings(con: Any, tables: list[Any]) -> list[str]:
    """The key checks of :func:`propensity.models.entity_features.join_entity_features`, by DuckDB over
    the whole table (no rows held): no key matching an exposure is an error; exposures without a row,
    file rows matching no exposure and constant columns are warnings."""
    import logging

    from schemas.errors import InputFileError

    if not tables:
        return []
    n_rows = con.execute("SELECT count(*) FROM feedback").fetchall()[0][0]  # fetchall: no result left open
    warnings: list[str] = []
    for i, table in enumerate(tables):
        con.register(f"side_keys_{i}", table.frame.select(table.key).to_arrow(compat_level=pl.CompatLevel.oldest()))
        matched, used = con.execute(
            f'SELECT count(*), count(DISTINCT k."{table.key}") FROM feedback f '
            f'JOIN side_keys_{i} k ON k."{table.key}" = CAST(f."{table.key}" AS VARCHAR)').fetchall()[0]
        con.unregister(f"side_keys_{i}")
        if matched == 0:
            raise InputFileError(f"no {table.key} of the file matches an exposure", where=f"{table.path}, column {table.key}",
                                 fix=f"key the file by the warehouse's {table.key} values (pseudonymised ids need the same key)")
        if matched < n_rows:
            warnings.append(f"{n_rows - matched:,} of {n_rows:,} exposures have no row in {table.path}: their side features are null")
        if used < table.frame.height:
            warnings.append(f"{table.frame.height - used:,} of {table.frame.height:,} rows of {table.path} match no exposure")
        for name in (*table.categorical, *table.numeric):
            if table.frame[name].drop_nulls().n_unique() <= 1:
                warnings.append(f"side feature {name!r} of {table.path} holds at most one value: it carries no information")
    for message in warnings:
        logging.getLogger(__name__).warning("propensity features: %s", message)
    return warnings


def check_streamable(facts: TableFacts, *, warehouse: Path) -> None:
    """An empty table, or exposures without a context propensity, as one clear error each (as in memory)."""
    if facts.n_rows == 0:
        raise WarehouseError("feedback table is empty", where=str(warehouse / "feedback"), fix="ingest logs first")
    if facts.missing_context:
        raise WarehouseError(
            f"{facts.missing_context:,} exposures have no context propensity", where="propensity/scores.parquet",
            fix=f"rerun `causalrm propensity fit {warehouse}` after the latest ingest",
        )


def user_folds(counts: pl.DataFrame, n_folds: int, seed: int) -> pl.DataFrame:
    """(user_id, fold): the folds :func:`propensity.models.crossfit.group_folds` gives every row in
    memory, from the users' exposure counts (``counts`` sorted by user_id, :meth:`StreamedInputs.user_counts`)."""
    from propensity.models.crossfit import assign_user_folds

    return counts.select("user_id", fold=pl.Series(assign_user_folds(counts["n"].to_numpy(), n_folds, seed), dtype=pl.Int32))


def strata_codes(frame: pl.DataFrame, column: str | None, levels: list[str]) -> np.ndarray:
    """Codes of ``frame[column]`` in the whole table's sorted ``levels`` (as ``_strata_codes``)."""
    if column is None:
        return np.zeros(frame.height, dtype=np.int64)
    values = frame[column].cast(pl.Utf8).fill_null("<null>")
    return values.replace_strict(levels, list(range(len(levels))), return_dtype=pl.Int64).to_numpy()
