"""What the ingest's own outputs cost to write, against the floor (issue 19).

The floor of ``run.py`` is DuckDB reading the input and writing it back as one Parquet file. The
ingest writes more than that: the events table (about the input again) and the feedback table,
which carries each impression's texts a second time. This script measures, each in a fresh process,
interleaved ``--repeat`` times, with the same memory limit and threads:

* ``floor``: the input read and written back (as ``run.py``);
* ``events`` / ``feedback``: the warehouse's committed events / feedback files read and written
  back as one Parquet file each (snappy, as the ingest writes): the encoding cost of the outputs
  alone, with no typing, rule, join or sort;
* ``ingest``: the whole in-process ingest into a fresh warehouse, with process CPU seconds per
  step (the manifest's steps), which is also where the warehouse read above comes from.

It prints medians, each as a multiple of the floor's CPU seconds, as JSON. Not a test::

    .venv/bin/python benchmarks/ingest/output_floor.py /tmp/ib/logs-1M/events --work /tmp/of --repeat 3
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _child(kind: str, args: argparse.Namespace) -> None:
    sys.path.insert(0, str(ROOT))
    start, cpu0 = time.perf_counter(), _cpu()
    extra: dict = {}
    if kind == "ingest":
        from feedback_etl import ingest as ingest_module

        steps: dict[str, float] = {}
        run_step = ingest_module._Steps.run

        def timed(self, name, action):  # process CPU seconds per step
            before = _cpu()
            try:
                return run_step(self, name, action)
            finally:
                steps[name] = steps.get(name, 0.0) + _cpu() - before

        ingest_module._Steps.run = timed
        shutil.rmtree(args.work / "wh", ignore_errors=True)
        ingest_module.ingest(ingest_module.IngestConfig(
            inputs=(str(args.input),), warehouse=str(args.work / "wh"), memory_limit=args.memory_limit, threads=args.threads))
        extra["steps_cpu_s"] = {k: round(v, 3) for k, v in steps.items()}
    else:
        import duckdb

        config = {"memory_limit": args.memory_limit, "temp_directory": str(args.work / ".tmp"), "threads": args.threads}
        conn = duckdb.connect(config=config)
        if kind == "floor":
            files = sorted(str(p) for p in Path(args.input).glob("*.parquet"))
        else:
            from deltalake import DeltaTable

            files = sorted(DeltaTable(str(args.work / "wh" / kind)).file_uris())
        target = str(args.work / f"{kind}.parquet").replace("'", "''")
        conn.execute(f"COPY (SELECT * FROM read_parquet({files!r})) TO '{target}' (FORMAT parquet, COMPRESSION snappy)")
        conn.close()
    print(json.dumps({"kind": kind, "seconds": time.perf_counter() - start, "cpu_s": _cpu() - cpu0,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, **extra}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input", type=Path, help="folder of the input's Parquet files (as run.py simulates them)")
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--memory-limit", default="2GB")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args)
        return
    args.work.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict]] = {}
    for _ in range(args.repeat):
        for kind in ("ingest", "floor", "events", "feedback"):  # the ingest first: it writes the tables read after it
            command = [sys.executable, __file__, str(args.input), "--work", str(args.work), "--memory-limit",
                       args.memory_limit, "--threads", str(args.threads), "--child", kind]
            out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            runs.setdefault(kind, []).append(json.loads(out.strip().splitlines()[-1]))
    floor = statistics.median(r["cpu_s"] for r in runs["floor"])
    report = {"input": str(args.input), "repeat": args.repeat, "memory_limit": args.memory_limit, "threads": args.threads,
              "floor_cpu_s": round(floor, 3)}
    for kind, rows in runs.items():
        cpu = statistics.median(r["cpu_s"] for r in rows)
        report[kind] = {"cpu_s": round(cpu, 3), "wall_s": round(statistics.median(r["seconds"] for r in rows), 3),
                        "cpu_floors": round(cpu / floor, 2), "peak_rss_mb": round(max(r["peak_rss_mb"] for r in rows))}
    steps = [r["steps_cpu_s"] for r in runs["ingest"]]
    report["ingest"]["steps_cpu_floors"] = {
        name: round(statistics.median(s.get(name, 0.0) for s in steps) / floor, 2) for name in steps[0]
        if statistics.median(s.get(name, 0.0) for s in steps) >= 0.05 * floor
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
