"""CPU of the resolution step (rules 1, 5, 6) inside a real ingest: the one query
(sql/staging/stg_resolution.sql, what the DuckDB engine runs) or the three files it replaced
(stg_duplicates, stg_impression_losers, stg_orphans, what the Spark engine runs). Not a test::

    .venv/bin/python benchmarks/ingest/resolution_step.py new /tmp/ib/logs-1M/events --threads 1
    .venv/bin/python benchmarks/ingest/resolution_step.py old /tmp/ib/logs-1M/events --threads 1

Prints one JSON line: the step's CPU and wall seconds, the whole ingest's CPU seconds (imports
excluded), peak RSS and the run counts (equal for both variants). Run the two interleaved.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from feedback_etl import ingest as ingest_module  # noqa: E402
from feedback_etl.sqlfiles import run_sql  # noqa: E402


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _three_files(conn) -> None:
    run_sql(conn, "staging/stg_duplicates", into="duplicates")
    run_sql(conn, "staging/stg_impression_losers", into="impression_losers")
    run_sql(conn, "staging/stg_orphans", into="orphans")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variant", choices=["new", "old"])
    parser.add_argument("events", help="folder of canonical Parquet logs (run.py's WORK/logs-1M/events)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    step = ingest_module._resolve if args.variant == "new" else _three_files
    out: dict = {"variant": args.variant}

    def timed(conn) -> None:
        cpu, wall = _cpu(), time.perf_counter()
        step(conn)
        out.update(step_cpu_s=round(_cpu() - cpu, 3), step_wall_s=round(time.perf_counter() - wall, 3))

    ingest_module._resolve = timed
    warehouse = Path(tempfile.mkdtemp(prefix="resolution-step-"))
    try:
        cpu = _cpu()
        record = ingest_module.ingest(ingest_module.IngestConfig(inputs=[args.events], warehouse=str(warehouse / "wh"),
                                                                 threads=args.threads))
        out["ingest_cpu_s"] = round(_cpu() - cpu, 2)
    finally:
        shutil.rmtree(warehouse, ignore_errors=True)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    out["counts"] = {k: record[k] for k in ("rows_read", "accepted", "duplicates", "rejected_total")}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
