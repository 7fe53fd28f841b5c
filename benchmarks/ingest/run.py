"""Ingest benchmark: simulated canonical Parquet logs of 1M / 3M / 10M events.

For each size it measures, each in a fresh process (so peak RSS is that step's own):

* floor: DuckDB reading the same input and writing it back as Parquet in one pass, with the same
  memory limit and threads (``COPY (SELECT * FROM read_parquet(...)) TO ... (FORMAT parquet)``);
* ingest: ``feedback_etl.ingest.ingest`` into an empty warehouse (what ``causalrm ingest`` runs),
  once per ``--engines`` entry (``duckdb``, ``spark``: PySpark ``local[threads]``, JVM start included);
* with ``--engines spark``, Spark's own floor as well: the same ``local[threads]`` session reading
  the input and writing it back as one Parquet output (issue 19), reported with and without each
  side's session (JVM) start, and by CPU of the process tree;

and reports events/s, peak RSS and the ratio ingest / floor. Peak RSS is that of the measured
process *tree* (the Spark engine's JVM is a child process), sampled every 50 ms from ``/proc``,
besides the process's own ``ru_maxrss``. Not a test: run it by hand::

    .venv/bin/python benchmarks/ingest/run.py --sizes 1M 3M 10M --work /tmp/ingest-bench
    .venv/bin/python benchmarks/ingest/run.py --sizes 1M --engines duckdb spark --results /tmp/engines.json
    .venv/bin/python benchmarks/ingest/run.py --sizes 1M 3M --texts unique --results /tmp/unique.json

Results go to ``benchmarks/ingest/results.json`` (and a Markdown table on stdout for the README).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

# Events per exposure at messiness 0.3 (impression + votes, toggles, copies, dups, junk), measured
# on a 20k-exposure pilot; the simulator is driven by exposures, the benchmark by events.
EVENTS_PER_EXPOSURE = 1.57


def _size(text: str) -> int:
    text = text.strip().upper()
    scale = {"K": 1_000, "M": 1_000_000}.get(text[-1], 1)
    return int(float(text.rstrip("KM")) * scale)


def _child(kind: str, args: argparse.Namespace) -> None:
    """Run one measured step in this (fresh) process and print a JSON line."""
    start = time.perf_counter()
    extra: dict = {}
    if kind == "floor":
        import duckdb

        config = {"memory_limit": args.memory_limit, "temp_directory": str(Path(args.out) / ".tmp")}
        if args.threads:
            config["threads"] = args.threads
        conn = duckdb.connect(config=config)
        source = str(Path(args.input) / "*.parquet").replace("'", "''")
        target = str(Path(args.out) / "floor.parquet").replace("'", "''")
        conn.execute(f"COPY (SELECT * FROM read_parquet('{source}')) TO '{target}' (FORMAT parquet)")
        conn.close()
    elif kind == "spark-floor":
        # Spark's own floor (issue 19): the same local[N] session the Spark engine starts, reading
        # the input and writing it back as one Parquet output (a folder of part files, snappy).
        from feedback_etl.spark_ingest import _memory_conf
        from feedback_etl.spark_session import get_spark

        session_start = time.perf_counter()
        spark = get_spark(threads=args.threads, conf=_memory_conf(args.memory_limit))
        extra["spark_session_s"] = time.perf_counter() - session_start
        spark.read.parquet(f"file://{Path(args.input).absolute()}").write.option("compression", "snappy").parquet(
            f"file://{(Path(args.out) / 'floor').absolute()}"
        )
    else:
        from feedback_etl.ingest import IngestConfig, ingest

        run = ingest(IngestConfig(
            inputs=(args.input,), warehouse=str(Path(args.out) / "wh"), memory_limit=args.memory_limit, threads=args.threads,
            engine=args.engine,
        ))
        extra = {"rows_read": run["rows_read"], "exposures": run["feedback"]["exposures"], "timings_s": run["timings_s"]}
    seconds = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"kind": kind, "seconds": seconds, "cpu_s": usage.ru_utime + usage.ru_stime,
                      "peak_rss_mb": usage.ru_maxrss / 1024, **extra}))


def _tree_rss_mb(root: int, cpu: dict[int, float] | None = None) -> float:
    """Resident memory of a process and all its descendants (MB), from /proc; 0 where unreadable.
    ``cpu`` gets each process's CPU seconds so far (user + system)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            if cpu is not None:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                cpu[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            continue
    return total / 2**20


