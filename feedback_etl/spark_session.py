"""One local or cluster SparkSession configured the way every causalrm Spark job expects.

Settings that matter for identical results with the DuckDB engine:

* ``spark.sql.session.timeZone = UTC``: casts of timestamps to dates and hours happen in UTC, as in
  DuckDB (ingest sets ``TimeZone = 'UTC'``).
* ``spark.sql.parquet.outputTimestampType = TIMESTAMP_MICROS``: Spark's default INT96 is a legacy
  encoding; microsecond timestamps adjusted to UTC read back in polars / pyarrow as
  ``Datetime(us, UTC)``, the same type DuckDB writes.
* ``spark.sql.ansi.enabled = false`` keeps ``TRY_CAST`` and arithmetic NULL-on-failure like DuckDB's.
* no ``_SUCCESS`` markers (``marksuccessfuljobs=false``): our readers glob ``*.parquet`` anyway,
  and the warehouse commit is our own atomic swap.

PySpark needs Java 17 or newer on PATH (``java -version``); without it the first call fails with
one clear error instead of a JVM stack trace.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys

from schemas.errors import ConfigError

log = logging.getLogger(__name__)

_DEFAULT_CONF = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    "spark.sql.ansi.enabled": "false",
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.hadoop.mapreduce.fileoutputcommitter.marksuccessfuljobs": "false",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.driver.extraJavaOptions": "-Dlog4j.rootLogger=ERROR,console",
}


def check_java() -> str:
    """The ``java -version`` banner, or ConfigError when Java is missing or older than 17."""
    java = shutil.which("java", path=os.path.join(os.environ["JAVA_HOME"], "bin") if os.environ.get("JAVA_HOME") else None)
    java = java or shutil.which("java")
    if java is None:
        raise ConfigError(
            "the Spark engine needs Java 17 or newer and no `java` was found",
            where="--engine spark",
            fix="install a JDK 17+ (e.g. `apt install openjdk-17-jre-headless`) or use --engine duckdb",
        )
    banner = subprocess.run([java, "-version"], capture_output=True, text=True, check=False).stderr.strip()
    first = banner.splitlines()[0] if banner else ""
    try:
        version = first.split('"')[1]
        major = int(version.split(".")[0] if not version.startswith("1.") else version.split(".")[1])
    except (IndexError, ValueError):
        return first
    if major < 17:
        raise ConfigError(
            f"the Spark engine needs Java 17 or newer, found {version}",
            where=java,
            fix="install a JDK 17+ and point JAVA_HOME at it, or use --engine duckdb",
        )
    return first


def get_spark(master: str | None = None, *, threads: int | None = None, conf: dict[str, str] | None = None):
    """The active SparkSession, or a new one (``local[threads]`` by default, ``master`` when given).

    An existing session is reused (a JVM takes seconds to start); our settings are applied to it
    at runtime where Spark allows that. ``CAUSALRM_SPARK_MASTER`` overrides the default master.
    Under ``spark-submit`` the session keeps the submitted master and settings
    (:func:`_submitted_session`).
    """
    try:
        from pyspark.sql import SparkSession
    except ImportError as exc:
        raise ConfigError(
            "the Spark engine needs PySpark, which is not installed",
            where="--engine spark",
            fix="pip install 'causalrm[spark]' (PySpark + sqlglot; Java 17+ on PATH), or use --engine duckdb",
        ) from exc

    active = SparkSession.getActiveSession()
    if active is not None:
        for key, value in {**_DEFAULT_CONF, **(conf or {})}.items():
            if key.startswith("spark.sql."):
                active.conf.set(key, value)
        return active
    check_java()
    # Python workers must run this interpreter (the venv with causalrm), not whatever `python3`
    # is first on PATH.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    if master is None and not os.environ.get("CAUSALRM_SPARK_MASTER") and os.environ.get("PYSPARK_GATEWAY_PORT"):
        return _submitted_session(conf)
    master = master or os.environ.get("CAUSALRM_SPARK_MASTER") or f"local[{threads or os.cpu_count() or 2}]"
    builder = SparkSession.builder.appName("causalrm").master(master)
    settings = {**_DEFAULT_CONF, "spark.sql.shuffle.partitions": str(max(2, 2 * (threads or os.cpu_count() or 2)))}
    for key, value in {**settings, **(conf or {})}.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    log.info("spark session %s (Spark %s)", master, spark.version)
    return spark


def _submitted_session(conf: dict[str, str] | None):
    """Under ``spark-submit`` (its JVM is up before Python starts: PYSPARK_GATEWAY_PORT is set) the
    session keeps the master, ``--conf`` values and spark-defaults.conf the job was submitted with;
    our SQL settings fill in only the keys left unset (a local master, or a shuffle partition count
    derived from the driver's cores, would be wrong on a cluster)."""
    from pyspark.sql import SparkSession

    spark = SparkSession.builder.appName("causalrm").getOrCreate()
    given = spark.sparkContext.getConf()
    for key, value in {**_DEFAULT_CONF, **(conf or {})}.items():
        if key.startswith("spark.sql.") and not given.contains(key):
            spark.conf.set(key, value)
    log.info("spark session from spark-submit: %s (Spark %s)", spark.sparkContext.master, spark.version)
    return spark
