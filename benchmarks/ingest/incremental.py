"""Incremental ingest benchmark: a day of new events into a warehouse that already holds many.

``run.py`` ingests into an empty warehouse. A production warehouse is fed every day, and each run
reads every event earlier runs committed (duplicates and impressions across runs, the feedback
table rebuilt from all events), so what a run costs grows with the warehouse. This script:

* builds, once, a base warehouse from the simulator's logs of ``--base`` events (``run.py``'s
  inputs, kept under ``--work``);
* builds, once, an increment from the logs of ``--increment`` events whose ``event_id`` and
  ``exposure_id`` are prefixed ``inc-`` (every event new; the users are the base's, so they keep
  their split), its times moved ``--shift-days`` later (0: the base's 14 days, so every committed
  feedback day is rewritten; 14: the two weeks after them, as a later batch of a production log,
  whose run keeps the committed days, issue 19);
* runs, ``--repeat`` times and interleaved across ``--trees`` (checkouts of this repository, to
  compare commits on the same machine load), a fresh process that ingests the increment into a
  copy of the base warehouse, and reports its wall and CPU seconds and peak RSS (the process's
  ``ru_maxrss``) with medians::

    .venv/bin/python benchmarks/ingest/incremental.py --base 10M --increment 1M --work /tmp/ib --repeat 2
    .venv/bin/python benchmarks/ingest/incremental.py --shift-days 14 --repeat 2   # a later batch
    .venv/bin/python benchmarks/ingest/incremental.py --trees /tmp/old . --repeat 2   # A/B two checkouts
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))


def _child(args: argparse.Namespace) -> None:
    """Ingest ``args.input`` into ``args.out`` (a copy of the base) with ``args.tree``'s code."""
    sys.path.insert(0, args.tree)
    from feedback_etl.ingest import IngestConfig, ingest

    start = time.perf_counter()
    report = ingest(IngestConfig(inputs=(args.input,), warehouse=args.out, memory_limit=args.memory_limit, threads=args.threads))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({
        "seconds": time.perf_counter() - start,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "accepted": report["accepted"],
        "feedback": report["feedback"]["exposures"],
        "kept_before": report["feedback"].get("kept_before"),
    }))


def _increment(logs: Path, target: Path, shift_days: int = 0) -> Path:
    """``logs``' events with every event_id and exposure_id prefixed ``inc-`` and every time that
    parses moved ``shift_days`` later (kept for reruns)."""
    import duckdb

    events = target / "events"
    if events.is_dir():
        return events
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "events").mkdir(parents=True)
    conn = duckdb.connect()
    conn.execute("SET TimeZone = 'UTC'")
    moved = (f"COALESCE(STRFTIME(TRY_CAST(event_time AS TIMESTAMPTZ) + INTERVAL {int(shift_days)} DAY, '%Y-%m-%dT%H:%M:%S.%fZ'), "
             "event_time) AS event_time")
    for path in sorted((logs / "events").glob("*.parquet")):
        source, out = str(path).replace("'", "''"), str(staging / "events" / path.name).replace("'", "''")
        conn.execute(
            f"COPY (SELECT * REPLACE ('inc-' || event_id AS event_id, 'inc-' || exposure_id AS exposure_id, {moved}) "
            f"FROM read_parquet('{source}')) TO '{out}' (FORMAT parquet, COMPRESSION snappy)"
        )
    conn.close()
    staging.rename(target)
    return events


def _measure(tree: str, increment: Path, base: Path, out: Path, args: argparse.Namespace) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(base, out)
    command = [sys.executable, __file__, "--child", "--tree", tree, "--input", str(increment), "--out", str(out),
               "--memory-limit", args.memory_limit] + (["--threads", str(args.threads)] if args.threads else [])
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    shutil.rmtree(out, ignore_errors=True)
    if done.returncode != 0:
        raise SystemExit(f"ingest with {tree} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    from run import _simulate, _size

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="10M", help="events in the warehouse before the run")
    parser.add_argument("--increment", default="1M", help="new events the measured run ingests")
    parser.add_argument("--shift-days", type=int, default=0, help="move the increment's times this many days later")
    parser.add_argument("--work", default="/tmp/causalrm-ingest-bench", help="scratch folder (inputs and the base warehouse are kept)")
    parser.add_argument("--trees", nargs="+", default=[str(ROOT)], help="checkouts of this repository to compare, interleaved")
    parser.add_argument("--repeat", type=int, default=1, help="runs per tree; medians reported")
    parser.add_argument("--memory-limit", default="2GB")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--results", default=None, help="write the rows as JSON here too")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tree", help=argparse.SUPPRESS)
    parser.add_argument("--input", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return

    work = Path(args.work)
    base_logs = work / f"logs-{args.base}"
    _simulate(_size(args.base), base_logs)
    increment_logs = work / f"logs-{args.increment}"
    _simulate(_size(args.increment), increment_logs)
    increment = _increment(increment_logs, work / f"increment-{args.increment}-shift{args.shift_days}", args.shift_days)
    base = work / f"base-{args.base}-wh"
    if not base.is_dir():  # built once with this checkout's code (its manifest is what a later run compares)
        sys.path.insert(0, str(ROOT))
        from feedback_etl.ingest import IngestConfig, ingest

        ingest(IngestConfig(inputs=(str(base_logs / "events"),), warehouse=str(base.with_name(base.name + ".partial")),
                            memory_limit=args.memory_limit, threads=args.threads))
        base.with_name(base.name + ".partial").rename(base)
    runs: dict[str, list[dict]] = {tree: [] for tree in args.trees}
    for k in range(args.repeat):
        for tree in args.trees:
            runs[tree].append(_measure(tree, increment, base, work / "incremental-run", args))
            print(json.dumps({"tree": tree, "round": k, **runs[tree][-1]}), flush=True)
    rows = []
    for tree, measured in runs.items():
        row = {"tree": tree, "base": args.base, "increment": args.increment, "shift_days": args.shift_days, "runs": len(measured),
               "accepted": measured[0]["accepted"], "feedback_rows": measured[0]["feedback"],
               "feedback_kept_before": measured[0].get("kept_before")}
        for key in ("seconds", "cpu_s", "peak_rss_mb"):
            row[key] = round(statistics.median(m[key] for m in measured), 2)
        rows.append(row)
    if args.results:
        Path(args.results).write_text(json.dumps({"meta": {"cpu_count": os.cpu_count(), "memory_limit": args.memory_limit,
                                                           "threads": args.threads or os.cpu_count()}, "rows": rows}, indent=2) + "\n")
    print("\n| tree | warehouse events | new events accepted | shift days | feedback rows after | feedback days kept before | wall s | CPU s | peak RSS MB |")
    print("| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['tree']} | {args.base} | {r['accepted']:,} | {args.shift_days} | {r['feedback_rows']:,} | {r['feedback_kept_before'] or '-'} | "
              f"{r['seconds']} | {r['cpu_s']} | {r['peak_rss_mb']:,.0f} |")


if __name__ == "__main__":
    main()