def _spill_mb(root: Path) -> float:
    """What DuckDB has spilled under ``root`` right now (MB): the ingest's ``.duckdb-tmp`` (inside
    the warehouse's staging folder) and the floor's ``.tmp``."""
    total = 0
    for folder, _, names in os.walk(root):
        if ".duckdb-tmp" in Path(folder).parts or Path(folder).name == ".tmp":
            for name in names:
                try:
                    total += os.path.getsize(os.path.join(folder, name))
                except OSError:
                    continue
    return total / 2**20


def _measure(kind: str, input_dir: Path, out_dir: Path, args: argparse.Namespace, engine: str = "duckdb") -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, __file__, "--child", kind, "--input", str(input_dir), "--out", str(out_dir),
           "--memory-limit", args.memory_limit, "--engine", engine]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    peak = spill = 0.0
    cpu: dict[int, float] = {}  # the last CPU seconds seen of each process of the tree (Spark's JVM is a child)
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT) as proc:
        while proc.poll() is None:
            peak = max(peak, _tree_rss_mb(proc.pid, cpu))
            spill = max(spill, _spill_mb(out_dir))  # sampled every 50 ms: a brief spill can be missed
            time.sleep(0.05)
        stdout, stderr = proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"{kind} ({engine}) failed:\n{stderr[-3000:]}")
    result = json.loads(stdout.strip().splitlines()[-1])
    # The child's own CPU (exact) plus its descendants' last sampled CPU (up to 50 ms short each).
    tree_cpu = result["cpu_s"] + sum(seconds for pid, seconds in cpu.items() if pid != proc.pid)
    return {**result, "tree_peak_rss_mb": peak, "tree_cpu_s": tree_cpu, "spill_mb": spill}


