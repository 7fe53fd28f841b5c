"""The resolution step (rules 1, 5, 6) on the Spark engine: the three files (stg_duplicates,
stg_impression_losers, stg_orphans) against the one query (sql/staging/stg_resolution.sql: as
the engine runs it, its MATERIALIZED CTEs kept first, and with every CTE inlined by Spark),
interleaved in one Spark session on the same materialised ``typed_events`` (issue 19). Not a test::

    flock /tmp/causalrm-heavy.lock .venv/bin/python benchmarks/ingest/spark_resolution_step.py \\
        /tmp/ib/logs-1M/events --threads 2 --repeat 3

Each variant materialises what the engine keeps (the three tables, or ``resolution``) as the
engine does (``spark_ingest._Cache``). Prints one JSON line per try: wall seconds, the JVM's CPU
seconds (``/proc/<jvm>/stat``) and the row counts per rule (equal for both variants, or it fails).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from feedback_etl import spark_ingest  # noqa: E402
from feedback_etl.mapping import FieldMapping  # noqa: E402
from feedback_etl.sources import discover_inputs  # noqa: E402
from feedback_etl.spark_session import get_spark  # noqa: E402
from feedback_etl.sql_translate import spark_sql  # noqa: E402

_RULES = ("duplicates", "impression_losers", "orphans")


def _jvm_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _three_files(spark, cache) -> None:
    for name in _RULES:
        cache.keep(spark.sql(spark_sql(f"staging/stg_{name}")), name)


def _inlined(spark, cache) -> None:
    """The one query with every CTE left to Spark (its MATERIALIZED hints dropped, nothing kept first)."""
    cache.keep(spark.sql(spark_sql("staging/stg_resolution")), "resolution")
    for view, rule, columns in spark_ingest.RESOLUTION_VIEWS:
        spark.sql(f"SELECT {columns} FROM resolution WHERE `rule` = '{rule}'").createOrReplaceTempView(view)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("events", help="folder of canonical Parquet logs (run.py's WORK/logs-1M/events)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--memory-limit", default="2GB")
    args = parser.parse_args()
    spark = get_spark(threads=args.threads, conf=spark_ingest._memory_conf(args.memory_limit))
    jvm = int(spark.sparkContext._jvm.java.lang.ProcessHandle.current().pid())
    scratch = Path(tempfile.mkdtemp(prefix="spark-resolution-step-"))
    with spark_ingest._run_settings(spark), spark_ingest._Cache(spark, scratch / "cache") as cache:
        mapping = FieldMapping()
        files = discover_inputs([args.events], "canonical")
        spark_ingest._register_warehouse_events(spark, scratch / "wh")
        parts = spark_ingest._read_inputs(spark, files, mapping)
        typed = []
        for part in parts:
            part.createOrReplaceTempView("raw_events")
            typed.append(spark.sql(spark_sql("staging/stg_events_typed")))
        frame = typed[0]
        for other in typed[1:]:
            frame = frame.unionByName(other)
        cache.keep(frame, "typed_events")
        spark.sql("SELECT * FROM typed_events").createOrReplaceTempView("typed_content")
        variants = {"three_files": lambda: _three_files(spark, cache), "one_query": lambda: spark_ingest._resolve(spark, cache),
                    "one_query_inlined": lambda: _inlined(spark, cache)}
        counts: dict[str, dict] = {}
        for k in range(args.repeat):
            for name, step in variants.items():
                cpu, wall = _jvm_cpu_s(jvm), time.perf_counter()
                step()
                out = {"variant": name, "try": k, "wall_s": round(time.perf_counter() - wall, 2),
                       "jvm_cpu_s": round(_jvm_cpu_s(jvm) - cpu, 2)}
                counts[name] = {rule: spark.table(rule).count() for rule in _RULES}
                counts[name]["same_content"] = spark.table("impression_losers").where("same_content").count()
                print(json.dumps({**out, "rows": counts[name]}), flush=True)
                for rule in (*_RULES, "resolution"):
                    cache.drop(rule)
        if len({json.dumps(found, sort_keys=True) for found in counts.values()}) > 1:
            raise SystemExit(f"the variants disagree: {counts}")


if __name__ == "__main__":
    main()
