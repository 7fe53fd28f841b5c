"""``noise estimate`` (anchor method) on a feedback table larger than its memory budget (issue 23).

The proxy preference model only trains on observed rows; the anchors need every exposure's score,
but only as compact arrays. So:

1. DuckDB (out of core) gives the whole table's statistics the proxy's features need (sorted
   categorical levels, numeric means and standard deviations, the distinct response texts for the
   n-gram vocabulary) and the users in id order: the feature map equals an in-memory fit's. The
   distinct texts are numbered in DuckDB and vectorised once; the scans carry each row's text
   number, not its text (:meth:`NoiseInputs.numbered_texts`).
2. The observed rows train the fold proxies exactly as in memory: each batch becomes its sparse
   feature rows at once (no text or id string is kept), stacked into one matrix. When those rows
   would not fit their share of the budget (:func:`proxy_row_budget`), a seeded uniform sample of
   them trains the proxies instead (``propensity.noise._proxy.proxy_sample``, recorded in
   noise.json as ``proxy.training_rows``); every exposure is still scored.
3. Every exposure is scored in batches sorted by exposure_id; kept per exposure: score, observed,
   label, 1/p, user code and segment code (about 30 bytes). The anchor rates, bootstrap and
   segments then run on those arrays with the in-memory code.

Memory: the training rows' sparse features (about 12 bytes per non-zero: 1 GB for 3M votes with
27 non-zeros each, hence the sample) and LightGBM's binned copy of a fold's rows, one batch, the
per-exposure arrays and the anchors' sorted copies (about 110 bytes per exposure), the distinct texts, and DuckDB's buffer
(half the budget). Issue 23 measured 8.5 GB at 15M exposures before the texts were numbered, the
feature rows built per batch and the bootstrap cut to the anchors' prefix.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from schemas.errors import WarehouseError


class NoiseInputs:
    """The DuckDB view ``joined`` (feedback columns, ``propensity`` and ``fold`` of the channel's
    context fit, ``embedding`` when asked for) and the queries a streamed estimate runs on it."""

    def __init__(self, con: Any, columns: list[str], memory_limit_mb: int) -> None:
        self.con, self.columns, self.memory_limit_mb = con, columns, memory_limit_mb

    def scalar_rows(self, query: str) -> list[tuple]:
        return self.con.execute(query).fetchall()

    def frame(self, query: str) -> pl.DataFrame:
        return pl.from_arrow(self.con.sql(query).to_arrow_table())

    def batches(self, columns: list[str], batch_rows: int, *, where: str = "TRUE", view: str = "joined") -> Iterator[pl.DataFrame]:
        selected = ", ".join(f'"{c}"' for c in dict.fromkeys(["exposure_id", *columns]))
        for batch in self.con.sql(f"SELECT {selected} FROM {view} WHERE {where} ORDER BY exposure_id").to_arrow_reader(batch_rows):
            if batch.num_rows:
                yield pl.from_arrow(batch)

    def release_buffers(self) -> None:
        """Make DuckDB hand back the memory it kept from the last query (a sort keeps its buffers up
        to the memory limit: 1.4 GB after the observed rows' scan at 15M exposures, held through the
        proxy fits; issue 23), by dropping its limit for a moment."""
        self.con.execute("SET memory_limit = '64MB'")
        self.con.execute(f"SET memory_limit = '{self.memory_limit_mb}MB'")

    def numbered_texts(self) -> list[str]:
        """The distinct response texts (a null as ``""``), and the view ``joined_text``: ``joined`` with
        ``_text_id``, each row's index in that list. The scans then sort and move a 4-byte number per
        row instead of its text (issue 23: the texts of every exposure were most of what DuckDB sorted)."""
        self.con.execute("""
            CREATE TEMP TABLE _texts AS
            SELECT t, CAST(row_number() OVER () - 1 AS INTEGER) AS text_id
            FROM (SELECT DISTINCT coalesce(response_text, '') AS t FROM feedback)
        """)
        self.con.execute("""
            CREATE TEMP VIEW joined_text AS
            SELECT j.*, x.text_id AS _text_id FROM joined j JOIN _texts x ON x.t = coalesce(j.response_text, '')
        """)
        return self.frame("SELECT t FROM _texts ORDER BY text_id")["t"].to_list()


@contextmanager
def noise_inputs(warehouse: Path, *, channel: str, with_scores: bool, embeddings: bool, audit: pl.DataFrame | None,
                 memory_limit_bytes: int) -> Iterator[NoiseInputs]:
    from feedback_etl.io import feedback_dataset, feedback_files
    from propensity.io import score_files as channel_score_files
    from propensity.io import sql_file_list
    from propensity.models.casecontrol import feedback_connection

    dataset = feedback_dataset(warehouse)
    with feedback_connection(feedback_files(warehouse), dataset.schema, memory_limit_bytes=memory_limit_bytes,
                             prefix="causalrm-noise-") as (con, links):

        def files(paths: list[Path]) -> str:
            return sql_file_list(paths, links)

        joins, extra = "", ", NULL::DOUBLE AS propensity, NULL::INTEGER AS fold"
        if with_scores:
            parts, has_channel = channel_score_files(warehouse, channel)
            where = f"WHERE channel = '{channel}'" if has_channel else ""
            con.execute(f"""
                CREATE TEMP VIEW scores AS
                SELECT exposure_id, propensity, fold FROM read_parquet({files(parts)}) {where}
            """)
            joins, extra = "LEFT JOIN scores s ON s.exposure_id = f.exposure_id", ", s.propensity, s.fold"
        embedding_files = sorted((warehouse / "embeddings").glob("*.parquet")) if embeddings else []
        if embedding_files:
            con.execute(f"""
                CREATE TEMP VIEW embeddings AS
                SELECT exposure_id, embedding FROM read_parquet({files(embedding_files)}, filename = true, file_row_number = true)
                QUALIFY row_number() OVER (PARTITION BY exposure_id ORDER BY filename DESC, file_row_number DESC) = 1
            """)
        # scored: the rows with their scores (the counts read it); joined: with the embeddings too
        con.execute(f"CREATE TEMP VIEW scored AS SELECT f.*{extra} FROM feedback f {joins}")
        if embedding_files:
            con.execute("CREATE TEMP VIEW joined AS SELECT f.*, e.embedding FROM scored f LEFT JOIN embeddings e ON e.exposure_id = f.exposure_id")
        else:
            con.execute("CREATE TEMP VIEW joined AS SELECT * FROM scored")
        if audit is not None:
            con.register("audit_ids", audit.select("exposure_id").to_arrow())
        yield NoiseInputs(con, list(dataset.schema.names), max(64, memory_limit_bytes // 2**20))  # as feedback_connection sets it


def estimate_streamed(warehouse: Path, config: Any, plan: dict[str, Any], audit: pl.DataFrame | None, *, estimate_frame) -> dict:
    """``estimate_frame`` (:func:`propensity.noise.estimate.estimate_noise_frame`, passed in: that module
    calls this one) on a streamed table (module docstring)."""
    from sklearn.metrics import roc_auc_score

    from feedback_etl.features import feature_types
    from feedback_etl.io import feedback_dataset
    from propensity.models.casecontrol import embedding_dim
    from propensity.models.crossfit import assign_user_folds
    from propensity.noise._proxy import ProxyFeaturizer, fit_proxy_models, predict_proxy, proxy_sample, training_rows
    from schemas.errors import EstimationError

    anchor = config.method == "anchor"
    with_scores = anchor and config.use_weights
    use_embeddings = anchor and config.use_embeddings and any((warehouse / "embeddings").glob("*.parquet"))
    schema = pl.from_arrow(feedback_dataset(warehouse).schema.empty_table()).schema
    custom = feature_types(dict(schema))
    segment = config.segment_by
    with noise_inputs(warehouse, channel=config.channel, with_scores=with_scores, embeddings=use_embeddings, audit=audit,
                      memory_limit_bytes=plan["memory_limit_bytes"] // 2) as inputs:
        audit_rows = None
        if audit is not None:
            cols = ", ".join(f'"{c}"' for c in ["exposure_id", "observed", "label", *([segment] if segment else [])])
            audit_rows = inputs.frame(f"SELECT {cols} FROM feedback WHERE exposure_id IN (SELECT exposure_id FROM audit_ids)")
        # One pass over the rows and their scores (each query over the join hashes every score).
        n, missing, bad, min_fold, null_fold, n_observed, score_folds = inputs.scalar_rows(
            "SELECT count(*), count(*) FILTER (WHERE propensity IS NULL), count(*) FILTER (WHERE propensity <= 0), "
            "coalesce(min(fold), 0), count(*) FILTER (WHERE fold IS NULL), count(*) FILTER (WHERE coalesce(observed, false)), "
            "list(DISTINCT fold) FILTER (WHERE fold IS NOT NULL) FROM scored")[0]
        if with_scores and missing:
            from propensity.io import scores_path

            raise WarehouseError(
                f"{missing} of {n} exposures have no {config.channel} propensity", where=str(scores_path(warehouse)),
                fix=f"refit: `causalrm propensity fit {warehouse} --channel {config.channel}` after the last ingest",
            )
        if with_scores and bad:
            raise EstimationError("propensities must be > 0", where="propensity/scores.parquet", fix="refit the propensity model (it clips)")
        users = inputs.frame("SELECT user_id, count(*) AS n FROM feedback GROUP BY user_id ORDER BY user_id")
        users = users.with_columns(_user=pl.int_range(pl.len(), dtype=pl.Int32))
        folds_usable = with_scores and null_fold == 0 and min_fold >= 0
        if not folds_usable:
            # As in memory without the fit's folds: group_folds over every exposure's user.
            users = users.with_columns(_fold=pl.Series(assign_user_folds(users["n"].to_numpy(), config.n_folds, config.seed)))
        score_columns = ["observed", "label", "user_id", *([segment] if segment else []), *(["propensity"] if with_scores else []),
                         *(["fold"] if folds_usable else [])]
        featurizer = text_rows = None
        view = "joined"
        if anchor:
            numeric, categorical = ProxyFeaturizer.columns(list(schema), custom)
            mean = std = None
            if numeric and config.proxy == "logistic":
                stats = inputs.scalar_rows("SELECT " + ", ".join(
                    f'avg(CAST("{c}" AS DOUBLE)), stddev_pop(CAST("{c}" AS DOUBLE))' for c in numeric) + " FROM feedback")[0]
                mean, std = np.array(stats[0::2], dtype=np.float64), np.array(stats[1::2], dtype=np.float64)
            levels = {c: np.unique(inputs.frame(f'SELECT DISTINCT "{c}" AS v FROM feedback')["v"].cast(pl.Utf8).fill_null("<null>").to_numpy())
                      for c in categorical}
            docs = None
            if config.text_features and "response_text" in schema and inputs.scalar_rows(
                    "SELECT count(response_text) FROM feedback")[0][0]:
                docs = inputs.numbered_texts()
            featurizer = ProxyFeaturizer.from_parts(numeric=numeric, mean=mean, std=std, levels=levels, docs=docs,
                                                    embedding_dim=embedding_dim(warehouse) if use_embeddings else 0)
            if featurizer.vectorizer is not None:
                # each distinct text vectorised once; rows carry its number (NoiseInputs.numbered_texts)
                text_rows, view = featurizer.text_rows(docs), "joined_text"
                score_columns.append("_text_id")
            del docs
            score_columns += [*numeric, *categorical, *(["embedding"] if use_embeddings else [])]
            # The observed rows train the fold proxies (the only rows with a label), all of them or, when
            # their features would not fit the budget, a seeded uniform sample (proxy_row_budget): each
            # batch is cut to its sampled rows and turned into feature rows at once, so no text or id
            # string of them is held.
            nonzeros = _nonzeros_per_row(inputs, featurizer, text_rows)
            by_memory = proxy_row_budget(plan["memory_limit_bytes"], nonzeros)
            cap = by_memory["max_rows"] if config.proxy_rows is None else min(config.proxy_rows, by_memory["max_rows"])
            plan["proxy"] = {**by_memory, "max_rows_option": config.proxy_rows}
            sample = proxy_sample(n_observed, cap, config.seed)
            blocks: list = []
            label_parts, weight_parts, fold_parts, user_parts = [], [], [], []
            at = 0
            for batch in inputs.batches(score_columns, config.batch_rows, where="coalesce(observed, false)", view=view):
                at += batch.height
                if sample is not None:
                    first, last = np.searchsorted(sample, [at - batch.height, at])
                    if first == last:
                        continue
                    batch = batch[sample[first:last] - (at - batch.height)]
                coded = batch.select("user_id").join(users.select("user_id", "_user", *(["_fold"] if not folds_usable else [])),
                                                     on="user_id", how="left", maintain_order="left")
                blocks.append(featurizer.transform(batch, text_rows=text_rows))
                label_parts.append(batch["label"].fill_null(0).to_numpy().astype(np.int64))
                weight_parts.append(1.0 / batch["propensity"].to_numpy() if with_scores else np.ones(batch.height))
                fold_parts.append(batch["fold"].to_numpy() if folds_usable else coded["_fold"].to_numpy())
                # user codes are in user-id order, so group_folds splits them as it splits the ids
                user_parts.append(coded["_user"].to_numpy())
            if at != n_observed:
                raise WarehouseError(f"the feedback table changed while it was read ({n_observed} observed rows counted, {at} scanned)",
                                     where=str(warehouse), fix="rerun `causalrm noise estimate` once no ingest is writing the warehouse")
            features = _stack_rows(blocks, len(featurizer.names))
            inputs.release_buffers()
            fold_core = np.concatenate(fold_parts)
            fold_values = np.array(sorted(int(f) for f in score_folds or [])) if folds_usable \
                else np.unique(users["_fold"].to_numpy())
            models = fit_proxy_models(features, np.ones(features.shape[0], dtype=bool), np.concatenate(label_parts),
                                      np.concatenate(weight_parts), fold_core, np.concatenate(user_parts), fold_values,
                                      kind=config.proxy, seed=config.seed)
            del features, fold_core, label_parts, weight_parts, fold_parts, user_parts
        # every exposure, in exposure_id order (the anchors' tie-break is the row position, as in memory)
        score, propensity = np.full(n, np.nan), np.ones(n)
        parts: list[pl.DataFrame] = []
        offset = 0
        for batch in inputs.batches(score_columns, config.batch_rows, view=view):
            rows = slice(offset, offset + batch.height)
            offset += batch.height
            coded = batch.join(users.select("user_id", "_user", *(["_fold"] if not folds_usable else [])), on="user_id", how="left",
                               maintain_order="left")
            if anchor:
                fold = coded["fold"].to_numpy() if folds_usable else coded["_fold"].to_numpy()
                score[rows] = predict_proxy(models, featurizer.transform(batch, text_rows=text_rows), fold)
                if with_scores:
                    propensity[rows] = batch["propensity"].to_numpy()
            # Columns copied out of the batch (a bool to numpy and back, a cast through Int16): a column
            # kept as DuckDB handed it over holds its whole batch (0.7 GB more at 15M exposures).
            narrow = coded.select(pl.lit(coded["observed"].fill_null(False).to_numpy()).alias("observed"),
                                  pl.col("label").cast(pl.Int16).cast(pl.Int8), user_id=pl.col("_user"),
                                  **({segment: pl.col(segment).cast(pl.Utf8).cast(pl.Categorical)} if segment else {}))
            parts.append(narrow)
    frame = pl.concat(parts)
    info = None
    if anchor:
        observed = frame["observed"].to_numpy()
        label = frame["label"].fill_null(0).to_numpy()
        # weights 1/p, as estimate_noise_frame computes them
        info = {"model": config.proxy, "n_features": len(featurizer.names), "n_folds": int(len(fold_values)),
                "auc_observed": float(roc_auc_score(label[observed], score[observed], sample_weight=1.0 / propensity[observed])),
                "training_rows": training_rows(n_observed, sample, config.seed)}
    return estimate_frame(frame, config, propensity=propensity if with_scores else None, audit=audit, custom=custom,
                                precomputed=(score, info) if anchor else None, audit_rows=audit_rows)


# What one observed row that trains the proxies costs while they train: its sparse feature row
# (8-byte value and 4-byte column per non-zero, 4-byte row pointer) and label, weight, fold and user,
# the fold's transient copy of it, and LightGBM's binned dataset, gradients and scores. 36 x 27.5
# non-zeros + 200 = 1,190 bytes: what every vote held through the proxy fits at 15M exposures before
# the fold copies were freed (4.09 GB, 3.0M votes, issue 23). After (10M exposures, 1.45M sampled
# votes of 2.0M): 1.88 GB through the fits, about 0.9 KB a row over the rest, so the estimate keeps
# a quarter in reserve (LightGBM's memory varies with the features' bins).
PROXY_BYTES_PER_NONZERO = 36
PROXY_BYTES_PER_ROW = 200


def proxy_row_budget(memory_limit_bytes: int, nonzeros_per_row: float) -> dict:
    """How many observed rows the fold proxies may train on within the budget: the budget less
    DuckDB's half (its sort buffers are still held while the training rows are read) and the
    interpreter's base, at ``PROXY_BYTES_PER_NONZERO`` per non-zero feature and
    ``PROXY_BYTES_PER_ROW`` per row; at least ``MIN_SAMPLE_ROWS``."""
    from propensity.models.casecontrol import BASE_BYTES, MIN_SAMPLE_ROWS

    budget = max(0, memory_limit_bytes - memory_limit_bytes // 2 - BASE_BYTES)
    per_row = int(round(PROXY_BYTES_PER_NONZERO * nonzeros_per_row + PROXY_BYTES_PER_ROW))
    return {"budget_bytes": int(budget), "nonzeros_per_row": round(float(nonzeros_per_row), 2), "bytes_per_row_estimate": per_row,
            "max_rows": int(max(MIN_SAMPLE_ROWS, budget // per_row))}


def _nonzeros_per_row(inputs: NoiseInputs, featurizer, text_rows) -> float:
    """Mean non-zero features of an observed row (an upper bound for the numeric block): one per
    numeric and categorical column and embedding dimension, and its response's n-grams."""
    nonzeros = float(len(featurizer.numeric) + len(featurizer.levels) + featurizer.embedding_dim)
    if text_rows is not None:
        counts = inputs.frame("SELECT x.text_id AS i, count(*) AS n FROM feedback f JOIN _texts x ON x.t = coalesce(f.response_text, '') "
                              "WHERE coalesce(f.observed, false) GROUP BY 1")
        per_text = np.diff(text_rows.indptr)
        total = int(counts["n"].sum())
        if total:
            nonzeros += float(per_text[counts["i"].to_numpy()] @ counts["n"].to_numpy()) / total
    return nonzeros


def _stack_rows(blocks: list, n_features: int):
    """``scipy.sparse.vstack(blocks)`` (CSR row blocks) that frees each block once copied, so the
    observed rows' features are held about once, not twice, while stacking."""
    import scipy.sparse as sp

    nnz = sum(b.nnz for b in blocks)
    n_rows = sum(b.shape[0] for b in blocks)
    index_type = np.int32 if max(nnz, n_features) < np.iinfo(np.int32).max else np.int64
    data, indices = np.empty(nnz, dtype=np.float64), np.empty(nnz, dtype=index_type)
    indptr = np.zeros(n_rows + 1, dtype=index_type)
    at = row = 0
    blocks.reverse()
    while blocks:
        block = blocks.pop()
        data[at:at + block.nnz], indices[at:at + block.nnz] = block.data, block.indices
        indptr[row + 1:row + block.shape[0] + 1] = block.indptr[1:] + at
        at, row = at + block.nnz, row + block.shape[0]
        del block
    return sp.csr_matrix((data, indices, indptr), shape=(n_rows, n_features))
