"""``fit-label-aware`` on a feedback table larger than its memory budget (issue 23).

The label-aware estimator only learns from two kinds of rows: organic votes (the outcome model
m(x) = P(r | x, o = 1) is fitted on them, the mean-label estimates and the bootstrap run over them)
and the randomized slice (the moment equations for gamma). Unobserved organic exposures only need
their outputs computed: p(x) from the context fit and m(x) from the fold model of their fold. So:

1. **Core pass** (DuckDB, out of core): the rows that are organic votes, solicited, or in the
   slice file, sorted by exposure_id, read in batches and kept as compact arrays (:class:`CoreRows`:
   flags, label code, stratum, fold, context propensity; the slice's rows with their ids), plus the
   features of the rows the outcome model needs; and the whole table's counts, folds, categorical
   levels and strata levels (so features and strata codes are those of an in-memory fit).
2. **Fit** on the core rows as the in-memory fit does on the whole table: the same fold models of
   m(x) (trained on the organic votes of the other folds, with the whole table's categorical
   levels), the same slice, moment equations, bootstrap and clipping, over compact per-row arrays.
   The estimator's results do not depend on the unobserved rows, so they equal the in-memory fit's
   (tests/propensity/test_streamed_chain.py) **unless the votes are sampled** (below).
3. **Scoring pass**: every exposure, in batches sorted by exposure_id, gets m(x) from its fold's
   model and the output columns (an organic vote's interval bounds come from the fit, in the same
   order); ``scores_label_aware.parquet`` is written batch by batch.

Memory (:func:`vote_plan`): the interpreter, DuckDB's share (a quarter of the budget, spilling
beyond it), about :data:`BYTES_PER_CORE_ROW` per core row (organic votes plus slice: 22% of the
exposures in the simulator, 2% on the public ratings data) and the features of the outcome model's
training rows. When every core row's features fit, they are all held and nothing is sampled. When
they do not (or the config's ``max_votes`` is below the votes), the fold models train on a **uniform sample of
the organic votes** sized from what the budget leaves (a uniform sample is an unbiased training
set for P(r | x, o=1); each fold's share of it is uniform too), and every core row's m(x) is
predicted in a second pass over the core rows; the mean-label estimates, the moment equations and
the bootstrap still see every vote. ``label_aware.json`` records the sample
(``outcome_model.sampling``) and the plan (``memory.votes``). The per-row arrays grow with the
number of votes (0.2 KB each): a budget that cannot hold them is exceeded, not refused.

Also covered (issues 17 and 23):

* the context fit's side-feature files (``--user-features`` / ``--item-features``): DuckDB left-joins
  their columns to every row on their keys (``streamed_inputs(side_tables=...)``), so the outcome
  model reads the columns the context fit read, with the whole table's levels, as in memory;
* a multi-level label (``--label-column rating``): the column is read with the core rows, the
  multiclass fold models (:func:`propensity.slice.multilevel.fit_multiclass_models`) are fitted on
  them and score each batch; every observed value is a core row's, so the codes are the same (its
  bootstrap keeps replicates x votes bounds, so its memory is not bounded by the vote sample);
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


# The core rows (module docstring): organic votes, solicited rows, rows of the slice file.
CORE_WHERE = "coalesce(solicited, false) OR coalesce(observed, false) OR _in_slice_file"


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
    n_votes: int = 0  # organic votes (observed, not solicited)
    n_core: int = 0  # core rows: organic votes, solicited rows and slice-file rows


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
        """The feedback table's first rows with the side files' columns (what ``select_features`` looks at),
        read without pyarrow's row-group buffering (1.2 GB for 1M-row row groups otherwise, issue 23)."""
        from propensity.models.casecontrol import _head
        from propensity.models.entity_features import join_side_columns

        return join_side_columns(pl.from_arrow(_head(self.dataset, rows)), self.side_tables)

    def facts(self, categorical: tuple[str, ...], strata: str | None) -> TableFacts:
        """Counts and levels. Only what needs the context scores (missing propensities, folds) reads
        ``joined``, in one pass; the rest reads the feedback table alone (``own``): ``joined`` is a
        left join on exposure_id with one score row per exposure, so it has the same rows, and each
        query over it built a hash table of every score (2 GB at 30M exposures)."""
        n, organic, votes, core = self.con.execute(
            "SELECT count(*), count(*) FILTER (WHERE NOT coalesce(solicited, false)), "
            "count(*) FILTER (WHERE coalesce(observed, false) AND NOT coalesce(solicited, false)), "
            f"count(*) FILTER (WHERE {CORE_WHERE}) FROM own"
        ).fetchall()[0]
        missing, min_fold, max_fold, folds = self.con.execute(
            "SELECT count(*) FILTER (WHERE propensity IS NULL), coalesce(min(fold), 0), coalesce(max(fold), 0), "
            "list(DISTINCT fold) FILTER (WHERE fold IS NOT NULL) FROM joined"
        ).fetchall()[0]
        folds = sorted(int(f) for f in folds or [])
        levels = {c: self._levels(c, nulls=False) for c in categorical}
        strata_levels = self._levels(strata, nulls=True) if strata else ["all"]
        return TableFacts(n_rows=int(n), n_organic=int(organic), missing_context=int(missing), min_fold=int(min_fold),
                          max_fold=int(max_fold), folds=folds, categorical_levels=levels, strata_levels=strata_levels,
                          n_votes=int(votes), n_core=int(core))

    def user_counts(self) -> pl.DataFrame:
        """``user_id`` (sorted as :func:`propensity.models.crossfit.group_folds` sorts them) and ``n``, its exposures."""
        counts = pl.from_arrow(self.con.sql("SELECT CAST(user_id AS VARCHAR) AS user_id, count(*) AS n FROM feedback GROUP BY 1")
                               .to_arrow_table())
        return counts.sort("user_id")

    def _levels(self, column: str, *, nulls: bool) -> list[str]:
        """Sorted distinct values of ``column`` as polars casts them to strings ("<null>" for null when ``nulls``)."""
        source = "own" if column in self.columns else "joined"  # a side file's column is joined in
        values = pl.from_arrow(self.con.sql(f'SELECT DISTINCT "{column}" AS v FROM {source}').to_arrow_table())["v"]
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
        # own: the feedback rows alone (the table facts that need no score read it); joined: with the scores
        con.execute(f"CREATE TEMP VIEW own AS SELECT f.*, {in_slice} AS _in_slice_file FROM feedback f")
        con.execute(f"""
            CREATE TEMP VIEW joined AS
            SELECT f.*, s.propensity, {fold} AS fold{extra}
            FROM own f LEFT JOIN scores s ON s.exposure_id = f.exposure_id {joins} {fold_join}
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


# ------------------------------------------------------------------ the core rows, compact (issue 23)

# Bytes held per core row (an organic vote or a slice row) while the estimator runs: its compact
# arrays (flags, label code, stratum, fold, context propensity: 30 bytes), its outcome m(x) (16), the
# estimator's peak (137 measured: propensities by label raw and clipped, their interval, the votes'
# own-label inputs of the bootstrap) and the votes' interval bounds kept for the scoring pass (16).
# The training rows' features are freed before it runs; the plan counts both, as if held together.
BYTES_PER_CORE_ROW = 200
# DuckDB's share of the budget once the core rows are read (it spills beyond it).
DUCKDB_SHARE = 4
# The outcome model trains on this many votes at least, whatever the budget.
MIN_TRAIN_VOTES = 10_000
# Seed offset of the vote sample's hash draw (independent of the case-control sample's).
_VOTE_SALT = 0x707E


def duckdb_bytes(memory_limit_bytes: int) -> int:
    """DuckDB's memory limit in the streamed fit's passes after the first: a quarter of the budget."""
    return int(max(64 * 2**20, memory_limit_bytes // DUCKDB_SHARE))


def vote_plan(*, memory_limit_bytes: int, n_core: int, n_votes: int, max_votes: int | None = None,
              embedding_dim: int = 0) -> dict[str, Any]:
    """How many organic votes the outcome model may train on, with their features held.

    The budget holds the interpreter (``BASE_BYTES``), DuckDB's share (:func:`duckdb_bytes`), the
    compact arrays of every core row (:data:`BYTES_PER_CORE_ROW`) and the training rows' features
    (``BYTES_PER_ROW`` each, as ``propensity fit`` plans them). When every core row's features fit
    (and ``max_votes`` allows every vote), nothing is sampled: the features of every core row are
    held, as before. Otherwise the outcome model's fold models train on a uniform sample of
    ``max_train`` organic votes (:data:`MIN_TRAIN_VOTES` at least) and every row's m(x) is
    predicted in a second pass.
    """
    from propensity.models.casecontrol import BASE_BYTES, BYTES_PER_EMBEDDING_DIM, BYTES_PER_ROW

    per_train = BYTES_PER_ROW + BYTES_PER_EMBEDDING_DIM * embedding_dim
    free = memory_limit_bytes - BASE_BYTES - duckdb_bytes(memory_limit_bytes) - n_core * BYTES_PER_CORE_ROW
    by_memory = int(max(MIN_TRAIN_VOTES, free // per_train))
    cap = by_memory if max_votes is None else min(by_memory, int(max_votes))
    sampled = n_core > by_memory or n_votes > cap
    return {"sampled": bool(sampled), "n_votes": int(n_votes), "n_core": int(n_core), "max_train": int(cap),
            "max_votes_option": max_votes, "free_bytes": int(free), "bytes_per_train_row": int(per_train),
            "bytes_per_core_row": BYTES_PER_CORE_ROW, "duckdb_bytes": duckdb_bytes(memory_limit_bytes)}


@dataclass(kw_only=True)
class CoreRows:
    """The core rows as compact arrays, in exposure_id order (issue 23).

    Attributes
    ----------
    slice_rows : frame of the core rows that are solicited or in the slice file (exposure_id,
        solicited, observed, label, the multi-level label column when read, ``_row``: position among
        the core rows): what the slice is built from.
    organic, observed, label, value, strata, folds, context : per core row (``value``: the multi-level
        label column as float64, None for the binary vote).
    X : the features of the ``held`` rows (positions among the core rows, increasing): every core row
        when nothing is sampled, else the sampled organic votes.
    sampling : what was sampled (``label_aware.json`` ``outcome_model.sampling``), None when nothing was.
    """

    slice_rows: pl.DataFrame
    organic: np.ndarray
    observed: np.ndarray
    label: np.ndarray
    value: np.ndarray | None
    strata: np.ndarray
    folds: np.ndarray
    context: np.ndarray
    X: Any
    held: np.ndarray
    sampling: dict[str, Any] | None

    @property
    def n(self) -> int:
        return len(self.organic)


def read_core(inputs: StreamedInputs, *, batch_rows: int, columns: list[str], plan: dict[str, Any], seed: int,
              strata: str | None, strata_levels: list[str], label_column: str | None, features: Any) -> CoreRows:
    """The core rows (:data:`CORE_WHERE`), batch by batch, as :class:`CoreRows`; ``features(frame)``
    builds a feature frame (pandas, fixed levels). Nothing of a batch is kept but its compact arrays,
    its slice rows and the features of its held rows: every row's when ``plan`` (:func:`vote_plan`)
    samples nothing, else those of the organic votes whose hash falls under the sample's rate (a
    little above ``max_train / n_votes``), trimmed at the end to the ``max_train`` lowest hashes:
    a uniform sample of exactly ``min(max_train, votes)`` votes, whatever the batch order."""
    import pandas as pd

    from propensity.models.casecontrol import detached
    from propensity.models.crossfit import _take

    sampled, cap, n_votes = plan["sampled"], plan["max_train"], max(1, plan["n_votes"])
    # Bernoulli candidates at a rate 5 standard deviations above cap / votes, so that at least cap are drawn.
    rate = min(1.0, (cap + 5 * np.sqrt(cap) + 10) / n_votes)
    threshold = np.uint64(min(2**64 - 1, int(rate * 2.0**64)))
    parts: dict[str, list] = {k: [] for k in ("organic", "observed", "label", "value", "strata", "folds", "context", "held", "hash", "X",
                                              "slices")}
    offset = 0
    slice_columns = ["exposure_id", "solicited", "observed", "label", *([label_column] if label_column else [])]
    for batch in inputs.batches(batch_rows, [*columns, "_in_slice_file"], where=CORE_WHERE):
        solicited = batch["solicited"].fill_null(False).to_numpy().astype(bool)
        organic = ~batch["solicited"].to_numpy().astype(bool)
        observed = batch["observed"].to_numpy().astype(bool) & organic
        parts["organic"].append(organic)
        parts["observed"].append(observed)
        parts["label"].append(batch["label"].fill_null(0).to_numpy().astype(np.int64))
        if label_column:
            parts["value"].append(batch[label_column].cast(pl.Float64).to_numpy())
        parts["strata"].append(strata_codes(batch, strata, strata_levels))
        parts["folds"].append(batch["fold"].to_numpy())
        parts["context"].append(batch["propensity"].to_numpy().astype(np.float64))
        in_slice = solicited | batch["_in_slice_file"].fill_null(False).to_numpy().astype(bool)
        if in_slice.any():
            positions = pl.Series(offset + np.flatnonzero(in_slice), dtype=pl.Int64)
            parts["slices"].append(detached(batch.filter(pl.Series(in_slice)).select(*slice_columns, _row=positions)))
        if features is not None:
            if sampled:
                hashes = batch["exposure_id"].cast(pl.String).hash(seed=seed + _VOTE_SALT).to_numpy()
                keep = observed & (hashes < threshold)
                parts["hash"].append(hashes[keep])
            else:
                keep = np.ones(batch.height, dtype=bool)
            if keep.any():
                parts["X"].append(features(batch.filter(pl.Series(keep)) if sampled else batch))
                parts["held"].append(offset + np.flatnonzero(keep))
        offset += batch.height
        del batch

    def joined(key: str, dtype: Any) -> np.ndarray:
        pieces = parts.pop(key, None) or []  # released as they are joined: no second copy of every part held at the end
        return np.concatenate(pieces) if pieces else np.empty(0, dtype=dtype)

    held = joined("held", np.int64)
    X = pd.concat(parts["X"], ignore_index=True) if len(parts["X"]) > 1 else (parts["X"][0] if parts["X"] else None)
    parts["X"].clear()
    sampling = None
    if features is not None and sampled:
        hashes = joined("hash", np.uint64)
        if len(held) > cap:
            chosen = np.sort(np.argpartition(hashes, cap - 1)[:cap])  # the cap lowest hashes, in row order
            held, X = held[chosen], _take(X, chosen).reset_index(drop=True)
        total = int(sum(int(o.sum()) for o in parts["observed"]))
        sampling = {"method": "uniform sample of the organic votes (lowest seeded hashes of exposure_id)",
                    "votes_total": total, "votes_used": int(len(held)), "rate": len(held) / total if total else 1.0,
                    "seed": int(seed), "max_train": int(cap), "max_votes_option": plan.get("max_votes_option")}
    slices = pl.concat(parts["slices"]) if parts["slices"] else pl.DataFrame(
        schema={"exposure_id": pl.String, "solicited": pl.Boolean, "observed": pl.Boolean, "label": pl.Int8, "_row": pl.Int64})
    return CoreRows(slice_rows=slices, organic=joined("organic", bool), observed=joined("observed", bool), label=joined("label", np.int64),
                    value=joined("value", np.float64) if label_column else None, strata=joined("strata", np.int64),
                    folds=joined("folds", np.int32), context=joined("context", np.float64), X=X, held=held, sampling=sampling)
