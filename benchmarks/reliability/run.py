"""Reliability benchmark for the Delta warehouse (issue 16): kill -9 at random moments, a reader
looping during ingests, and two writers at once. Not a test (the suite runs small versions of
each in tests/feedback_etl/test_warehouse_delta.py).

    .venv/bin/python benchmarks/reliability/run.py --trials 60 --readers 8 --writer-pairs 10

Kill trials: a copy of a base warehouse, an ingest of a second batch in a child process killed
with SIGKILL after a uniformly random delay in [0, 1.1 x its usual duration]; then a reader must
see exactly the previous or the new committed state (feedback and events, no repair step run),
and the next ingest must complete to the new state. Readers: read_feedback in a loop while a
child ingests; every read must be one of the two committed states. Writers: two children ingest
two batches into one new warehouse at once; each either commits or is refused by the lock, and
after re-running the refused one the warehouse equals the sequential one (same order).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from feedback_etl.ingest import IngestConfig, ingest  # noqa: E402
from feedback_etl.io import read_events, read_feedback  # noqa: E402
from feedback_etl.simulator import SimulationConfig, simulate  # noqa: E402

CHILD = """
import sys, time
from feedback_etl.ingest import IngestConfig, ingest
print("ready", flush=True)
start = time.perf_counter()
ingest(IngestConfig(inputs=tuple(sys.argv[2:]), warehouse=sys.argv[1], threads=1))
print(f"done {time.perf_counter() - start:.3f}", flush=True)
"""


def child(wh: Path, *inputs: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", CHILD, str(wh), *map(str, inputs)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def state(wh: Path):
    return read_feedback(wh, validate=False), read_events(wh).drop("run_id").sort("event_id")


def same(a, b) -> bool:
    return a[0].equals(b[0]) and a[1].equals(b[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=60, help="kill -9 trials")
    parser.add_argument("--readers", type=int, default=8, help="ingests watched by a looping reader")
    parser.add_argument("--writer-pairs", type=int, default=10, help="pairs of concurrent writers")
    parser.add_argument("--exposures", type=int, default=20_000, help="exposures of the base logs (the second batch is a tenth)")
    parser.add_argument("--work", default="/tmp/reliability-bench", help="scratch folder")
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument("--results", default=str(Path(__file__).with_name("results.json")))
    # Run it from a frozen copy of the tree when others edit it: a change to the SQL or schemas
    # between the reference run and a trial makes the states differ for reasons of its own.
    args = parser.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    simulate(SimulationConfig(out=str(work / "base_logs"), n_exposures=args.exposures, messiness=0.3, seed=1))
    simulate(SimulationConfig(out=str(work / "later_logs"), n_exposures=args.exposures // 10, messiness=0.3, seed=2, format="jsonl"))
    base_in, later_in = work / "base_logs" / "events", work / "later_logs" / "events"
    base = work / "base"
    ingest(IngestConfig(inputs=(str(base_in),), warehouse=str(base), threads=1))
    after = work / "after"
    shutil.copytree(base, after)
    reference = child(after, later_in)
    out, err = reference.communicate()
    assert reference.returncode == 0, err
    seconds = float(out.split("done ")[1])
    states = {"before": state(base), "after": state(after)}
    rng = random.Random(args.seed)

    kills = {"trials": args.trials, "saw_before": 0, "saw_after": 0, "saw_other": 0, "next_run_completed": 0, "child_exited_first": 0}
    for trial in range(args.trials):
        wh = work / "trial"
        shutil.rmtree(wh, ignore_errors=True)
        shutil.copytree(base, wh)
        proc = child(wh, later_in)
        proc.stdout.readline()
        time.sleep(rng.uniform(0, seconds * 1.1))
        if proc.poll() is not None:
            kills["child_exited_first"] += 1
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        seen = state(wh)
        name = next((n for n, s in states.items() if same(seen, s)), "other")
        kills[f"saw_{name}"] += 1
        if name == "other":  # kept for inspection
            shutil.copytree(wh, work / f"other-{trial}")
        ingest(IngestConfig(inputs=(str(later_in),), warehouse=str(wh), threads=1))
        kills["next_run_completed"] += same(state(wh), states["after"])
        print(f"kill trial {trial + 1}/{args.trials}: reader saw {name}", flush=True)

    readers = {"ingests": args.readers, "reads": 0, "reads_before": 0, "reads_after": 0, "reads_other": 0, "ingests_ok": 0}
    for _ in range(args.readers):
        wh = work / "reader"
        shutil.rmtree(wh, ignore_errors=True)
        shutil.copytree(base, wh)
        proc = child(wh, later_in)
        while True:
            running = proc.poll() is None
            frame = read_feedback(wh, validate=False)
            name = next((n for n, s in states.items() if frame.equals(s[0])), "other")
            readers["reads"] += 1
            readers[f"reads_{name}"] += 1
            if not running:
                break
        proc.communicate()
        readers["ingests_ok"] += proc.returncode == 0

    writers = {"pairs": args.writer_pairs, "both_committed": 0, "one_refused": 0, "both_refused": 0, "equal_to_sequential": 0}
    small = work / "later_logs" / "events"
    for pair in range(args.writer_pairs):
        wh, seq = work / "writers", work / "sequential"
        for p in (wh, seq):
            shutil.rmtree(p, ignore_errors=True)
        procs = [child(wh, base_in), child(wh, small)]
        results = [p.communicate() for p in procs]
        refused = [k for k, p in enumerate(procs) if p.returncode != 0]
        assert all("being ingested into" in results[k][1] for k in refused), [results[k][1][-300:] for k in refused]
        writers[{0: "both_committed", 1: "one_refused", 2: "both_refused"}[len(refused)]] += 1
        for k in refused:
            ingest(IngestConfig(inputs=(str((base_in, small)[k]),), warehouse=str(wh), threads=1))
        order = [Path(r["files"][0]["path"]).parent for r in json.loads((wh / "manifest.json").read_text())["runs"]]
        for folder in order:
            ingest(IngestConfig(inputs=(str(folder),), warehouse=str(seq), threads=1))
        writers["equal_to_sequential"] += same(state(wh), state(seq))

    results = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end",
        "exposures": args.exposures, "ingest_seconds": seconds, "kill": kills, "readers": readers, "writers": writers,
    }
    Path(args.results).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    failed = kills["saw_other"] or kills["next_run_completed"] != args.trials or readers["reads_other"] or \
        writers["equal_to_sequential"] != args.writer_pairs or readers["ingests_ok"] != args.readers
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
