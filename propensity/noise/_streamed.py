"""``noise estimate`` (anchor method) on a feedback table larger than its memory budget (issue 23).

The proxy preference model only trains on observed rows; the anchors need every exposure's score,
but only as compact arrays. So:

1. DuckDB (out of core) gives the whole table's statistics the proxy's features need (sorted
   categorical levels, numeric means and standard deviations, the distinct response texts for the
   n-gram vocabulary) and the users in id order: the feature map equals an in-memory fit's.
2. The observed rows, with their features, train the fold proxies exactly as in memory.
3. Every exposure is scored in batches sorted by exposure_id; kept per exposure: score, observed,
   label, 1/p, user code and segment code (about 30 bytes). The anchor rates, bootstrap and
   segments then run on those arrays with the in-memory code.

Memory: the observed rows' features, one batch, the per-exposure arrays, the distinct texts (all of
them: the vocabulary is fitted on every distinct response, as in memory), and DuckDB's buffer.
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

    def __init__(self, con: Any, columns: list[str]) -> None:
        self.con, self.columns = con, columns

    def scalar_rows(self, query: str) -> list[tuple]:
        return self.con.execute(query).fetchall()

    def frame(self, query: str) -> pl.DataFrame:
        return pl.from_arrow(self.con.sql(query).to_arrow_table())

    def batches(self, columns: list[str], batch_rows: int, *, where: str = "TRUE") -> Iterator[pl.DataFrame]:
        selected = ", ".join(f'"{c}"' for c in dict.fromkeys(["exposure_id", *columns]))
        for batch in self.con.sql(f"SELECT {selected} FROM joined WHERE {where} ORDER BY exposure_id").to_arrow_reader(batch_rows):
            if batch.num_rows:
                yield pl.from_arrow(batch)


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
            joins += " LEFT JOIN embeddings e ON e.exposure_id = f.exposure_id"
            extra += ", e.embedding"
        con.execute(f"CREATE TEMP VIEW joined AS SELECT f.*{extra} FROM feedback f {joins}")
        if audit is not None:
            con.register("audit_ids", audit.select("exposure_id").to_arrow())
        yield NoiseInputs(con, list(dataset.schema.names))


def estimate_streamed(warehouse: Path, config: Any, plan: dict[str, Any], audit: pl.DataFrame | None, *, estimate_frame) -> dict:
    """``estimate_frame`` (:func:`propensity.noise.estimate.estimate_noise_frame`, passed in: that module
    calls this one) on a streamed table (module docstring)."""
    from sklearn.metrics import roc_auc_score

    from feedback_etl.features import feature_types
    from feedback_etl.io import feedback_dataset
    from propensity.models.casecontrol import detached, embedding_dim
    from propensity.models.crossfit import assign_user_folds
    from propensity.noise._proxy import ProxyFeaturizer, fit_proxy_models, predict_proxy
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
        n, missing, bad, min_fold, null_fold = inputs.scalar_rows(
            "SELECT count(*), count(*) FILTER (WHERE propensity IS NULL), count(*) FILTER (WHERE propensity <= 0), "
            "coalesce(min(fold), 0), count(*) FILTER (WHERE fold IS NULL) FROM joined")[0]
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
        featurizer = None
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
                docs = inputs.frame("SELECT DISTINCT coalesce(response_text, '') AS t FROM feedback")["t"].to_list()
            featurizer = ProxyFeaturizer.from_parts(numeric=numeric, mean=mean, std=std, levels=levels, docs=docs,
                                                    embedding_dim=embedding_dim(warehouse) if use_embeddings else 0)
            score_columns += [*numeric, *categorical, *(["response_text"] if featurizer.vectorizer is not None else []),
                              *(["embedding"] if use_embeddings else [])]
            # the observed rows train the fold proxies (the only rows with a label)
            core = pl.concat([detached(b) for b in inputs.batches(score_columns, config.batch_rows, where="coalesce(observed, false)")])
            fold_core = core["fold"].to_numpy() if folds_usable else core.join(
                users.select("user_id", "_fold"), on="user_id", how="left", maintain_order="left")["_fold"].to_numpy()
            weight_core = 1.0 / core["propensity"].to_numpy() if with_scores else np.ones(core.height)
            fold_values = np.array(sorted(int(r[0]) for r in inputs.scalar_rows("SELECT DISTINCT fold FROM joined"))) if folds_usable \
                else np.unique(users["_fold"].to_numpy())
            models = fit_proxy_models(featurizer.transform(core), np.ones(core.height, dtype=bool),
                                      core["label"].fill_null(0).to_numpy().astype(np.int64), weight_core, fold_core,
                                      core["user_id"].to_numpy(), fold_values, kind=config.proxy, seed=config.seed)
            del core
        # every exposure, in exposure_id order (the anchors' tie-break is the row position, as in memory)
        score, propensity = np.full(n, np.nan), np.ones(n)
        parts: list[pl.DataFrame] = []
        offset = 0
        for batch in inputs.batches(score_columns, config.batch_rows):
            rows = slice(offset, offset + batch.height)
            offset += batch.height
            coded = batch.join(users.select("user_id", "_user", *(["_fold"] if not folds_usable else [])), on="user_id", how="left",
                               maintain_order="left")
            if anchor:
                fold = coded["fold"].to_numpy() if folds_usable else coded["_fold"].to_numpy()
                score[rows] = predict_proxy(models, featurizer.transform(batch), fold)
                if with_scores:
                    propensity[rows] = batch["propensity"].to_numpy()
            narrow = coded.select(pl.col("observed").fill_null(False), pl.col("label").cast(pl.Int8), user_id=pl.col("_user"),
                                  **({segment: pl.col(segment).cast(pl.Utf8).cast(pl.Categorical)} if segment else {}))
            parts.append(narrow)
    frame = pl.concat(parts)
    info = None
    weight = 1.0 / propensity  # as estimate_noise_frame computes it
    if anchor:
        observed = frame["observed"].to_numpy()
        label = frame["label"].fill_null(0).to_numpy()
        info = {"model": config.proxy, "n_features": len(featurizer.names), "n_folds": int(len(fold_values)),
                "auc_observed": float(roc_auc_score(label[observed], score[observed], sample_weight=weight[observed]))}
    return estimate_frame(frame, config, propensity=propensity if with_scores else None, audit=audit, custom=custom,
                                precomputed=(score, info) if anchor else None, audit_rows=audit_rows)