def _median_run(runs: list[dict]) -> dict:
    """The run of median wall time (its timings and peak RSS with it); peak RSS is the maximum."""
    ordered = sorted(runs, key=lambda r: r["seconds"])
    median = dict(ordered[len(ordered) // 2])
    median["cpu_s"] = sorted(r["cpu_s"] for r in runs)[len(runs) // 2]
    median["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
    median["tree_peak_rss_mb"] = max(r["tree_peak_rss_mb"] for r in runs)
    median["spill_mb"] = max(r["spill_mb"] for r in runs)
    return median


def _spark_ratios(pairs: list, spark_floor: dict, events: int) -> dict:
    """The Spark engine against Spark's floor and DuckDB's, medians of the interleaved pairs: wall
    with the session start (JVM) in both, wall without it in either (the engine's ``spark_session``
    step, the floor's own session time), and CPU of the process trees (JVM included)."""

    def median(values: list[float]) -> float:
        ordered = sorted(values)
        return round(ordered[len(ordered) // 2], 2)

    def no_session(run: dict) -> float:
        return run["seconds"] - run.get("timings_s", {}).get("spark_session", run.get("spark_session_s", 0.0))

    rounds = [(floor, found["spark"], found["spark-floor"]) for floor, found in pairs]
    return {
        "spark_floor_s": round(spark_floor["seconds"], 2),
        "spark_floor_session_s": round(spark_floor["spark_session_s"], 2),
        "spark_floor_cpu_s": round(spark_floor["tree_cpu_s"], 2),
        "spark_floor_peak_rss_mb": round(spark_floor["tree_peak_rss_mb"]),
        "ingest_cpu_s": round(median([s["tree_cpu_s"] for _, s, _ in rounds]), 2),
        "ingest_cpu_s_per_m_events": round(median([s["tree_cpu_s"] for _, s, _ in rounds]) / events * 1e6, 2),
        "ratio_to_spark_floor": median([s["seconds"] / f["seconds"] for _, s, f in rounds]),
        "ratio_to_spark_floor_without_session": median([no_session(s) / no_session(f) for _, s, f in rounds]),
        "cpu_ratio_to_spark_floor": median([s["tree_cpu_s"] / f["tree_cpu_s"] for _, s, f in rounds]),
        "ratio_to_duckdb_floor": median([s["seconds"] / d["seconds"] for d, s, _ in rounds]),
        "cpu_ratio_to_duckdb_floor": median([s["tree_cpu_s"] / d["cpu_s"] for d, s, _ in rounds]),
        "spark_floor_to_duckdb_floor": median([f["seconds"] / d["seconds"] for d, _, f in rounds]),
    }


def _simulate(events: int, target: Path, texts: str = "synthetic") -> dict:
    """The simulator's messy logs of about ``events`` events under ``target`` (kept for reruns).

    ``texts``: ``synthetic`` (the simulator's short texts, 4,000 distinct responses of ~170
    characters: Parquet stores them as dictionaries) or ``unique``: OpenAssistant's prompts and
    replies (``../shared/data/oasst``: ~590 and ~810 characters on average), each made unique to its
    exposure by appending the exposure_id, as in production logs where no two generations are
    byte-equal (~1.4 KB of text per impression that no dictionary shrinks)."""
    from feedback_etl.simulator import SimulationConfig, simulate

    if (target / "simulation.json").exists():
        return json.loads((target / "simulation.json").read_text())
    n_exposures = int(events / EVENTS_PER_EXPOSURE)
    config = dict(n_exposures=n_exposures, messiness=0.3, seed=0, chunk_size=250_000)
    if texts == "synthetic":
        return simulate(SimulationConfig(out=str(target), **config))
    import duckdb

    pooled = target.with_name(target.name + "-pooled")
    summary = simulate(SimulationConfig(out=str(pooled), texts="oasst", **config))
    (target / "events").mkdir(parents=True, exist_ok=True)
    conn = duckdb.connect()
    for path in sorted((pooled / "events").glob("*.parquet")):
        unique = ", ".join(
            f"CASE WHEN {c} IS NOT NULL THEN {c} || ' [' || exposure_id || ']' END AS {c}" for c in ("prompt_text", "response_text")
        )
        source, out = str(path).replace("'", "''"), str(target / "events" / path.name).replace("'", "''")
        conn.execute(f"COPY (SELECT * REPLACE ({unique}) FROM read_parquet('{source}')) TO '{out}' (FORMAT parquet, COMPRESSION snappy)")
    conn.close()
    shutil.rmtree(pooled)
    (target / "simulation.json").write_text(json.dumps(summary, default=str))
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["1M", "3M", "10M"], help="event counts, e.g. 1M 3M 10M")
    parser.add_argument("--work", default="/tmp/causalrm-ingest-bench", help="scratch folder (inputs are kept for reruns)")
    parser.add_argument("--memory-limit", default="2GB", help="DuckDB memory limit for floor and ingest")
    parser.add_argument("--threads", type=int, default=None, help="DuckDB threads / Spark local[N] (default: all cores)")
    parser.add_argument("--engines", nargs="+", default=["duckdb"], choices=["duckdb", "spark"], help="ingest engines to run")
    parser.add_argument("--results", default=str(Path(__file__).with_name("results.json")))
    parser.add_argument("--repeat", type=int, default=1, help="interleaved floor / ingest pairs per size; medians reported")
    parser.add_argument("--texts", default="synthetic", choices=["synthetic", "unique"],
                        help="the simulator's short pooled texts, or OpenAssistant's made unique per exposure (chat-length)")
    parser.add_argument("--child", choices=["floor", "spark-floor", "ingest"], help=argparse.SUPPRESS)
    parser.add_argument("--input", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--engine", default="duckdb", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args)
        return

    work = Path(args.work)
    rows = []
    for label in args.sizes:
        events = _size(label)
        logs = work / (f"logs-{label}" if args.texts == "synthetic" else f"logs-{label}-{args.texts}")
        summary = _simulate(events, logs, args.texts)
        run_dir = work / f"run-{label}"
        shutil.rmtree(run_dir, ignore_errors=True)
        # Interleaved pairs (floor, then each engine), so both see the same machine load; medians.
        pairs = []
        for k in range(args.repeat):
            floor_k = _measure("floor", logs / "events", run_dir / f"floor-{k}", args)
            results_k = {e: _measure("ingest", logs / "events", run_dir / f"ingest-{e}-{k}", args, e) for e in args.engines}
            if "spark" in args.engines:  # Spark's own floor, in the same interleaved round (issue 19)
                results_k["spark-floor"] = _measure("spark-floor", logs / "events", run_dir / f"spark-floor-{k}", args)
            pairs.append((floor_k, results_k))
            shutil.rmtree(run_dir, ignore_errors=True)
        floor = _median_run([p[0] for p in pairs])
        results = {e: _median_run([p[1][e] for p in pairs]) for e in args.engines}
        spark_floor = _median_run([p[1]["spark-floor"] for p in pairs]) if "spark" in args.engines else None
        result = results[args.engines[0]]
        first = args.engines[0]
        pair_ratios = sorted(p[1][first]["seconds"] / p[0]["seconds"] for p in pairs)
        # CPU of the process tree: the Spark engine's JVM included (for DuckDB, the process itself).
        cpu_ratios = sorted(p[1][first]["tree_cpu_s"] / p[0]["cpu_s"] for p in pairs)
        row = {
            "size": label,
            "events": summary["counts"]["rows_written"],
            "exposures": result["exposures"],
            "input_mb": round(sum(p.stat().st_size for p in (logs / "events").glob("*.parquet")) / 2**20, 1),
            "floor_s": round(floor["seconds"], 2),
            "floor_peak_rss_mb": round(floor["peak_rss_mb"]),
            "ingest_s": round(result["seconds"], 2),
            "ingest_peak_rss_mb": round(result["peak_rss_mb"]),
            "ingest_spill_mb": round(result["spill_mb"]),  # the most seen in DuckDB's temp folder
            "ratio_to_floor": round(result["seconds"] / floor["seconds"], 2),
            "repeat": args.repeat,
            "median_pair_ratio": round(pair_ratios[len(pair_ratios) // 2], 2),
            "median_pair_cpu_ratio": round(cpu_ratios[len(cpu_ratios) // 2], 2),
            "floor_cpu_s": round(floor["cpu_s"], 2),
            "ingest_cpu_s": round(result["tree_cpu_s"], 2),
            "ingest_cpu_s_per_m_events": round(result["tree_cpu_s"] / summary["counts"]["rows_written"] * 1e6, 2),
            "events_per_s": round(summary["counts"]["rows_written"] / result["seconds"]),
            "timings_s": result["timings_s"],
            "engines": {
                engine: {
                    "ingest_s": round(r["seconds"], 2),
                    "events_per_s": round(summary["counts"]["rows_written"] / r["seconds"]),
                    "peak_rss_mb": round(r["tree_peak_rss_mb"]),  # process tree: Spark's JVM included
                    "ratio_to_floor": round(r["seconds"] / floor["seconds"], 2),
                    "timings_s": r["timings_s"],
                }
                for engine, r in results.items()
            },
        }
        if spark_floor is not None:
            row["engines"]["spark"].update(_spark_ratios(pairs, spark_floor, summary["counts"]["rows_written"]))
        rows.append(row)
        print(json.dumps(row), flush=True)
        shutil.rmtree(run_dir, ignore_errors=True)
    meta = {"cpu_count": os.cpu_count(), "memory_limit": args.memory_limit, "threads": args.threads or os.cpu_count(),
            "engines": args.engines, "texts": args.texts}
    Path(args.results).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print("\n| events | exposures | input MB | floor s | ingest s | ingest / floor (median of pairs) | CPU ratio | "
          "ingest CPU s / M events | events/s | peak RSS MB (ingest / floor) | ingest spill MB |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['events']:,} | {r['exposures']:,} | {r['input_mb']} | {r['floor_s']} | {r['ingest_s']} | "
              f"{r['median_pair_ratio']} | {r['median_pair_cpu_ratio']} | {r['ingest_cpu_s_per_m_events']} | "
              f"{r['events_per_s']:,} | {r['ingest_peak_rss_mb']:,} / {r['floor_peak_rss_mb']:,} | {r['ingest_spill_mb']:,} |")
    if len(args.engines) > 1 or args.engines != ["duckdb"]:
        print("\n| events | engine | ingest s | events/s | ingest / floor | peak RSS MB (process tree) |")
        print("| ---: | --- | ---: | ---: | ---: | ---: |")
        for r in rows:
            for engine, e in r["engines"].items():
                print(f"| {r['events']:,} | {engine} | {e['ingest_s']} | {e['events_per_s']:,} | {e['ratio_to_floor']} | {e['peak_rss_mb']:,} |")
        spark_rows = [r for r in rows if "ratio_to_spark_floor" in r["engines"].get("spark", {})]
        if spark_rows:
            print("\n| events | Spark floor s (session s) | Spark ingest s | / Spark floor: wall, without session, CPU | "
                  "/ DuckDB floor: wall, CPU | Spark floor / DuckDB floor |")
            print("| ---: | ---: | ---: | ---: | ---: | ---: |")
            for r in spark_rows:
                e = r["engines"]["spark"]
                print(f"| {r['events']:,} | {e['spark_floor_s']} ({e['spark_floor_session_s']}) | {e['ingest_s']} | "
                      f"{e['ratio_to_spark_floor']}, {e['ratio_to_spark_floor_without_session']}, {e['cpu_ratio_to_spark_floor']} | "
                      f"{e['ratio_to_duckdb_floor']}, {e['cpu_ratio_to_duckdb_floor']} | {e['spark_floor_to_duckdb_floor']} |")


if __name__ == "__main__":
    main()
