"""The Spark engine of ``causalrm propensity score``: every exposure scored inside Spark (issue 8).

The job
-------
``WH/feedback`` (only ``exposure_id`` and the fit's feature columns) [left join ``WH/embeddings``
by exposure_id when the models used embeddings] left join the fit's out-of-fold scores of the
channel (``fold >= 0``) -> ``mapInArrow`` -> Parquet parts in a staging folder beside the scores
-> the driver commits them with :func:`propensity.io.commit_score_parts`.

Each Arrow batch goes to :func:`propensity.models.score.score_batch`, the function the local engine calls
on its chunks, so both engines build the same features and run the same arithmetic: fitted
exposures keep their out-of-fold score, the others get the fold average (``fold = -1``); see
:mod:`propensity.models.score` for the rules.

``mapInArrow`` rather than ``mapInPandas``: a batch goes Arrow -> polars without a copy, exactly as
the local engine's chunks come from ``pyarrow.parquet``; pandas would first turn nullable integers
into floats and strings into objects, one more place for the engines to differ.

Models: the files of ``models/<channel>/`` (LightGBM text models, safetensors, JSON; a few hundred
kB) are broadcast as bytes. A Python worker writes them to a temporary folder and loads them with
:func:`propensity.models.fit.load_fold_models` ONCE: the loaded models are cached in this module, keyed by
the files' digest, and Spark reuses Python workers across tasks (``spark.python.worker.reuse``,
on by default). Models predict with one thread per task: Spark's task slots are the parallelism.

Layout decision
---------------
``WH/propensity/scores.parquet`` stays a single file by default (``layout="file"``): the executors
write parts, then the driver streams them, with the other channels' rows, into one new file (one
row group per Spark part, memory bounded by one part) and swaps it in with ``os.replace``. Every
existing reader keeps working unchanged (``read_scores``, ``weights export`` which hashes the file
into its manifest, audit, noise, label-aware), and a Spark reader still splits the file by row
group. The cost is one sequential pass on the driver over about 30 bytes per exposure, small next
to scoring (see the figures in docs/propensity.md). ``layout="partitioned"`` skips that pass: the parts are moved
into ``scores.parquet/channel=<channel>/part-*.parquet`` (a directory Hive-partitioned by channel,
no ``.crc`` files), which ``read_scores`` and ``write_scores`` also handle; choose it when the
table is too big for one machine's pass.

On a cluster: the warehouse must be on a file system the driver and the executors see at the same
path (the driver commits with local file operations), and causalrm must be importable on the
executors (installed in their image, or shipped with ``--py-files``). ``CAUSALRM_SPARK_MASTER`` or
spark-submit's session picks the master (``feedback_etl.spark_session.get_spark``).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import polars as pl

from feedback_etl.io import feedback_files
from feedback_etl.paths import engine_file, engine_folder
from propensity.io import scores_layout, scores_path
from propensity.models.score import (
    FIT_COLUMNS,
    ScoreConfig,
    load_models_from_files,
    model_files,
    models_digest,
    no_embeddings_error,
    score_batch,
    scoring_columns,
    uses_embeddings,
)
from schemas.errors import EstimationError, InputFileError, WarehouseError

log = logging.getLogger(__name__)

OUTPUT_SCHEMA = "exposure_id string, propensity double, propensity_raw double, fold int"

# Loaded models per Python worker: digest of the model files -> (spec, models, calibrators).
_WORKER_MODELS: dict[str, tuple[dict[str, Any], list, list]] = {}


def spark_session(threads: int | None = None):
    """``get_spark(threads=...)``, with Python workers running this interpreter in local mode.

    PySpark starts workers with ``$PYSPARK_PYTHON`` or else ``python3`` from PATH, which need not
    be the environment causalrm is installed in; in local mode the driver's own interpreter is
    the right one (a user's PYSPARK_PYTHON is kept).
    """
    user_python = os.environ.get("PYSPARK_PYTHON")
    if user_python is None:
        os.environ["PYSPARK_PYTHON"] = sys.executable
    from feedback_etl.spark_session import get_spark

    spark = get_spark(threads=threads)
    context = spark.sparkContext
    if user_python is None and context.master.startswith("local") and context.pythonExec != sys.executable:
        # A session started earlier in this process without PYSPARK_PYTHON (UDFs read it per job).
        context.pythonExec = sys.executable
    return spark


def score_spark(warehouse: Path, models_wh: Path, cfg: ScoreConfig, spec: dict[str, Any], staging: Path) -> tuple[list[Path], dict[str, int]]:
    """Run the scoring job; return the Parquet parts written under ``staging`` and the per-column
    counts of exposures with a categorical level the fit never saw."""
    from pyspark.errors import PythonException
    from pyspark.sql import functions as F

    spark = spark_session(cfg.threads)
    columns = scoring_columns(spec)
    feedback_root = warehouse / "feedback"
    # The committed version's literal file list (a Delta table holds old versions' files too).
    feedback = spark.read.parquet(*_plain_uris(feedback_files(warehouse)))
    missing = [c for c in columns if c not in feedback.columns]
    if missing:
        raise InputFileError(
            f"feedback table lacks propensity feature column(s) {missing}", where=str(feedback_root),
            fix="re-run `causalrm ingest` so the table follows the schemas.feedback contract",
        )
    feedback = feedback.select(*columns)
    with_embeddings = _join_embeddings(spark, warehouse, spec, feedback) if uses_embeddings(spec) else feedback

    # One small aggregate job: exposures whose categorical level the fit never saw (scored as missing).
    levels = spec["categorical_levels"]
    counts = feedback.agg(
        *[F.sum(F.when(F.col(c).isNotNull() & ~F.col(c).cast("string").isin(list(v)), 1).otherwise(0)).alias(c) for c, v in levels.items()]
    ).first()
    unseen = {c: int(counts[c] or 0) for c in levels}
    joined = with_embeddings.join(_fit_scores(spark, models_wh, cfg.channel), on="exposure_id", how="left")

    files = model_files(models_wh, cfg.channel)
    payload = {"digest": models_digest(files), "channel": cfg.channel, "files": files}
    broadcast = spark.sparkContext.broadcast(payload)

    def score(batches):  # runs in the Python workers
        yield from _score_batches(batches, broadcast)

    conf_key = "spark.sql.execution.arrow.maxRecordsPerBatch"
    previous = spark.conf.get(conf_key, None)
    spark.conf.set(conf_key, str(cfg.chunk_rows))
    out = staging / "spark"
    try:
        # A plain link to the (existing) staging folder; Hadoop creates ``spark`` under it.
        joined.mapInArrow(score, OUTPUT_SCHEMA).write.mode("overwrite").parquet("file://" + str(engine_folder(out.parent) / out.name))
    except PythonException as exc:
        last = next((line for line in reversed(str(exc).strip().splitlines()) if line.strip()), str(exc))
        raise EstimationError(
            f"a Spark task failed while scoring: {last.strip()}", where="propensity.models.spark_score",
            fix="see the executor log above; the same data scored with --engine local names the row",
        ) from exc
    finally:
        if previous is None:
            spark.conf.unset(conf_key)
        else:
            spark.conf.set(conf_key, previous)
        broadcast.unpersist()
    for checksum in out.rglob("*.crc"):  # Hadoop's local file system writes .part-*.crc beside each part
        checksum.unlink()
    parts = sorted(out.glob("part-*.parquet"))
    log.info("propensity %s: Spark wrote %d part(s)", cfg.channel, len(parts))
    return parts, unseen


def _plain_uris(paths: list[Path]) -> list[str]:
    """Plain links to the files (Hadoop globs every path it reads: a warehouse named ``wh[1]``
    would read another folder; issue 16)."""
    return ["file://" + engine_file(p) for p in paths]


def _join_embeddings(spark, warehouse: Path, spec: dict[str, Any], feedback):
    """``feedback`` with the ``embedding`` column, checked to cover every exposure (as the fit requires).

    One row per exposure_id is kept; ``read_embeddings`` keeps the last file's, Spark an arbitrary
    one: they differ only if ``causalrm embed`` wrote an exposure twice with different vectors.
    """
    root = warehouse / "embeddings"
    if not any(root.glob("*.parquet")):
        raise no_embeddings_error(spec)
    embeddings = (
        spark.read.parquet(*_plain_uris(sorted(root.glob("*.parquet")))).select("exposure_id", "embedding").dropDuplicates(["exposure_id"])
    )
    uncovered = feedback.select("exposure_id").join(embeddings.select("exposure_id"), on="exposure_id", how="left_anti").count()
    if uncovered:
        raise WarehouseError(
            f"embeddings do not cover {uncovered:,} exposure(s) of the feedback table", where=str(root),
            fix="re-run `causalrm embed WH` after the last ingest, or refit with --no-embeddings",
        )
    return feedback.join(embeddings, on="exposure_id", how="left")


def _fit_scores(spark, models_wh: Path, channel: str):
    """The fit's out-of-fold scores of ``channel`` (fold >= 0) as a Spark frame with FIT_COLUMNS."""
    from pyspark.sql import functions as F

    path = scores_path(models_wh)
    layout = scores_layout(models_wh)
    frame = None
    if layout == "file":
        frame = spark.read.parquet(*_plain_uris([path])).filter(F.col("channel") == channel)
    elif layout == "partitioned" and sorted((path / f"channel={channel}").glob("*.parquet")):
        frame = spark.read.parquet(*_plain_uris(sorted((path / f"channel={channel}").glob("*.parquet"))))
    if frame is None:
        log.info("propensity %s: no fit scores in %s; every exposure gets the fold average", channel, models_wh)
        empty = "exposure_id string, fit_propensity double, fit_propensity_raw double, fit_fold int"
        return spark.createDataFrame([], empty)
    return frame.filter(F.col("fold") >= 0).select(
        F.col("exposure_id").cast("string"),
        *[F.col(source).cast(kind).alias(name) for name, source, kind in zip(FIT_COLUMNS, ("propensity", "propensity_raw", "fold"), ("double", "double", "int"))],
    )


def _worker_models(payload: dict[str, Any]) -> tuple[dict[str, Any], list, list]:
    """Load (once per Python worker) the broadcast model files."""
    digest = payload["digest"]
    if digest not in _WORKER_MODELS:
        directory = Path(tempfile.mkdtemp(prefix="causalrm-models-"))
        try:
            spec, models, calibrators = load_models_from_files(payload["files"], payload["channel"], directory)
        finally:
            shutil.rmtree(directory, ignore_errors=True)
        for model in models:
            if hasattr(model, "n_jobs"):
                model.n_jobs = 1  # one thread per task: Spark runs one task per slot
        if spec["model"] == "mlp":
            import torch

            torch.set_num_threads(1)
        _WORKER_MODELS[digest] = (spec, models, calibrators)
    return _WORKER_MODELS[digest]


def _score_batches(batches, broadcast):
    """mapInArrow body: Arrow record batches in, (exposure_id, propensity, propensity_raw, fold) out."""
    import pyarrow as pa

    spec, models, calibrators = _worker_models(broadcast.value)
    schema = pa.schema([("exposure_id", pa.string()), ("propensity", pa.float64()), ("propensity_raw", pa.float64()), ("fold", pa.int32())])
    for batch in batches:
        if batch.num_rows == 0:
            continue
        scored = score_batch(pl.from_arrow(batch), spec, models, calibrators)
        yield from scored.to_arrow().cast(schema).to_batches()
